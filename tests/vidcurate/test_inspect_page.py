"""The interactive inspect page in a real headless Chromium: real mouse drags and keys move thresholds,
the page's counts equal what pyarrow computes for the threshold it shows, and its exported yaml,
applied with `run --stage filter --rules-only`, keeps exactly the clips the page kept."""
from __future__ import annotations

import os
import shlex
import threading
import time
import urllib.request

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from vidcurate import inspect as insp
from curation import tables
from curation.__main__ import main as cli
from vidcurate.report.chromium import Chromium, chromium_exe
from curation.storage import Storage
from test_inspect_rules import SCORERS, passed_ids, scores_table, write_config, write_root

EXE = chromium_exe()
needs_chromium = pytest.mark.skipif(EXE is None, reason="chromium is not installed (apt-get install chromium; "
                                    ".ci/run installs it)")
CAMERA = ["static", "pan", "tilt", "zoom", "rotate", "shaky", "mixed"]


def with_camera_type(t: pa.Table, schema: pa.Schema) -> tuple[pa.Table, pa.Schema]:
    """Add the motion helper's string column (the page shows it as a category, never as a histogram)."""
    rng = np.random.default_rng(3)
    vals = pa.array(np.array(CAMERA, object)[rng.integers(0, len(CAMERA), t.num_rows)].tolist(), pa.string())
    if "motion_camera_type" in schema.names:  # the motion scorer writes it: replace its values
        return t.set_column(schema.get_field_index("motion_camera_type"), "motion_camera_type", vals), schema
    i = schema.get_field_index("passed")
    schema = schema.insert(i, pa.field("motion_camera_type", pa.string()))
    return t.add_column(i, "motion_camera_type", vals), schema


def dedup_table(t: pa.Table) -> pa.Table:
    """Groups of 2-4 consecutive clips every 10 rows: the first kept, the others duplicates of it."""
    ids = t.column("clip_id").to_pylist()
    rows = []
    for g, start in enumerate(range(0, len(ids) - 4, 10)):
        size = 2 + g % 3
        for j in range(size):
            rows.append({"clip_id": ids[start + j], "cluster": g // 5, "group": g,
                         "duplicate_of": None if j == 0 else ids[start], "similarity": 1.0 if j == 0 else 0.97 - 0.01 * j,
                         "method": "clip", "kept": j == 0})
    return pa.Table.from_pylist(rows)


def expected(t: pa.Table, rules: dict[str, dict]) -> dict:
    """pyarrow/numpy: kept mask, per-reason counts and kept seconds for column -> {min, max} rules."""
    err = pc.fill_null(pc.greater(pc.utf8_length(t.column("error")), 0), False).to_numpy(zero_copy_only=False)
    fails, reasons = np.zeros(t.num_rows, int), {}
    for col, r in rules.items():
        v = t.column(col).cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        low = (v < r["min"]) if r.get("min") is not None else np.zeros(t.num_rows, bool)
        high = ~low & (v > r["max"]) if r.get("max") is not None else np.zeros(t.num_rows, bool)
        for mask, key in ((low & ~err, f"{col}<"), (high & ~err, f"{col}>")):
            if (key.endswith("<") and r.get("min") is not None) or (key.endswith(">") and r.get("max") is not None):
                reasons[key] = mask
                fails += mask
    kept = ~err & (fails == 0)
    dur = (t.column("end_s").to_numpy() - t.column("start_s").to_numpy()).astype(np.float32).astype(np.float64)
    return {"kept": kept, "errors": err, "reasons": {k: (int(m.sum()), int((m & (fails == 1)).sum()))
                                                     for k, m in reasons.items()}, "kept_s": float(dur[kept].sum())}


def page_rules(b: Chromium) -> dict[str, dict]:
    return {s["name"]: {"min": s["min"], "max": s["max"]} for s in b.eval("window.inspect.state()")
            if s["min"] is not None or s["max"] is not None}


