#!/usr/bin/env bash
# tests/device/run.sh: the one script a GPU session runs on the device machine
# (tests/device/README.md says how to call it). It
#   1. records the machine (GPU, driver, nvcc, compilers, torch) in env.txt;
#   2. finds OpenBLAS: the system's, or the Debian packages tests/device/prepare.sh left in
#      build-device-deps/ (unpacked under build-device/, never installed into /);
#   2b. makes the upstream package importable for the anchors: the image's, or the wheels
#      prepare.sh left in build-device-deps/wheels, installed into build-device/pysite;
#   3. builds with CUDA into build-device/: `meson setup -Dcuda=enabled` and the kernel targets
#      where the whole project configures, else tests/device/build_direct.sh (gcc + nvcc, the
#      kernels alone: the image lacks the daemon's -dev packages) plus the benchmarks that need
#      the whole project as prepare.sh prebuilt them (build-device-deps/prebuilt.tar.xz);
#   4. runs the gpu suite: every tests/kernels program with --backend cuda;
#   5. runs bench/kernels/run_gpu.sh (with torch anchors when python3 imports torch), then, with
#      the meson build, bench/vram/run_gpu.sh, bench/wan_video_dit/run_gpu.sh and
#      run_gpu_vram.sh, and bench/wan_video_vae/run_gpu.sh, reduced to fit, each only when the
#      budget still leaves it the time it needs (else its row says so);
#   6. prints a short table last: test counts, each benchmark's ours / anchor / ratio / target.
# Full logs go to $OUT when set (the device tool brings them back), else build-device/logs.
# Every step runs under `timeout`, inside an overall budget of DS_DEVICE_BUDGET seconds (default
# 480), so the table is printed within one 600-second device call. Without a GPU every step
# still runs and the table says "no GPU" (exit 77 from the tests and the benchmark). When
# nvidia-smi sees a GPU, a test that skips (exit 77: the CUDA backend did not start, e.g. a
# driver / runtime mismatch or a failing cublasLtCreate) is a FAILURE, and the table says why
# the backend did not start (the test programs print the creation error).
# DS_DEVICE_BENCH picks the benchmarks (comma-separated, default all, in this order:
# kernels,vram,wan_dit,wan_vram,wan_vae) and DS_DEVICE_TESTS=0 skips the gpu suite, so that a
# second call can give the later benchmarks the budget the first one spent elsewhere;
# DS_DEVICE_FULL=1 runs the Wan VRAM and VAE rows at their full size instead of reduced.
# For trying the script elsewhere: DS_DEVICE_BUILD_DIR (default build-device) and
# DS_DEVICE_BUILD=direct (skip the meson attempt).
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
build=$(realpath -m "${DS_DEVICE_BUILD_DIR:-build-device}")
deps=build-device-deps
logs=${OUT:-$build/logs}
budget=${DS_DEVICE_BUDGET:-480}
benches=,${DS_DEVICE_BENCH:-kernels,vram,wan_dit,wan_vram,wan_vae},
t0=$(date +%s)
mkdir -p "$logs" "$build"
runlog=$logs/run.log
: >"$runlog"

elapsed() { echo $(($(date +%s) - t0)); }
say() { echo "[$(elapsed)s] $*" | tee -a "$runlog"; }
# Seconds a step may take: its own cap, and never past the budget less `reserve` (what the
# steps after it need).
limit() {   # cap reserve
    local left=$((budget - $(elapsed) - $2))
    ((left < $1)) && echo $((left > 10 ? left : 10)) || echo "$1"
}

