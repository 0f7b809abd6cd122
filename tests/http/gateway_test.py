#!/usr/bin/env python3
"""diffsynth-http over HTTP, with the Python standard library only.

Run by tests/http/test_http_gateway.c, which starts the daemon (diffsynthd-video-test: the
Qwen-Image pipeline on cut, sparse models; wan_video without models; test_video, which makes
clips without models; test_image, which gives its input image back at sides rounded up to
multiples of 32) and two gateways: OPEN (no key, --max-body 2 MiB, --max-jobs 3,
--require-model qwen_image_dit) and KEYED (--api-key KEY, --cors http://example.org).

usage: gateway_test.py PHASE OPEN_URL KEYED_URL KEY
  main      every endpoint, hostile inputs, the job limit, metrics, auth and CORS
  down      the daemon is stopped: liveness 200, readiness and work 503
  unloaded  the daemon is back without models: readiness 503 naming the model
  up        models loaded again: ready, and an image is made (the gateway reconnected)

PNG sizes are read from the IHDR chunk with struct and zlib here, and MP4 frame counts from the
sample size box, independently of the gateway's and the daemon's PNG and video code.
"""
import base64
import json
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib

FAILURES = []
QUICK = {"size": "64x64", "steps": 2, "cfg_scale": 1}


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what, flush=True)
    return cond


def finish():
    """Exits 1 after listing the failures, 0 when there were none."""
    if FAILURES:
        print(f"{len(FAILURES)} failures", flush=True)
        sys.exit(1)
    print("all passed", flush=True)


