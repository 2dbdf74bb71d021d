"""The console of a run: one bar per stage with counts, Ray's logging in the log file, the summary."""
from __future__ import annotations

import logging

from curation import runner
from curation.console import Console
from curation.config import PipelineConfig
from curation.pipeline import RunContext, error_kind, summary
from curation.storage import Storage


def test_stage_bar_counts_inputs_and_errors(capsys):
    items = [{"video_id": v, "source": f"/x/{v}.mp4"} for v in ("a", "b", "c")]
    bar = runner.StageBar(items, "split")
    assert bar.key == "video_id"
    bar.update([{"video_id": "a", "status": "ok"}, {"video_id": "a", "status": "dropped"}])  # 2 clips, 1 input
    bar.update([{"video_id": "b", "status": "error", "error": "VideoError: bad"}])
    assert (bar.count(), bar.errors) == (2, 1)
    bar.update([{"video_id": "c", "status": "ok"}])
    bar.close()
    assert capsys.readouterr().err.startswith("split: 3/3 done, 1 errors, ")  # not a terminal: one line


def test_ray_logging_goes_to_the_log_file_not_the_terminal(tmp_path, capsys):
    import ray  # noqa: F401  (its import installs the console handler that console() replaces)

    log = tmp_path / "run.log"
    console = Console()
    console.open(str(log), verbose=False)
    try:
        logging.getLogger("ray").warning("a ray message with s3://k:SECRETX@b/x?endpoint_override=h")
        logging.getLogger("ray.data").info("Execution plan of Dataset")
    finally:
        console.close()
    err = capsys.readouterr().err
    assert "ray message" not in err and "Execution plan" not in err
    text = log.read_text()
    assert "a ray message with s3://b/x" in text and "SECRETX" not in text
    # Closed: Ray's loggers no longer point at the closed file (a second run in the same process, as
    # bench/pipeline.py's streamed run after its staged one, printed "--- Logging error ---" per record).
    logging.getLogger("ray.data").warning("after the run")
    err = capsys.readouterr().err
    assert "Logging error" not in err


def test_summary_counts_errors_by_kind_and_names_tables(tmp_path):
    cfg = PipelineConfig(root=str(tmp_path), inputs=["x"])
    ctx = RunContext(cfg, Storage(cfg.root))
    ctx.stages = {"probe": {"counts": {"inputs": 3, "probed": 3, "errors": 2}, "seconds": 1.5,
                            "errors": ["/a.mp4: VideoError: empty file", "/b.mp4: VideoError: truncated"]},
                  "split": {"counts": {"videos": 1, "clips": 4}, "seconds": 2.0, "errors": ["x: OSError: disk"]}}
    text = summary(ctx)
    assert "probe" in text and "inputs 3, probed 3, errors 2" in text and "-> videos" in text and "-> clips" in text
    assert "errors by kind: VideoError 2 (probe), OSError 1 (split)" in text
    assert f"runs/{ctx.run_id}.json" in text
    assert error_kind("frames: something odd") == "other"
