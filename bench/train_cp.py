"""Context parallelism: per-rank peak memory and step time at cp=2 vs cp=1 for the same sequence, and the
memory/throughput model of docs/scaling.md checked against those measurements.

    .venv/bin/python bench/train.py --cp 2 [--steps 3] [--frames 13 --latent 24]   (CPU: gloo; GPU: NCCL)
    .venv/bin/python bench/train_cp.py --scaling                                 (the docs/scaling.md tables)

One spawn of `cp` processes measures every variant in the same run: cp=1 (each rank runs the whole
sequence on its own: what one rank must hold without context parallelism), then cp=2 with Ulysses and
with all-gather attention, each with and without activation checkpointing. The step is forward + MSE +
backward of our ExpertTransformer on precomputed latents (fp32 on CPU). Peak memory = the allocator's
peak above what was live before the step (model/profiling.py; on GPU torch.cuda.max_memory_allocated),
so it counts activations, gradients and communication buffers; the weights (replicated here, sharded by
FSDP in the trainer) are reported apart. Step time: median over --steps after one warm-up.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

# Activations saved for backward per block, in units of (tokens x width) elements, for our Block with its
# default model/lean.py pieces (the block inputs, q/k/v, SDPA's q/k/out, the out projection's input, the
# FFN input and fc1's 4x-wide pre-activation, fc2's output, residual inputs); and keeping every
# activation (selective_recompute off, or projections replaced by adapters: LoRA, where the pieces call
# the modules): AdaLN in/out and the joined input, q/k norm inputs, the FFN hidden before and after GELU
# too. Both measured with autograd's saved-tensor hooks (tests/model/test_model_lean.py checks them).
SAVED_PER_TOKEN_DIM = 14.7
SAVED_PER_TOKEN_DIM_KEEP = 22.9


def config(num_heads: int = 4, head_dim: int = 64, layers: int = 4):
    from model.transformer import TransformerConfig

    return TransformerConfig(num_heads=num_heads, head_dim=head_dim, num_layers=layers, text_embed_dim=256,
                             max_text_len=64, time_embed_dim=256, sample_height=32, sample_width=32, sample_frames=49)


# --- the model --------------------------------------------------------------------------------------------
def params_of(dim: int, layers: int, text_dim: int = 4096, patch_in: int = 64, out: int = 64, temb: int = 512) -> int:
    """Parameters of the expert transformer: per block 12 d^2 (q, k, v, out 4d^2; FFN 8d^2) + 2 AdaLN
    (temb x 6d each) + q/k norms; embeddings and head."""
    block = 12 * dim * dim + 2 * temb * 6 * dim + 13 * dim
    return layers * block + text_dim * dim + patch_in * dim + dim * temb + temb * temb + temb * 2 * dim + dim * out


def activation_bytes(dim: int, layers: int, text: int, video: int, cp: int, checkpointing: bool,
                     attention: str = "ulysses", bytes_per: int = 2, saved: float = SAVED_PER_TOKEN_DIM) -> float:
    """Activation memory per rank of one sample: every block's saved tensors (`saved` x S x d with
    S = text + video / cp); with checkpointing only each block's input (S x d) plus one block recomputed.
    allgather keeps the full-sequence K and V per block too."""
    s = text + video / cp
    per_block = saved * s * dim
    if attention == "allgather" and cp > 1:
        per_block += 2 * (video - video / cp) * dim
    if checkpointing:
        return bytes_per * (layers * s * dim + per_block)
    return bytes_per * layers * per_block


def state_bytes(params: int, shards: int) -> float:
    """Parameters, gradients and AdamW states per rank under FSDP over `shards` ranks: fp32 master weights,
    fp32 gradients and two fp32 moments (16 B/param) sharded; with bf16 compute one block's gathered bf16
    weights are added by the caller."""
    return 16 * params / shards


def comm_bytes_per_step(params: int, dim: int, layers: int, text: int, video: int, cp: int, shards: int,
                        attention: str, bytes_per: int = 2) -> dict[str, float]:
    """Bytes each rank sends per training step. FSDP2 (ZeRO-3): all-gather the bf16 weights in forward and
    again in backward, reduce-scatter fp32 gradients: (2 x 2 + 4) x P x (n-1)/n. CP per block: Ulysses =
    4 all-to-alls of the video q/k/v/out forward (x2 with backward), each sending (cp-1)/cp of the local
    tokens; all-gather = K and V of the local tokens to cp-1 ranks forward and their gradients back."""
    fsdp = (2 * 2 + 4) * params * (shards - 1) / shards
    local = video / cp * dim * bytes_per
    if cp == 1:
        cpb = 0.0
    elif attention == "ulysses":
        cpb = layers * 2 * 4 * local * (cp - 1) / cp
    else:
        cpb = layers * 2 * 2 * local * (cp - 1)
    return {"fsdp": fsdp, "cp": cpb}


# --- measurement --------------------------------------------------------------------------------------------
def _step(model, batch, cp) -> float:
    """Forward + MSE + backward with `cp` (a ContextParallel, or None for the whole sequence on this rank)."""
    from training.parallelize import apply_context_parallel

    undo = apply_context_parallel(model, cp) if cp is not None else None
    try:
        out = model(batch["latents"], batch["text"], batch["t"])
        loss = ((out - batch["target"]) ** 2).mean()
        loss.backward()
    finally:
        if undo is not None:
            undo()
    model.zero_grad(set_to_none=True)
    return float(loss.detach())


def _measure(rank: int, world: int, args: argparse.Namespace, out: str) -> None:
    import torch.distributed as dist

    from model.context_parallel import ContextParallel
    from model.profiling import cpu_peak_bytes
    from model.transformer import ExpertTransformer

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(args.threads)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank,
                            world_size=world)
    torch.manual_seed(0)
    cfg = config(args.heads, args.head_dim, args.layers)
    model = ExpertTransformer(cfg).to(device)
    g = torch.Generator().manual_seed(0)
    shape = (1, args.frames, cfg.in_channels, args.latent, args.latent)
    batch = {"latents": torch.randn(shape, generator=g), "t": torch.tensor([500]),
             "text": torch.randn(1, cfg.max_text_len, cfg.text_embed_dim, generator=g),
             "target": torch.randn(shape, generator=g)}
    batch = {k: v.to(device) for k, v in batch.items()}
    rows = []
    for ac in (False, True):
        model.gradient_checkpointing = ac
        for name, cp in (("cp=1", None), (f"cp={world} ulysses", ContextParallel(dist.group.WORLD, "ulysses")),
                         (f"cp={world} allgather", ContextParallel(dist.group.WORLD, "allgather"))):
            loss = _step(model, batch, cp)  # warm-up
            times = []
            for _ in range(args.steps):
                dist.barrier()
                t0 = time.perf_counter()
                _step(model, batch, cp)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                _step(model, batch, cp)
                peak = torch.cuda.max_memory_allocated() - base
            else:
                _, peak = cpu_peak_bytes(lambda: _step(model, batch, cp))
            rows.append({"variant": name, "ac": ac, "step_s": statistics.median(times), "peak": peak, "loss": loss})
    if rank == 0:
        torch.save({"rows": rows, "params": sum(p.numel() for p in model.parameters()),
                    "tokens": (cfg.max_text_len, args.frames * (args.latent // 2) ** 2), "dim": cfg.dim,
                    "layers": cfg.num_layers, "device": torch.cuda.get_device_name() if cuda else "cpu"}, out)
    dist.barrier()
    dist.destroy_process_group()


def run(args: argparse.Namespace) -> None:
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        args.port = s.getsockname()[1]
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "result.pt")
        mp.spawn(_measure, args=(args.cp, args, path), nprocs=args.cp, join=True)
        res = torch.load(path)
    text, video = res["tokens"]
    bpe = 4  # fp32 on CPU (the GPU run is fp32 too: this bench does not autocast)
    print(f"## Context parallelism: per-rank step at cp={args.cp} vs cp=1 ({datetime.date.today()}, torch "
          f"{torch.__version__}, {res['device']}, {args.threads} thread(s)/rank)\n")
    print(f"Transformer {res['layers']} layers x {res['dim']} wide ({res['params'] / 1e6:.1f}M params, "
          f"{res['params'] * 4 / 2**20:.0f} MiB fp32, replicated here), {text} text + {video} video tokens.\n")
    print("| checkpointing | variant | step time (s) | vs cp=1 | peak per rank (MiB) | vs cp=1 | predicted (MiB) | step-1 loss |")
    print("|---|---|---|---|---|---|---|---|")
    for ac in (False, True):
        rows = [r for r in res["rows"] if r["ac"] == ac]
        ref = rows[0]
        for r in rows:
            cp = 1 if r["variant"] == "cp=1" else args.cp
            kind = "allgather" if "allgather" in r["variant"] else "ulysses"
            pred = activation_bytes(res["dim"], res["layers"], text, video, cp, ac, kind, bpe) + 4 * res["params"]
            print(f"| {'on' if ac else 'off'} | {r['variant']} | {r['step_s']:.3f} | {r['step_s'] / ref['step_s']:.2f}x "
                  f"| {r['peak'] / 2**20:.1f} | {r['peak'] / ref['peak']:.2f}x | {pred / 2**20:.1f} | {r['loss']:.6f} |")
    print("\npredicted = activation_bytes (bench/train_cp.py) + fp32 gradients of every parameter.")


# --- the scaling tables of docs/scaling.md ------------------------------------------------------------------
SIZES = {"2b": dict(dim=1920, layers=30, heads=30, pt=1), "5b": dict(dim=3072, layers=42, heads=48, pt=1),
         "1.5-5b": dict(dim=3072, layers=42, heads=48, pt=2)}
RESOLUTIONS = {"49x480x720": (49, 480, 720), "81x768x1360": (81, 768, 1360)}
H100_BF16 = 989e12
MFU = 0.40  # assumed model FLOPs utilisation for the throughput column


def video_tokens(frames: int, h: int, w: int, pt: int) -> int:
    latent_frames = (frames - 1) // 4 + 1
    latent_frames += (-latent_frames) % pt  # 1.5 pads to a multiple of its temporal patch
    return latent_frames // pt * (h // 16) * (w // 16)


def scaling_tables() -> None:
    """Three tables per model size: states per rank by GPU count; activations and communication by cp;
    throughput by GPU count."""
    gib = 2**30
    for size, s in SIZES.items():
        p = params_of(s["dim"], s["layers"], patch_in=16 * 4 * s["pt"], out=16 * 4 * s["pt"])
        block_bf16 = 2 * p / s["layers"]
        print(f"\n### {size}: {p / 1e9:.2f}B parameters\n")
        print("| GPUs (FSDP shards) | weights+grads+AdamW per rank (GiB) | + 2 gathered bf16 blocks | FSDP traffic per rank per step (GiB) |")
        print("|---|---|---|---|")
        for gpus in (8, 64, 512):
            st = state_bytes(p, gpus)
            c = comm_bytes_per_step(p, s["dim"], s["layers"], 226, 1, 1, gpus, "ulysses")
            print(f"| {gpus} | {st / gib:.2f} | {(st + 2 * block_bf16) / gib:.2f} | {c['fsdp'] / gib:.1f} |")
        print("\n| clip | tokens (text + video) | cp | attention | activations, no AC (GiB) | with AC (GiB) | "
              "CP traffic per rank per sample (GiB) | samples/s on 8 / 64 / 512 GPUs (40% MFU) |")
        print("|---|---|---|---|---|---|---|---|")
        for res, (f, h, w) in RESOLUTIONS.items():
            n = video_tokens(f, h, w, s["pt"])
            tokens = 226 + n
            flops = s["layers"] * (72 * s["dim"] ** 2 * tokens + 12 * tokens ** 2 * s["dim"])
            rate = " / ".join(f"{g * H100_BF16 * MFU / flops:.2f}" for g in (8, 64, 512))
            for cp in (1, 2, 4, 8):
                kind = "allgather" if s["heads"] % cp else "ulysses"
                a0 = activation_bytes(s["dim"], s["layers"], 226, n, cp, False, kind)
                a1 = activation_bytes(s["dim"], s["layers"], 226, n, cp, True, kind)
                c = comm_bytes_per_step(p, s["dim"], s["layers"], 226, n, cp, 8, kind)
                print(f"| {res} | {tokens} | {cp} | {kind if cp > 1 else '-'} | {a0 / gib:.1f} | {a1 / gib:.1f} | "
                      f"{c['cp'] / gib:.2f} | {rate if cp == 1 else 'same'} |")
    print(f"\nsamples/s = GPUs x {MFU:.0%} x {H100_BF16 / 1e12:.0f} TFLOP/s (H100/H200 dense bf16) / model FLOPs of one "
          "sample (72 L d^2 T + 12 L T^2 d, forward + backward); context parallelism does not change the FLOPs, "
          "only how many GPUs share one sample. Activation checkpointing adds one forward (x4/3 FLOPs).")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cp", type=int, default=2, help="context-parallel ranks (processes spawned)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--frames", type=int, default=13, help="latent frames")
    p.add_argument("--latent", type=int, default=24, help="latent height = width (tokens per frame = (latent/2)^2)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--scaling", action="store_true", help="print the docs/scaling.md tables and exit")
    a = p.parse_args(argv)
    if a.scaling:
        scaling_tables()
        return
    run(a)


if __name__ == "__main__":
    main()