def request(base, method, path, body=None, headers=None, timeout=300):
    """(status, headers, bytes); never raises for an HTTP status."""
    data = None
    hdrs = dict(headers or {})
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif body is not None:
        data = body
    req = urllib.request.Request(base + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def jrequest(base, method, path, body=None, headers=None, timeout=300):
    status, hdrs, raw = request(base, method, path, body, headers, timeout)
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = None
        check(False, f"{method} {path}: reply is not JSON: {raw[:200]!r}")
    return status, hdrs, doc


def raw_exchange(base, data):
    """Sends raw bytes and reads one reply: (status, JSON body)."""
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the gateway may answer and close before taking everything
        reply = b""
        while True:
            try:
                more = sock.recv(65536)
            except OSError:
                break
            if not more:
                break
            reply += more
            head, sep, rest = reply.partition(b"\r\n\r\n")
            if sep:
                length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
                if length and len(rest) >= length[0]:
                    break
    head, _, rest = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else 0
    try:
        return status, json.loads(rest)
    except ValueError:
        return status, {"raw": rest[:200].decode(errors="replace")}


def png_size(data):
    """(width, height) from a PNG's signature and IHDR, its CRC checked."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    length, kind = struct.unpack(">I4s", data[8:16])
    if kind != b"IHDR" or length != 13:
        return None
    body = data[16:29]
    (crc,) = struct.unpack(">I", data[29:33])
    if zlib.crc32(kind + body) != crc:
        return None
    return struct.unpack(">II", body[:8])


def mp4_frames(data):
    """The sample count of the first track's stsz box (one sample per frame), or None."""
    def boxes(buf, start, end):
        while start + 8 <= end:
            size, kind = struct.unpack(">I4s", buf[start:start + 8])
            head = 8
            if size == 1:
                (size,) = struct.unpack(">Q", buf[start + 8:start + 16])
                head = 16
            elif size == 0:
                size = end - start
            if size < head or start + size > end:
                return
            yield kind, start + head, start + size
            start += size

    def find(buf, start, end, path):
        for kind, body, stop in boxes(buf, start, end):
            if kind == path[0]:
                if len(path) == 1:
                    return body, stop
                found = find(buf, body, stop, path[1:])
                if found:
                    return found
        return None

    if data[4:8] != b"ftyp":
        return None
    found = find(data, 0, len(data), [b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsz"])
    if not found or found[1] - found[0] < 12:
        return None
    return struct.unpack(">I", data[found[0] + 8:found[0] + 12])[0]


def make_png(width, height):
    """An RGB8 PNG written here: a gradient."""
    rows = b"".join(b"\x00" + b"".join(bytes((x * 5 % 256, y * 5 % 256, 128)) for x in range(width))
                    for y in range(height))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def multipart(fields, files):
    boundary = uuid.uuid4().hex
    out = b""
    for k, v in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").encode()
    for k, (name, data) in files.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"; filename=\"{name}\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def openai_error(status, doc, want_status, param, what):
    ok = check(status == want_status, f"{what}: status {status}, expected {want_status}: {doc}")
    err = doc.get("error") if isinstance(doc, dict) else None
    ok = check(isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"],
               f"{what}: not OpenAI's error shape: {doc}") and ok
    if param is not None and isinstance(err, dict):
        ok = check(err.get("param") == param, f"{what}: param {err.get('param')!r}, expected {param!r}: {doc}") and ok
    return ok


def still_well(base):
    status, _, doc = jrequest(base, "GET", "/healthz")
    check(status == 200 and doc == {"status": "ok"}, f"/healthz after hostile input: {status} {doc}")
    status, _, doc = jrequest(base, "GET", "/readyz")
    check(status == 200, f"/readyz after hostile input (the daemon): {status} {doc}")


def generate(base, **fields):
    body = dict(QUICK, prompt="a red bicycle", response_format="b64_json")
    body.update(fields)
    return jrequest(base, "POST", "/v1/images/generations", body)


# --- the main phase ------------------------------------------------------------------------------

def test_listings(base):
    status, _, doc = jrequest(base, "GET", "/healthz")
    check(status == 200 and doc == {"status": "ok"}, f"/healthz: {status} {doc}")
    status, _, doc = jrequest(base, "GET", "/readyz")
    check(status == 200 and doc.get("status") == "ready" and doc.get("models") == 3, f"/readyz: {status} {doc}")
    # OpenAI lists every model, the video pipelines too (POST /v1/videos takes them).
    status, _, doc = jrequest(base, "GET", "/v1/models")
    check(status == 200 and doc.get("object") == "list" and
          [m.get("id") for m in doc.get("data", [])] == ["qwen_image", "wan_video", "test_video", "test_image"] and
          all(m.get("object") == "model" for m in doc["data"]), f"/v1/models: {doc}")
    status, _, doc = jrequest(base, "GET", "/v1/pipelines")
    check(status == 200 and {x["id"]: x.get("video") for x in doc.get("data", [])} ==
          {"qwen_image": False, "wan_video": True, "test_video": True, "test_image": False},
          f"pipelines' video flags: {str(doc)[:400]}")
    check(status == 200 and {x["id"]: x.get("size_multiple") for x in doc.get("data", [])} ==
          {"qwen_image": 16, "wan_video": 32, "test_video": 0, "test_image": 32},
          f"pipelines' size multiples: {str(doc)[:400]}")
    p = doc["data"][0] if status == 200 and doc.get("data") else {}
    roles = {r["role"]: r for r in p.get("roles", [])}
    check(p.get("id") == "qwen_image" and set(roles) >= {"text_encoder", "dit", "vae"} and
          roles["dit"]["model_name"] == "qwen_image_dit" and len(roles["dit"]["loaded"]) == 1,
          f"/v1/pipelines: {status} {str(doc)[:400]}")
    params = {x["name"]: x for x in p.get("params", [])}
    check(params.get("steps", {}).get("default") == "30" and params["steps"]["min"] == 1, f"params: {params.get('steps')}")
    status, _, doc = jrequest(base, "GET", "/sdapi/v1/options")
    check(status == 200 and doc.get("sd_model_checkpoint") == "qwen_image", f"options: {doc}")
    # Open WebUI sets the checkpoint this way before generating.
    status, _, doc = jrequest(base, "POST", "/sdapi/v1/options", {"sd_model_checkpoint": "qwen_image", "CLIP_stop_at_last_layers": 2})
    check(status == 200 and doc is None, f"POST options: {status} {doc}")
    status, _, doc = jrequest(base, "POST", "/sdapi/v1/options", {"sd_model_checkpoint": "sdxl"})
    check(status == 422 and doc["detail"][0]["loc"] == ["body", "sd_model_checkpoint"], f"POST options sdxl: {status} {doc}")
    # A1111 is an image API: a checkpoint that makes clips is neither listed nor chosen.
    status, _, doc = jrequest(base, "POST", "/sdapi/v1/options", {"sd_model_checkpoint": "test_video"})
    check(status == 422 and doc["detail"][0]["loc"] == ["body", "sd_model_checkpoint"] and
          "test_video" in doc["detail"][0]["msg"] and "videos" in doc["detail"][0]["msg"],
          f"POST options test_video: {status} {doc}")
    status, _, doc = jrequest(base, "GET", "/sdapi/v1/options")
    check(status == 200 and doc.get("sd_model_checkpoint") == "qwen_image", f"options after refusal: {doc}")
    status, _, doc = jrequest(base, "GET", "/sdapi/v1/sd-models")
    check(status == 200 and isinstance(doc, list) and [m.get("title") for m in doc] == ["qwen_image", "test_image"] and
          doc[0]["model_name"] == "qwen_image", f"sd-models: {doc}")
    status, _, doc = jrequest(base, "GET", "/sdapi/v1/samplers")
    check(status == 200 and isinstance(doc, list) and doc[0].get("name"), f"samplers: {doc}")
    status, hdrs, raw = request(base, "GET", "/")
    check(status == 200 and hdrs.get("Content-Type", "").startswith("text/html") and b"<title>diffsynthd</title>" in raw,
          f"the page: {status} {hdrs.get('Content-Type')}")
    status, _, doc = jrequest(base, "GET", "/nope")
    openai_error(status, doc, 404, None, "unknown path")
    status, _, doc = jrequest(base, "DELETE", "/v1/models")
    openai_error(status, doc, 405, None, "wrong method")


def test_generations(base):
    status, _, doc = generate(base, n=2, seed=7)
    if not check(status == 200, f"generations: {status} {doc}"):
        return
    check(isinstance(doc.get("created"), int), f"created: {doc.get('created')}")
    data = doc.get("data", [])
    check(len(data) == 2, f"n=2 gave {len(data)} images")
    images = [base64.b64decode(d["b64_json"]) for d in data]
    for img in images:
        check(png_size(img) == (64, 64), f"PNG size {png_size(img)}, expected (64, 64)")
    check([d.get("seed") for d in data] == [7, 8], f"seeds {[d.get('seed') for d in data]}")
    # The same seed gives the same picture; the second image is seed + 1's.
    status, _, again = generate(base, seed=8)
    check(status == 200 and base64.b64decode(again["data"][0]["b64_json"]) == images[1],
          "seed 8 alone differs from the second image of seed 7, n=2")
    # Sizes round up to multiples of 16, as the pipeline does.
    status, _, doc = generate(base, size="40x24", seed=1)
    check(status == 200 and png_size(base64.b64decode(doc["data"][0]["b64_json"])) == (48, 32),
          f"size 40x24: {status} {str(doc)[:200]}")
    # Models chosen by id for a role: the loaded DiT by its id gives the same picture.
    status, _, doc = jrequest(base, "GET", "/v1/pipelines")
    dit = [r for r in doc["data"][0]["roles"] if r["role"] == "dit"][0]["loaded"][0]["id"]
    status, _, doc = generate(base, seed=8, models={"dit": dit})
    check(status == 200 and base64.b64decode(doc["data"][0]["b64_json"]) == images[1],
          f"models {{dit: {dit}}}: {status} {str(doc)[:200]}")
    status, _, doc = generate(base, seed=8, models={"dit": "m999"})
    check(status in (400, 404, 409) and "m999" in doc["error"]["message"], f"an unknown model id: {status} {doc}")
    # OpenAI's own model names mean the default pipeline; no output_format but png.
    status, _, doc = generate(base, model="dall-e-2", seed=1)
    check(status == 200, f"model dall-e-2: {status}")


def test_edits(base):
    body, headers = multipart({"prompt": "a blue bicycle", "size": "64x64", "steps": "2", "cfg_scale": "1",
                               "seed": "3", "response_format": "b64_json"},
                              {"image": ("in.png", make_png(48, 40))})
    status, _, doc = jrequest(base, "POST", "/v1/images/edits", body, headers)
    if check(status == 200, f"edits: {status} {doc}"):
        check(png_size(base64.b64decode(doc["data"][0]["b64_json"])) == (64, 64), "edit size")
    # Without a size, the picture's own size (rounded up to 16).
    body, headers = multipart({"prompt": "x", "steps": "2", "cfg_scale": "1"},
                              {"image": ("in.png", make_png(32, 48))})
    status, _, doc = jrequest(base, "POST", "/v1/images/edits", body, headers)
    check(status == 200 and png_size(base64.b64decode(doc["data"][0]["b64_json"])) == (32, 48),
          f"edit without size: {status} {str(doc)[:300]}")
    # test_image rounds its sides up to multiples of 32 and takes only a picture of that size:
    # 48 x 40 is resized to 64 x 64, the multiple it declares, not to 48 x 48.
    for fields in ({}, {"size": "48x40"}):
        body, headers = multipart(dict({"prompt": "x", "model": "test_image"}, **fields),
                                  {"image": ("in.png", make_png(48, 40))})
        status, _, doc = jrequest(base, "POST", "/v1/images/edits", body, headers)
        check(status == 200 and png_size(base64.b64decode(doc["data"][0]["b64_json"])) == (64, 64),
              f"edit with test_image {fields}: {status} {str(doc)[:300]}")


def test_a1111(base):
    body = {"prompt": "a cat", "negative_prompt": "dog", "width": 64, "height": 64, "steps": 2,
            "cfg_scale": 1, "seed": 5, "sampler_name": "Euler a", "batch_size": 2}
    status, _, doc = jrequest(base, "POST", "/sdapi/v1/txt2img", body)
    if check(status == 200, f"txt2img: {status} {doc}"):
        check(len(doc["images"]) == 2, "batch_size 2")
        for img in doc["images"]:
            check(png_size(base64.b64decode(img)) == (64, 64), "txt2img PNG size")
        info = json.loads(doc["info"])
        check(info["seed"] == 5 and info["all_seeds"] == [5, 6] and info["width"] == 64, f"info: {info}")
        check(doc["parameters"]["prompt"] == "a cat", f"parameters: {doc['parameters']}")
    init = "data:image/png;base64," + base64.b64encode(make_png(64, 64)).decode()
    body = {"prompt": "a cat", "init_images": [init], "denoising_strength": 0.5, "width": 64, "height": 64,
            "steps": 4, "cfg_scale": 1, "seed": 5}
    status, _, doc = jrequest(base, "POST", "/sdapi/v1/img2img", body)
    check(status == 200 and png_size(base64.b64decode(doc["images"][0])) == (64, 64),
          f"img2img: {status} {str(doc)[:300]}")


def test_progress_and_interrupt(base):
    """A long txt2img: /progress moves, /interrupt ends it with what was made (nothing yet)."""
    result = {}

    def run():
        result["reply"] = jrequest(base, "POST", "/sdapi/v1/txt2img",
                                   {"prompt": "long", "width": 64, "height": 64, "steps": 1000, "cfg_scale": 1})

    t = threading.Thread(target=run)
    t.start()
    seen = []
    deadline = time.time() + 120
    while time.time() < deadline and len(seen) < 3:
        status, _, doc = jrequest(base, "GET", "/sdapi/v1/progress")
        if status == 200 and doc["state"]["sampling_step"] > 0 and doc["state"]["job_count"] == 1:
            if not seen or doc["state"]["sampling_step"] > seen[-1]["state"]["sampling_step"]:
                seen.append(doc)
        time.sleep(0.05)
    check(len(seen) >= 3, f"progress did not move: {seen}")
    if seen:
        check(seen[-1]["progress"] >= seen[0]["progress"] > 0 and seen[-1]["state"]["sampling_steps"] == 1000,
              f"progress: {seen[0]} .. {seen[-1]}")
    status, _, doc = jrequest(base, "POST", "/sdapi/v1/interrupt")
    check(status == 200, f"interrupt: {status} {doc}")
    t.join(120)
    status, _, doc = result.get("reply", (0, None, None))
    check(status == 200 and doc["images"] == [] and json.loads(doc["info"])["interrupted"] is True,
          f"interrupted txt2img: {status} {str(doc)[:300]}")
    status, _, doc = jrequest(base, "GET", "/sdapi/v1/progress")
    check(status == 200 and doc["state"]["job_count"] == 0 and doc["state"]["interrupted"] is True,
          f"progress after interrupt: {doc}")


def read_events(base, job_id, on_event=None, timeout=300):
    """The SSE stream of a job as [(event, data)], until the stream ends."""
    req = urllib.request.Request(f"{base}/v1/jobs/{job_id}/events")
    events = []
    with urllib.request.urlopen(req, timeout=timeout) as r:
        check(r.headers.get("Content-Type") == "text/event-stream", f"SSE type {r.headers.get('Content-Type')}")
        event, data = None, None
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and event:
                events.append((event, data))
                if on_event:
                    on_event(event, data)
                event, data = None, None
    return events


def wait_job(base, job_id, timeout=300):
    """The job once finished (its SSE stream ended)."""
    read_events(base, job_id, timeout=timeout)
    return jrequest(base, "GET", f"/v1/jobs/{job_id}")[2]


def test_jobs_and_events(base):
    """An image pipeline's job through /v1/jobs: SSE progress, content, listing, delete, cancel."""
    status, _, job = jrequest(base, "POST", "/v1/jobs",
                              {"prompt": "a wave", "size": "64x64", "steps": 6, "cfg_scale": 1, "seed": 2})
    if not check(status == 200 and job.get("status") in ("queued", "in_progress") and job["id"].startswith("img_") and
                 job.get("model") == "qwen_image" and job.get("object") == "image.job",
                 f"POST /v1/jobs: {status} {job}"):
        return
    events = read_events(base, job["id"])
    kinds = [e for e, _ in events]
    check(kinds and kinds[-1] == "completed" and all(k == "progress" for k in kinds[:-1]), f"events {kinds}")
    progress = [d["progress"] for e, d in events]
    check(progress == sorted(progress) and progress[-1] == 100, f"progress not monotonic: {progress}")
    check(any(d["phase"] == "denoise" for _, d in events), "no denoise events")
    status, _, doc = jrequest(base, "GET", f"/v1/videos/{job['id']}")
    check(status == 200 and doc["status"] == "completed" and doc["progress"] == 100 and doc["completed_at"],
          f"GET video: {doc}")
    status, hdrs, data = request(base, "GET", f"/v1/jobs/{job['id']}/content")
    check(status == 200 and hdrs.get("Content-Type") == "image/png" and png_size(data) == (64, 64),
          f"content: {status} {hdrs.get('Content-Type')}")
    status, _, doc = jrequest(base, "GET", "/v1/jobs")
    check(status == 200 and any(j["id"] == job["id"] for j in doc["data"]), "job missing from /v1/jobs")
    status, _, doc = jrequest(base, "DELETE", f"/v1/videos/{job['id']}")
    check(status == 200 and doc == {"id": job["id"], "object": "video.deleted", "deleted": True}, f"DELETE: {doc}")
    status, _, doc = jrequest(base, "GET", f"/v1/videos/{job['id']}")
    openai_error(status, doc, 404, None, "a deleted job")

    # DELETE of a running job cancels it on the daemon; its stream ends with "cancelled".
    status, _, job = jrequest(base, "POST", "/v1/jobs",
                              {"prompt": "long", "size": "64x64", "steps": 1000, "cfg_scale": 1})
    if not check(status == 200, f"POST long job: {status} {job}"):
        return
    denoise = []

    def on_event(event, data):
        if event == "progress" and data["phase"] == "denoise":
            denoise.append(data["done"])
            if len(denoise) == 3:
                jrequest(base, "DELETE", f"/v1/videos/{job['id']}")

    events = read_events(base, job["id"], on_event)
    check(events and events[-1][0] == "cancelled" and events[-1][1]["status"] == "cancelled" and
          events[-1][1]["error"]["code"] == "cancelled", f"cancelled stream ends with {events[-1:]}")
    check(len(denoise) >= 3 and denoise[-1] < 1000, f"denoise steps seen {denoise[:5]}..")
    # An image job's events, through its id in /v1/jobs.
    status, _, doc = jrequest(base, "GET", "/v1/jobs")
    img = [j for j in doc["data"] if j["kind"] == "image" and j["status"] == "completed"]
    if check(img, "no finished image job listed"):
        events = read_events(base, img[0]["id"])
        check([e for e, _ in events] == ["completed"], f"a finished job's stream: {events}")


def test_videos(base):
    """POST /v1/videos runs video pipelines only: the first one when none is named, seconds as
    num_frames where the pipeline takes it; the image APIs refuse video pipelines."""
    # No model (or OpenAI's own): the first video pipeline, not the daemon's first pipeline.
    # wan_video has no models loaded here, so its job fails, but it is the one chosen.
    for extra in ({}, {"model": "sora-2"}):
        status, _, job = jrequest(base, "POST", "/v1/videos", dict({"prompt": "a wave", "size": "64x64"}, **extra))
        if check(status == 200 and job.get("model") == "wan_video" and job.get("object") == "video" and
                 job["id"].startswith("video_"), f"POST /v1/videos {extra}: {status} {job}"):
            done = wait_job(base, job["id"])
            check(done["status"] == "failed" and done["error"]["message"], f"wan_video without models: {done}")
    # A named clip, 1 s: 15 frames at the daemon's 15 fps, as an MP4.
    status, _, job = jrequest(base, "POST", "/v1/videos",
                              {"prompt": "a wave", "model": "test_video", "size": "64x48", "seconds": "1", "steps": 3})
    if check(status == 200 and job.get("model") == "test_video" and job.get("object") == "video",
             f"POST /v1/videos test_video: {status} {job}"):
        done = wait_job(base, job["id"])
        message = (done.get("error") or {}).get("message", "")
        if done["status"] == "failed" and "cannot write MP4" in message:
            print("   (this daemon writes no MP4: the frame count is not checked)", flush=True)
        else:
            status, hdrs, data = request(base, "GET", f"/v1/videos/{job['id']}/content")
            check(done["status"] == "completed" and status == 200 and hdrs.get("Content-Type") == "video/mp4" and
                  mp4_frames(data) == 15, f"clip: {done} {status} {hdrs.get('Content-Type')} "
                  f"{mp4_frames(data) if status == 200 else None} frames")
    cases = [
        ("/v1/videos", {"prompt": "x", "model": "qwen_image"}, "model", "qwen_image"),
        ("/v1/videos", {"prompt": "x", "model": "test_video", "seconds": "10"}, "seconds", "64"),
        ("/v1/videos", {"prompt": "x", "model": "nope"}, "model", "nope"),
        # /v1/jobs runs any pipeline; seconds only where it has num_frames.
        ("/v1/jobs", {"prompt": "x", "seconds": "2"}, "seconds", "num_frames"),
        ("/v1/images/generations", {"prompt": "x", "model": "test_video"}, "model", "test_video"),
        ("/v1/images/generations", {"prompt": "x", "model": "wan_video"}, "model", "wan_video"),
    ]
    for path, body, param, said in cases:
        status, _, doc = jrequest(base, "POST", path, body)
        if openai_error(status, doc, 400, param, f"{path} {body}"):
            check(said in doc["error"]["message"], f"{path} {body}: the message does not say {said!r}: {doc}")
    body, headers = multipart({"prompt": "x", "model": "test_video"}, {"image": ("in.png", make_png(16, 16))})
    status, _, doc = jrequest(base, "POST", "/v1/images/edits", body, headers)
    openai_error(status, doc, 400, "model", "an edit naming test_video")
    init = base64.b64encode(make_png(16, 16)).decode()
    for path, extra in (("/sdapi/v1/txt2img", {}), ("/sdapi/v1/img2img", {"init_images": [init]})):
        body = dict({"prompt": "x", "override_settings": {"sd_model_checkpoint": "wan_video"}}, **extra)
        status, _, doc = jrequest(base, "POST", path, body)
        check(status == 422 and doc["detail"][0]["loc"] == ["body", "sd_model_checkpoint"] and
              "wan_video" in doc["detail"][0]["msg"], f"{path} naming wan_video: {status} {doc}")


def test_hostile(base):
    # Announced over the cap: answered from the headers, before any of the body is read.
    status, doc = raw_exchange(base, b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Type: application/json\r\nContent-Length: 3145728\r\n\r\n")
    openai_error(status, doc, 413, None, "a body announced over --max-body")
    # Chunked, with no length: read up to the cap, the rest discarded, then answered.
    chunk = b"{\"prompt\": \"" + b"x" * (1 << 20)
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (chunk, chunk, chunk, b"\"}")) + b"0\r\n\r\n"
    status, doc = raw_exchange(base, b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    openai_error(status, doc, 413, None, "a chunked body over --max-body")
    status, _, doc = jrequest(base, "POST", "/v1/images/generations", b"{not json", {"Content-Type": "application/json"})
    openai_error(status, doc, 400, None, "bad JSON")
    status, _, doc = jrequest(base, "POST", "/v1/images/generations", [1, 2])
    openai_error(status, doc, 400, None, "a JSON array")
    status, _, doc = jrequest(base, "POST", "/v1/images/generations", b"[" * 100000 + b"]" * 100000,
                              {"Content-Type": "application/json"})
    openai_error(status, doc, 400, None, "deeply nested JSON")
    status, _, doc = jrequest(base, "POST", "/v1/images/generations", b"{\"prompt\": \"\xff\xfe\"}",
                              {"Content-Type": "application/json"})
    openai_error(status, doc, 400, None, "invalid UTF-8")
    cases = [
        ({"n": 2}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x", "n": "two"}, "n"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": 1000}, "n"),
        ({"prompt": "x", "size": "huge"}, "size"),
        ({"prompt": "x", "size": "64x"}, "size"),
        ({"prompt": "x", "size": "100000x100000"}, "size"),
        ({"prompt": "x", "size": "99999999999999999999x4"}, "size"),
        ({"prompt": "x", "size": 64}, "size"),
        ({"prompt": "x", "steps": -1}, "steps"),
        ({"prompt": "x", "steps": 1.5}, "steps"),
        ({"prompt": "x", "steps": 100000}, "steps"),
        ({"prompt": "x", "cfg_scale": "high"}, "cfg_scale"),
        ({"prompt": "x", "seed": -3}, "seed"),
        ({"prompt": "x", "seed": {"a": 1}}, "seed"),
        ({"prompt": "x", "negative_prompt": []}, "negative_prompt"),
        ({"prompt": "x", "model": "flux"}, "model"),
        ({"prompt": "x", "response_format": "url"}, "response_format"),
        ({"prompt": "x", "output_format": "jpeg"}, "output_format"),
        ({"prompt": "x", "models": "m1"}, "models"),
        ({"prompt": "x", "models": {"unet": "m1"}}, "models"),
        ({"prompt": "x", "models": {"dit": 5}}, "models"),
        ({"prompt": "x\u0000y"}, None),  # jansson refuses NUL in strings: bad JSON
    ]
    for body, param in cases:
        status, _, doc = jrequest(base, "POST", "/v1/images/generations", body)
        openai_error(status, doc, 400, param, f"generations {body}")
    # Multipart edits: no image, a file that is no PNG, a mask, a broken body.
    body, headers = multipart({"prompt": "x"}, {})
    status, _, doc = jrequest(base, "POST", "/v1/images/edits", body, headers)
    openai_error(status, doc, 400, "image", "edit without image")
    body, headers = multipart({"prompt": "x"}, {"image": ("a.png", b"GIF89a not a png")})
    status, _, doc = jrequest(base, "POST", "/v1/images/edits", body, headers)
    openai_error(status, doc, 400, "image", "edit with a non-PNG")
    body, headers = multipart({"prompt": "x", "n": "many"}, {"image": ("a.png", make_png(16, 16))})
    status, _, doc = jrequest(base, "POST", "/v1/images/edits", body, headers)
    openai_error(status, doc, 400, "n", "edit with n=many")
    status, _, doc = jrequest(base, "POST", "/v1/images/edits", {"prompt": "x"})
    openai_error(status, doc, 400, None, "edit as JSON")
    status, _, doc = jrequest(base, "POST", "/v1/images/edits", b"--zz\r\ngarbage",
                              {"Content-Type": "multipart/form-data; boundary=zz"})
    check(status == 400, f"a broken multipart body: {status} {doc}")
    # A PNG whose header claims a huge canvas.
    bomb = make_png(16, 16)
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    bomb = bomb[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + bomb[33:]
    body, headers = multipart({"prompt": "x"}, {"image": ("a.png", bomb)})
    status, _, doc = jrequest(base, "POST", "/v1/images/edits", body, headers)
    openai_error(status, doc, 400, "image", "a PNG claiming 60000 x 60000")
    # AUTOMATIC1111's shape: FastAPI's detail, naming the field.
    a1111 = [
        ({"prompt": "x", "steps": "many"}, "steps"),
        ({"prompt": "x", "width": -5}, "width"),
        ({"prompt": "x", "width": 100000, "height": 64}, "width"),
        ({"prompt": "x", "cfg_scale": None, "seed": "s"}, "seed"),
        ({"prompt": "x", "batch_size": 8, "n_iter": 8}, "batch_size"),
        ({"prompt": "x", "override_settings": {"sd_model_checkpoint": "sdxl"}}, "sd_model_checkpoint"),
    ]
    for body, param in a1111:
        status, _, doc = jrequest(base, "POST", "/sdapi/v1/txt2img", body)
        check(status == 422 and isinstance(doc.get("detail"), list) and doc["detail"][0]["loc"] == ["body", param],
              f"txt2img {body}: {status} {doc}")
    status, _, doc = jrequest(base, "POST", "/sdapi/v1/txt2img", b"nope", {"Content-Type": "application/json"})
    check(status == 400 and isinstance(doc.get("detail"), str), f"txt2img bad JSON: {status} {doc}")
    for init in (["!!!notbase64"], [], [7], "x"):
        status, _, doc = jrequest(base, "POST", "/sdapi/v1/img2img", {"prompt": "x", "init_images": init})
        check(status == 422 and doc["detail"][0]["loc"] == ["body", "init_images"], f"img2img {init}: {status} {doc}")
    status, _, doc = jrequest(base, "GET", "/v1/videos/video_doesnotexist")
    openai_error(status, doc, 404, None, "an unknown job")
    status, _, doc = jrequest(base, "GET", "/v1/videos/..%2f..%2fetc")
    check(status == 404, f"a path-like id: {status}")
    status, _, doc = jrequest(base, "POST", "/v1/videos", {"prompt": "x", "seconds": "forever"})
    openai_error(status, doc, 400, "seconds", "videos with seconds=forever")
    still_well(base)


def test_job_limit(base):
    """Eight requests at once against --max-jobs 3: some 429 with Retry-After, the others whole."""
    replies = []
    lock = threading.Lock()

    def one(i):
        r = generate(base, seed=100 + i, steps=6)
        with lock:
            replies.append(r)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    ok = [r for r in replies if r[0] == 200]
    limited = [r for r in replies if r[0] == 429]
    check(len(ok) + len(limited) == 8, f"statuses {[r[0] for r in replies]}")
    check(len(limited) >= 1 and len(ok) >= 3, f"{len(ok)} ok, {len(limited)} limited")
    for status, hdrs, doc in limited:
        check(hdrs.get("Retry-After", "").isdigit(), f"429 without Retry-After: {dict(hdrs)}")
        check(doc["error"]["code"] == "rate_limit_exceeded", f"429 body {doc}")
    for status, hdrs, doc in ok:
        check(png_size(base64.b64decode(doc["data"][0]["b64_json"])) == (64, 64), "PNG under load")


def test_metrics(base):
    status, hdrs, raw = request(base, "GET", "/metrics")
    text = raw.decode()
    check(status == 200 and hdrs.get("Content-Type", "").startswith("text/plain"), f"/metrics {status}")
    want = [
        'diffsynth_http_requests_total{route="/v1/images/generations",status="200"} ',
        'diffsynth_http_requests_total{route="/v1/images/generations",status="400"} ',
        'diffsynth_http_requests_total{route="/v1/images/generations",status="429"} ',
        'diffsynth_http_job_duration_seconds_bucket{outcome="completed",le="+Inf"} ',
        'diffsynth_http_job_duration_seconds_count{outcome="cancelled"} ',
        "diffsynth_http_denoise_steps_total ",
        "diffsynth_daemon_up 1",
        "diffsynth_daemon_models 3",
        'diffsynth_daemon_jobs{state="queued"} ',
        'diffsynth_daemon_memory_bytes{tier="disk"} ',
    ]
    for w in want:
        check(w in text, f"/metrics lacks {w!r}")
    # Every sample line is NAME{labels} VALUE, and counters only grow.
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                float(value)
            except ValueError:
                check(False, f"metrics line {line!r}")
    count = [l for l in text.splitlines() if l.startswith('diffsynth_http_job_duration_seconds_count{outcome="completed"}')]
    check(count and int(count[0].split()[-1]) >= 10, f"completed jobs counted: {count}")


def test_auth_and_cors(keyed, key):
    status, hdrs, doc = jrequest(keyed, "GET", "/v1/models")
    openai_error(status, doc, 401, None, "no key")
    status, _, doc = jrequest(keyed, "GET", "/v1/models", headers={"Authorization": "Bearer wrong"})
    openai_error(status, doc, 401, None, "a wrong key")
    status, _, doc = jrequest(keyed, "GET", "/v1/models", headers={"Authorization": "Bearer " + key[:-1]})
    openai_error(status, doc, 401, None, "a key's prefix")
    status, _, doc = jrequest(keyed, "GET", "/sdapi/v1/options")
    check(status == 401 and isinstance(doc.get("detail"), str), f"A1111 without key: {status} {doc}")
    status, hdrs, doc = jrequest(keyed, "GET", "/v1/models", headers={"Authorization": "Bearer " + key,
                                                                      "Origin": "http://example.org"})
    check(status == 200 and hdrs.get("Access-Control-Allow-Origin") == "http://example.org",
          f"with the key: {status} {dict(hdrs)}")
    status, _, _ = jrequest(keyed, "GET", "/healthz")
    check(status == 200, "/healthz needs no key")
    status, _, _ = request(keyed, "GET", "/")
    check(status == 200, "the page needs no key")
    status, _, doc = jrequest(keyed, "POST", "/v1/jobs", {"prompt": "x"})
    openai_error(status, doc, 401, None, "a job without the key")
    status, hdrs, _ = request(keyed, "OPTIONS", "/v1/images/generations",
                              headers={"Origin": "http://example.org", "Access-Control-Request-Method": "POST"})
    check(status == 204 and hdrs.get("Access-Control-Allow-Origin") == "http://example.org" and
          "Authorization" in hdrs.get("Access-Control-Allow-Headers", ""), f"preflight: {status} {dict(hdrs)}")


def test_no_cors_by_default(base):
    status, hdrs, _ = request(base, "GET", "/v1/models", headers={"Origin": "http://example.org"})
    check(status == 200 and "Access-Control-Allow-Origin" not in hdrs, f"CORS headers without --cors: {dict(hdrs)}")


def main():
    phase, base, keyed, key = sys.argv[1:5]
    if phase == "main":
        for test in (test_listings, test_generations, test_edits, test_a1111, test_progress_and_interrupt,
                     test_jobs_and_events, test_videos, test_hostile, test_job_limit, test_no_cors_by_default, test_metrics):
            print("==", test.__name__, flush=True)
            started = time.time()
            test(base)
            print(f"   {time.time() - started:.1f} s", flush=True)
        print("== test_auth_and_cors", flush=True)
        test_auth_and_cors(keyed, key)
    elif phase == "down":
        status, _, doc = jrequest(base, "GET", "/healthz")
        check(status == 200, f"/healthz with the daemon down: {status}")
        status, hdrs, doc = jrequest(base, "GET", "/readyz")
        check(status == 503 and "not answering" in doc.get("reason", ""), f"/readyz with the daemon down: {status} {doc}")
        status, hdrs, doc = generate(base, seed=1)
        openai_error(status, doc, 503, None, "generations with the daemon down")
        check(hdrs.get("Retry-After", "").isdigit(), "503 without Retry-After")
        status, _, doc = jrequest(base, "POST", "/sdapi/v1/txt2img", {"prompt": "x"})
        check(status == 503 and isinstance(doc.get("detail"), str), f"txt2img with the daemon down: {status} {doc}")
        status, _, raw = request(base, "GET", "/metrics")
        check(status == 200 and b"diffsynth_daemon_up 0" in raw, "/metrics with the daemon down")
    elif phase == "unloaded":
        status, _, doc = jrequest(base, "GET", "/readyz")
        check(status == 503 and "qwen_image_dit" in doc.get("reason", ""), f"/readyz without models: {status} {doc}")
        status, _, doc = generate(base, seed=1)
        check(status in (404, 409, 400) and "error" in doc, f"generations without models: {status} {doc}")
    elif phase == "up":
        status, _, doc = jrequest(base, "GET", "/readyz")
        check(status == 200, f"/readyz after the restart: {status} {doc}")
        status, _, doc = generate(base, seed=1)
        check(status == 200 and png_size(base64.b64decode(doc["data"][0]["b64_json"])) == (64, 64),
              f"generations after the restart: {status} {str(doc)[:300]}")
    else:
        sys.exit(f"unknown phase {phase}")
    finish()


if __name__ == "__main__":
    main()