def handle_xy(b: Chromium, col: str, side: str) -> tuple[float, float]:
    b.eval(f"document.querySelector('.metric[data-col=\"{col}\"]').scrollIntoView({{block: 'center'}})")
    r = b.eval(f"(() => {{ const r = document.querySelector('.handle.{side}[data-col=\"{col}\"] rect')"
               ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    return r[0], r[1]


def settle(b: Chromium) -> None:
    b.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    b.eval("window.inspect.settled()")


def check_counts(b: Chromium, t: pa.Table) -> dict:
    """The displayed counts equal pyarrow's for the thresholds the page displays."""
    rules = page_rules(b)
    exp = expected(t, rules)
    assert int(b.eval("document.getElementById('kept').textContent")) == int(exp["kept"].sum())
    assert int(b.eval("document.getElementById('errors').textContent")) == int(exp["errors"].sum())
    shown = b.eval("[...document.querySelectorAll('#reasons-table tr[data-reason]')].map(r => "
                   "[r.dataset.reason, +r.children[1].textContent, +r.children[4].textContent])")
    got = {name[: len(name.split("<")[0]) + 1] if "<" in name else name.split(">")[0] + ">": (n, only)
           for name, n, only in shown if name != "error"}
    assert got == {k: v for k, v in exp["reasons"].items()}
    assert b.eval("window.inspect.counts().keptH") == pytest.approx(exp["kept_s"], rel=1e-9)
    return exp


def apply_export(b: Chromium, root: str, tmp_path) -> set[str]:
    """Export thresholds from the page and run --rules-only twice: with the page's --set command line on
    the original pipelines.yaml, then with the yaml snippet put into it; the passed clip ids (equal)."""
    b.eval("document.getElementById('export-btn').click()")
    text = b.eval("document.getElementById('export-yaml').value")
    command = shlex.split(b.eval("document.getElementById('export-set').value").replace("\\\n", " "))
    assert command[:7] == ["python", "-m", "vidcurate", "run", "pipelines.yaml", "--stage", "filter"]
    cfg = write_config(root, {}, str(tmp_path / "p.yaml"))
    assert cli(["run", cfg] + command[5:]) == 0
    by_set = passed_ids(Storage(root))
    exported = yaml.safe_load(text)["filter"]["scorers"]
    cfg = write_config(root, {name: e["thresholds"] for name, e in exported.items()}, str(tmp_path / "p.yaml"))
    assert cli(["run", cfg, "--stage", "filter", "--rules-only"]) == 0
    assert passed_ids(Storage(root)) == by_set
    # The reasons the filter wrote are the page's reason rows, text and count.
    shown = {r: n for r, n in b.eval("[...document.querySelectorAll('#reasons-table tr[data-reason]')].map(r => "
                                     "[r.dataset.reason, +r.children[1].textContent])") if n}
    flat = pc.list_flatten(tables.read_table(Storage(root), "scores").column("reasons")).to_pylist()
    assert shown == {r: flat.count(r) for r in set(flat)}
    return by_set


@needs_chromium
def test_drag_recounts_exactly_and_export_round_trips(tmp_path):
    t, schema = with_camera_type(*scores_table(3000, seed=5))
    root = str(tmp_path / "root")
    st = write_root(root, t, schema)
    tables.write_part(st, "dedup", dedup_table(t))
    assert insp.main(root, html="") == 0
    with Chromium(EXE, 1300, 1000) as b:
        b.goto(f"file://{root}/report/index.html")
        assert int(b.eval("document.getElementById('kept').textContent")) == int(pc.sum(t.column("passed")).as_py())
        # one histogram per number column; the string column (camera type) has none
        assert b.eval("document.querySelectorAll('svg.hist').length") == len(insp.score_columns(t, "numeric"))
        check_counts(b, t)
        # A real mouse drag of the motion_mean min handle to the right.
        x, y = handle_xy(b, "motion_mean", "min")
        b.drag(x, y, x + 70, y)
        settle(b)
        r = page_rules(b)
        assert r["motion_mean"]["min"] > 0.01
        exp = check_counts(b, t)
        assert int(b.eval("document.getElementById('removed').textContent")) > 0
        # A new max rule on another score (clips now break several rules), then one bin by keyboard.
        x, y = handle_xy(b, "aesthetic_min", "max")
        b.drag(x, y, x - 150, y)
        settle(b)
        assert page_rules(b)["aesthetic_min"]["max"] is not None
        b.call("Input.dispatchKeyEvent", session=True, type="keyDown", key="ArrowRight", code="ArrowRight",
               windowsVirtualKeyCode=39)
        settle(b)
        exp = check_counts(b, t)
        assert any(only < n for n, only in exp["reasons"].values())  # some clips fail two rules
        # A typed value is kept as typed (it lies between two stored values of this lossless column).
        b.eval("(() => { const i = document.querySelector('input.tmin[data-col=\"motion_mean\"]'); i.focus(); i.select(); })()")
        b.call("Input.insertText", session=True, text="0.0234")
        b.eval("document.querySelector('input.tmin[data-col=\"motion_mean\"]').blur()")
        settle(b)
        assert page_rules(b)["motion_mean"]["min"] == 0.0234
        exp = check_counts(b, t)
        # Camera types: kept now per type equals pyarrow's group counts.
        rows = b.eval("[...document.querySelectorAll('table[data-cat=\"motion_camera_type\"] tr[data-value]')]"
                      ".map(r => [r.dataset.value, +r.children[1].textContent, +r.children[2].textContent])")
        cam = np.array(t.column("motion_camera_type").to_pylist())
        assert {v: (n, k) for v, n, k in rows} == {c: (int((cam == c).sum()), int(((cam == c) & exp["kept"]).sum()))
                                                  for c in CAMERA}
        # Duplicate groups side by side; kept and not a duplicate, recounted.
        d = dedup_table(t)
        dup = set(pc.filter(d.column("clip_id"), pc.invert(d.column("kept"))).to_pylist())
        ids = np.array(t.column("clip_id").to_pylist())
        assert int(b.eval("document.getElementById('kept-nodup').textContent")) == \
            int((exp["kept"] & ~np.isin(ids, list(dup))).sum())
        assert b.eval("document.querySelectorAll('#dedup .group').length") == insp_groups_shown(d)
        xs = [float(f"{x:.6g}") for x in np.random.default_rng(0).lognormal(0, 6, 300) * np.where(np.arange(300) % 3, 1, -1)]
        assert b.eval(f"{xs}.map(window.inspect.fmtG)") == [format(x, "g") for x in xs]  # reason texts as Python's
        page_kept = set(b.eval("window.inspect.keptIds()"))
        assert page_kept == set(ids[exp["kept"]])
        assert apply_export(b, root, tmp_path) == page_kept


def insp_groups_shown(d: pa.Table) -> int:
    from vidcurate.report.page import DEDUP_GROUPS

    sizes = np.bincount(d.column("group").to_numpy())
    return min(DEDUP_GROUPS, int((sizes > 1).sum()))


@needs_chromium
def test_binned_columns_count_exactly(tmp_path, monkeypatch):
    """Binned columns (made small here: 200 bins, one-byte codes) count exactly at their boundaries."""
    from vidcurate.report import page

    monkeypatch.setattr(page, "LOSSLESS_MAX", 1000)
    monkeypatch.setattr(page, "LOSSY_BINS", 200)
    binned_round_trip(tmp_path, 5000, (190, 202))


@pytest.mark.heavy
@needs_chromium
def test_binned_columns_count_exactly_at_100k(tmp_path):
    """More distinct values than a code holds: thresholds snap to bin boundaries and stay exact."""
    binned_round_trip(tmp_path, 100_000, (15_000, 16_400))


def binned_round_trip(tmp_path, n: int, bins: tuple[int, int]) -> None:
    t, schema = scores_table(n, seed=9)
    root = str(tmp_path / "root")
    write_root(root, t, schema, parts=4)
    assert insp.main(root, html="") == 0
    with Chromium(EXE, 1300, 1000) as b:
        took = b.goto(f"file://{root}/report/index.html")
        nb = {s["name"]: s["nbins"] for s in b.eval("window.inspect.state()")}
        assert bins[0] < nb["motion_mean"] <= bins[1] and bins[0] < nb["motion_still_share"] <= bins[1]  # binned
        check_counts(b, t)  # the stored thresholds are bin boundaries
        x, y = handle_xy(b, "motion_mean", "min")
        b.drag(x, y, x + 23, y)
        x, y = handle_xy(b, "motion_still_share", "max")
        b.drag(x, y, x - 97, y)
        settle(b)
        exp = check_counts(b, t)
        assert 0 < exp["kept"].sum() < int(pc.sum(t.column("passed")).as_py())
        kept = set(b.eval("window.inspect.keptIds()"))
        assert apply_export(b, root, tmp_path) == kept
    print(f"{n} rows: page {os.path.getsize(f'{root}/report/index.html') / 1e6:.1f} MB, ready in {took:.2f}s")


@needs_chromium
def test_serve_binds_localhost_and_serves_clip_ranges(tmp_path):
    from curation.synth import Scene, make_video

    t, schema = scores_table(40, seed=2)
    root = str(tmp_path / "root")
    write_root(root, t, schema, parts=1)
    for p in t.column("path").to_pylist():
        os.makedirs(os.path.dirname(os.path.join(root, p)), exist_ok=True)
        make_video(os.path.join(root, p), [Scene(24, 1.0, 1)], 96, 64, 12.0)
    srv = insp.make_server(root, 0)
    assert srv.server_address[0] == "127.0.0.1"
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        page = urllib.request.urlopen(base + "/").read().decode()
        assert '"clip_base": "/root/"' in page
        p = t.column("path")[0].as_py()
        whole = open(os.path.join(root, p), "rb").read()
        req = urllib.request.Request(f"{base}/root/{p}", headers={"Range": "bytes=10-99"})
        with urllib.request.urlopen(req) as r:
            assert r.status == 206 and r.read() == whole[10:100]
            assert r.headers["Content-Range"] == f"bytes 10-99/{len(whole)}"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/root/../../etc/passwd")
        with Chromium(EXE, 1300, 1000) as b:
            b.goto(base + "/")
            b.eval("document.getElementById('sheets').scrollIntoView()")
            for _ in range(200):
                d = b.eval("Object.assign({}, document.getElementById('thumbs').dataset)")
                if int(d["asked"]) and int(d["drawn"]) + int(d["failed"]) == int(d["asked"]):
                    break
                time.sleep(0.1)
            assert int(d["drawn"]) == int(d["asked"]) > 0, d
    finally:
        srv.shutdown()
        srv.server_close()
