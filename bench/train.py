"""Training-step benchmark: our trainer's step against a diffusers-model training step, same config, same
weights, same data, in the same run.

    .venv/bin/python bench/train.py [--model transformer|vae|both|lora] [--steps 6] [--size small|2b]
    .venv/bin/python bench/train.py --cp 2 [--steps 3]     (context parallelism: bench/train_cp.py)

Variants (each in its own subprocess, so peak memory is its own):
- ours/trainer: `Trainer.train_step` with FSDP2 (one rank, gloo on CPU / NCCL on GPU): forward, backward,
  global-norm clipping (DTensor collective), AdamW, LR schedule, NaN check;
- ours/plain: our model without FSDP, the same step written by hand;
- diffusers: `CogVideoXTransformer3DModel` / `AutoencoderKLCogVideoX` built from the same config and loaded
  with our weights (model.convert), the same step.
Transformer step: v-prediction loss on precomputed latents (frozen encoders excluded). VAE step: L1 + KL.
`--model lora`: LoRA fine-tuning (rank 16 on to_q/to_k/to_v/to_out, base frozen) of a tiny-but-wide
transformer (4 layers, 16x64 heads): ours/lora-trainer (our Trainer + FSDP2 + peft adapters), ours/lora-plain
(our model + peft, the step by hand), diffusers+peft (CogVideoXTransformer3DModel.add_adapter, the same
step) and ours/full-trainer (full fine-tuning of the same model); ratios: time vs diffusers+peft, peak
memory vs full fine-tuning. Then ours/lora-trainer and diffusers+peft again in one process, steps
alternated, so each pair of steps shares the machine's load: the median per-pair ratio is the time figure.
Step time is the median over --steps after 2 warm-up steps. Peak memory: on CPU the peak resident set
above the process's size before the model was built (VmHWM); on GPU torch.cuda.max_memory_allocated. On a GPU
also tokens/s and MFU (bf16 autocast for the plain/diffusers variants, FSDP mixed precision for ours).
The step-1 loss of ours/plain and diffusers is printed too: with the same weights and inputs they match.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

VARIANTS = ["ours/trainer", "ours/plain", "diffusers"]
LORA_VARIANTS = ["ours/lora-trainer", "ours/lora-plain", "diffusers+peft", "ours/full-trainer"]
LORA = {"rank": 16, "alpha": 16.0, "targets": ["to_q", "to_k", "to_v", "to_out"]}


def transformer_config(size: str):
    from model.transformer import TransformerConfig

    if size == "2b":
        return TransformerConfig.cogvideox_2b()
    if size == "wide":  # weights dominate memory, as in real fine-tuning: what LoRA saves shows
        return TransformerConfig(num_heads=16, head_dim=64, num_layers=4, text_embed_dim=512, max_text_len=32,
                                 time_embed_dim=256, sample_height=16, sample_width=16, sample_frames=9)
    return TransformerConfig(num_heads=4, head_dim=64, num_layers=4, text_embed_dim=256, max_text_len=64,
                             time_embed_dim=256, sample_height=16, sample_width=16, sample_frames=9)


def vae_config(size: str):
    from model.vae import VAEConfig

    if size == "2b":
        return VAEConfig.cogvideox_2b()
    return VAEConfig.tiny(block_out_channels=(16, 16, 32, 32), latent_channels=16, norm_num_groups=8)


def data(model: str, size: str, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    if model == "transformer":
        c = transformer_config(size)
        f, hw, b = {"2b": (13, 60, 1), "wide": (2, 16, 1)}.get(size, (3, 16, 2))
        shape = (b, f, c.in_channels, hw, hw if size != "2b" else 90)
        return {"latents": torch.randn(shape, generator=g).to(device),
                "text_emb": torch.randn(b, c.max_text_len, c.text_embed_dim, generator=g).to(device),
                "t": torch.randint(0, 1000, (b,), generator=g).to(device),
                "noise": torch.randn(shape, generator=g).to(device)}
    frames, hw, b = (9, 32, 2) if size != "2b" else (17, 256, 1)
    return {"frames": (torch.rand(b, frames, 3, hw, hw, generator=g) * 2 - 1).to(device)}


def peak_reset(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**30
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM (peak RSS) to the current RSS
        f.write("5")
    return _status("VmRSS")


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**20  # kB -> GiB
    return 0.0


def peak_now(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return _status("VmHWM")


# --- steps ---------------------------------------------------------------------------------------------
def add_adapters(model: torch.nn.Module, diffusers_model: bool) -> None:
    """LORA adapters: through diffusers' own peft integration, or ours (training/lora.py)."""
    if diffusers_model:
        from peft import LoraConfig

        model.requires_grad_(False)
        model.add_adapter(LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], init_lora_weights=True,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        return
    from training.config import LoraConfig as OurLora
    from training.lora import apply_lora

    apply_lora(model, OurLora(**LORA))


