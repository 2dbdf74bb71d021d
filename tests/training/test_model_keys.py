"""No silent random stand-ins: a null or missing frozen model fails naming its key; "tiny-random" asks for one."""
from __future__ import annotations

import pytest

from tests.training.helpers import run_cli, write_config

TRAINING = {"steps": 1, "out_dir": "runs", "data": {"source": "synthetic", "frames": 9, "height": 16, "width": 16}}


@pytest.mark.parametrize("key", ["vae", "text_encoder"])
def test_null_model_is_a_one_line_error_naming_the_key(key):
    from training.tasks.transformer import model_source

    with pytest.raises(ValueError, match=rf"^training\.transformer\.{key} is null: .*tiny-random"):
        model_source(key, None)
    with pytest.raises(ValueError, match=rf"^training\.transformer\.{key}: '/no/such/folder' does not exist$"):
        model_source(key, "/no/such/folder")
    assert model_source(key, "tiny-random") is None
    assert model_source(key, "google/t5-v1_1-xxl") == "google/t5-v1_1-xxl"  # a hub name is left to the loader


def test_cli_refuses_a_transformer_run_without_a_vae(tmp_path):
    cfg = write_config(str(tmp_path), {**TRAINING, "transformer": {"text_encoder": "tiny-random"}})
    r = run_cli([cfg, "--task", "transformer"], timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert lines == ["[training] error: training.transformer.vae is null: set a model folder, or 'tiny-random' for a "
                     "tiny random model (demo and tests only)"], r.stderr[-2000:]
