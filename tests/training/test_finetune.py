"""Fine-tuning a published CogVideoX pipeline: init_from a pipeline folder, LoRA (peft) with exact resume,
diffusers-format exports that diffusers' own CogVideoXPipeline loads and reproduces, `training sample
--pipeline [--lora]`, gradient accumulation, progressive stages, mixed-shape latents, bad input."""
from __future__ import annotations

import json
import os
import re

import pytest
import torch

from tests.training.helpers import losses, run_cli, write_config
from tests.training.tiny_pipeline import build_tiny_pipeline, diffusers_video
from training.__main__ import train

TOL = 1e-4  # diffusers' pipeline vs ours on the same export (measured ~5e-6: fp32 rounding of two code paths)


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory) -> str:
    return build_tiny_pipeline(str(tmp_path_factory.mktemp("published") / "CogVideoX-tiny"))


def finetune(pipe: str, steps: int, **extra) -> dict:
    cfg = {"steps": steps, "log_every": 1, "out_dir": "runs",
           "data": {"source": "synthetic", "frames": 9, "height": 64, "width": 64, "batch_size": 1,
                    "synthetic_clips": 3},
           "optim": {"lr": 1e-2, "warmup_steps": 1}, "checkpoint": {"every": 1, "keep": 1},
           "transformer": {"init_from": pipe, "max_text_len": 16, "text_dropout": 0.0}}
    for k, v in extra.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and k in cfg else v
    return cfg


def ours_video(pipeline: str, emb: torch.Tensor, lora: str | None = None) -> torch.Tensor:
    """`training sample --pipeline` (its loading + generation functions) as [B, F, C, H, W] in [0, 1]."""
    from training.config import SampleConfig
    from training.sample import generate, load_pipeline

    run = load_pipeline(pipeline, torch.device("cpu"), lora)
    s = SampleConfig(steps=2, guidance=6.0, seed=3)
    video = generate(run["transformer"], run["vae"], run["text"], run["schedule"], [], 9, 64, 64, s,
                     torch.device("cpu"), text_emb=emb)
    return (video + 1) / 2


def prompt_embeds(pipeline: str) -> torch.Tensor:
    from model.text import TextEncoder

    return TextEncoder.from_pretrained(pipeline, max_length=16).encode(["a red blob moving right"])


LORA = {"rank": 4, "alpha": 8.0, "targets": ["to_q", "to_k", "to_v", "to_out", "ff"], "export_merged": True}


