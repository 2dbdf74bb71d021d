"""The training loop: optimisers, LR schedule, gradient clipping, NaN guard, checkpoints and logging.

One step (every rank):
  1. next batch from the loader          2. task.forward_backward (loss + backward, FSDP collectives)
  3. agree across ranks whether the loss is finite; clip gradients (the global norm is a collective)
  4. finite: optimiser step + task hook (EMA); not finite: drop the gradients (skip) or stop
  5. LR schedule step; log; checkpoint / validation samples at their intervals
"""
from __future__ import annotations

import json
import math
import os
import resource
import time
from collections import deque
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from training.checkpoint import Checkpointer, rng_state, set_rng_state
from training.config import TrainingConfig
from training.data import endless
from training.parallelize import DistInfo, all_reduce_max, all_reduce_mean, parallelize
from training.tasks.base import Task

# Dense bf16 tensor-core peak per GPU (FLOP/s), for the MFU estimate. Unknown devices report no MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


HISTORY = 10_000  # steps of metrics kept in memory for the summary (a long run would grow without bound)


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient norm was NaN/inf and the run was told (or forced) to stop."""


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine to min_ratio at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the peak resident set of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class MetricLog:
    """Rank 0 writes every step to metrics.jsonl and every log_every steps to TensorBoard."""

    def __init__(self, out_dir: str, enabled: bool):
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            os.makedirs(out_dir, exist_ok=True)
            self.writer = SummaryWriter(os.path.join(out_dir, "tensorboard"))
            self.jsonl = open(os.path.join(out_dir, "metrics.jsonl"), "a")

    def write(self, step: int, metrics: dict[str, float], tensorboard: bool) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        if tensorboard:
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, step)
            self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.jsonl.close()


class Trainer:
    """Owns one run: sharded models, optimisers, schedules, loader position, checkpoints, logs."""

    def __init__(self, cfg: TrainingConfig, task: Task, loader: Any, info: DistInfo, out_dir: str):
        self.cfg, self.task, self.loader, self.info, self.out_dir = cfg, task, loader, info, out_dir
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank before sharding
        models = task.build_models()
        for name, model in models.items():
            parallelize(model, task.block_lists(name, model), cfg.parallel, info)
        task.setup(models)
        self.models = models
        o = cfg.optim
        # Only trained parameters (LoRA: the adapters) get optimiser state; frozen ones have no gradients.
        self.optimizers = {name: torch.optim.AdamW(trainable(m), lr=task.lr(name), betas=o.betas, eps=o.eps,
                                                   weight_decay=o.weight_decay, foreach=True)  # multi-tensor (torchtitan's default)
                           for name, m in models.items()}
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_lambda(s, o.warmup_steps, cfg.steps, o.min_lr_ratio))
            for name, opt in self.optimizers.items()}
        c = cfg.checkpoint
        self.ckpt = Checkpointer(out_dir, c.every, c.keep, info.rank, info.world_size, info.cp_size)
        self.step = 0  # optimiser steps done
        self.nan_skips = 0  # consecutive skipped steps
        self.log = MetricLog(out_dir, info.is_main)
        self.flops_per_step: float | None = None
        self.stage: int | None = None  # progressive training stage the last step ran in
        # Per-rank randomness (noise, dropout) differs across ranks; weights were already made above.
        torch.manual_seed(cfg.seed + 1 + info.dp_rank)  # (alike within a context-parallel group)

    # --- state ---------------------------------------------------------------------------------------
    def _rank_state(self) -> dict[str, Any]:
        return {"step": self.step, "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                "rng": rng_state(), "loader": self.loader.state_dict(), "task": self.task.rank_state(),
                "nan_skips": self.nan_skips}

    def save(self) -> str:
        return self.ckpt.save(self.step, self.models, self.optimizers, self.task.task_tensors(),
                              self._rank_state(), self.task.meta())

    def resume(self, path: str | None = None) -> bool:
        """Restore the latest checkpoint (or `path`); False when there is none."""
        path = path or self.ckpt.latest()
        if path is None:
            return False
        state = self.ckpt.load(path, self.models, self.optimizers, self.task.task_tensors())
        self.step, self.nan_skips = state["step"], state["nan_skips"]
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        if not state.get("relayout"):  # same layout: the data position and RNG continue exactly
            self.loader.load_state_dict(state["loader"])
            self.task.load_rank_state(state["task"])
            set_rng_state(state["rng"])
        if self.info.is_main:
            print(f"[training] resumed from {path} at step {self.step}", flush=True)
        return True

    # --- one step ------------------------------------------------------------------------------------
    def _forward_backward(self, batch: dict[str, Any], counted: list[float]) -> dict[str, Any]:
        """One micro-batch: loss + backward; its FLOPs are appended to `counted` when they are measured
        (analytically, or by FlopCounterMode until a first step has been counted)."""
        measure = self.cfg.measure_flops if self.cfg.measure_flops is not None else self.info.device.type == "cuda"
        analytic = self.task.flops_per_step(batch) if measure else None
        if analytic is not None:
            counted.append(analytic)
        elif measure and self.flops_per_step is None:
            with FlopCounterMode(display=False) as counter:
                out = self.task.forward_backward(batch, self.step)
            counted.append(float(counter.get_total_flops()))
            return out
        return self.task.forward_backward(batch, self.step)

    def train_step(self, batch: dict[str, Any] | list[dict[str, Any]]) -> dict[str, float]:
        """One optimiser step on `batch`, or on a list of micro-batches whose gradients are averaged
        (optim.grad_accum); see the module docstring. Returns this step's metrics."""
        micro = batch if isinstance(batch, list) else [batch]
        counted: list[float] = []
        outs = [self._forward_backward(b, counted) for b in micro]
        if counted:  # every micro-batch of this step was counted: the step's FLOPs
            self.flops_per_step = sum(counted) if len(counted) == len(micro) else counted[0] * len(micro)
        if len(micro) > 1:  # each backward summed its mean-loss gradient: average them as one batch would
            for model in self.models.values():
                for p in trainable(model):
                    if p.grad is not None:
                        p.grad.div_(len(micro))
        losses = torch.stack([o.pop("loss").detach().float().reshape(()) for o in outs])
        loss = losses.mean()
        out: dict[str, float] = {}
        for o in outs:  # terms averaged over micro-batches, throughput counts summed
            for k, v in o.items():
                out[k] = out.get(k, 0.0) + float(v) / (1 if k in ("samples", "tokens") else len(outs))
        bad = all_reduce_max(0.0 if bool(torch.isfinite(losses).all()) else 1.0, self.info.device) > 0
        metrics: dict[str, float] = {"loss": float(loss)}
        for name, model in self.models.items():
            norm = torch.nn.utils.clip_grad_norm_(trainable(model), self.cfg.optim.grad_clip)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            metrics[f"grad_norm/{name}"] = float(norm)
            bad = bad or not math.isfinite(metrics[f"grad_norm/{name}"])
        if bad:
            self._skip(metrics)
        else:
            self.nan_skips = 0
            for opt in self.optimizers.values():
                opt.step()
            self.task.after_optimizer_step(self.step)
        for name, opt in self.optimizers.items():
            metrics[f"lr/{name}"] = opt.param_groups[0]["lr"]
            opt.zero_grad(set_to_none=True)
        for sched in self.schedulers.values():
            sched.step()
        self.step += 1
        metrics["skipped"] = float(bad)
        metrics.update(out)
        return metrics

    def enter_stage(self) -> None:
        """Progressive training: switch the loader's buckets and the peak LR when the step crosses a stage
        boundary (also right after a resume, which lands in the stage of the restored step)."""
        if not self.cfg.stages:
            return
        stage = self.cfg.stage_at(self.step)
        if stage == self.stage:
            return
        self.stage = stage
        if hasattr(self.loader, "set_step"):
            self.loader.set_step(self.step)
        lr = self.cfg.stages[stage].lr or self.cfg.optim.lr
        for name, sched in self.schedulers.items():
            sched.base_lrs = [self.task.lr(name) * lr / self.cfg.optim.lr for _ in sched.base_lrs]
            for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                group["lr"] = base * fn(sched.last_epoch)  # this step already runs at the stage's LR
        if self.info.is_main:
            s = self.cfg.stages[stage]
            shapes = ", ".join(f"{b.frames}x{b.height}x{b.width}" for b in s.buckets)
            print(f"[training] step {self.step}: stage {stage} (until step {s.until_step}; buckets {shapes}; "
                  f"peak lr {lr:g})", flush=True)

    def _skip(self, metrics: dict[str, float]) -> None:
        """Non-finite loss/gradients: drop this update, or stop with a message that names what happened."""
        self.nan_skips += 1
        last = self.ckpt.latest() or "none yet"
        detail = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        if self.cfg.nan_policy == "stop" or self.nan_skips >= self.cfg.max_nan_skips:
            why = ("training.nan_policy is 'stop'" if self.cfg.nan_policy == "stop"
                   else f"{self.nan_skips} consecutive steps skipped (training.max_nan_skips)")
            raise NonFiniteLossError(f"non-finite loss or gradient at step {self.step} ({detail}); stopping because "
                                     f"{why}. The last checkpoint is intact: {last}. Lower training.optim.lr, check "
                                     f"the data, or resume from that checkpoint.")
        if self.info.is_main:
            print(f"[training] step {self.step}: non-finite loss or gradient ({detail}); update skipped "
                  f"({self.nan_skips}/{self.cfg.max_nan_skips})", flush=True)

    # --- the run -------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run until training.steps (or stop_at); checkpoint, validate and export on the way."""
        from tqdm import tqdm

        cfg = self.cfg
        if cfg.checkpoint.resume:
            self.resume()
        end = cfg.stop_at or cfg.steps
        bar = tqdm(total=end, initial=self.step, disable=not self.info.is_main, desc=f"train {self.task.name}",
                   dynamic_ncols=True)
        it = endless(self.loader)
        history: deque[dict[str, float]] = deque(maxlen=HISTORY)  # bounded; metrics.jsonl has every step
        peak = peak_flops(self.info.device)
        accum = cfg.optim.grad_accum
        while self.step < end:
            self.enter_stage()
            t0 = time.perf_counter()
            batches = [next(it) for _ in range(accum)]
            metrics = self.train_step(batches if accum > 1 else batches[0])
            if self.stage is not None:
                metrics["stage"] = float(self.stage)
            if self.info.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            samples, tokens = metrics.pop("samples", 0.0), metrics.pop("tokens", 0.0)
            metrics = all_reduce_mean(metrics, self.info.device)
            world = self.info.dp_size  # a context-parallel group shares its samples
            metrics.update({"step_time_s": dt, "samples_per_s": samples * world / dt, "tokens_per_s": tokens * world / dt,
                            "peak_memory_gb": peak_memory_gb(self.info.device)})
            if self.flops_per_step and peak:
                metrics["mfu"] = self.flops_per_step / dt / peak
            history.append({"step": self.step, **metrics})
            log_now = self.step % cfg.log_every == 0 or self.step == end
            self.log.write(self.step, metrics, tensorboard=log_now)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4g}", sps=f"{metrics['samples_per_s']:.2f}")
            if log_now and self.info.is_main:
                bar.write(_format(self.step, metrics))
            if cfg.sample.every and self.step % cfg.sample.every == 0:
                self.task.validate(self.step, os.path.join(self.out_dir, "samples"))
            if self.step % cfg.checkpoint.every == 0 or self.step == end:
                self.save()
        bar.close()
        exported = []
        if self.step >= cfg.steps and cfg.checkpoint.export_diffusers:
            exported = self.task.export(os.path.join(self.out_dir, "export"))
        self.log.close()
        return {"step": self.step, "history": list(history), "checkpoint": self.ckpt.latest(), "exported": exported,
                "flops_per_step": self.flops_per_step}


def _format(step: int, m: dict[str, float]) -> str:
    keys = [k for k in m if k not in ("skipped",) and not k.startswith("lr/")]
    return f"step {step}: " + " ".join(f"{k}={m[k]:.4g}" for k in keys)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """Parameters that train (all of them, or a LoRA run's adapters)."""
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
