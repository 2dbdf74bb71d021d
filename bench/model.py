"""model/ benchmark against diffusers, on the same weights and inputs, in one run.

    .venv/bin/python bench/model.py [--reps 5] [--quick] [--skip-vae] [--skip-2b] [--bound] [--compile]

1. Transformer training step (forward + backward of an MSE on the output), head dim 64: our
   ExpertTransformer vs diffusers' CogVideoXTransformer3DModel (+ the pipeline's RoPE), for the sin-cos
   (2b) and RoPE (5b) variants: step time and peak memory.
2. VAE encode + decode of a 49-frame clip (64x64 on CPU, 480x720 on GPU): our chunked, streamed CausalVAE
   vs diffusers' AutoencoderKLCogVideoX with its defaults, same weights; time, peak memory, and the
   largest difference between the two reconstructions ("equal output").
3. GPU only: a bf16 training step of the full 2b transformer at 49x480x720 (17,550 video tokens + 226
   text): tokens/s and MFU, ours vs diffusers.

Timing: both sides run alternately (warm-up first); on CPU the process CPU time is reported next to
wall time because the development machines are shared (CPU time is what a loaded machine does not
distort). Peak memory is the peak of tensor bytes allocated during the call above what was live before
it: torch.cuda.max_memory_allocated on CUDA, the profiler's allocator events on CPU (each carries the
allocator's running total; RSS is no measure there, glibc keeps freed blocks resident and reuses them),
each in a fresh process: only the first profiled call of a process gets the totals right.
For the training step each call starts with zero_grad(set_to_none=True), as a training loop does, so
the peak is that of activations + transient buffers + the weight gradients allocated so far in
backward (the same gradients on both sides; where in backward the peak falls decides how many count).
"ours" is the default model (model/lean.py's autograd pieces: AdaLN + q/k/v and AdaLN + FFN save only
their inputs and fc1's pre-activation), "ours-keep" keeps everything autograd saves.

--bound: the same rounds also time the matmuls, convolutions and attention kernels (forward and
backward) that each step calls, recorded from one step and replayed alone with the same arguments (same
shapes, strides, kernels): no eager implementation doing those FLOPs with those kernels is faster. It
prints diffusers' step / our kernels (the highest speed ratio any eager step with our FLOPs could reach)
and each step / its own kernels (the overhead above them).
--compile: torch.compile each of our blocks (both policies) after the eager checks (the kernels of --bound
are the eager ones); the warm-up round compiles.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402

# -- shapes -----------------------------------------------------------------------------------------------
# Transformer at real head dim: 8 heads x 64, 2 blocks, T5-XXL-wide text (226 x 4096), 13 latent frames
# of 16x16 latents (a 49 x 128 x 128 clip): 832 video + 226 text tokens.
TRANSFORMER_CPU = dict(num_attention_heads=8, attention_head_dim=64, num_layers=2, in_channels=16, out_channels=16,
                       time_embed_dim=512, text_embed_dim=4096, max_text_seq_length=226, sample_height=16,
                       sample_width=16, sample_frames=49)
LATENTS_CPU = (1, 13, 16, 16, 16)
QUICK_LATENTS = (1, 5, 16, 16, 16)
# VAE with tiny-ish widths (the real one is 128/256/256/512) so a 49-frame clip runs on a laptop CPU.
VAE_CPU = dict(block_out_channels=(32, 64, 64, 64), latent_channels=16, layers_per_block=2, norm_num_groups=16,
               sample_height=64, sample_width=64)
CLIP_CPU = (1, 3, 49, 64, 64)
VAE_GPU = dict()  # the published 2b VAE shape
CLIP_GPU = (1, 3, 49, 480, 720)

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12}


# -- builders (deterministic: same weights and inputs on both sides) -------------------------------------
def build_transformers(kw: dict, device: str, dtype=torch.float32):
    from diffusers import CogVideoXTransformer3DModel

    from model.convert import load_diffusers_transformer, transformer_config_from_diffusers

    torch.manual_seed(0)
    ref = CogVideoXTransformer3DModel(**kw).to(device=device, dtype=dtype)
    ours = load_diffusers_transformer(ref.state_dict(), transformer_config_from_diffusers(dict(ref.config)))
    return ref, ours.to(device=device, dtype=dtype)


def transformer_inputs(kw: dict, latents_shape, device: str, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(latents_shape, generator=g).to(device, dtype)
    text = torch.randn(latents_shape[0], kw["max_text_seq_length"], kw["text_embed_dim"], generator=g).to(device, dtype)
    t = torch.randint(0, 1000, (latents_shape[0],), generator=g).to(device)
    return x, text, t


def diffusers_rope(ref, frames: int, height: int, width: int, device):
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    c = ref.config
    if not c.use_rotary_positional_embeddings:
        return None
    gh, gw = height // c.patch_size, width // c.patch_size
    crops = get_resize_crop_region_for_grid((gh, gw), c.sample_width // c.patch_size, c.sample_height // c.patch_size)
    return get_3d_rotary_pos_embed(c.attention_head_dim, crops, (gh, gw), frames, device=device)


def train_steps(ref, ours, x, text, t):
    """The two training-step closures (forward, MSE, backward), diffusers first."""
    rope = diffusers_rope(ref, x.shape[1], x.shape[3], x.shape[4], x.device)

    def step_ref():
        ref.zero_grad(set_to_none=True)
        out = ref(x, text, t, image_rotary_emb=rope, return_dict=False)[0]
        out.float().square().mean().backward()
        return out.detach()

    def step_ours():
        ours.zero_grad(set_to_none=True)
        out = ours(x, text, t)
        out.float().square().mean().backward()
        return out.detach()

    return step_ref, step_ours


def build_vaes(kw: dict, device: str):
    from diffusers import AutoencoderKLCogVideoX

    from model.convert import load_diffusers_vae, vae_config_from_diffusers

    torch.manual_seed(0)
    ref = AutoencoderKLCogVideoX(**kw).to(device).eval()
    ours = load_diffusers_vae(ref.state_dict(), vae_config_from_diffusers(dict(ref.config))).to(device).eval()
    return ref, ours


def clip(shape, device):
    g = torch.Generator().manual_seed(2)
    # a smooth moving pattern rather than white noise, in [-1, 1]
    f, h, w = shape[2:]
    tt = torch.linspace(0, 1, f).view(f, 1, 1)
    yy = torch.linspace(0, 6.28, h).view(1, h, 1)
    xx = torch.linspace(0, 6.28, w).view(1, 1, w)
    base = torch.stack([torch.sin(xx * (k + 1) + yy + 3 * tt) for k in range(shape[1])])
    video = (0.8 * base + 0.1 * torch.randn(shape[1:], generator=g)).clamp(-1, 1)
    return video[None].expand(shape).contiguous().to(device)


def vae_roundtrips(ref, ours):
    def rt_ref(x):
        with torch.no_grad():
            return ref.decode(ref.encode(x).latent_dist.mode()).sample

    def rt_ours(x):
        with torch.no_grad():
            return ours.decode(ours.encode(x).mode())

    return rt_ref, rt_ours


# -- measurement ------------------------------------------------------------------------------------------
def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    _sync(device)
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - w, time.process_time() - c


def alternate(fns: dict, reps: int, device: str, warmup: int = 1) -> dict:
    """Run every closure `warmup` times, then `reps` rounds alternating them; min/median wall and CPU time."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    res = {k: {"wall": [], "cpu": []} for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            _, w, c = timed(fn, device)
            res[k]["wall"].append(w)
            res[k]["cpu"].append(c)
    return {k: {m: {"min": min(v[m]), "median": statistics.median(v[m]), "all": v[m]} for m in v}
            for k, v in res.items()}


