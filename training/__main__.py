"""Command line of the trainer.

    torchrun --nproc_per_node N -m training pipelines.yaml --task vae|transformer [--set training.steps=100]
    python -m training pipelines.yaml --task vae                      (one process: same code, gloo/NCCL group of 1)
    python -m training sample --checkpoint <run or checkpoint> --prompt "..." [--out dir]
    python -m training sample --pipeline <CogVideoX pipeline folder or hub name> [--lora FILE] --prompt "..."
    python -m training export --checkpoint <run or checkpoint> --out <folder>
    python -m training latents pipelines.yaml [--limit N]             (precompute VAE latents + T5 embeddings)
    torchrun ... -m training cache pipelines.yaml                      (the per-clip latent/text cache, training/cache.py)
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from training.config import resolve_out_dir  # noqa: F401  (kept importable from here)


def train(config: str, task: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Train the task configured in `config` in this process (one rank of a torchrun job, or alone)."""
    from training.data import build_loader
    from vidcurate.flow import load_config
    from training.parallelize import init_distributed, shutdown
    from training.tasks import task_class
    from training.trainer import Trainer

    cfg = load_config(config, overrides, check_inputs=False)
    tcfg = cfg.training
    name = task or tcfg.task
    cls = task_class(name)
    out_dir = resolve_out_dir(cfg.root, tcfg.out_dir, cls.name)
    info = init_distributed(tcfg.parallel, tcfg.device)
    try:
        task_obj = cls(tcfg, info, out_dir)
        if tcfg.data.source == "cache":  # the per-clip latent cache (training/cache.py)
            from training.cache import cache_loader

            loader = cache_loader(cfg, info.dp_rank, info.dp_size, out_dir)
        else:
            loader = build_loader(cfg, out_dir, info.dp_rank, info.dp_size)  # one stream per data-parallel rank
        return Trainer(tcfg, task_obj, loader, info, out_dir).train()
    finally:
        shutdown(info)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sample":
        from training.sample import main as sample_main

        return sample_main(argv[1:])
    if argv and argv[0] == "export":
        from training.sample import export_main

        return export_main(argv[1:])
    if argv and argv[0] == "cache":
        from training.cache import main as cache_main

        from vidcurate.flow import load_config

        return cache_main(argv[1:], load_config)
    if argv and argv[0] == "latents":
        from training.latents import main as latents_main

        from vidcurate.flow import load_config

        return latents_main(argv[1:], load_config)
    p = argparse.ArgumentParser(prog="python -m training", description="Train the VAE or the expert transformer.")
    p.add_argument("config", help="pipelines.yaml (its training: section)")
    p.add_argument("--task", help="vae | transformer (default: training.task), or module:Class of a custom Task")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set training.steps=100 (repeatable)")
    args = p.parse_args(argv)
    from curation.config import ConfigError
    from training.trainer import NonFiniteLossError

    try:
        summary = train(args.config, args.task, args.overrides)
    except (ConfigError, NonFiniteLossError, FileNotFoundError, ValueError) as e:
        print(f"[training] error: {e}", file=sys.stderr, flush=True)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[training] done at step {summary['step']}; checkpoint {summary['checkpoint']}", flush=True)
        for path in summary["exported"]:
            print(f"[training] exported {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
