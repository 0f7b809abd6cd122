"""bench/wan_video_dit driver: runs wan_dit_bench (ours) and upstream_anchor.py (upstream
DiffSynth-Studio) alternately for each row, in the same run, and prints one table whose ratios
are the results (DESIGN §7). The table, rounds and options are bench/qwen_image_dit/compare.py's.

usage: compare.py --suite cpu|gpu --bench BUILD/bench/wan_dit_bench [--python PY_WITH_DIFFSYNTH]
                  [--threads N] [--repeats N] [--rounds N] [--layers N] [--timeout S]
                  [--kernels-bench BUILD/bench/kernels_bench] [--log FILE]

  cpu  one forward of the reduced Wan2.1-T2V-1.3B DiT (--layers blocks at its width, default
       2), latents 5 x 32 x 32 (1280 tokens), 512 text tokens, f32 and bf16, same threads on
       both sides; ours/upstream wall time, target <= 1.0.
  gpu  one step of the full 1.3B DiT (30 blocks), bf16, 480 x 832 x 81 frames (latents
       21 x 60 x 104: 32,760 tokens), 512 text tokens; ours/upstream step latency, target
       <= 0.8.
"""
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "qwen_image_dit_compare", os.path.join(HERE, "..", "qwen_image_dit", "compare.py"))
driver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(driver)


def rows(a):
    if a.suite == "cpu":
        shape = f"--layers {a.layers} --frames 5 --height 32 --width 32 --text-tokens 512"
        return [dict(name=f"Wan 1.3B {a.layers} layers f32, 1280 + 512 tokens",
                     args=f"--dtype f32 {shape}", target=1.0),
                dict(name=f"Wan 1.3B {a.layers} layers bf16, 1280 + 512 tokens",
                     args=f"--dtype bf16 {shape}", target=1.0)]
    layers = a.layers or 30
    return [dict(name=f"Wan 1.3B {layers} layers bf16, 32760 + 512 tokens",
                 args=f"--dtype bf16 --layers {layers} --frames 21 --height 60 --width 104 "
                      "--text-tokens 512", target=0.8)]


if __name__ == "__main__":
    sys.exit(driver.main(sys.argv[1:], rows=rows, name="wan_video_dit",
                         model_fn="model_fn_wan_video",
                         anchor=os.path.join(HERE, "upstream_anchor.py"), doc=__doc__))
