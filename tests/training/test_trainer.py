"""The trainer core with a stand-in task: steps, checkpoints, exact resume, the NaN guard, logs."""
from __future__ import annotations

import os

import pytest

from tests.training.helpers import losses, run_cli, write_config
from training.__main__ import train

TOY = "tests.training.toy:ToyTask"


def toy_training(steps: int = 6, **extra) -> dict:
    base = {"steps": steps, "log_every": 2, "out_dir": "runs",
            "data": {"source": "synthetic", "frames": 1, "height": 8, "width": 8, "batch_size": 2, "synthetic_clips": 5},
            "optim": {"lr": 1e-2, "warmup_steps": 2},
            "checkpoint": {"every": 2, "keep": 2, "export_diffusers": False}}
    for k, v in extra.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and k in base else v
    return base


def test_train_resume_is_exact(tmp_path):
    full = write_config(str(tmp_path / "a"), toy_training(steps=6))
    summary = train(full, TOY)
    assert summary["step"] == 6
    run_a = str(tmp_path / "a" / "data" / "runs" / "toy")
    ref = losses(run_a)
    assert sorted(ref) == [1, 2, 3, 4, 5, 6]
    assert ref[6] < ref[1]  # it learns
    # keep=2: only the last two checkpoints remain, and no temporary folder
    assert sorted(os.listdir(os.path.join(run_a, "checkpoints"))) == ["step_00000004", "step_00000006"]
    assert os.listdir(os.path.join(run_a, "tensorboard"))

    staged = write_config(str(tmp_path / "b"), toy_training(steps=6, stop_at=3, checkpoint={"every": 100}))
    assert train(staged, TOY)["step"] == 3  # stop_at saves a checkpoint at step 3
    staged = write_config(str(tmp_path / "b"), toy_training(steps=6, checkpoint={"every": 100}))
    assert train(staged, TOY)["step"] == 6
    got = losses(str(tmp_path / "b" / "data" / "runs" / "toy"))
    assert got == ref  # bit-identical: weights, Adam moments, LR schedule, RNGs and data position restored


def test_nan_loss_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_NAN_AT", "2")
    cfg = write_config(str(tmp_path), toy_training(steps=4))
    summary = train(cfg, TOY)
    hist = {h["step"]: h for h in summary["history"]}
    assert hist[3]["skipped"] == 1.0 and hist[2]["skipped"] == 0.0 and hist[4]["skipped"] == 0.0
    assert summary["step"] == 4


def test_nan_loss_stops_with_intact_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_NAN_AT", "3")
    cfg = write_config(str(tmp_path), toy_training(steps=6, nan_policy="stop"))
    from training.trainer import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match=r"step 3 .*last checkpoint is intact: .*step_00000002"):
        train(cfg, TOY)
    ck = tmp_path / "data" / "runs" / "toy" / "checkpoints"
    assert sorted(os.listdir(ck)) == ["step_00000002"]
    assert (ck / "step_00000002" / "meta.json").exists()


def test_cli_one_process_and_errors(tmp_path):
    cfg = write_config(str(tmp_path), toy_training(steps=2))
    r = run_cli([cfg, "--task", TOY])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "done at step 2" in r.stdout
    bad = write_config(str(tmp_path / "bad"), toy_training(steps=2, optim={"lrr": 1}))
    r = run_cli([bad, "--task", TOY])
    assert r.returncode == 2 and "training.optim.lrr: unknown key" in r.stderr


@pytest.mark.heavy
def test_two_process_fsdp_resume_is_exact(tmp_path):
    cfg = write_config(str(tmp_path / "a"), toy_training(steps=4))
    r = run_cli([cfg, "--task", TOY], nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = losses(str(tmp_path / "a" / "data" / "runs" / "toy"))
    cfg = write_config(str(tmp_path / "b"), toy_training(steps=4, stop_at=2))
    assert run_cli([cfg, "--task", TOY], nproc=2).returncode == 0
    cfg = write_config(str(tmp_path / "b"), toy_training(steps=4))
    r = run_cli([cfg, "--task", TOY], nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    assert losses(str(tmp_path / "b" / "data" / "runs" / "toy")) == ref
    # hybrid sharding (2 copies x 1 shard) runs too
    cfg = write_config(str(tmp_path / "c"), toy_training(steps=2, parallel={"shard_size": 1}))
    r = run_cli([cfg, "--task", TOY], nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]


def test_activation_checkpointing_gives_the_same_losses(tmp_path):
    plain = write_config(str(tmp_path / "a"), toy_training(steps=3))
    train(plain, TOY)
    ac = write_config(str(tmp_path / "b"), toy_training(steps=3, parallel={"activation_checkpointing": True}))
    train(ac, TOY)
    assert losses(str(tmp_path / "b" / "data" / "runs" / "toy")) == losses(str(tmp_path / "a" / "data" / "runs" / "toy"))
