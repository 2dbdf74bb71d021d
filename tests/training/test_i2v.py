"""Image-to-video fine-tuning from tiny CogVideoXImageToVideoPipeline folders built offline by diffusers
(5b-I2V and 1.5-I2V layouts): LoRA and full training take the clip's first frame (noise augmented) as the
image, the export is an I2V pipeline that diffusers' own CogVideoXImageToVideoPipeline loads and that
reproduces our sample within 1e-4, and `training sample --image` works from a pipeline or a checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.training.helpers import write_config
from tests.training.test_finetune import LORA, TOL, finetune, prompt_embeds
from tests.training.tiny_pipeline import build_tiny_pipeline, diffusers_i2v_video
from training.__main__ import train


@pytest.fixture(scope="module")
def pipes(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("published")
    return {k: build_tiny_pipeline(str(root / k), i2v=k) for k in ("5b-i2v", "1.5-i2v")}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    from PIL import Image

    path = str(tmp_path_factory.mktemp("img") / "first.png")
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path


def ours_video(pipeline: str, emb: torch.Tensor, image: str, lora: str | None = None) -> torch.Tensor:
    """`training sample --pipeline --image` (its loading + generation) as [B, F, C, H, W] in [0, 1]."""
    from training.config import SampleConfig
    from training.sample import generate, load_images, load_pipeline

    run = load_pipeline(pipeline, torch.device("cpu"), lora)
    video = generate(run["transformer"], run["vae"], run["text"], run["schedule"], [], 9, 64, 64,
                     SampleConfig(steps=2, guidance=6.0, seed=3), torch.device("cpu"), text_emb=emb,
                     images=load_images([image], 64, 64))
    return (video + 1) / 2


def theirs(pipeline: str, emb: torch.Tensor, image: str, lora: str | None = None) -> torch.Tensor:
    from PIL import Image

    return diffusers_i2v_video(pipeline, emb, Image.open(image), 2, 6.0, 3, lora=lora)


def test_i2v_lora_exports_an_i2v_pipeline_diffusers_reproduces(pipes, image, tmp_path, capsys):
    train(write_config(str(tmp_path), finetune(pipes["5b-i2v"], 2, transformer={"lora": LORA})), "transformer")
    export = tmp_path / "data" / "runs" / "transformer" / "export"
    with open(export / "pipeline" / "model_index.json") as f:
        assert json.load(f)["_class_name"] == "CogVideoXImageToVideoPipeline"
    lora = str(export / "pytorch_lora_weights.safetensors")
    emb = prompt_embeds(str(export / "pipeline"))
    tuned = ours_video(str(export / "pipeline"), emb, image, lora)
    assert (tuned - ours_video(str(export / "pipeline"), emb, image)).abs().max() > 1e-3  # adapters learned
    torch.testing.assert_close(tuned, theirs(str(export / "pipeline"), emb, image, lora), atol=TOL, rtol=0)

    from training.sample import main as sample_main

    args = ["--pipeline", str(export / "pipeline"), "--lora", lora, "--prompt", "a red blob", "--steps", "1"]
    assert sample_main(args + ["--out", str(tmp_path / "s"), "--image", image]) == 0
    assert (tmp_path / "s" / "sample_000.mp4").stat().st_size > 0
    assert sample_main(args) == 2  # no image for an image-to-video model: a one-line error
    assert "--image" in capsys.readouterr().err


def test_i2v_full_finetune_of_1_5_exports_what_diffusers_reproduces(pipes, image, tmp_path):
    """1.5: trained on 13-frame clips (4 latent frames, whole 2-frame patches), sampled at 9 frames (3 latent
    frames: one padding frame in front, as the pipeline does); its VAE inverts the image latent scale."""
    cfg = finetune(pipes["1.5-i2v"], 1, data={"frames": 13}, sample={"images": [image]})
    train(write_config(str(tmp_path), cfg), "transformer")
    run = tmp_path / "data" / "runs" / "transformer"
    export = run / "export" / "pipeline"
    emb = prompt_embeds(str(export))
    ours = ours_video(str(export), emb, image)
    torch.testing.assert_close(ours, theirs(str(export), emb, image), atol=TOL, rtol=0)
    assert (ours - ours_video(pipes["1.5-i2v"], emb, image)).abs().max() > 1e-4  # trained weights exported

    from training.sample import main as sample_main

    # from the checkpoint: the image comes from training.sample.images
    assert sample_main(["--checkpoint", str(run), "--prompt", "a red blob", "--steps", "1", "--frames", "9",
                        "--out", str(tmp_path / "s")]) == 0


def test_training_conditions_on_the_clips_first_frame(pipes):
    """The image channels come from frame 0 alone: other frames do not change them, frame 0 does; the
    padding frames are zero; the noise augmentation is CogVideoX's exp(N(-3, 0.5)) sigma."""
    from training.config import TrainingConfig
    from training.parallelize import DistInfo
    from training.tasks.transformer import TransformerTask

    cfg = TrainingConfig.model_validate(finetune(pipes["5b-i2v"], 1))
    task = TransformerTask(cfg, DistInfo(0, 1, 0, torch.device("cpu"), None, False), "/nonexistent")
    task.build_models()
    assert task.i2v
    clip = torch.rand(2, 9, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    other = clip.clone()
    other[:, 1:] = -other[:, 1:]
    first = clip.clone()
    first[:, 0] = -first[:, 0]
    state = task.gen.get_state()
    conds = []
    for c in (clip, other, first):
        task.gen.set_state(state)
        (x,), kw = task.model_inputs(torch.zeros(2, 3, 4, 8, 8), {"frames": c})
        assert x.shape == (2, 3, 8, 8, 8) and kw == {}
        conds.append(x[:, :, 4:])
    assert torch.equal(conds[0], conds[1]) and not torch.allclose(conds[0], conds[2])
    assert conds[0][:, 1:].abs().max() == 0 and conds[0][:, 0].abs().max() > 0

    from model.i2v import noise_images

    zeros = torch.zeros(4000, 1, 1, 1)
    sigma = noise_images(zeros, torch.Generator().manual_seed(0)).abs() * (2 / torch.pi) ** -0.5
    assert abs(float(sigma.log().median()) - (-3.0)) < 0.3  # |N(0,1)| scales the median; loose


def test_i2v_config_errors_name_the_key(pipes, tmp_path):
    from training.config import TrainingConfig
    from training.parallelize import DistInfo
    from training.tasks.transformer import TransformerTask

    info = DistInfo(0, 1, 0, torch.device("cpu"), None, False)
    for extra, key in [({"sample": {"every": 1}}, "training.sample.images"),
                       ({"data": {"source": "latents"}}, "training.data.source")]:
        cfg = TrainingConfig.model_validate(finetune(pipes["5b-i2v"], 1, **extra))
        with pytest.raises(ValueError, match=key):
            TransformerTask(cfg, info, str(tmp_path)).build_models()