def cuda_peak(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def cpu_peak(fn) -> int:
    """Peak CPU tensor bytes allocated during fn() above what was live before (model.profiling)."""
    from model.profiling import cpu_peak_bytes

    return cpu_peak_bytes(fn)[1]


def peak(fn, device: str) -> int:
    return cuda_peak(fn) if device == "cuda" else cpu_peak(fn)


# -- reporting --------------------------------------------------------------------------------------------
def mib(b: float) -> str:
    return f"{b / 2**20:8.1f} MiB"


def versions() -> str:
    import diffusers

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    return (f"torch {torch.__version__}, diffusers {diffusers.__version__}, {dev}, threads {torch.get_num_threads()}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


# the kernels a step cannot avoid: matmuls, convolutions, attention (forward and backward)
_KERNELS = {"mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward",
            "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward",
            "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward",
            "_scaled_dot_product_efficient_attention", "_scaled_dot_product_efficient_attention_backward",
            "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_cudnn_attention_backward"}


def kernel_replay(step):
    """One call of step() recorded at the dispatcher: a closure replaying only its matmul / convolution /
    attention calls with the same arguments (the recorded tensors, kept alive)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_map

    calls = []

    def keep(a):
        return a.detach() if isinstance(a, torch.Tensor) else a

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.overloadpacket.__name__ in _KERNELS:
                calls.append((func, tree_map(keep, args), tree_map(keep, kwargs)))
            return func(*args, **kwargs)

    with Record():
        step()

    def replay():
        with torch.no_grad():
            for func, args, kwargs in calls:
                func(*args, **kwargs)

    return replay, len(calls)


def bench_transformer(device: str, reps: int, quick: bool, bound: bool = False, compile_: bool = False) -> list[str]:
    lines = []
    for variant in ("sincos", "rope"):
        kw = dict(TRANSFORMER_CPU, use_rotary_positional_embeddings=variant == "rope")
        shape = LATENTS_CPU if not quick else QUICK_LATENTS
        ref, ours = build_transformers(kw, device)
        x, text, t = transformer_inputs(kw, shape, device)
        step_ref, step_ours = train_steps(ref, ours, x, text, t)

        def step_keep():  # ours keeping everything autograd saves (lean pieces off)
            ours.selective_recompute = False
            try:
                return step_ours()
            finally:
                ours.selective_recompute = True

        diff = (step_ref() - step_ours()).abs().max().item()
        fns = {"diffusers": step_ref, "ours": step_ours, "ours-keep": step_keep}
        kernels = {}
        if bound:
            (kernels["kernels-diffusers"], n_ref), (kernels["kernels-ours"], n_ours) = map(kernel_replay, (step_ref, step_ours))
        if compile_:  # after the eager checks and kernel recording; the first calls below compile
            for block in ours.blocks:
                block.compile()
            diff = max(diff, (step_ref() - step_ours()).abs().max().item())
        times = alternate({**fns, **kernels}, reps, device)
        # CPU: each peak in a fresh process (the profiler's allocator totals are only right in the first
        # profiled call of a process: a second call under-reports, by up to 60 MiB here)
        peaks = {k: peak(fn, device) if device == "cuda" else peak_in_child(variant, k, quick, compile_)
                 for k, fn in fns.items()}
        tokens = shape[1] * (shape[3] // 2) * (shape[4] // 2) + kw["max_text_seq_length"]
        # CPU: median of the per-round ratios of CPU time (rounds alternate the sides, so each ratio
        # compares runs under the same load); GPU: of wall time.
        metric = "cpu" if device == "cpu" else "wall"
        ratios = {k: statistics.median(a / b for a, b in zip(times["diffusers"][metric]["all"], times[k][metric]["all"]))
                  for k in ("ours", "ours-keep")}
        lines.append(f"### transformer fwd+bwd, {variant}, 8x64 heads, 2 blocks, {tokens} tokens"
                     f"{', our blocks compiled' if compile_ else ''} "
                     f"(max |diff| {diff:.1e}), load avg {os.getloadavg()[0]:.1f}")
        for side in fns:
            tm = times[side]
            lines.append(f"  {side:9s} wall {tm['wall']['median']:.3f}s (min {tm['wall']['min']:.3f})  "
                         f"cpu {tm['cpu']['median']:.3f}s (min {tm['cpu']['min']:.3f})  peak {mib(peaks[side])}")
        for k in ("ours", "ours-keep"):
            lines.append(f"  {k}: step speed vs diffusers {ratios[k]:.3f}x (median of per-round {metric} time ratios, "
                         f"target >= 1.2); peak memory diffusers/{k}: {peaks['diffusers'] / peaks[k]:.2f}x (target >= 1.3)")
        if bound:
            lines.extend(bound_lines(times, metric, n_ref, n_ours))
        del ref, ours
    return lines


def bound_lines(times: dict, metric: str, n_ref: int, n_ours: int) -> list[str]:
    """--bound: the kernel-only replays against the steps (per-round ratios, medians)."""
    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a][metric]["all"], times[b][metric]["all"]))

    out = []
    for side, n in (("kernels-diffusers", n_ref), ("kernels-ours", n_ours)):
        tm = times[side]
        out.append(f"  {side:17s} wall {tm['wall']['median']:.3f}s  cpu {tm['cpu']['median']:.3f}s  "
                   f"({n} matmul/conv/attention calls of one step, replayed alone)")
    out.append(f"  bound: diffusers step / our kernels {ratio('diffusers', 'kernels-ours'):.3f}x (the most any eager "
               f"step with our FLOPs and kernels could reach vs diffusers); our kernels are "
               f"{ratio('kernels-diffusers', 'kernels-ours'):.3f}x faster than diffusers' kernels")
    out.append(f"  overhead above own kernels: diffusers {ratio('diffusers', 'kernels-diffusers'):.3f}x, "
               f"ours {ratio('ours', 'kernels-ours'):.3f}x, ours-keep {ratio('ours-keep', 'kernels-ours'):.3f}x")
    return out


def peak_in_child(variant: str, side: str, quick: bool, compile_: bool = False) -> int:
    """Peak CPU bytes of one training step of `side`, measured in a fresh process (see bench_transformer)."""
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), "--peak-of", f"{variant}:{side}", "--threads",
           str(torch.get_num_threads())] + (["--quick"] if quick else []) + (["--compile"] if compile_ else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1])


def peak_of(spec: str, quick: bool, compile_: bool = False) -> int:
    """--peak-of variant:side: build, warm up (weight grads allocated), then one profiled step."""
    variant, side = spec.split(":")
    kw = dict(TRANSFORMER_CPU, use_rotary_positional_embeddings=variant == "rope")
    ref, ours = build_transformers(kw, "cpu")
    x, text, t = transformer_inputs(kw, LATENTS_CPU if not quick else QUICK_LATENTS, "cpu")
    step_ref, step_ours = train_steps(ref, ours, x, text, t)
    ours.selective_recompute = side != "ours-keep"
    if compile_:
        for block in ours.blocks:
            block.compile()
    fn = step_ref if side == "diffusers" else step_ours
    fn()
    fn()
    return cpu_peak(fn)


def bench_vae(device: str, reps: int, quick: bool) -> list[str]:
    kw = VAE_CPU if device == "cpu" else VAE_GPU
    shape = CLIP_CPU if device == "cpu" else CLIP_GPU
    if quick:
        shape = shape[:2] + (17,) + shape[3:]
    ref, ours = build_vaes(kw, device)
    x = clip(shape, device)
    rt_ref, rt_ours = vae_roundtrips(ref, ours)
    a, b = rt_ref(x), rt_ours(x)
    diff = (a - b).abs().max().item()
    psnr = (10 * torch.log10(4 / (b - x).pow(2).mean())).item()
    del a, b
    times = alternate({"diffusers": lambda: rt_ref(x), "ours": lambda: rt_ours(x)}, max(1, reps // 2), device, warmup=0)
    peaks = {"diffusers": peak(lambda: rt_ref(x), device), "ours": peak(lambda: rt_ours(x), device)}
    metric = "cpu" if device == "cpu" else "wall"
    lines = [f"### VAE encode+decode {tuple(shape)}, widths {kw.get('block_out_channels', (128, 256, 256, 512))} "
             f"(max |ours - diffusers| {diff:.1e}; random weights, so no reconstruction quality: PSNR {psnr:.1f})"]
    for side in ("diffusers", "ours"):
        tm = times[side]
        lines.append(f"  {side:9s} wall {tm['wall']['median']:.2f}s  cpu {tm['cpu']['median']:.2f}s  "
                     f"peak {mib(peaks[side])}")
    lines.append(f"  peak memory diffusers/ours: {peaks['diffusers'] / peaks['ours']:.2f}x (target >= 2); "
                 f"speed ours/diffusers: {times['diffusers'][metric]['median'] / times['ours'][metric]['median']:.2f}x")
    return lines


def bench_2b_gpu(reps: int) -> list[str]:
    """bf16 training step of the full 2b transformer at 49x480x720: tokens/s and MFU."""
    kw = dict(num_attention_heads=30, attention_head_dim=64, num_layers=30)  # diffusers' defaults are the 2b
    shape = (1, 13, 16, 60, 90)
    lines = ["### 2b transformer, bf16 training step, 13x60x90 latents (17,550 video + 226 text tokens)"]
    name = torch.cuda.get_device_name(0)
    peak_flops = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    ref, ours = build_transformers(dict(kw, text_embed_dim=4096, max_text_seq_length=226), "cuda", torch.bfloat16)
    x, text, t = transformer_inputs(dict(kw, text_embed_dim=4096, max_text_seq_length=226), shape, "cuda",
                                    torch.bfloat16)
    step_ref, step_ours = train_steps(ref, ours, x, text, t)
    cfg = ours.config
    s = shape[1] * (shape[3] // 2) * (shape[4] // 2) + 226
    matmul_params = sum(p.numel() for n, p in ours.named_parameters() if p.dim() == 2 and n.startswith("blocks"))
    flops = 6 * matmul_params * s + 12 * cfg.num_layers * s * s * cfg.dim  # linear layers + attention, fwd+bwd
    res = {}
    for side, fn, model in (("diffusers", step_ref, ref), ("ours", step_ours, ours)):
        ref.zero_grad(set_to_none=True)
        ours.zero_grad(set_to_none=True)  # only the measured side holds gradients
        torch.cuda.empty_cache()
        res[side] = None
        for ckpt in (False, True):  # activation checkpointing only if the plain step does not fit
            if side == "diffusers":
                ref.enable_gradient_checkpointing() if ckpt else ref.disable_gradient_checkpointing()
            else:
                ours.gradient_checkpointing = ckpt
            try:
                fn()
                tm = alternate({side: fn}, reps, "cuda", warmup=1)[side]["wall"]["median"]
                res[side] = (tm, cuda_peak(fn), ckpt)
                break
            except torch.cuda.OutOfMemoryError:
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
    for side, r in res.items():
        if r is None:
            lines.append(f"  {side:9s} out of memory")
            continue
        tm, pk, ckpt = r
        mfu = f"{flops / tm / peak_flops * 100:.1f}%" if peak_flops else "n/a (unknown peak)"
        note = "  (activation checkpointing)" if ckpt else ""
        lines.append(f"  {side:9s} {tm:.3f}s/step  {s / tm:,.0f} tokens/s  MFU {mfu}  peak {mib(pk)}{note}")
    if all(res.values()):
        lines.append(f"  tokens/s ours/diffusers: {res['diffusers'][0] / res['ours'][0]:.3f}x")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (CPU runs)")
    ap.add_argument("--quick", action="store_true", help="fewer frames (smoke run)")
    ap.add_argument("--skip-vae", action="store_true")
    ap.add_argument("--skip-2b", action="store_true")
    ap.add_argument("--bound", action="store_true", help="also time the step's matmul/attention kernels alone")
    ap.add_argument("--compile", action="store_true", help="torch.compile our blocks (both policies; slow first steps)")
    ap.add_argument("--peak-of", help=argparse.SUPPRESS)  # internal: one peak measurement (peak_in_child)
    args = ap.parse_args()
    if args.peak_of:
        torch.set_num_threads(args.threads)
        print(peak_of(args.peak_of, args.quick, args.compile))
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        # One thread: CPU time then measures work, not OpenMP spin-waiting on a shared, loaded machine.
        torch.set_num_threads(args.threads)
    print(f"# bench/model.py — {versions()}")
    for line in bench_transformer(device, args.reps, args.quick, args.bound, args.compile):
        print(line, flush=True)
    if not args.skip_vae:
        for line in bench_vae(device, args.reps, args.quick):
            print(line, flush=True)
    if device == "cuda" and not args.skip_2b:
        for line in bench_2b_gpu(args.reps):
            print(line, flush=True)


if __name__ == "__main__":
    main()