def plain_step(model_name: str, size: str, variant: str, device: torch.device, lora: bool = False):
    """(step function, loss-of-step-1 holder) for ours/plain or diffusers (with LoRA adapters when asked)."""
    from model import convert

    torch.manual_seed(0)
    batch = data(model_name, size, device)
    if model_name == "transformer":
        from model.diffusion import Schedule
        from model.transformer import ExpertTransformer

        ours = ExpertTransformer(transformer_config(size))
        model = ours
        if variant == "diffusers":
            from diffusers import CogVideoXTransformer3DModel

            cfg = {k: v for k, v in convert.transformer_config_to_diffusers(ours.config).items() if not k.startswith("_")}
            model = CogVideoXTransformer3DModel(**cfg)
            model.load_state_dict(convert.export_transformer(ours), strict=False)
        if lora:
            add_adapters(model, variant == "diffusers")
        sched = Schedule()
        x_t = sched.add_noise(batch["latents"], batch["noise"], batch["t"])
        target = sched.v_target(batch["latents"], batch["noise"], batch["t"])

        def forward():
            if variant == "diffusers":
                return model(hidden_states=x_t, encoder_hidden_states=batch["text_emb"], timestep=batch["t"],
                             return_dict=False)[0]
            return model(x_t, batch["text_emb"], batch["t"])

        def loss_fn():
            return (forward().float() - target).pow(2).mean()
    else:
        from model.vae import CausalVAE

        ours = CausalVAE(vae_config(size))
        ours.chunked = False
        model = ours
        if variant == "diffusers":
            from diffusers import AutoencoderKLCogVideoX

            cfg = {k: v for k, v in convert.vae_config_to_diffusers(ours.config).items() if not k.startswith("_")}
            model = AutoencoderKLCogVideoX(**cfg)
            model.load_state_dict(convert.export_vae(ours), strict=False)
        x = batch["frames"].transpose(1, 2)

        def loss_fn():
            g = torch.Generator(device=device).manual_seed(1)
            if variant == "diffusers":
                post = model.encode(x).latent_dist
                recon = model.decode(post.sample(generator=g)).sample
                kl = post.kl()
            else:
                recon, post = model(x, sample=True, generator=g)
                kl = post.kl()
            return (recon.float() - x).abs().mean() + 1e-6 * kl.float().mean() / x[0].numel()
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-4)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step() -> float:
        with autocast:
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    return step


