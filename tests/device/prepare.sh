#!/usr/bin/env bash
# Run HERE (a Debian 12 machine with apt), before a device call: the device machine reaches no
# package registry, and its image has no OpenBLAS, which the CPU backend (and so every kernel
# test and the benchmark) links. Downloads the Debian packages of OpenBLAS (pthread build, with
# cblas.h) and the Fortran runtime it needs into build-device-deps/ (ignored by git, ~13 MB),
# which the device call carries; tests/device/run.sh unpacks them under build-device/ there.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p build-device-deps
cd build-device-deps
rm -f ./*.deb
apt-get download libopenblas0-pthread libopenblas-pthread-dev libgfortran5 libquadmath0
ls -la