def test_lora_from_a_published_pipeline_exports_what_diffusers_loads(pipe_dir, tmp_path, capsys):
    ref = train(write_config(str(tmp_path / "a"), finetune(pipe_dir, 2, transformer={"lora": LORA})), "transformer")
    run = tmp_path / "a" / "data" / "runs" / "transformer"
    export = run / "export"
    lora_file = str(export / "pytorch_lora_weights.safetensors")
    assert sorted(os.path.basename(p) for p in ref["exported"]) == ["pipeline", "pytorch_lora_weights.safetensors",
                                                                    "transformer_merged"]
    from safetensors import safe_open

    with safe_open(lora_file, "pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert all(k.startswith("transformer.transformer_blocks.") and ".lora_" in k for k in keys)
    assert "transformer.transformer_blocks.1.attn1.to_out.0.lora_B.weight" in keys
    assert "transformer.transformer_blocks.0.ff.net.0.proj.lora_A.weight" in keys
    assert meta["transformer.r"] == 4 and meta["transformer.lora_alpha"] == 8.0
    # only the adapters trained: the exported pipeline's base transformer is the published file itself (linked)
    src = os.path.join(pipe_dir, "transformer", "diffusion_pytorch_model.safetensors")
    dst = export / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors"
    assert os.path.samefile(src, dst) or open(src, "rb").read() == dst.read_bytes()
    assert not (export / "pipeline.tmp").exists()

    emb = prompt_embeds(str(export / "pipeline"))
    base = ours_video(str(export / "pipeline"), emb)
    tuned = ours_video(str(export / "pipeline"), emb, lora_file)
    assert (tuned - base).abs().max() > 1e-3  # the adapters learned something
    expected = diffusers_video(str(export / "pipeline"), emb, 2, 6.0, 3, lora=lora_file)
    torch.testing.assert_close(tuned, expected, atol=TOL, rtol=0)
    # merged weights = base + adapters: the same video from a transformer-only swap
    from model.convert import load_diffusers_transformer
    from training.sample import load_pipeline

    merged = load_diffusers_transformer(str(export / "transformer_merged"))
    lora_run = load_pipeline(str(export / "pipeline"), torch.device("cpu"), lora_file)
    for (k, a), b in zip(merged.state_dict().items(), lora_run["transformer"].state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)

    # the run's checkpoint (base + adapters through DCP, merged for sampling) holds the same model
    from training.sample import load_run

    ckpt = load_run(str(run), torch.device("cpu"))
    for (k, a), b in zip(ckpt["transformer"].state_dict().items(), lora_run["transformer"].state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)

    from training.sample import main as sample_main

    out = tmp_path / "samples"
    assert sample_main(["--pipeline", str(export / "pipeline"), "--lora", lora_file, "--prompt", "a red blob",
                        "--steps", "2", "--out", str(out)]) == 0
    import av

    with av.open(str(out / "sample_000.mp4")) as c:  # the pipeline's own size: 9 frames of 64x64
        frames = [f for f in c.decode(video=0)]
    assert len(frames) == 9 and (frames[0].width, frames[0].height) == (64, 64)
    assert "pytorch_lora_weights.safetensors" not in capsys.readouterr().err


@pytest.mark.heavy
def test_lora_resume_is_exact(pipe_dir, tmp_path):
    train(write_config(str(tmp_path / "a"), finetune(pipe_dir, 3, transformer={"lora": LORA})), "transformer")
    train(write_config(str(tmp_path / "b"), finetune(pipe_dir, 3, stop_at=1, transformer={"lora": LORA})), "transformer")
    train(write_config(str(tmp_path / "b"), finetune(pipe_dir, 3, transformer={"lora": LORA})), "transformer")
    assert losses(str(tmp_path / "b" / "data" / "runs" / "transformer")) == losses(str(tmp_path / "a" / "data" / "runs" / "transformer"))


def test_full_finetune_from_a_pipeline_exports_a_pipeline_diffusers_reproduces(pipe_dir, tmp_path):
    summary = train(write_config(str(tmp_path), finetune(pipe_dir, 1)), "transformer")
    export = tmp_path / "data" / "runs" / "transformer" / "export"
    assert sorted(os.path.basename(p) for p in summary["exported"]) == ["pipeline", "transformer"]
    with open(export / "pipeline" / "scheduler" / "scheduler_config.json") as f:
        sched = json.load(f)
    assert sched["_class_name"] == "CogVideoXDDIMScheduler" and sched["snr_shift_scale"] == 1.0  # from the pipeline
    assert os.path.samefile(os.path.join(pipe_dir, "vae", "diffusion_pytorch_model.safetensors"),
                            export / "pipeline" / "vae" / "diffusion_pytorch_model.safetensors")
    emb = prompt_embeds(str(export / "pipeline"))
    ours = ours_video(str(export / "pipeline"), emb)
    torch.testing.assert_close(ours, diffusers_video(str(export / "pipeline"), emb, 2, 6.0, 3), atol=TOL, rtol=0)
    published = ours_video(pipe_dir, emb)
    assert (ours - published).abs().max() > 1e-4  # the export holds the trained weights, not the published ones


def test_schedule_and_components_come_from_the_pipeline_unless_overridden(pipe_dir):
    from training.config import TrainingConfig
    from training.pipeline import component, schedule_config

    cfg = TrainingConfig.model_validate({"transformer": {"init_from": pipe_dir}})
    assert schedule_config(cfg).snr_shift_scale == 1.0 and schedule_config(cfg).zero_terminal_snr
    assert component(cfg, "vae") == pipe_dir and component(cfg, "text_encoder") == pipe_dir
    cfg = TrainingConfig.model_validate({"transformer": {"init_from": pipe_dir, "snr_shift_scale": 3.0,
                                                         "zero_terminal_snr": False, "vae": "/elsewhere"}})
    assert schedule_config(cfg).snr_shift_scale == 3.0 and not schedule_config(cfg).zero_terminal_snr
    assert component(cfg, "vae") == "/elsewhere"
    assert schedule_config(TrainingConfig()).snr_shift_scale == 3.0  # no pipeline: the 2b default


def test_bad_inputs_are_one_line_errors_and_touch_nothing(pipe_dir, tmp_path, monkeypatch, capsys):
    not_pipe = tmp_path / "not-a-pipeline"
    not_pipe.mkdir()
    (not_pipe / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    cfg = write_config(str(tmp_path / "run"), finetune(str(not_pipe), 1))
    run_dir = tmp_path / "run" / "data" / "runs" / "transformer"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("kept\n")
    with pytest.raises(ValueError, match=r"init_from .*not-a-pipeline.*'StableDiffusionPipeline', not a CogVideoX"):
        train(cfg, "transformer")
    (not_pipe / "model_index.json").unlink()
    with pytest.raises(ValueError, match=r"neither a CogVideoX pipeline .* nor a CogVideoXTransformer3DModel"):
        train(cfg, "transformer")
    assert os.listdir(run_dir) == ["metrics.jsonl"] and (run_dir / "metrics.jsonl").read_text() == "kept\n"

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network: the hub cannot be asked
    with pytest.raises(ValueError, match=r"init_from 'nobody/no-such-cogvideox': not a local folder, and the "
                                         r"Hugging Face hub cannot provide it"):
        train(write_config(str(tmp_path / "hub"), finetune("nobody/no-such-cogvideox", 1)), "transformer")

    from safetensors.torch import save_file

    wrong = tmp_path / "other_model_lora.safetensors"  # adapters of a wider model (to_q in: 64, ours: 32)
    save_file({"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 64),
               "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(32, 4)}, str(wrong))
    from training.sample import main as sample_main

    out = tmp_path / "out"
    for lora, msg in ((wrong, r"to_q adapter is \(32, 4\) @ \(4, 64\) but the layer is \(32, 32\)"),
                      (tmp_path / "missing.safetensors", "no such file")):
        capsys.readouterr()
        assert sample_main(["--pipeline", pipe_dir, "--lora", str(lora), "--prompt", "x", "--steps", "1",
                            "--out", str(out)]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[training")]  # (no progress bars)
        assert len(err) == 1 and err[0].startswith("[training sample] error: --lora ") and str(lora) in err[0]
        assert re.search(msg, err[0]), err[0]
    assert not out.exists()
    assert sample_main(["--pipeline", str(not_pipe), "--prompt", "x"]) == 2
    assert "not a CogVideoX pipeline folder (no model_index.json)" in capsys.readouterr().err


def test_grad_accumulation_equals_one_bigger_batch(tmp_path):
    """2 micro-batches of 1 give the update of one batch of 2 (fp32; the only difference is summation
    order, so weights agree to 1e-6)."""
    from tests.training.test_trainer import toy_training

    TOY = "tests.training.toy:DeterministicToyTask"
    a = train(write_config(str(tmp_path / "a"), toy_training(steps=3, data={"batch_size": 2})), TOY)
    b = train(write_config(str(tmp_path / "b"), toy_training(steps=3, data={"batch_size": 1},
                                                             optim={"grad_accum": 2})), TOY)
    for ha, hb in zip(a["history"], b["history"]):
        assert ha["loss"] == pytest.approx(hb["loss"], abs=1e-6, rel=0)
        assert ha["grad_norm/toy"] == pytest.approx(hb["grad_norm/toy"], abs=1e-6, rel=0)
        assert ha["samples_per_s"] > 0 and hb["tokens_per_s"] > 0
    c = train(write_config(str(tmp_path / "c"), toy_training(steps=3, data={"batch_size": 1})), TOY)
    assert abs(c["history"][-1]["loss"] - a["history"][-1]["loss"]) > 1e-4  # batch 1 alone differs


def test_progressive_stages_switch_and_resume_in_the_right_stage(tmp_path):
    from tests.training.test_trainer import toy_training

    TOY = "tests.training.toy:ToyTask"
    stages = [{"until_step": 2, "buckets": [{"frames": 1, "height": 8, "width": 8}], "batch_size": 4, "lr": 5e-3},
              {"until_step": 5, "buckets": [{"frames": 5, "height": 16, "width": 8}], "batch_size": 1}]
    ref = train(write_config(str(tmp_path / "a"), toy_training(steps=5, stages=stages)), TOY)
    h = {r["step"]: r for r in ref["history"]}
    assert [h[s]["stage"] for s in range(1, 6)] == [0, 0, 1, 1, 1]
    # tokens per step = B x F x H x W of the stage's shape (step time differs, so compare per-step tokens)
    assert [round(h[s]["tokens_per_s"] * h[s]["step_time_s"]) for s in (1, 3)] == [4 * 64, 5 * 128]
    from training.trainer import lr_lambda

    lrs = [h[s]["lr/toy"] for s in range(1, 6)]  # stage 0 peaks at its own 5e-3, stage 1 at optim.lr 1e-2
    assert lrs == pytest.approx([(5e-3 if s < 2 else 1e-2) * lr_lambda(s, 2, 5, 0.0) for s in range(5)])
    ref_losses = losses(str(tmp_path / "a" / "data" / "runs" / "toy"))
    for stop in (3,):  # resume inside stage 1: the stage and its loader position come back
        cfg = toy_training(steps=5, stages=stages, checkpoint={"every": 100})
        b = str(tmp_path / f"b{stop}")
        train(write_config(b, {**cfg, "stop_at": stop}), TOY)
        train(write_config(b, cfg), TOY)
        assert losses(os.path.join(b, "data", "runs", "toy")) == ref_losses


def test_latents_of_several_buckets_are_batched_by_shape(tmp_path):
    from safetensors.torch import save_file

    from training.data import LatentLoader

    folder = tmp_path / "latents"
    folder.mkdir()
    save_file({"latents": torch.randn(3, 3, 4, 4, 4), "text_emb": torch.randn(3, 12, 32)}, str(folder / "part-0.safetensors"))
    save_file({"latents": torch.randn(2, 1, 4, 4, 6), "text_emb": torch.randn(2, 12, 32)}, str(folder / "part-1.safetensors"))
    save_file({"latents": torch.randn(1, 3, 4, 4, 4), "text_emb": torch.randn(1, 12, 32)}, str(folder / "part-2.safetensors"))
    it = iter(LatentLoader(str(folder), batch_size=2))
    shapes = [tuple(next(it)["latents"].shape) for _ in range(4)]
    assert shapes == [(2, 3, 4, 4, 4), (2, 3, 4, 4, 4), (2, 1, 4, 4, 6), (2, 3, 4, 4, 4)]  # epoch of 3, then again
    cfg = {"steps": 3, "out_dir": "runs", "data": {"source": "latents", "latents_dir": str(folder), "batch_size": 2},
           "checkpoint": {"export_diffusers": False},
           "transformer": {"max_text_len": 12, "vae": "tiny-random", "text_encoder": "tiny-random"}}
    summary = train(write_config(str(tmp_path), cfg), "transformer")
    assert summary["step"] == 3 and all(h["loss"] == h["loss"] for h in summary["history"])


@pytest.mark.heavy
def test_two_process_fsdp_lora_resume_is_exact(pipe_dir, tmp_path):
    lora = {"rank": 4, "alpha": 4.0}
    cfg = finetune(pipe_dir, 4, transformer={"lora": lora}, checkpoint={"every": 2, "keep": 1})
    r = run_cli([write_config(str(tmp_path / "a"), cfg), "--task", "transformer"], nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = losses(str(tmp_path / "a" / "data" / "runs" / "transformer"))
    path = write_config(str(tmp_path / "b"), {**cfg, "stop_at": 2})
    assert run_cli([path, "--task", "transformer"], nproc=2).returncode == 0
    r = run_cli([write_config(str(tmp_path / "b"), cfg), "--task", "transformer"], nproc=2)
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-3000:]
    assert losses(str(tmp_path / "b" / "data" / "runs" / "transformer")) == ref
    export = tmp_path / "a" / "data" / "runs" / "transformer" / "export"
    emb = prompt_embeds(str(export / "pipeline"))
    lora_file = str(export / "pytorch_lora_weights.safetensors")
    torch.testing.assert_close(ours_video(str(export / "pipeline"), emb, lora_file),
                               diffusers_video(str(export / "pipeline"), emb, 2, 6.0, 3, lora=lora_file),
                               atol=TOL, rtol=0)


def test_lora_keys_and_shapes_are_those_of_diffusers_with_peft():
    """Our exported adapter names/shapes = what peft gives diffusers' own model (diffusers' LoRA script:
    add_adapter + get_peft_model_state_dict, saved with the `transformer.` prefix)."""
    from diffusers import CogVideoXTransformer3DModel
    from peft import LoraConfig as PeftLoraConfig
    from peft.utils import get_peft_model_state_dict

    from model.convert import load_diffusers_transformer, transformer_config_from_diffusers
    from tests.training.tiny_pipeline import TRANSFORMER
    from training.config import LoraConfig
    from training.lora import apply_lora, lora_state_dict

    ref = CogVideoXTransformer3DModel(**TRANSFORMER)
    ours = load_diffusers_transformer(ref.state_dict(), transformer_config_from_diffusers(dict(ref.config)))
    ref.add_adapter(PeftLoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0",
                                                                        "ff.net.0.proj", "ff.net.2"]))
    theirs = {f"transformer.{k}": v.shape for k, v in get_peft_model_state_dict(ref).items()}
    names = apply_lora(ours, LoraConfig(rank=4, alpha=4, targets=["to_q", "to_k", "to_v", "to_out", "ff"]))
    assert len(names) == 2 * 6
    assert {k: v.shape for k, v in lora_state_dict(ours.state_dict()).items()} == theirs
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {
        n for n, _ in ours.named_parameters() if ".lora_" in n}  # only adapters train
