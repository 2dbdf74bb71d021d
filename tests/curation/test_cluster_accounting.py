"""Stage accounting (curation/accounting.py), its report (vidcurate/run_report.py), autoscaling pools."""
from __future__ import annotations

import json
import time

import pytest

from curation import accounting, tables
from vidcurate import run_report
from curation.config import ConfigError
from vidcurate.flow import load_config
from curation.runner import pool_size, run_pipeline
from curation.stage import Stage, StageResources
from curation.storage import Storage


def ev(step: str, t0: float, t1: float, rows: int = 1, wait: float = 0.0, worker: str = "w") -> dict:
    return accounting.event(step, t0, t1, 0.5 * (t1 - t0), rows, rows, 100 * rows, 50 * rows, [wait] * rows, worker)


def test_summary_finds_the_slow_step_and_its_queue():
    # "decode" is busy 9 s of 10 with rows waiting for it; "score" works 0.1 s per row right after.
    events = []
    for i in range(9):
        events.append(ev("decode", i, i + 1, wait=float(i)))
        events.append(ev("score", i + 1, i + 1.1, wait=0.0))
    s = accounting.summarize(events, bins=20)
    dec, sco = s["steps"]["decode"], s["steps"]["score"]
    assert list(s["steps"]) == ["decode", "score"]
    assert dec["busy_s"] == pytest.approx(9) and sco["busy_s"] == pytest.approx(0.9)
    assert dec["utilization"] > 0.85 > 0.15 > sco["utilization"]
    assert dec["queue_wait_mean_s"] == pytest.approx(4.0) and dec["queue_wait_max_s"] == pytest.approx(8.0)
    assert dec["rows_in"] == 9 and dec["rows_per_s"] == pytest.approx(9 / s["wall_s"], rel=1e-3)
    assert dec["bytes_per_s"] == pytest.approx(900 / s["wall_s"], rel=1e-3)
    assert dec["cpu_s"] == pytest.approx(4.5)
    assert dec["bottleneck_share"] > 0.8 and dec["bottleneck_share"] + sco["bottleneck_share"] == pytest.approx(1)
    assert len(dec["timeline"]) == 20 and max(dec["timeline"]) == 1.0
    assert accounting.summarize([]) == {}


def test_ties_go_to_the_step_with_the_longer_queue():
    # Two fully busy steps; rows pile up in front of "b" only: "b" holds the pipeline up.
    events = [ev("a", 0, 10, rows=1, wait=0.0), ev("b", 0, 10, rows=1, wait=0.0),
              ev("b", 10, 10.001, rows=50, wait=10.0)]
    s = accounting.summarize(events, bins=10)
    assert s["steps"]["b"]["bottleneck_share"] == 1.0


def test_workers_and_concurrency_are_counted_per_node():
    events = [ev("x", 0, 2, worker="1"), ev("x", 0, 2, worker="2"), ev("x", 2, 4, worker="1")]
    events[1]["node"] = "other"
    x = accounting.summarize(events)["steps"]["x"]
    assert (x["workers"], x["nodes"], x["max_concurrent"]) == (2, 2, 2)
    assert x["utilization"] == pytest.approx(6 / (2 * 4))


class Slow(Stage):
    name = "slow"

    def process_row(self, row: dict) -> list[dict]:
        time.sleep(0.15)
        return [{**row, "k": 0}, {**row, "k": 1}]


class DropOdd(Stage):
    name = "drop_odd"
    stateful = True

    def process_row(self, row: dict) -> list[dict]:
        return [] if row["i"] % 2 else [row]


def test_pipeline_records_every_step_on_ray(ray_local):
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    got: list[dict] = []
    events: list[dict] = []
    n = run_pipeline([{"i": i} for i in range(6)], [Slow(StageResources(num_cpus=1)),
                     DropOdd(StageResources(num_cpus=0.5, batch_size=2, min_workers=1, max_workers=2))],
                     got.extend, progress=False, events=events)
    assert n == 6 and sorted((r["i"], r["k"]) for r in got) == [(i, k) for i in (0, 2, 4) for k in (0, 1)]
    assert all(not c.startswith("__") for r in got for c in r)  # accounting columns never reach the sink
    s = accounting.summarize(events)
    assert list(s["steps"]) == ["slow", "drop_odd", "sink"]
    slow, drop = s["steps"]["slow"], s["steps"]["drop_odd"]
    assert (slow["calls"], slow["rows_in"], slow["rows_out"]) == (6, 6, 12)
    assert (drop["rows_in"], drop["rows_out"]) == (12, 6)  # batches that came out empty still report
    assert slow["busy_s"] >= 6 * 0.15 and slow["bytes_in"] > 0 and drop["bytes_in"] > 0
    assert s["steps"]["sink"]["rows_in"] == 6
    assert slow["bottleneck_share"] > drop["bottleneck_share"]
    assert all(v["node_ids"] for v in s["steps"].values())


