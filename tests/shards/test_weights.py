"""training.data.weights: score-aware copies per epoch, tiers, temperature, score text, exact resume."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from shards.config import ShardConfig, WriterConfig
from shards.loader import ShardLoader
from shards.weights import SampleWeights, Tier, copies, score_caption, weight

BUCKETS = [{"frames": 9, "height": 64, "width": 96}, {"frames": 9, "height": 64, "width": 64}]
TIERS = SampleWeights(expression="aesthetic", tiers=[Tier(min=5.8, weight=2.0), Tier(min=5.0, weight=1.0)],
                      score_text={"aesthetic": "aesthetic score"})


def test_weight_rules():
    cfg = SampleWeights(expression="2 * a", temperature=1.0)
    assert weight({"a": 1.25}, cfg) == 2.5 and weight({}, cfg) == 1.0  # missing -> cfg.missing
    assert weight({"a": 1.25}, cfg.model_copy(update={"temperature": 2.0})) == pytest.approx(2.5 ** 0.5)
    assert weight({"a": 100}, cfg) == 10.0  # max_weight
    assert weight({"aesthetic": 4.0}, TIERS) == 0.0 and weight({"aesthetic": 5.9}, TIERS) == 2.0
    # stochastic rounding: 2.5 -> 2 or 3 copies, mean 2.5 over keys, fixed per (seed, epoch, key)
    n = [copies({"a": 1.25}, cfg, 0, 0, f"k{i}") for i in range(4000)]
    assert set(n) == {2, 3} and sum(n) / len(n) == pytest.approx(2.5, abs=0.05)
    assert n[:50] == [copies({"a": 1.25}, cfg, 0, 0, f"k{i}") for i in range(50)]
    assert n[:50] != [copies({"a": 1.25}, cfg, 0, 1, f"k{i}") for i in range(50)]
    assert score_caption("a cat", {"aesthetic": 6.04}, TIERS) == "a cat. aesthetic score: 6.0."
    with pytest.raises(ValueError, match="tiers need an expression"):
        SampleWeights(tiers=[Tier(min=1, weight=1)])


def _loader(d, weights, workers=0, seed=5):
    sc = ShardConfig(writer=WriterConfig(), loader={"num_workers": workers, "batch_size": 2, "buckets": BUCKETS})
    return ShardLoader(sc, seed=seed, root=d.root, weights=weights)


def test_loader_repeats_by_tier_and_appends_scores(demo_shards):
    d, _ = demo_shards
    loader = _loader(d, TIERS)
    seen: Counter = Counter()
    for b in loader:
        for k, c, m in zip(b["keys"], b["captions"], b["meta"]):
            seen[k] += 1
            assert c == f"{d.captions[k]} aesthetic score: {m['scores']['aesthetic']:.1f}." or \
                c == f"{d.captions[k]}. aesthetic score: {m['scores']['aesthetic']:.1f}."
    expect = {}
    for b in _loader(d, None):
        for k, m in zip(b["keys"], b["meta"]):
            expect[k] = 2 if m["scores"]["aesthetic"] >= 5.8 else 1
    assert dict(seen) == expect and 2 in expect.values() and 1 in expect.values()


def test_weighted_epoch_resumes_exactly(demo_shards):
    d, _ = demo_shards
    w = SampleWeights(expression="aesthetic - 4.6")  # 0.9 .. 1.5 copies: stochastic rounding matters
    full = [b["keys"] for b in _loader(d, w)]
    loader = _loader(d, w)
    it = iter(loader)
    head = [next(it)["keys"] for _ in range(3)]
    state = json.loads(json.dumps(loader.state_dict()))
    del it
    resumed = _loader(d, w)
    resumed.load_state_dict(state)
    assert head + [b["keys"] for b in resumed] == full


def test_weights_are_recorded_in_the_data_manifest(tmp_path):
    import os

    from training.data import write_data_manifest
    from vidcurate.flow import load_config

    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = load_config(os.path.join(here, "pipelines.yaml"), ["training.data.weights.expression=aesthetic_mean",
                      "training.data.weights.temperature=2", "training.data.weights.score_text={aesthetic_mean: aes}"],
                      check_inputs=False)
    path = write_data_manifest(cfg, str(tmp_path / "run"))
    got = json.load(open(path))["weights"]
    assert got["expression"] == "aesthetic_mean" and got["temperature"] == 2 and got["score_text"] == {"aesthetic_mean": "aes"}
