#!/usr/bin/env python3
"""diffsynth-http driven by clients nobody here wrote: the official `openai` package and
`webuiapi` (an AUTOMATIC1111 client), installed from PyPI into a private venv under the build
folder ($DS_BUILD_ROOT/http-clients-venv, with selenium for page_test.py). Exit 77 (skipped)
when they cannot be installed.

Run by tests/http/test_http_gateway.c --clients, which starts the daemon and two gateways:
usage: clients_test.py clients OPEN_URL KEYED_URL KEY
"""
import io
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gateway_test import check, finish  # noqa: E402

# One venv for the client tests and the page test (selenium).
PACKAGES = ["openai>=1.40", "webuiapi>=0.9.10", "selenium>=4.10"]


def ensure_venv():
    """The venv's python, with the packages; exits 77 saying why when it cannot be made."""
    root = os.environ.get("DS_BUILD_ROOT") or os.path.dirname(os.path.abspath(__file__))
    venv = os.path.join(root, "http-clients-venv")
    python = os.path.join(venv, "bin", "python")
    marker = os.path.join(venv, ".installed")
    if os.path.exists(marker) and open(marker).read() == repr(PACKAGES):
        return python
    steps = [[sys.executable, "-m", "venv", "--clear", venv],
             [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PACKAGES]]
    for cmd in steps:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            print(f"SKIP: {' '.join(cmd[:4])}: {e}", flush=True)
            sys.exit(77)
        if r.returncode != 0:
            print(f"SKIP: cannot install {PACKAGES} from PyPI into {venv} "
                  f"({' '.join(cmd[:4])} exited {r.returncode}):\n{r.stderr[-2000:]}", flush=True)
            sys.exit(77)
    with open(marker, "w") as f:
        f.write(repr(PACKAGES))
    return python


def png(width, height):
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 60)).save(buf, format="PNG")
    return buf.getvalue()


def decode(b64):
    import base64
    from PIL import Image
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_openai(keyed, key):
    import openai
    client = openai.OpenAI(base_url=keyed + "/v1", api_key=key, max_retries=0, timeout=300)
    quick = {"steps": 2, "cfg_scale": 1, "seed": 11}
    models = client.models.list()
    check(any(m.id == "qwen_image" for m in models.data), f"models.list: {models}")
    r = client.images.generate(model="qwen_image", prompt="a lighthouse", size="64x64", n=2,
                               response_format="b64_json", extra_body=quick)
    check(len(r.data) == 2, f"images.generate n=2 gave {len(r.data)}")
    for d in r.data:
        img = decode(d.b64_json)
        check(img.format == "PNG" and img.size == (64, 64), f"generate: {img.format} {img.size}")
    r = client.images.edit(image=("in.png", png(40, 40), "image/png"), prompt="a lighthouse at night",
                           size="64x64", response_format="b64_json", extra_body=quick)
    img = decode(r.data[0].b64_json)
    check(img.format == "PNG" and img.size == (64, 64), f"edit: {img.format} {img.size}")
    # The SDK raises its own error types from the gateway's error shape.
    try:
        client.images.generate(prompt="x", size="huge", response_format="b64_json")
        check(False, "size=huge was accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.body.get("param") == "size", f"BadRequestError: {e.body}")
    bad = openai.OpenAI(base_url=keyed + "/v1", api_key="wrong", max_retries=0)
    try:
        bad.models.list()
        check(False, "a wrong key was accepted")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, f"AuthenticationError: {e}")


def test_webuiapi(base):
    import webuiapi
    host, port = base.split("//")[1].split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port))
    # One model name per image pipeline: wan_video makes clips, which A1111 clients cannot take.
    names = api.util_get_model_names()
    check(names == ["qwen_image"], f"model names {names}")
    check(len(api.get_samplers()) >= 1, "samplers")
    r = api.txt2img(prompt="a red fox", negative_prompt="blurry", width=64, height=64, steps=2,
                    cfg_scale=1, seed=4)
    check(len(r.images) == 1 and r.image.size == (64, 64), f"txt2img: {r.images}")
    check(r.info.get("seed") == 4, f"txt2img info: {r.info}")
    r = api.img2img(images=[r.image], prompt="a red fox in snow", width=64, height=64, steps=4,
                    cfg_scale=1, seed=4, denoising_strength=0.5)
    check(len(r.images) == 1 and r.image.size == (64, 64), f"img2img: {r.images}")
    # progress while a long txt2img runs, then interrupt.
    done = {}
    t = threading.Thread(target=lambda: done.update(
        r=api.txt2img(prompt="long", width=64, height=64, steps=1000, cfg_scale=1)))
    t.start()
    seen = []
    deadline = time.time() + 120
    while time.time() < deadline and len(seen) < 3:
        p = api.get_progress()
        if p["state"]["job_count"] == 1 and p["progress"] > 0 and (not seen or p["progress"] > seen[-1]):
            seen.append(p["progress"])
        time.sleep(0.05)
    check(len(seen) >= 3, f"get_progress did not move: {seen}")
    api.interrupt()
    t.join(120)
    check("r" in done and done["r"].info.get("interrupted") is True, f"interrupted txt2img: {done}")


def main():
    phase, base, keyed, key = sys.argv[1:5]
    if phase == "clients":
        python = ensure_venv()
        os.execv(python, [python, os.path.abspath(__file__), "inner", base, keyed, key])
    print("== openai", flush=True)
    test_openai(keyed, key)
    print("== webuiapi", flush=True)
    test_webuiapi(base)
    finish()


if __name__ == "__main__":
    main()