# ---- 1. the machine ----
gpu=$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
nvcc=$(command -v nvcc || { [[ -x /usr/local/cuda/bin/nvcc ]] && echo /usr/local/cuda/bin/nvcc; } || true)
[[ -n $nvcc ]] && export PATH="$(dirname "$nvcc"):$PATH"
torch=$(timeout 90 python3 -c "import torch; print(torch.__version__, 'cuda' if torch.cuda.is_available() else 'no-cuda')" 2>/dev/null)
{
    echo "date: $(date -u +%FT%TZ)"; uname -a; echo "cpus: $(nproc)"
    timeout 30 nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    [[ -n $nvcc ]] && "$nvcc" --version || echo "nvcc: not found"
    gcc --version 2>&1 | head -1; echo "meson: $(meson --version 2>&1)"; echo "ninja: $(ninja --version 2>&1)"
    echo "python3: $(python3 --version 2>&1) at $(command -v python3)"; echo "torch: ${torch:-not importable}"
    for p in libuv libprotobuf-c libxxhash libmd jansson openblas; do
        echo "pkg-config $p: $(pkg-config --modversion "$p" 2>&1)"
    done
} >"$logs/env.txt" 2>&1
say "GPU: ${gpu:-none found}; nvcc: ${nvcc:-none}; torch: ${torch:-not importable}"

