"""bench/sdcpp: stable-diffusion.cpp (the ggml peer) on the Qwen-Image pipeline rows of
bench/qwen_image, next to ours (and optionally upstream DiffSynth-Studio), in the same run.

usage: bench/sdcpp/run.py --sd-cli SDCPP_BUILD/bin/sd-cli [--bench BUILD/bench/pipeline_bench]
           [--python PY_WITH_DIFFSYNTH] [--threads N] [--te-layers N] [--dit-layers N]
           [--dtypes bf16,f32] [--upstream-dtypes f32] [--rounds N] [--repeats N]
           [--models DIR] [--sd-args ARGS] [--timeout S] [--log FILE]

The pipeline: Qwen-Image text to image, te_bench's 60-token prompt and the empty negative prompt,
256x256, 4 steps, cfg 4, seed 0, --te-layers text encoder decoder layers and --dit-layers DiT
blocks at full width, the real VAE, every weight in the row's dtype.

sd.cpp's models are safetensors files written here (once per shape and dtype, into --models,
default /tmp/sdcpp-models) with the values pipeline_bench fills ours with: the same table of
65521 uniform values in [-0.02, 0.02] from SplitMix64 seeded 0x5EED (norm weights and the VAE's
RMS gammas: 1 + that), each tensor tiled from the phase FNV-1a(name) of our name for it,
rounded to bf16 as ours is. The names are the ones sd.cpp loads:
  llm.safetensors   Qwen2.5-VL's language model as Hugging Face names it (model.embed_tokens,
                    model.layers.N.*, model.norm; our model.language_model.* without
                    "language_model."); sd.cpp counts the layers from the tensors and, with no
                    visual.* tensors, builds no vision tower;
  dit.safetensors   QwenImageDiT in diffusers' names (as DiffSynth's and ComfyUI's files);
                    sd.cpp counts transformer_blocks.N;
  vae.safetensors   QwenImageVAE in diffusers' names (AutoencoderKLQwenImage, as DiffSynth's
                    class), encoder included; sd.cpp renames them to Wan's VAE.
sd-cli runs one process per call (how it is used: it has no warm-up call) with
  --diffusion-model dit --vae vae --llm llm -p PROMPT -n "" -H 256 -W 256 --steps 4
  --cfg-scale 4 --sampling-method euler -s 0 -t THREADS --eager-load -v [--sd-args]
with no --type: linears keep the file's type; sd.cpp itself makes the VAE's convolution kernels
f16 and, where ggml cannot gather rows of bf16, the token embedding f32, at load. --eager-load
loads every weight before the call (without it sd.cpp loads each model at its first use, inside
the phase). Its phases are its own log lines:
encode = "get_learned_condition completed" (both prompts), denoise = "sampling completed",
decode = "decode_first_stage completed", the call = "generate_image completed in"; model loading
is outside, as on the other sides. Ours is bench/qwen_image's pipeline_bench (one warm-up call,
then the median of --repeats), upstream's bench/qwen_image/upstream_anchor.py (same).
Each row runs ours, sd.cpp and upstream (in --upstream-dtypes' rows) in turn, --rounds times,
and prints every round with the load average around it, then each side's fastest round and,
since single rounds on a shared machine vary by more than the phases differ, each phase's
fastest round per side: the phase ratios compare those. Standard library only.
"""
import argparse
import json
import os
import re
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(HERE, "..", "common"))
from compare_util import best, fmt_ms, run_one  # noqa: E402  (bench/common)

PROMPT = ("A cozy reading nook by a tall window at dusk, warm lamplight on a worn leather "
          "armchair, a knitted blanket, a stack of books with gold lettering, a sleeping tabby "
          "cat, rain streaks on the glass, film grain, shallow depth of field, muted colors")
PATTERN = 65521  # bench/common/bench_model.c's table length
M64 = (1 << 64) - 1


# ---------------------------------------------------------------- the weights, as ours fills them

