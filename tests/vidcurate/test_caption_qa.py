"""Caption QA in the caption report: CLIP similarity of caption text and the clip's frames with the
filter's own encoder (tiny random open_clip through the filter's loading code), and black bars
(`borders_kind`) beside captions and a letterbox check."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vidcurate.caption_report import (CLIP_SIM_COLUMN, caption_report, clip_text_similarity, manifest_clip_model,
                                     mentions_bars, read_run)
from curation.filters.clip_model import ClipEncoder
from curation.filters.config import ClipModelConfig
from curation.storage import Storage
from curation.tables import read_table, write_part

TEXTS = {"c0": "A red car drives along a coastal road at sunset.",
         "c1": "Black bars frame a man reading a newspaper on a bench.",
         "c2": "A letterboxed shot of waves breaking on rocks.",
         "c3": "A dog runs across a green field."}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> str:
    from curation.filters.make_tiny import make_tiny

    return make_tiny(str(tmp_path_factory.mktemp("models")), seed=0)["clip"]


def _root(tmp_path, clip_dir: str, manifest: bool = True, letterbox_check: bool = False) -> Storage:
    """Scores whose clip_embedding is built from the encoder itself: c0's is its caption's text embedding
    (similarity 1), c1's the negated one (-1), c2's and c3's real frame embeddings of random images."""
    st = Storage(str(tmp_path / "root"))
    enc = ClipEncoder(ClipModelConfig(model=clip_dir))
    txt = enc.embed_texts([TEXTS[c] for c in ("c0", "c1")])
    size = enc.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    frames = np.random.default_rng(0).integers(0, 255, (2, size, size, 3), dtype=np.uint8)
    img = enc.embed_frames(frames)
    emb = {"c0": txt[0], "c1": -txt[1], "c2": img[0], "c3": img[1]}
    kinds = {"c0": "none", "c1": "letterbox", "c2": "none", "c3": "pillarbox"}
    write_part(st, "scores", [{"clip_id": c, "video_id": "v", "source": "s", "path": f"clips/v/{c}.mp4",
                               "start_s": 0.0, "end_s": 1.0, "frames_sampled": 4, "passed": True, "reasons": [], "error": None,
                               "clip_embedding": emb[c].astype(np.float32).tolist(), "borders_kind": kinds[c],
                               "borders_area": 0.0 if kinds[c] == "none" else 0.2} for c in TEXTS])
    rows = [{"clip_id": c, "text": t, "flags": [], "error": None, "tokens_out": 10, "text_tokens": 10,
             "mode": "video", "model": "m"} for c, t in TEXTS.items()]
    if letterbox_check:  # a caption.checks question named "letterbox": right for c0, c1, c3; wrong for c2
        for r, y in zip(rows, (False, True, True, True)):
            r["check_letterbox"], r["check_letterbox_yes"] = 0.9 if y else 0.1, y
    write_part(st, "captions/r", rows)
    if manifest:  # how the filter run records its CLIP model (pipeline.Run.manifest: config.model_dump)
        st.write_bytes("runs/20260101-000000-x.json", json.dumps(
            {"config": {"filter": {"clip": ClipModelConfig(model=clip_dir).model_dump(mode="json")}}}).encode())
    return st


def test_similarity_pairs_each_caption_with_its_own_clip(tmp_path, clip_dir):
    st = _root(tmp_path, clip_dir)
    cfg = manifest_clip_model(st)
    assert cfg is not None and cfg.model == clip_dir
    caps = read_run(st, "r").to_pylist()
    embs = {r["clip_id"]: r["clip_embedding"] for r in
            read_table(st, "scores").to_pylist()}
    sims = clip_text_similarity(caps, embs, ClipEncoder(cfg))
    assert sims["c0"] == pytest.approx(1.0, abs=1e-4) and sims["c1"] == pytest.approx(-1.0, abs=1e-4)
    assert -1 < sims["c2"] < 1 and -1 < sims["c3"] < 1
    assert "c9" not in clip_text_similarity(caps + [{"clip_id": "c9", "text": "x"}], embs, ClipEncoder(cfg))


def test_report_shows_distribution_lowest_and_letterbox(tmp_path, clip_dir):
    st = _root(tmp_path, clip_dir, letterbox_check=True)
    lines, html = caption_report(st, runs=["r"])
    text = "\n".join(lines)
    head = next(line for line in lines if line.strip().startswith(CLIP_SIM_COLUMN))
    q = [float(x) for x in head.split("max: ")[1].split(";")[0].split(" / ")]
    assert q[0] == pytest.approx(-1.0, abs=1e-3) and q[-1] == pytest.approx(1.0, abs=1e-3) and "over 4 clips" in head
    assert "lowest c1 -1.000" in text  # the lowest-matching caption first
    assert ("black bars (borders_kind): 2 of 4 clips (50.0%); captions naming bars: 1 of those 2, "
            "1 of the 2 without; letterbox check agrees with it: 3 of 4") in text
    assert f"lowest {CLIP_SIM_COLUMN}" in html and "c1: Black bars frame a man" in html


def test_report_says_why_there_is_no_similarity(tmp_path, clip_dir):
    st = _root(tmp_path, clip_dir, manifest=False)
    lines, _ = caption_report(st, runs=["r"])
    assert f"  {CLIP_SIM_COLUMN}: - (no run manifest names the filter's CLIP model)" in lines
    # a model passed in (caption_report's clip_model) works without a manifest
    lines, _ = caption_report(st, runs=["r"], clip_model=ClipModelConfig(model=clip_dir))
    assert any(line.strip().startswith(CLIP_SIM_COLUMN) and "over 4 clips" in line for line in lines)


def test_mentions_bars():
    assert mentions_bars("Black bars at the top and bottom.") and mentions_bars("a letterboxed film still")
    assert mentions_bars("Pillarbox framing.") and not mentions_bars("A black car at the bar.")


def test_inspect_prints_similarity(tmp_path, clip_dir, capsys):
    from curation.__main__ import main

    st = _root(tmp_path, clip_dir)
    assert main(["inspect", st.root, "--no-html"]) == 0
    out = capsys.readouterr().out
    assert f"{CLIP_SIM_COLUMN} (caption vs frames, filter CLIP)" in out and "lowest c1 -1.000" in out