def trainer_step(model_name: str, size: str, device: torch.device, lora: bool = False):
    from training.config import TrainingConfig
    from training.parallelize import init_distributed
    from training.tasks.transformer import TransformerTask, build_schedule
    from training.tasks.vae import VAETask
    from training.trainer import Trainer

    batch = data(model_name, size, device)
    if model_name == "transformer":
        from model.transformer import ExpertTransformer

        from training.tasks.transformer import add_lora

        class BenchTask(TransformerTask):
            def build_models(self):
                self.schedule, self.model_config = build_schedule(self.cfg), transformer_config(size)
                self.gen = torch.Generator().manual_seed(0)
                model = ExpertTransformer(self.model_config)
                if self.cfg.transformer.lora:
                    add_lora(self.cfg, model, self.info.device)
                return {"transformer": model}

        cfg = TrainingConfig(task="transformer", transformer={"text_dropout": 0.0, "lora": LORA if lora else None})
        task_cls, step_batch = BenchTask, {"latents": batch["latents"], "text_emb": batch["text_emb"], "captions": []}
    else:
        from model.vae import CausalVAE

        class BenchTask(VAETask):  # type: ignore[no-redef]
            def build_models(self):
                vae = CausalVAE(vae_config(size))
                vae.chunked = False
                self.lpips, self.model_config = None, vae.config
                self.gen = torch.Generator(device=self.info.device).manual_seed(1)
                return {"vae": vae}

        cfg = TrainingConfig(task="vae", vae={"gan_weight": 0.0})
        task_cls, step_batch = BenchTask, {"frames": batch["frames"]}
    cfg.optim.warmup_steps = 0
    cfg.measure_flops = device.type == "cuda"
    info = init_distributed(cfg.parallel, "auto")
    trainer = Trainer(cfg, task_cls(cfg, info, "/tmp/bench_train_unused"), None, info, "/tmp/bench_train_unused")
    return lambda: trainer.train_step(step_batch)["loss"], trainer


def interleaved(steps: int) -> dict:
    """ours/lora-trainer and diffusers+peft built in one process, their steps alternated (2 warm-up steps
    each): each pair ran under the same machine load, so the ratio of a pair is fair even when the
    machine is shared; returns both step-time lists."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ours, _ = trainer_step("transformer", "wide", device, lora=True)
    theirs = plain_step("transformer", "wide", "diffusers", device, lora=True)
    times: dict[str, list[float]] = {"ours/lora-trainer": [], "diffusers+peft": []}
    for i in range(steps + 2):
        for name, step in (("ours/lora-trainer", ours), ("diffusers+peft", theirs)) if i % 2 else \
                (("diffusers+peft", theirs), ("ours/lora-trainer", ours)):
            t0 = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    return {"variant": "interleaved", "times": times}


def worker(model_name: str, size: str, variant: str, steps: int) -> dict:
    if variant == "interleaved":
        return interleaved(steps)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = peak_reset(device)  # before the model exists: the peak below covers weights, optimiser and activations
    trainer = None
    if variant in ("ours/trainer", "ours/full-trainer", "ours/lora-trainer"):
        step, trainer = trainer_step(model_name, size, device, lora=variant == "ours/lora-trainer")
    else:
        plain = {"ours/lora-plain": "ours/plain", "diffusers+peft": "diffusers"}.get(variant, variant)
        step = plain_step(model_name, size, plain, device, lora=variant in ("ours/lora-plain", "diffusers+peft"))
    first = step()
    step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out = {"variant": variant, "step_s": statistics.median(times), "peak_gb": peak_now(device) - base,
           "first_loss": first, "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"}
    if trainer is not None and trainer.flops_per_step:
        from training.trainer import peak_flops

        peak = peak_flops(device)
        out["mfu"] = trainer.flops_per_step / out["step_s"] / peak if peak else None
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="both", choices=["transformer", "vae", "both", "lora"])
    p.add_argument("--size", default="small", choices=["small", "2b"])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=1, help="torch threads (more than free cores makes OpenMP spin: keep 1 on a shared machine)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--cp", type=int, help="instead: context parallelism, per-rank memory/time at cp=N vs cp=1 "
                   "(bench/train_cp.py; its own options follow, e.g. --frames 13 --latent 24)")
    a, rest = p.parse_known_args()
    if a.cp:
        from bench.train_cp import main as cp_main

        return cp_main(["--cp", str(a.cp), "--steps", str(a.steps), "--threads", str(a.threads), *rest])
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    torch.set_num_threads(a.threads)
    if a.worker:
        model, size = ("transformer", "wide") if a.model == "lora" else (a.model, a.size)
        print("RESULT " + json.dumps(worker(model, size, a.worker, a.steps)), flush=True)
        from training.parallelize import shutdown

        shutdown()
        return
    if a.model == "lora":
        return lora_table(a)
    models = ["transformer", "vae"] if a.model == "both" else [a.model]
    print(f"## Training step: ours vs diffusers ({datetime.date.today()}, torch {torch.__version__}, "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}, {a.threads} threads, size {a.size})\n")
    print("| model | variant | step time (s) | vs diffusers | peak memory (GiB) | step-1 loss | MFU |")
    print("|---|---|---|---|---|---|---|")
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    for m in models:
        rows = []
        for v in VARIANTS:
            r = subprocess.run([sys.executable, __file__, "--worker", v, "--model", m, "--size", a.size,
                                "--steps", str(a.steps), "--threads", str(a.threads)], capture_output=True, text=True,
                               env=env)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
            if not line:
                print(f"| {m} | {v} | failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode} |||||")
                continue
            rows.append(json.loads(line[0][7:]))
        ref = next((r for r in rows if r["variant"] == "diffusers"), None)
        for r in rows:
            ratio = f"{r['step_s'] / ref['step_s']:.2f}x" if ref else "-"
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
            print(f"| {m} | {r['variant']} | {r['step_s']:.3f} | {ratio} | {r['peak_gb']:.3f} | {r['first_loss']:.5f} | {mfu} |")


def run_variant(a: argparse.Namespace, model: str, variant: str) -> dict | str:
    """One variant in its own subprocess (its own peak memory): the result row, or why it failed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    r = subprocess.run([sys.executable, __file__, "--worker", variant, "--model", model, "--size", a.size,
                        "--steps", str(a.steps), "--threads", str(a.threads)], capture_output=True, text=True, env=env)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        return r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
    return json.loads(line[0][7:])