def splitmix(state):
    state = (state + 0x9E3779B97F4A7C15) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def bf16_bits(x):
    u = struct.unpack("<I", struct.pack("<f", x))[0]
    return (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest even (no NaN here)


def pattern(center, dtype):
    """bench_model.c's make_pattern(0.02f, center), twice over, as raw little-endian bytes."""
    state, scale, vals = 0x5EED, f32(0.02), []
    for _ in range(PATTERN):
        state, z = splitmix(state)
        u = (z >> 11) * 2.0 ** -53
        vals.append(f32(f32((2.0 * u - 1.0) * scale) + center))
    if dtype == "bf16":
        raw = struct.pack(f"<{PATTERN}H", *(bf16_bits(v) for v in vals))
    else:
        raw = struct.pack(f"<{PATTERN}f", *vals)
    return raw * 2


def fnv1a(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def is_norm_weight(name, shape):
    return (len(shape) == 1 and "norm" in name) or name.endswith(".gamma")


def llm_tensors(layers):
    """(name in the file, our name, shape): Qwen2.5-VL-7B's language model, cut to `layers`."""
    h, ffn, kv, vocab = 3584, 18944, 512, 152064
    out = [("embed_tokens.weight", (vocab, h)), ("norm.weight", (h,))]
    for i in range(layers):
        p = f"layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.q_proj.bias", (h,)),
                (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.k_proj.bias", (kv,)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.v_proj.bias", (kv,)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (ffn, h)), (p + "mlp.up_proj.weight", (ffn, h)),
                (p + "mlp.down_proj.weight", (h, ffn))]
    return [("model." + n, "model.language_model." + n, s) for n, s in out]


