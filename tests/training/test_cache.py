"""The per-clip latent + text cache: keys, resume/reuse, exact invalidation, training batches from it."""
from __future__ import annotations

import os

import pytest
import torch

from curation import tables
from curation.storage import Storage
from shards import demo, writer
from shards.config import WriterConfig
from tests.training.helpers import write_config
from training import cache
from vidcurate.flow import load_config

LOADER = {"num_workers": 0, "batch_size": 2, "random_start": False, "crop": "center", "shuffle_buffer": 4,
          "buckets": [{"frames": 9, "height": 64, "width": 96}, {"frames": 9, "height": 64, "width": 64}]}


@pytest.fixture()
def setup(tmp_path):
    path = write_config(str(tmp_path), {"transformer": {"max_text_len": 16, "vae": "tiny-random",
                                                        "text_encoder": "tiny-random"}},
                        shard={"loader": LOADER})
    cfg = load_config(path, check_inputs=False)
    d = demo.build(cfg.root)
    writer.write_shards(Storage(cfg.root), WriterConfig(max_samples_per_shard=2), "t", local=True, progress=False)
    enc = cache.Encoders(cfg.training, torch.device("cpu"))
    return cfg, d, enc, path


def _fill(cfg, enc, rank=0, world=1):
    return cache.fill(lambda **kw: cache.shard_loader(cfg, rank, world, every_clip_once=True, **kw), enc,
                      cache.cache_dir(cfg), "center", rank)


def test_fill_reuse_and_exact_invalidation(setup):
    cfg, d, enc, path = setup
    n = len(d.kept)
    first = _fill(cfg, enc)
    assert first["clips"] == n and first["latents_encoded"] == n and first["texts_encoded"] == n
    assert first["bytes"] > 0 and first["reused"] == 0
    again = _fill(cfg, enc)
    assert again["latents_encoded"] == 0 and again["texts_encoded"] == 0 and again["reused"] == n
    # a new caption for one clip: its text alone is re-encoded (a new captions run + reshard)
    st = Storage(cfg.root)
    from shards.writer import read_captions
    caps = [{**r, "text": r["text"] + " (edited)" if r["clip_id"] == d.kept[0] else r["text"]}
            for r in read_captions(st, "new").values()]
    tables.write_part(st, "captions/new", [{k: r[k] for k in demo.CAPTIONS.names} for r in caps], demo.CAPTIONS)
    writer.write_shards(st, WriterConfig(max_samples_per_shard=2), "t2", local=True, progress=False)
    edited = _fill(cfg, enc)
    assert edited["latents_encoded"] == 0 and edited["texts_encoded"] == 1
    # a new bucket size for the 96x96 clips: their latents only
    cfg2 = load_config(path, ["shard.loader.buckets=[{frames: 9, height: 64, width: 96}, "
                              "{frames: 5, height: 64, width: 64}]"], check_inputs=False)
    rebucket = _fill(cfg2, enc)
    square = sum(1 for r in tables.read_table(st, "clips").to_pylist() if r["clip_id"] in d.kept and r["width"] == r["height"])
    assert rebucket["latents_encoded"] == square and 0 < square < n and rebucket["texts_encoded"] == 0


def test_two_ranks_split_the_fill_and_training_batches_match_the_encoders(setup):
    cfg, d, enc, _ = setup
    a, b = _fill(cfg, enc, 0, 2), _fill(cfg, enc, 1, 2)
    assert a["clips"] + b["clips"] == len(d.kept) and a["latents_encoded"] and b["latents_encoded"]
    loader = cache.cache_loader(cfg, 0, 1)
    direct = cache.shard_loader(cfg, 0, 1)  # the same order, decoded
    got = list(loader)
    ref = list(direct)
    assert [g["keys"] for g in got] == [r["keys"] for r in ref]
    for g, r in zip(got, ref):
        mean, _ = enc.latents(r["frames"])
        assert torch.allclose(g["latents_mean"], mean, atol=2e-2, rtol=1e-2)  # stored in float16
        assert torch.allclose(g["text_emb"], enc.text_emb(r["captions"]), atol=2e-2, rtol=1e-2)
    # exact resume: the cache loader's state is the shard loader's
    l2 = cache.cache_loader(cfg, 0, 1)
    it = iter(l2)
    head = [next(it)["keys"]]
    state = l2.state_dict()
    del it
    l3 = cache.cache_loader(cfg, 0, 1)
    l3.load_state_dict(state)
    assert head + [x["keys"] for x in l3] == [g["keys"] for g in got]


def test_a_missing_entry_and_a_random_window_are_named(setup):
    cfg, d, enc, path = setup
    with pytest.raises(FileNotFoundError, match="python -m training cache"):
        next(iter(cache.cache_loader(cfg, 0, 1)))
    bad = load_config(path, ["shard.loader.random_start=true"], check_inputs=False)
    with pytest.raises(ValueError, match="random_start: false"):
        cache.shard_loader(bad, 0, 1)
    assert os.path.basename(cache.cache_dir(cfg)) == "latents"


@pytest.mark.heavy
def test_torchrun_fill_then_train_from_the_cache(setup, tmp_path):
    """Two torchrun ranks fill the cache; a second fill encodes nothing; the transformer trains from it."""
    from tests.training.helpers import losses, run_cli

    cfg, d, enc, path = setup
    p = run_cli(["cache", path], nproc=2)
    assert p.returncode == 0, p.stderr[-2000:]
    counts = [json_counts(x) for x in p.stdout.splitlines() if x.startswith("[training cache]")]
    assert len(counts) == 2 and sum(c["latents_encoded"] for c in counts) == len(d.kept)
    p = run_cli(["cache", path], nproc=2)
    counts = [json_counts(x) for x in p.stdout.splitlines() if x.startswith("[training cache]")]
    assert sum(c["latents_encoded"] + c["texts_encoded"] for c in counts) == 0
    out = str(tmp_path / "run")
    p = run_cli([path, "--task", "transformer", "--set", "training.data.source=cache", "--set", "training.steps=3",
                 "--set", f"training.out_dir={out}", "--set", "training.checkpoint.export_diffusers=false"])
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(losses(os.path.join(out, "transformer"))) == 3
    assert os.path.exists(os.path.join(out, "transformer", "data_manifest.json"))


def json_counts(line: str) -> dict:
    import json

    return json.loads(line.split(": ", 1)[1].rsplit(" -> ", 1)[0])