class AddOne(Stage):
    name = "add_one"

    def process_row(self, row: dict) -> list[dict]:
        return [{**row, "i": row["i"] + 1}]


def test_steps_stay_separate_operators_unless_fusion_is_asked_for(ray_local):
    """Two stateless steps with the same resources: Ray Data fuses them into one operator by default
    (asked for here, so the check is seen to tell the two apart); the runner's plan keeps them apart."""
    import sys

    from ray import cloudpickle

    from curation.runner import build

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    steps = [AddOne(StageResources(num_cpus=0.5)), AddOne(StageResources(num_cpus=0.5))]

    def operators(fuse: bool) -> str:
        ds = build([{"i": i} for i in range(4)], steps, fuse=fuse).materialize()
        assert sorted(r["i"] for r in ds.take_all()) == [2, 3, 4, 5]
        return ds.stats()

    assert "MapBatches(fn)->MapBatches(fn)" in operators(fuse=True)
    assert "MapBatches(fn)->MapBatches(fn)" not in operators(fuse=False)


def test_pool_sizes_from_resources(ray_local):
    assert pool_size(StageResources(workers=3), True) == 3
    assert pool_size(StageResources(), True) == 1 and pool_size(StageResources(), False) is None
    assert pool_size(StageResources(min_workers=2, max_workers=5), True) == (2, 5)
    assert pool_size(StageResources(min_workers=1, max_workers=4), False) == 4
    cpus = int(ray_local.cluster_resources()["CPU"])
    assert pool_size(StageResources(num_cpus=0.5, min_workers=1), True) == (1, 2 * cpus)


def test_pool_keys_are_validated_with_their_path(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("root: r\ninputs: [x]\nsplit: {resources: {min_workers: 3, max_workers: 2}}\n")
    with pytest.raises(ConfigError, match=r"split\.resources: .*max_workers \(2\) must be >= min_workers \(3\)"):
        load_config(str(p), check_inputs=False)
    p.write_text("root: r\ninputs: [x]\nfilter: {model: {workers: 1, min_workers: 2}}\n")
    with pytest.raises(ConfigError, match=r"filter\.model\.resources: .*either workers .* or min_workers/max_workers"):
        load_config(str(p), check_inputs=False)
    p.write_text("root: r\ninputs: [x]\ncaption: {resources: {workers: null, min_workers: 1, max_workers: 3}}\n")
    assert load_config(str(p), check_inputs=False).caption.resources.max_workers == 3


def test_inspect_shows_the_latest_runs_accounting(tmp_path, capsys):
    from vidcurate import inspect as insp

    st = Storage(str(tmp_path / "root"))
    tables.write_part(st, "videos", [{"video_id": "v", "source": "s", "error": None}], tables.VIDEOS)
    events = [ev("split", i, i + 1) for i in range(4)] + [ev(accounting.SINK, i + 1, i + 1.01) for i in range(4)]
    man = {"run_id": "r1", "stages": {"split": {"counts": {}, "accounting": accounting.summarize(events)}}}
    st.write_bytes("runs/r1.json", json.dumps(man).encode())
    assert insp.main(st.root, html=None) == 0
    out = capsys.readouterr().out
    assert "run r1: stage accounting" in out and "bottleneck split (100% of the time)" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("split ") and "%" in x)
    assert line.split()[1:3] == ["1", "1"] and "4.00" in line  # workers, nodes, busy s
    assert any(x.strip().startswith("split") and "█" in x for x in out.splitlines())  # timeline row
    html = run_report.html_section(man)
    assert html.startswith("<section id=run-accounting>") and html.count("<svg") == 1 and "bottleneck" in html
    assert run_report.terminal_lines({"stages": {"probe": {"counts": {}}}}) == []