def dit_tensors(blocks):
    d, txt = 3072, 3584
    out = [("time_text_embed.timestep_embedder.linear_1", (d, 256)),
           ("time_text_embed.timestep_embedder.linear_2", (d, d)),
           ("img_in", (d, 64)), ("txt_in", (d, txt)), ("norm_out.linear", (2 * d, d)),
           ("proj_out", (64, d))]
    for i in range(blocks):
        p = f"transformer_blocks.{i}."
        out += [(p + "img_mod.1", (6 * d, d)), (p + "txt_mod.1", (6 * d, d))]
        out += [(p + "attn." + n, (d, d)) for n in ("to_q", "to_k", "to_v", "add_q_proj",
                                                    "add_k_proj", "add_v_proj", "to_out.0",
                                                    "to_add_out")]
        for s in ("img_mlp", "txt_mlp"):
            out += [(p + s + ".net.0.proj", (4 * d, d)), (p + s + ".net.2", (d, 4 * d))]
    named = []
    for n, s in out:
        named += [(n + ".weight", s), (n + ".bias", (s[0],))]
    named.append(("txt_norm.weight", (txt,)))
    for i in range(blocks):
        named += [(f"transformer_blocks.{i}.attn.{n}.weight", (128,))
                  for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")]
    return [(n, n, s) for n, s in named]


def vae_tensors():
    """QwenImageVAE (DiffSynth's class, diffusers' AutoencoderKLQwenImage names)."""
    out = []

    def conv(name, cout, cin, k):
        out.extend([(name + ".weight", (cout, cin) + k), (name + ".bias", (cout,))])

    def resnet(p, cin, cout):
        out.append((p + "norm1.gamma", (cin, 1, 1, 1)))
        conv(p + "conv1", cout, cin, (3, 3, 3))
        out.append((p + "norm2.gamma", (cout, 1, 1, 1)))
        conv(p + "conv2", cout, cout, (3, 3, 3))
        if cin != cout:
            conv(p + "conv_shortcut", cout, cin, (1, 1, 1))

    def mid(p):
        out.append((p + "attentions.0.norm.gamma", (384, 1, 1)))
        conv(p + "attentions.0.to_qkv", 1152, 384, (1, 1))
        conv(p + "attentions.0.proj", 384, 384, (1, 1))
        resnet(p + "resnets.0.", 384, 384)
        resnet(p + "resnets.1.", 384, 384)

    conv("encoder.conv_in", 96, 3, (3, 3, 3))
    i, cin = 0, 96
    for stage, cout in enumerate((96, 192, 384, 384)):
        for _ in range(2):
            resnet(f"encoder.down_blocks.{i}.", cin, cout)
            i, cin = i + 1, cout
        if stage < 3:
            conv(f"encoder.down_blocks.{i}.resample.1", cout, cout, (3, 3))
            if stage > 0:
                conv(f"encoder.down_blocks.{i}.time_conv", cout, cout, (3, 1, 1))
            i += 1
    mid("encoder.mid_block.")
    out.append(("encoder.norm_out.gamma", (384, 1, 1, 1)))
    conv("encoder.conv_out", 32, 384, (3, 3, 3))
    conv("quant_conv", 32, 32, (1, 1, 1))
    conv("post_quant_conv", 16, 16, (1, 1, 1))
    conv("decoder.conv_in", 384, 16, (3, 3, 3))
    mid("decoder.mid_block.")
    cin = 384
    for b, (cout, up_out, time_conv) in enumerate(((384, 192, True), (384, 192, True),
                                                   (192, 96, False), (96, None, False))):
        for r in range(3):
            resnet(f"decoder.up_blocks.{b}.resnets.{r}.", cin if r == 0 else cout, cout)
        if up_out:
            p = f"decoder.up_blocks.{b}.upsamplers.0."
            conv(p + "resample.1", up_out, cout, (3, 3))
            if time_conv:
                conv(p + "time_conv", 2 * cout, cout, (3, 1, 1))
            cin = up_out
    out.append(("decoder.norm_out.gamma", (96, 1, 1, 1)))
    conv("decoder.conv_out", 3, 96, (3, 3, 3))
    return [(n, n, s) for n, s in out]


def write_safetensors(path, tensors, dtype, tables):
    es = 2 if dtype == "bf16" else 4
    header, offset = {}, 0
    for name, _, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16" if dtype == "bf16" else "F32", "shape": list(shape),
                        "data_offsets": [offset, offset + n * es]}
        offset += n * es
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, ours, shape in tensors:
            n = 1
            for d in shape:
                n *= d
            table = tables[is_norm_weight(ours, shape)]
            start = fnv1a(ours) % PATTERN
            tile = table[start * es:(start + PATTERN) * es]
            whole, rest = divmod(n, PATTERN)
            chunk = tile * 64
            for _ in range(whole // 64):
                f.write(chunk)
            f.write(tile * (whole % 64) + tile[:rest * es])
    os.replace(tmp, path)


def write_models(folder, te_layers, dit_layers, dtype):
    """The three files for one shape and dtype, written once; returns their paths."""
    folder = os.path.join(folder, f"te{te_layers}_dit{dit_layers}_{dtype}")
    os.makedirs(folder, exist_ok=True)
    files = {"llm": (llm_tensors(te_layers),), "dit": (dit_tensors(dit_layers),),
             "vae": (vae_tensors(),)}
    paths = {k: os.path.join(folder, k + ".safetensors") for k in files}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    start = time.perf_counter()
    tables = {False: pattern(0.0, dtype), True: pattern(1.0, dtype)}
    for k, (tensors,) in files.items():
        if not os.path.exists(paths[k]):
            write_safetensors(paths[k], tensors, dtype, tables)
    print(f"run.py: wrote {folder} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return paths


# ------------------------------------------------------------------------------ measurements

PHASES = {"encode_ms": r"get_learned_condition completed, taking ([0-9.]+)s",
          "denoise_ms": r"sampling completed, taking ([0-9.]+)s",
          "decode_ms": r"decode_first_stage completed, taking ([0-9.]+)s",
          "total_ms": r"generate_image completed in ([0-9.]+)s"}


def sdcpp_once(cmd, timeout):
    start = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "message": f"no result within {timeout} s"}, ""
    wall = time.perf_counter() - start
    log = p.stdout + p.stderr
    got = {}
    for key, rx in PHASES.items():
        m = re.findall(rx, log)
        if m:
            got[key] = float(m[-1]) * 1e3
    if p.returncode != 0 or len(got) != len(PHASES):
        tail = (log.strip().splitlines() or ["no output"])[-1]
        return {"status": "error", "message": f"exit {p.returncode}: {tail}"}, log
    got["process_ms"] = wall * 1e3
    return got, log


def measure_sdcpp(a, paths, dtype, log):
    out_png = os.path.join(os.path.dirname(paths["dit"]), "out.png")
    cmd = [a.sd_cli, "--diffusion-model", paths["dit"], "--vae", paths["vae"], "--llm",
           paths["llm"], "-p", PROMPT, "-n", "", "-H", "256", "-W", "256", "--steps", "4",
           "--cfg-scale", "4", "--sampling-method", "euler", "-s", "0", "-t", str(a.threads),
           "-o", out_png, "--eager-load", "-v"] + a.sd_args.split()
    samples = []
    for _ in range(a.repeats):
        got, text = sdcpp_once(cmd, a.timeout)
        if log:
            log.write(json.dumps({"cmd": cmd, "result": got}) + "\n")
            log.flush()
        if got.get("status"):
            if log:
                log.write(json.dumps({"stderr_of": "sd-cli", "log": text[-6000:]}) + "\n")
            return got
        samples.append(got)
        types = "; ".join(m.strip() for m in re.findall(r"Weight type stat:\s*(.*)", text))
    samples.sort(key=lambda s: s["total_ms"])
    med = samples[len(samples) // 2]
    return {"status": "ok", "impl": "sd.cpp", "dtype": dtype, "median_ms": med["total_ms"],
            "encode_ms": med["encode_ms"], "denoise_ms": med["denoise_ms"],
            "decode_ms": med["decode_ms"], "process_ms": med["process_ms"],
            "repeats": a.repeats, "weight_types": types}


PHASE_KEYS = ("encode_ms", "denoise_ms", "decode_ms")


def fmt_phases(r):
    if not r or r.get("status") != "ok":
        return "-"
    return " / ".join(f"{r[k] / 1e3:.2f}" for k in ("encode_ms", "denoise_ms", "decode_ms")) + " s"


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sd-cli", required=True)
    p.add_argument("--bench", default=os.path.join(ROOT, "build-release", "bench",
                                                   "pipeline_bench"))
    p.add_argument("--python", default=None, help="a Python with diffsynth: adds upstream")
    p.add_argument("--upstream-dtypes", default="f32",
                   help="the rows upstream runs in (under load its bf16 call took over 15 minutes)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--te-layers", type=int, default=2)
    p.add_argument("--dit-layers", type=int, default=2)
    p.add_argument("--dtypes", default="bf16")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--models", default="/tmp/sdcpp-models")
    p.add_argument("--sd-args", default="", help="extra sd-cli flags (e.g. --diffusion-fa)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per measurement")
    p.add_argument("--log", default=None)
    a = p.parse_args(argv)
    log = open(a.log, "a") if a.log else None
    tokenizer = os.path.join(ROOT, "tests", "data", "qwen_tokenizer")
    anchor = os.path.join(ROOT, "bench", "qwen_image", "upstream_anchor.py")
    print(f"bench/sdcpp: Qwen-Image pipeline, TE {a.te_layers}L, DiT {a.dit_layers}L, real VAE, "
          f"256x256, 4 steps, cfg 4, {a.threads} threads; best of {a.rounds} rounds "
          f"(ours, sd.cpp{', upstream' if a.python else ''} in turn) of median-of-{a.repeats}",
          flush=True)
    for dtype in a.dtypes.split(","):
        paths = write_models(a.models, a.te_layers, a.dit_layers, dtype)
        args = ["--backend", "cpu", "--threads", str(a.threads), "--dtype", dtype,
                "--te-layers", str(a.te_layers), "--dit-layers", str(a.dit_layers),
                "--height", "256", "--width", "256", "--steps", "4", "--cfg", "4",
                "--tokenizer", tokenizer, "--repeats", str(a.repeats)]
        sides = {"ours": lambda: run_one([a.bench] + args, a.timeout, log),
                 "sd.cpp": lambda: measure_sdcpp(a, paths, dtype, log)}
        if a.python and dtype in a.upstream_dtypes.split(","):
            sides["upstream"] = lambda: run_one([a.python, anchor] + args, a.timeout, log)
        kept = {k: None for k in sides}
        fastest = {k: {} for k in sides}  # each phase's fastest round, per side
        for r in range(a.rounds):
            for name, fn in sides.items():
                before = loadavg()
                res = fn()
                print(f"  round {r + 1} {name:<8} {fmt_ms(res):>12}  ({fmt_phases(res)})  "
                      f"load {before} -> {loadavg()}"
                      + ("" if res.get("status") == "ok" else f"  {res.get('message', '')}"),
                      flush=True)
                kept[name] = best(kept[name], res)
                if res.get("status") == "ok":
                    for k in PHASE_KEYS:
                        fastest[name][k] = min(fastest[name].get(k, res[k]), res[k])
        print(f"pipeline {dtype}: the fastest round's total (its encode / denoise / decode); "
              "each phase's fastest round", flush=True)
        for name, res in kept.items():
            each = fastest[name]
            print(f"  {name:<8} {fmt_ms(res):>12}  ({fmt_phases(res)}); "
                  f"{fmt_phases(dict(each, status='ok')) if each else '-'}", flush=True)
        if kept["sd.cpp"].get("weight_types"):
            print(f"  sd.cpp weight types: {kept['sd.cpp']['weight_types']}", flush=True)
        if kept["ours"].get("gemm"):
            print(f"  our GEMMs: {kept['ours']['gemm']}", flush=True)
        o = kept["ours"]
        for name in [k for k in kept if k != "ours"]:
            ref = kept[name]
            if o.get("status") == "ok" and ref.get("status") == "ok":
                f_o, f_r = fastest["ours"], fastest[name]
                print(f"  ours / {name}: total {o['median_ms'] / ref['median_ms']:.2f}; "
                      "fastest phases: " + ", ".join(f"{k[:-3]} {f_o[k] / f_r[k]:.2f}"
                                                     for k in PHASE_KEYS), flush=True)
    if log:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
