"""bench/memory_table.py: the memory model's parts add up as docs/scaling.md states them, and the table in
docs/fine-tuning.md is the script's current output (so the doc cannot drift from the model)."""
from __future__ import annotations

import os

import pytest

from bench.memory_table import GIB, T5_XXL_PARAMS, VAE_PARAMS, markdown, predict, rows

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "fine-tuning.md")


def test_parts_follow_the_memory_model():
    full = predict("5b", "49x480x720", "full", True, True, 8)
    assert abs(full.params_b - 5.57) < 0.05  # the exact count of the full-size graph (meta device)
    assert full.weights == pytest.approx(16 * full.params_b * 1e9 / 8 / GIB, rel=1e-9)
    lora = predict("5b", "49x480x720", "lora-64", True, True, 1)
    assert lora.gathered == 0 and lora.weights < predict("5b", "49x480x720", "lora-128", True, True, 1).weights
    uncached = predict("5b", "49x480x720", "lora-64", True, False, 1)
    assert uncached.encoders == pytest.approx(2 * (T5_XXL_PARAMS + VAE_PARAMS) / GIB)
    no_ac = predict("5b", "49x480x720", "lora-64", False, True, 1)
    assert no_ac.activations > 10 * lora.activations  # checkpointing keeps one input per block
    assert predict("5b-I2V", "49x480x720", "lora-64", True, True, 1).total > lora.total  # wider input, positions


def test_doc_table_is_the_scripts_output():
    with open(DOC) as f:
        doc = f.read()
    table = doc.split("<!-- memory-table:start -->\n")[1].split("<!-- memory-table:end -->")[0]
    assert table.strip() == markdown(rows()).strip(), "regenerate with: python bench/memory_table.py"
