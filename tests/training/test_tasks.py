"""The real tasks on tiny models: VAE losses (L1, KL, LPIPS, GAN), transformer v-prediction with exact
resume, EMA, sampling to mp4 and export to diffusers folders."""
from __future__ import annotations

import os

import pytest
import torch

from tests.training.helpers import losses, write_config
from training.__main__ import train


def base(steps: int, **extra) -> dict:
    cfg = {"steps": steps, "log_every": 1, "out_dir": "runs",
           "data": {"source": "synthetic", "frames": 9, "height": 16, "width": 16, "batch_size": 1,
                    "synthetic_clips": 3},
           "optim": {"lr": 1e-3, "warmup_steps": 1}, "checkpoint": {"every": 2, "keep": 1},
           "transformer": {"vae": "tiny-random", "text_encoder": "tiny-random"}}
    for k, v in extra.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and k in cfg else v
    return cfg


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory) -> tuple[str, str]:
    """Random VGG16 features + LPIPS heads saved under their published key names."""
    from torchvision.models import vgg16

    d = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    feats = {f"features.{k}": v for k, v in vgg16(weights=None).features.state_dict().items()}
    torch.save(feats, d / "vgg16.pth")
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(heads, d / "vgg.pth")
    return str(d / "vgg16.pth"), str(d / "vgg.pth")


def test_vae_task_all_loss_terms_and_export(tmp_path, lpips_files):
    backbone, linear = lpips_files
    cfg = write_config(str(tmp_path), base(3, vae={"gan_start_step": 1, "lpips_backbone": backbone,
                                                    "lpips_linear": linear, "disc_channels": 8, "disc_layers": 2}))
    summary = train(cfg, "vae")
    h = {r["step"]: r for r in summary["history"]}
    assert {"l1", "lpips", "kl", "psnr", "grad_norm/vae"} <= set(h[1])
    assert "d_loss" not in h[1] and h[1]["grad_norm/disc"] == 0  # GAN off before gan_start_step
    assert {"d_loss", "g_adv", "gan_weight"} <= set(h[2]) and h[2]["grad_norm/disc"] > 0
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in h.values())
    from diffusers import AutoencoderKLCogVideoX

    (folder,) = summary["exported"]
    AutoencoderKLCogVideoX.from_pretrained(folder)  # a valid diffusers folder


def test_vae_rejects_frame_counts_it_cannot_reproduce(tmp_path):
    cfg = write_config(str(tmp_path), base(1, data={"frames": 5}))
    with pytest.raises(ValueError, match="8N\\+1 frames"):
        train(cfg, "vae")


def test_transformer_resume_exact_ema_sample_export(tmp_path):
    extra = dict(data={"height": 32, "width": 32, "image_ratio": 0.5}, transformer={"max_text_len": 12, "ema_decay": 0.9},
                 sample={"steps": 2, "guidance": 3.0})
    ref_cfg = write_config(str(tmp_path / "a"), base(4, **extra))
    summary = train(ref_cfg, "transformer")
    ref = losses(str(tmp_path / "a" / "data" / "runs" / "transformer"))
    assert len(ref) == 4 and all(v == v for v in ref.values())
    assert [os.path.basename(p) for p in summary["exported"]] == ["transformer", "transformer_ema", "pipeline"]
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

    CogVideoXTransformer3DModel.from_pretrained(summary["exported"][0])
    CogVideoXPipeline.from_pretrained(summary["exported"][2])  # tiny random VAE and T5 (ByT5 tokenizer) included

    train(write_config(str(tmp_path / "b"), base(4, stop_at=2, **extra)), "transformer")
    train(write_config(str(tmp_path / "b"), base(4, **extra)), "transformer")
    assert losses(str(tmp_path / "b" / "data" / "runs" / "transformer")) == ref  # exact, with EMA + dropout + images

    from training.sample import main as sample_main

    out = tmp_path / "samples"
    assert sample_main(["--checkpoint", str(tmp_path / "a" / "data" / "runs" / "transformer"), "--prompt", "a red blob",
                        "--out", str(out), "--steps", "2"]) == 0
    import av

    with av.open(str(out / "sample_000.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 9


def test_sample_rejects_a_vae_checkpoint(tmp_path):
    summary = train(write_config(str(tmp_path), base(1, checkpoint={"export_diffusers": False})), "vae")
    from training.sample import main as sample_main

    assert sample_main(["--checkpoint", summary["checkpoint"], "--prompt", "x"]) == 2


def test_precomputed_latents_train_the_transformer(tmp_path):
    from training.latents import write_latents
    from vidcurate.flow import load_config

    cfg = write_config(str(tmp_path), base(2, data={"height": 32, "width": 32}, transformer={"max_text_len": 12}))
    parts = write_latents(load_config(cfg, check_inputs=False), limit=2)
    assert len(parts) == 2
    from safetensors.torch import load_file

    part = load_file(parts[0])
    assert part["latents"].shape == (1, 3, 4, 4, 4) and part["text_emb"].shape[:2] == (1, 12)
    summary = train(cfg, "transformer", ["training.data.source=latents"])
    assert summary["step"] == 2 and all(h["loss"] == h["loss"] for h in summary["history"])


def test_transformer_flops_estimate_is_close_to_counted_flops(tmp_path):
    """The analytic MFU numerator (6NT + 12LT^2d) is within 30% of FlopCounterMode's count."""
    from torch.utils.flop_counter import FlopCounterMode

    from training.config import TrainingConfig
    from training.parallelize import init_distributed, shutdown
    from training.tasks.transformer import TransformerTask
    from training.trainer import Trainer

    cfg = TrainingConfig.model_validate(base(1, data={"height": 64, "width": 64}, transformer={"max_text_len": 12}))
    info = init_distributed(cfg.parallel, "cpu")
    try:
        task = TransformerTask(cfg, info, str(tmp_path))
        Trainer(cfg, task, None, info, str(tmp_path))
        batch = {"latents": torch.randn(2, 3, 4, 8, 8), "text_emb": torch.randn(2, 12, task.text.dim), "captions": []}
        with FlopCounterMode(display=False) as counter:
            task.forward_backward(batch, 0)
        counted, estimate = counter.get_total_flops(), task.flops_per_step(batch)
    finally:
        shutdown(info)
    assert 0.7 < estimate / counted < 1.3, (estimate, counted)
