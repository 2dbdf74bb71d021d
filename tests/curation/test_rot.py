"""Rotten parts and clip files (damaged after they were written: bit rot, a copy cut short): detected on
read, quarantined with a message, the affected rows redone by the next run; `inspect` never crashes."""
import os

import pyarrow as pa
import pytest

from curation import tables
from curation.config import load_config
from curation.pipeline import run_stages
from curation.storage import Storage
from curation.synth import Scene, make_video


def damage(path: str, how: str) -> None:
    d = bytearray(open(path, "rb").read())
    if how == "cut":  # a copy cut short
        d = d[: len(d) // 2]
    elif how == "footer":  # the footer's length field overwritten
        d[-8:-4] = b"\xff\xff\xff\x7f"
    elif how == "flip":  # one flipped bit in the last bytes of the first column's pages (the page checksum catches it)
        import pyarrow.parquet as pq

        col = pq.ParquetFile(path).metadata.row_group(0).column(0)
        start = col.dictionary_page_offset or col.data_page_offset
        d[start + col.total_compressed_size - 3] ^= 0x10
    with open(path, "wb") as f:
        f.write(d)


def three_parts(root: str) -> list[str]:
    st = Storage(root)
    rows = [{"video_id": f"v{i}", "source": f"/in/v{i}.mp4", "frames": 100 + i, "error": None} for i in range(300)]
    return [tables.write_part(st, "videos", rows[i:i + 100], tables.VIDEOS) for i in (0, 100, 200)]


@pytest.mark.parametrize("how", ["cut", "footer", "flip"])
def test_rotten_part_is_quarantined_on_read(tmp_path, capsys, how):
    root = str(tmp_path / "root")
    parts = three_parts(root)
    damage(os.path.join(root, parts[1]), how)
    t = tables.read_table(Storage(root), "videos", tables.VIDEOS)
    assert sorted(t.column("video_id").to_pylist()) == sorted(f"v{i}" for i in list(range(100)) + list(range(200, 300)))
    err = capsys.readouterr().err
    assert f"quarantined {root}/{parts[1]}" in err and "unreadable Parquet part" in err
    assert not os.path.exists(os.path.join(root, parts[1]))
    assert os.path.exists(os.path.join(root, "quarantine", parts[1]))
    assert "unreadable Parquet part" in open(os.path.join(root, "quarantine", parts[1] + ".why.txt")).read()
    assert tables.read_table(Storage(root), "videos").num_rows == 200  # a second read: no new warning, same rows
    assert "quarantined" not in capsys.readouterr().err


def test_inspect_survives_rotten_parts(tmp_path, capsys):
    from vidcurate import inspect as insp
    from test_inspect_rules import scores_table, write_root

    root = str(tmp_path / "root")
    t, schema = scores_table(300, seed=4)
    write_root(root, t, schema, parts=3)
    three_parts(root)
    for table in ("scores", "videos"):
        damage(os.path.join(root, Storage(root).list(table, ".parquet")[0]), "flip")
    assert insp.main(root, html="") == 0
    out = capsys.readouterr()
    assert out.err.count("quarantined") == 2 and "html report" in out.out
    assert len([p for p in Storage(root).walk_files("quarantine") if p.endswith(".parquet")]) == 2


@pytest.mark.heavy
def test_next_run_redoes_rotten_rows(ray_local, tmp_path):
    """A rotten clips part and a rotten clip file: the next run re-splits those videos, re-scores the clip,
    and the final tables equal a clean run's."""
    raw = tmp_path / "raw"
    os.makedirs(raw)
    for k in range(3):
        make_video(str(raw / f"v{k}.mp4"), [Scene(30, 2, k), Scene(30, 3, k + 9)], 96, 64, 24.0)

    def cfg_for(name: str):
        p = tmp_path / f"{name}.yaml"
        p.write_text(f"root: {tmp_path / name}\ninputs: ['{raw}/*']\nray: {{num_cpus: 2, progress: false}}\n"
                     "split: {min_clip_s: 0.5}\n"
                     "filter: {store_embedding: false, scorers: {motion: {type: motion}}}\n")
        return load_config(str(p))

    def final(cfg) -> tuple:
        st = Storage(cfg.root)
        clips = sorted((c["clip_id"], c["status"], c["frames"], c["bytes"])
                       for c in tables.read_table(st, "clips", tables.CLIPS).to_pylist())
        scores = sorted((r["clip_id"], r["passed"], r["error"], round(r["motion_mean"], 5))
                        for r in tables.read_table(st, "scores").to_pylist())
        return clips, scores

    stages = ["probe", "split", "filter"]
    clean = cfg_for("clean")
    run_stages(clean, stages)
    cfg = cfg_for("rot")
    run_stages(cfg, ["probe", "split"])
    st = Storage(cfg.root)
    clip_parts = st.list("clips", ".parquet")
    damage(os.path.join(cfg.root, clip_parts[0]), "flip")  # one video's clip rows
    good = [c for c in tables.read_table(st, "clips").to_pylist() if c["status"] == "ok"]
    damage(os.path.join(cfg.root, good[-1]["path"]), "cut")  # one clip file of another video
    ctx = run_stages(cfg, ["filter"])
    assert any("quarantined" in e and good[-1]["clip_id"] in e for e in ctx.stages["filter"]["errors"]), \
        ctx.stages["filter"]["errors"]
    ctx = run_stages(cfg, stages)  # the next run: re-split, re-score
    assert ctx.stages["split"]["counts"]["split"] == 2 and ctx.stages["split"]["counts"]["recut"] == 1
    assert final(cfg) == final(clean)
    assert [p for p in st.walk_files("quarantine") if p.endswith(".mp4")] == []  # the re-cut clip is done with