# ---- 2. OpenBLAS ----
blas_inc='' blas_lib='' blas_from=''
if compgen -G "$deps/*.deb" >/dev/null; then
    droot=$build/deps-root
    rm -rf "$droot" && mkdir -p "$droot/pkgconfig"
    for deb in "$deps"/*.deb; do
        dpkg-deb -x "$deb" "$droot" 2>>"$runlog" || {
            member=$(ar t "$deb" | grep -m1 '^data.tar') &&
                ar p "$deb" "$member" >"$droot/$member" && tar -xf "$droot/$member" -C "$droot" &&
                rm -f "$droot/$member"
        } 2>>"$runlog"
    done
    blas_inc=$droot/usr/include/x86_64-linux-gnu/openblas-pthread
    blas_lib=$droot/usr/lib/x86_64-linux-gnu/openblas-pthread
    sed "s|=/usr/|=$droot/usr/|" "$blas_lib/pkgconfig/openblas.pc" >"$droot/pkgconfig/openblas.pc" 2>>"$runlog"
    export PKG_CONFIG_PATH=$droot/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
    # libgfortran5 / libquadmath0 come along for images without them.
    export LD_LIBRARY_PATH=$blas_lib:$droot/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    blas_from="carried Debian packages ($deps)"
elif pkg-config --exists openblas 2>/dev/null; then
    blas_inc=$(pkg-config --variable=includedir openblas) blas_lib=$(pkg-config --variable=libdir openblas)
    blas_from="system (pkg-config)"
else
    for d in /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas /usr/include; do
        [[ -f $d/cblas.h ]] && { blas_inc=$d; break; }
    done
    lib=$(ldconfig -p 2>/dev/null | awk '/libopenblas\.so /{print $NF; exit}')
    [[ -n $lib ]] && blas_lib=$(dirname "$lib")
    [[ -n $blas_inc && -n $blas_lib ]] && blas_from="system ($blas_inc, $blas_lib)"
fi
if [[ ! -f $blas_inc/cblas.h ]]; then
    say "OpenBLAS: NOT FOUND (no cblas.h / libopenblas here, and no $deps/*.deb carried): the CPU" \
        "backend, and so every kernel test and the benchmark, cannot link. Run" \
        "tests/device/prepare.sh before the device call and carry $deps (tests/device/README.md)."
else
    say "OpenBLAS: $blas_from"
fi

# ---- 2b. the upstream package for the anchors ----
py_from='' py_error=''
if timeout 120 python3 -c "import diffsynth" >/dev/null 2>&1; then
    py_from="the image's python3"
elif compgen -G "$deps/wheels/*.whl" >/dev/null; then
    rm -rf "$build/pysite"
    if timeout 180 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$build/pysite" "$deps"/wheels/*.whl >>"$runlog" 2>&1; then
        export PYTHONPATH=$build/pysite${PYTHONPATH:+:$PYTHONPATH}
        # What the anchors import; the first missing module is what to carry next.
        py_error=$(timeout 180 python3 -c "import diffsynth.pipelines.wan_video, \
diffsynth.pipelines.qwen_image, diffsynth.models.wan_video_vae, diffsynth.core.vram.layers" 2>&1 |
            tail -1)
        [[ -z $py_error ]] && py_from="wheels carried in $deps/wheels"
    else
        py_error="pip install of $deps/wheels failed (run.log)"
    fi
else
    py_error="not in the image, and no $deps/wheels (tests/device/prepare.sh)"
fi
say "upstream package (diffsynth): ${py_from:-NOT IMPORTABLE: ${py_error:0:200}; the benchmarks run without their upstream anchors}"

# ---- 3. build ----
mode='' build_ok=0 bindir=''
tests=()
for src in tests/kernels/test_*.c; do [[ -f $src ]] && tests+=("$(basename "$src" .c)"); done
{
    if [[ ${DS_DEVICE_BUILD:-} == direct ]]; then
        echo "DS_DEVICE_BUILD=direct: no meson attempt"
    elif command -v meson >/dev/null && command -v ninja >/dev/null; then
        if [[ -f $build/build.ninja ]]; then
            timeout "$(limit 120 300)" meson setup --reconfigure "$build" -Dcuda=enabled -Dwerror=false
        else
            timeout "$(limit 120 300)" meson setup "$build" -Dcuda=enabled -Dwerror=false
        fi && mode=meson
    else
        echo "meson or ninja missing"
    fi
} >"$logs/build.log" 2>&1
if [[ $mode == meson ]]; then
    say "build: meson configured the whole project; building the kernel targets"
    targets=(bench/kernels_bench bench/vram_bench bench/wan_dit_bench bench/vae_bench)
    for t in "${tests[@]}"; do targets+=("tests/kernels/$t"); done
    timeout "$(limit 300 200)" ninja -C "$build" -k 0 "${targets[@]}" >>"$logs/build.log" 2>&1
    bindir=$build
else
    why=$(grep -m1 -E "ERROR|not found|missing" "$logs/build.log" | cut -c1-160)
    say "build: meson cannot configure the whole project here (${why:-see build.log}); building" \
        "the kernels, their tests and the benchmark directly (tests/device/build_direct.sh)"
    mode=direct
    bindir=$build/direct
    timeout "$(limit 300 200)" bash tests/device/build_direct.sh "$bindir" "$blas_inc" "$blas_lib" \
        >>"$logs/build.log" 2>&1
fi
[[ -x $bindir/bench/kernels_bench ]] && build_ok=1
# The direct build has no wan_dit_bench, vae_bench nor vram_bench: take prepare.sh's, built from
# this tree on a Debian machine, with the shared libraries they need beside them.
prebuilt=''
if [[ $mode == direct && $build_ok == 1 && -f $deps/prebuilt.tar.xz ]]; then
    pdir=$build/prebuilt
    rm -rf "$pdir" && mkdir -p "$pdir"
    if tar -C "$pdir" -xJf "$deps/prebuilt.tar.xz" 2>>"$runlog"; then
        cp -f "$pdir"/bench/* "$bindir/bench/"
        cuda_lib=''
        [[ -n $nvcc ]] && cuda_lib=$(realpath -m "$(dirname "$nvcc")/../lib64")
        export LD_LIBRARY_PATH=$pdir/lib${cuda_lib:+:$cuda_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        prebuilt="$(ls "$pdir/bench" | tr '\n' ' ')from prepare.sh at $(head -1 "$pdir/REVISION" | cut -c1-12) ($(sed -n 2p "$pdir/REVISION"))"
    else
        prebuilt="$deps/prebuilt.tar.xz did not unpack (run.log)"
    fi
    for b in "$bindir"/bench/*; do
        missing=$(ldd "$b" 2>/dev/null | grep -m1 "not found")
        [[ -n $missing ]] && prebuilt+="; $(basename "$b") lacks ${missing%% =>*}"
    done
    say "prebuilt benchmarks: $prebuilt"
fi
build_s=$(elapsed)
build_error=$( (grep -m1 -E "error:|undefined reference|did not (compile|link)" "$logs/build.log" ||
    grep -m1 "FAILED:" "$logs/build.log") | cut -c1-150)
say "build ($mode): $([[ $build_ok == 1 ]] && echo ok || echo "FAILED: $build_error") at ${build_s}s"

# ---- 4. the gpu suite ----
export DS_TEST_DATA=$root/tests/data DS_SOURCE_ROOT=$root DS_BUILD_ROOT=$bindir
passed=0 failed=0 skipped=0 backend_error=''
rows=()
: >"$logs/tests.log"
phase_end=$(($(elapsed) + $(limit 240 150)))
[[ ${DS_DEVICE_TESTS:-1} == 0 ]] && tests=()
for t in "${tests[@]}"; do
    bin=$bindir/tests/kernels/$t
    left=$((phase_end - $(elapsed)))
    if [[ ! -x $bin ]]; then
        rows+=("$t|FAIL|did not build (build.log)|-"); failed=$((failed + 1)); continue
    fi
    if ((left < 5)); then
        rows+=("$t|FAIL|not run: time budget spent|-"); failed=$((failed + 1)); continue
    fi
    start_ns=$(date +%s%N)
    echo "=== $t --backend cuda" >>"$logs/tests.log"
    timeout "$((left < 120 ? left : 120))" "$bin" --backend cuda >"$logs/one-test.log" 2>&1
    rc=$?
    ms=$((($(date +%s%N) - start_ns) / 1000000))
    secs=$((ms / 1000)).$((ms % 1000 / 100))
    cat "$logs/one-test.log" >>"$logs/tests.log"
    cases=$(grep -E '^[0-9]+ cases, [0-9]+ failed' "$logs/one-test.log" | tail -1)
    # Why the backend did not start, as the test program printed it (kernel_test.c).
    why=$(grep -m1 -E '^(skipped: |cannot create the )' "$logs/one-test.log" | sed 's/^skipped: //' | cut -c1-240)
    shown=${why:-no reason printed}
    case $rc in
        0) passed=$((passed + 1)); rows+=("$t|pass|${cases:-?}|${secs}s") ;;
        77)
            if [[ -n $gpu ]]; then
                failed=$((failed + 1)); rows+=("$t|FAIL|skipped with a GPU present: ${shown:0:60}|-")
                backend_error=${backend_error:-${why:-the test skipped without saying why}}
            else
                skipped=$((skipped + 1)); rows+=("$t|skip|${shown:0:70}|-")
            fi ;;
        124 | 137) failed=$((failed + 1)); rows+=("$t|FAIL|timed out|${secs}s") ;;
        *)
            [[ -z $cases && -n $why ]] && backend_error=${backend_error:-$why}
            [[ -n $why ]] || why='no summary (crash?)'
            failed=$((failed + 1)); rows+=("$t|FAIL|exit $rc; ${cases:-${why:0:70}}|${secs}s") ;;
    esac
done
rm -f "$logs/one-test.log"
say "gpu suite: $passed passed, $failed failed, $skipped skipped"

# ---- 5. benchmarks ----
: >"$logs/bench.jsonl"
# One benchmark: run when DS_DEVICE_BENCH names it and the budget, less `reserve` (what the
# entries after it need), leaves it at least `need` seconds; under `timeout` at most `cap`.
bench_entry() {   # name cap reserve need binary command...
    local name=$1 cap=$2 reserve=$3 need=$4 bin=$5 left
    shift 5
    [[ $benches == *,$name,* ]] || return 0
    if [[ ! -x $bindir/bench/$bin ]]; then
        echo "$name: not run ($bin not built: $mode build)" >>"$logs/bench.txt"
        return 0
    fi
    left=$((budget - $(elapsed) - reserve))
    if ((left < need)); then
        echo "$name: not run: ${left}s of the budget left, it needs ${need}s (run it alone:" \
            "DS_DEVICE_BENCH=$name DS_DEVICE_TESTS=0)" >>"$logs/bench.txt"
        return 0
    fi
    timeout "$((left < cap ? left : cap))" env DS_BUILD_DIR="$bindir" DS_BENCH_LOG="$logs/bench.jsonl" \
        "$@" >>"$logs/bench.txt" 2>&1
    [[ $? == 124 ]] && echo "($name stopped at the time budget)" >>"$logs/bench.txt"
    return 0
}
if [[ $build_ok == 1 ]]; then
    : >"$logs/bench.txt"
    anchor=python3
    [[ $torch == *" cuda" ]] || anchor=none
    bench_entry kernels 300 135 20 kernels_bench \
        env DS_BENCH_TIMEOUT=90 bash bench/kernels/run_gpu.sh "$anchor" 5
    # bench/vram at a quarter of the DiT (15 blocks) and a quarter of the 8 GiB limit, so that it
    # fits the budget; the meson build alone builds vram_bench (not build_direct.sh).
    bench_entry vram 120 15 30 vram_bench \
        env DS_BENCH_TIMEOUT=100 DS_BENCH_LAYERS=15 DS_BENCH_VRAM_GIB=2 \
        bash bench/vram/run_gpu.sh "$anchor" 2
    # The Wan 1.3B DiT step at the full 32,760 tokens, a third of its 30 blocks, whatever time
    # the budget has left (the ratio holds per block; the 30-block row is run_gpu.sh's default).
    bench_entry wan_dit 120 10 30 wan_dit_bench \
        env DS_BENCH_TIMEOUT=100 DS_BENCH_LAYERS=10 bash bench/wan_video_dit/run_gpu.sh "$anchor" 1
    # The Wan 14B DiT under a VRAM limit with fp8 storage at the full 32,760 tokens, a quarter of
    # its 40 blocks under a quarter of the 24 GiB limit; and the Wan2.1 VAE's tiled decode at
    # 480 x 832 (all 9 tiles), 5 latent frames (17 frames) instead of 21 (81 frames). With
    # DS_DEVICE_FULL=1, the whole of each (give it DS_DEVICE_BUDGET too); each side of a row
    # (ours, upstream) has half the entry's time.
    if [[ ${DS_DEVICE_FULL:-0} == 1 ]]; then
        wan_layers=40 wan_gib=24 vae_frames=21 cap=540
    else
        wan_layers=10 wan_gib=6 vae_frames=5 cap=160
    fi
    bench_entry wan_vram "$cap" 5 60 wan_dit_bench \
        env DS_BENCH_TIMEOUT=$((cap / 2 - 5)) DS_BENCH_LAYERS=$wan_layers DS_BENCH_VRAM_GIB=$wan_gib \
        bash bench/wan_video_dit/run_gpu_vram.sh "$anchor" 1
    bench_entry wan_vae "$cap" 0 60 vae_bench \
        env DS_BENCH_TIMEOUT=$((cap / 2 - 5)) DS_BENCH_FRAMES=$vae_frames \
        bash bench/wan_video_vae/run_gpu.sh "$anchor" 1
else
    echo "benchmarks not run: the build failed" >"$logs/bench.txt"
fi

# ---- 6. the table ----
{
    echo
    echo "=== tests/device/run.sh: $(elapsed)s; logs in $logs"
    echo "machine: ${gpu:-no GPU found} | nvcc: $([[ -n $nvcc ]] && "$nvcc" --version | grep -o 'release [0-9.]*' || echo none) | torch: ${torch:-none}"
    echo "build: $mode, $([[ $build_ok == 1 ]] && echo ok || echo FAILED) (${build_s}s); OpenBLAS: ${blas_from:-missing}"
    [[ -n $prebuilt ]] && echo "prebuilt benchmarks: $prebuilt"
    echo "upstream package: ${py_from:-not importable: ${py_error:0:160}}"
    [[ $build_ok == 1 ]] || echo "  first build error: ${build_error:-see build.log}"
    [[ -n $backend_error ]] && echo "CUDA BACKEND DID NOT START on ${gpu:-this machine}: $backend_error"
    echo "gpu suite (tests/kernels --backend cuda):"
    for r in "${rows[@]}"; do
        IFS='|' read -r name verdict detail secs <<<"$r"
        printf '  %-22s %-5s %-8s %s\n' "$name" "$verdict" "$secs" "$detail"
    done
    if [[ ${DS_DEVICE_TESTS:-1} == 0 ]]; then
        echo "  (not run: DS_DEVICE_TESTS=0)"
    elif ((${#rows[@]} == 0)); then
        echo "  (no test programs in tests/kernels)"
    fi
    grep -v -E '^run_gpu(_vram)?\.sh:' "$logs/bench.txt"
    echo "$passed passed, $failed failed, $skipped skipped"
} | tee -a "$runlog"
[[ $failed == 0 && $build_ok == 1 ]]
