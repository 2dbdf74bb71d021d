"""Context parallelism in the trainer (torchrun, gloo on CPU): cp=2 runs of the transformer and VAE tasks
give the losses of the one-process runs, and a DCP checkpoint written with dp=2 resumes under cp=2
(weights and optimiser resharded) exactly as it resumes in one process."""
from __future__ import annotations

import os
import shutil

import pytest

from tests.training.helpers import losses, run_cli, write_config


def training(steps: int, **extra) -> dict:
    cfg = {"steps": steps, "log_every": 1, "out_dir": "runs", "seed": 3,
           "data": {"source": "synthetic", "frames": 9, "height": 32, "width": 32, "batch_size": 1,
                    "synthetic_clips": 4},
           "optim": {"lr": 1e-3, "warmup_steps": 1}, "checkpoint": {"every": 2, "keep": 1, "export_diffusers": False},
           "transformer": {"max_text_len": 8, "text_dropout": 0.0, "vae": "tiny-random", "text_encoder": "tiny-random"}}
    for k, v in extra.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and k in cfg else v
    return cfg


def _run(folder, cfg: dict, nproc: int, task: str = "transformer") -> dict[int, float]:
    path = write_config(str(folder), cfg)
    r = run_cli([path, "--task", task], nproc=nproc)
    assert r.returncode == 0, r.stderr[-3000:]
    return losses(os.path.join(str(folder), "data", "runs", task))


def _close(a: dict[int, float], b: dict[int, float], rel: float = 1e-5) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= rel * max(1.0, abs(b[k])) for k in a)


@pytest.mark.heavy
@pytest.mark.parametrize("attention", ["ulysses", "allgather"])
def test_cp2_training_gives_the_cp1_losses(tmp_path, attention):
    ref = _run(tmp_path / "cp1", training(3), 1)
    cp = _run(tmp_path / "cp2", training(3, parallel={"cp_size": 2, "cp_attention": attention}), 2)
    assert _close(cp, ref), (cp, ref)


@pytest.mark.heavy
def test_dp2_checkpoint_resumes_under_cp2(tmp_path):
    dp = _run(tmp_path / "dp2", training(4, stop_at=2), 2)
    assert sorted(dp) == [1, 2]
    for name in ("cp2", "one"):  # the same checkpoint continued under two layouts
        shutil.copytree(tmp_path / "dp2", tmp_path / name)
    cp = _run(tmp_path / "cp2", training(4, parallel={"cp_size": 2}), 2)
    one = _run(tmp_path / "one", training(4), 1)
    assert sorted(cp) == [1, 2, 3, 4] and cp[1] == dp[1]  # steps 3-4 appended after the resumed checkpoint
    resumed = {k: v for k, v in cp.items() if k > 2}
    assert _close(resumed, {k: v for k, v in one.items() if k > 2}), (cp, one)
    fresh = _run(tmp_path / "fresh", training(2, parallel={"cp_size": 2}), 2)  # weights really came from the checkpoint
    assert abs(fresh[1] - resumed[3]) > 1e-4


def test_cp_size_must_divide_the_shard_group():
    import torch

    from training.config import ParallelConfig
    from training.parallelize import build_cp_mesh

    with pytest.raises(ValueError, match=r"cp_size \(2\) must divide shard_size \(3; None = all 6"):
        build_cp_mesh(ParallelConfig(cp_size=2, shard_size=3), torch.device("cpu"), 6)
    with pytest.raises(ValueError, match=r"shard_size \(4\) must divide the number of processes \(6\)"):
        build_cp_mesh(ParallelConfig(cp_size=2, shard_size=4), torch.device("cpu"), 6)


@pytest.mark.heavy
def test_vae_cp2_training_gives_the_cp1_losses(tmp_path):
    vae = {"gan_start_step": 2, "disc_channels": 8, "disc_layers": 2}  # the GAN switches on at step 2
    cfg = lambda **p: training(3, data={"height": 16, "width": 16, "frames": 17}, vae=vae, **p)  # noqa: E731
    ref = _run(tmp_path / "cp1", cfg(), 1, "vae")
    cp = _run(tmp_path / "cp2", cfg(parallel={"cp_size": 2}), 2, "vae")
    assert _close(cp, ref, 1e-4), (cp, ref)
