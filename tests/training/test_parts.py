"""Pieces of the trainer: config validation, LR schedule, LPIPS parity with the lpips package,
discriminator shapes, FLOP counting, checkpoint atomicity."""
from __future__ import annotations

import os

import pytest
import torch

from curation.config import ConfigError
from vidcurate.flow import load_config
from tests.training.helpers import REPO, write_config
from training.trainer import lr_lambda


def test_pipelines_yaml_training_section_is_valid():
    cfg = load_config(os.path.join(REPO, "pipelines.yaml"), check_inputs=False).training
    assert cfg.optim.betas == (0.9, 0.95) and cfg.optim.weight_decay == 1e-4 and cfg.optim.grad_clip == 1.0
    assert cfg.transformer.text_dropout == 0.1 and cfg.data.source == "shards"


@pytest.mark.parametrize("training, key", [({"steps": 2, "stop_at": 3}, "training: Value error, stop_at"),
                                           ({"data": {"height": 20}}, "training.data"),
                                           ({"parallel": {"mixed_precision": "fp8"}}, "training.parallel.mixed_precision"),
                                           ({"vae": {"lpips": 1}}, "training.vae.lpips: unknown key")])
def test_bad_training_config_names_the_key(tmp_path, training, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(write_config(str(tmp_path), training), check_inputs=False)


def test_lr_schedule_warmup_then_cosine():
    values = [lr_lambda(s, 10, 110, 0.1) for s in range(111)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.55) and values[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[9:], values[10:]))


def test_lpips_matches_the_lpips_package(tmp_path):
    lpips = pytest.importorskip("lpips")
    from training.losses import LPIPS

    torch.manual_seed(0)
    ref = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    feats = {}
    for k, v in ref.net.state_dict().items():  # net.sliceS.N.weight keeps vgg16.features' index N
        _, n, name = k.split(".")
        feats[f"features.{n}.{name}"] = v
    torch.save(feats, tmp_path / "vgg16.pth")
    linear = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")
    ours = LPIPS.from_files(str(tmp_path / "vgg16.pth"), linear)
    x, y = torch.rand(2, 2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = ref(x, y).flatten()
        got = ours(x, y)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert float(ours(x, x).abs().max()) < 1e-6
    with pytest.raises(KeyError, match="lpips package"):
        LPIPS.from_files(str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg16.pth"))


def test_discriminator_handles_videos_and_images():
    from training.losses import PatchDiscriminator3D

    d = PatchDiscriminator3D(8, 3)
    assert d(torch.zeros(2, 3, 9, 32, 32)).shape == (2, 1, 9, 4, 4)
    assert d(torch.zeros(1, 3, 1, 16, 16)).shape == (1, 1, 1, 2, 2)


def test_flops_are_counted_and_checkpoint_tmp_folders_are_ignored(tmp_path):
    from tests.training.test_trainer import TOY, toy_training
    from training.__main__ import train
    from training.checkpoint import list_checkpoints

    cfg = write_config(str(tmp_path), toy_training(steps=2, measure_flops=True))
    summary = train(cfg, TOY)
    assert summary["flops_per_step"] > 0
    root = tmp_path / "data" / "runs" / "toy" / "checkpoints"
    (root / "step_00000009.tmp").mkdir()  # a crash mid-save leaves this: never taken as a checkpoint
    (root / "step_00000008").mkdir()  # no meta.json: incomplete
    assert [os.path.basename(p) for p in list_checkpoints(str(root))] == ["step_00000002"]