def lora_table(a: argparse.Namespace) -> None:
    """LoRA rows: step time vs diffusers+peft, peak memory vs our full fine-tuning, one run."""
    c = transformer_config("wide")
    print(f"## LoRA fine-tuning step ({datetime.date.today()}, torch {torch.__version__}, "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}, {a.threads} threads; transformer {c.num_layers} layers x "
          f"{c.num_heads}x{c.head_dim}, LoRA rank {LORA['rank']} on {'/'.join(LORA['targets'])})\n")
    print("| variant | step time (s) | vs diffusers+peft | peak memory (GiB) | vs full fine-tuning | step-1 loss |")
    print("|---|---|---|---|---|---|")
    rows = {v: run_variant(a, "lora", v) for v in LORA_VARIANTS}
    ref_t, ref_m = rows.get("diffusers+peft"), rows.get("ours/full-trainer")
    for v, r in rows.items():
        if isinstance(r, str):
            print(f"| {v} | failed: {r} |||||")
            continue
        t = f"{r['step_s'] / ref_t['step_s']:.2f}x" if isinstance(ref_t, dict) else "-"
        m = f"{r['peak_gb'] / ref_m['peak_gb']:.2f}x" if isinstance(ref_m, dict) and ref_m["peak_gb"] > 0 else "-"
        print(f"| {v} | {r['step_s']:.3f} | {t} | {r['peak_gb']:.3f} | {m} | {r['first_loss']:.5f} |")
    r = run_variant(a, "lora", "interleaved")
    if isinstance(r, str):
        print(f"\ninterleaved: failed: {r}")
        return
    ours, theirs = r["times"]["ours/lora-trainer"], r["times"]["diffusers+peft"]
    pairs = sorted(o / d for o, d in zip(ours, theirs))
    print(f"\nInterleaved in one process ({len(pairs)} step pairs, alternating order): ours/lora-trainer "
          f"{statistics.median(ours):.3f} s, diffusers+peft {statistics.median(theirs):.3f} s; median of per-pair "
          f"ratios {statistics.median(pairs):.2f}x (min {pairs[0]:.2f}x, max {pairs[-1]:.2f}x)")


if __name__ == "__main__":
    main()
