"""Golden data for diffusion/flow_match.c: upstream's FlowMatchScheduler("Qwen-Image") itself.

Writes tests/data/golden/flow_match.safetensors:
  sigmas.n<steps>.l<len>.st<strength*100> / timesteps.(same)
      set_timesteps(steps, strength, dynamic_shift_len=len) for steps 1, 2, 7, 30, 40, 50 and the
      pipeline's len (H//16)*(W//16) of 1024x1024 (4096), 1328x1328 (6889), 64x64 (16) and
      512x768 (1536); l0 = no length (mu 0.8); strengths 1 and 0.6
  sigmas.n<steps>.mu<mu*100>.st100 / timesteps.(same)    exponential_shift_mu given
  step.<dtype>.x / .v / .i<index>    scheduler.step(v, timesteps[index], x) on the 1024x1024
                                     30-step schedule, 4099 random values, f32 and bf16
  add_noise.<dtype>.x0 / .noise / .i<index>   scheduler.add_noise(x0, noise, timesteps[index]) on
                                     the 1024x1024 30-step schedule at strength 0.6
Run with the private venv (torch on the CPU, the upstream diffsynth package) - never in CI.
"""
import os

import torch
from safetensors.torch import save_file

from diffsynth.diffusion.flow_match import FlowMatchScheduler

torch.set_num_threads(2)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "golden",
                   "flow_match.safetensors")
STEPS = [1, 2, 7, 30, 40, 50]
LENGTHS = [0, (1024 // 16) * (1024 // 16), (1328 // 16) * (1328 // 16), (64 // 16) * (64 // 16),
           (512 // 16) * (768 // 16)]
STRENGTHS = [1.0, 0.6]
MUS = [0.3, 1.1, 2.5]
STEP_INDICES = [0, 1, 15, 28, 29]
COUNT = 4099
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def schedule(steps, strength, length=0, mu=None):
    scheduler = FlowMatchScheduler("Qwen-Image")
    scheduler.set_timesteps(steps, denoising_strength=strength,
                            dynamic_shift_len=length if length > 0 else None,
                            exponential_shift_mu=mu)
    return scheduler


def main():
    out = {}
    for steps in STEPS:
        for length in LENGTHS:
            for strength in STRENGTHS:
                s = schedule(steps, strength, length)
                key = "n%d.l%d.st%d" % (steps, length, round(strength * 100))
                out["sigmas." + key] = s.sigmas.clone()
                out["timesteps." + key] = s.timesteps.clone()
        for mu in MUS:
            s = schedule(steps, 1.0, 4096, mu)
            key = "n%d.mu%d.st100" % (steps, round(mu * 100))
            out["sigmas." + key] = s.sigmas.clone()
            out["timesteps." + key] = s.timesteps.clone()

    generator = torch.Generator().manual_seed(3)
    for name, dtype in DTYPES.items():
        s = schedule(30, 1.0, 4096)
        x = (torch.randn(COUNT, generator=generator) * 1.5).to(dtype)
        v = (torch.randn(COUNT, generator=generator) * 2.0).to(dtype)
        out["step.%s.x" % name] = x
        out["step.%s.v" % name] = v
        for i in STEP_INDICES:
            out["step.%s.i%d" % (name, i)] = s.step(v, s.timesteps[i], x)
        s = schedule(30, 0.6, 4096)
        x0 = (torch.randn(COUNT, generator=generator) * 1.5).to(dtype)
        noise = torch.randn(COUNT, generator=generator).to(dtype)
        out["add_noise.%s.x0" % name] = x0
        out["add_noise.%s.noise" % name] = noise
        for i in STEP_INDICES:
            out["add_noise.%s.i%d" % (name, i)] = s.add_noise(x0, noise, s.timesteps[i])
    save_file({k: v.contiguous() for k, v in out.items()}, OUT)
    print("wrote", OUT, len(out), "tensors")


if __name__ == "__main__":
    main()
