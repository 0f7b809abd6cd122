"""Golden data for diffusion/flow_match.c's Wan template: upstream's FlowMatchScheduler("Wan")
itself (set_timesteps_wan: linspace, then the shift s * x / (1 + (s - 1) * x), no dynamic shift).

Writes tests/data/golden/flow_match_wan.safetensors:
  sigmas.n<steps>.sh<shift*100>.st<strength*100> / timesteps.(same)
      set_timesteps(steps, denoising_strength=strength, shift=shift) for steps 1, 2, 3, 30, 50,
      shifts 5 (upstream's default), 3, 1 and 12.5, strengths 1 and 0.7
Run with the private venv (torch on the CPU, the upstream diffsynth package) - never in CI.
"""
import os

import torch
from safetensors.torch import save_file

from diffsynth.diffusion.flow_match import FlowMatchScheduler

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "golden",
                   "flow_match_wan.safetensors")
STEPS = [1, 2, 3, 30, 50]
SHIFTS = [5.0, 3.0, 1.0, 12.5]
STRENGTHS = [1.0, 0.7]


def main():
    out = {}
    for steps in STEPS:
        for shift in SHIFTS:
            for strength in STRENGTHS:
                s = FlowMatchScheduler("Wan")
                s.set_timesteps(steps, denoising_strength=strength, shift=shift)
                key = "n%d.sh%d.st%d" % (steps, round(shift * 100), round(strength * 100))
                out["sigmas." + key] = s.sigmas.clone().contiguous()
                out["timesteps." + key] = s.timesteps.clone().contiguous()
    save_file(out, OUT, metadata={"upstream": "FlowMatchScheduler('Wan'), torch "
                                              + torch.__version__})
    print(OUT, len(out))


if __name__ == "__main__":
    main()
