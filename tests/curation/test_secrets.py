"""Credentials written into object-store URIs never reach a table, manifest, log, error or report.

A full probe -> split -> filter -> inspect run on a real S3 API server (moto on 127.0.0.1) whose
root and input URIs carry marker credentials; then every Parquet column and metadata, JSON file,
log and HTML under the root, and the run's console output, are scanned for the markers.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from curation.synth import Scene, make_video
from curation.uris import redact, scrub
from curation.video import video_id_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY, SECRET, TOKEN = "AKIAMARKERKEY0001", "s3cr3tMARKERvalue", "tokMARKERsession"
MARKERS = (KEY, SECRET, TOKEN, "MARKER")


def test_redact_and_scrub():
    assert redact(f"s3://{KEY}:{SECRET}@b/x.mp4?endpoint_override=h:1&secret_key={SECRET}") == "s3://b/x.mp4"
    assert redact("https://user:pw@host/a?X-Amz-Signature=abc#frag") == "https://host/a"
    assert redact("/local/p@th/x.mp4") == "/local/p@th/x.mp4"
    text = f"VideoError: s3://{KEY}:{SECRET}@b/x.mp4?session_token={TOKEN}: cannot open ('gs://u:p@c/y')"
    assert scrub(text) == "VideoError: s3://b/x.mp4: cannot open ('gs://c/y')"
    assert scrub(f"options access_key={KEY}&secret_key={SECRET}") == "options access_key=***&secret_key=***"
    # ids are computed from the redacted form: credentials and options never change them
    assert video_id_for(f"s3://{KEY}:{SECRET}@b/x.mp4?region=r") == video_id_for("s3://b/x.mp4")


def _scan(fs: pafs.FileSystem, base: str) -> tuple[dict[str, int], list[str]]:
    """Kinds of files scanned, and every (file: marker) found in them (pyarrow's S3 URIs take credentials
    as user info only, so the live run carries KEY and SECRET; TOKEN is checked by test_redact_and_scrub)."""
    seen: dict[str, int] = {}
    found = []
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        ext = os.path.splitext(info.path)[1]
        with fs.open_input_stream(info.path) as f:
            data = f.read()
        if ext == ".parquet":
            t = pq.read_table(io.BytesIO(data))
            text = repr(t.schema.metadata) + repr(t.to_pylist())  # every column of every row, and the metadata
        elif ext in (".json", ".log", ".html", ".txt", ".jsonl"):
            text = data.decode("utf-8", "replace")
        else:
            continue
        seen[ext] = seen.get(ext, 0) + 1
        found += [f"{info.path}: {m}" for m in MARKERS if m in text]
    return seen, found


@pytest.mark.heavy
def test_no_credentials_anywhere_after_an_s3_run(s3_endpoint, tmp_path):
    q = f"?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    bucket = f"s3://{KEY}:{SECRET}@videos"
    fs, _ = pafs.FileSystem.from_uri(bucket + q + "&allow_bucket_creation=true")
    fs.create_dir("videos")
    for k in range(2):
        local = str(tmp_path / f"v{k}.mp4")
        make_video(local, [Scene(36, 2, k), Scene(36, 3, k + 9)], 96, 64, 24.0)
        pafs.copy_files(local, f"videos/raw/v{k}.mp4", destination_filesystem=fs)
    fs.open_output_stream("videos/raw/broken.mp4").close()  # an error row whose message names the URI
    p = tmp_path / "p.yaml"
    p.write_text(f"root: '{bucket}/root{q}'\ninputs: ['{bucket}/raw/*.mp4{q}']\nray: {{num_cpus: 2}}\n"
                 "split: {min_clip_s: 1.0}\n"
                 "filter: {scorers: {motion: {type: motion, thresholds: {mean: {min: 0.01}}}}}\n")
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    # the root also on the command line: argv lands in the manifest
    run = subprocess.run([sys.executable, "-m", "vidcurate", "run", str(p), "--stage", "probe,split,filter",
                          "--set", f"root={bucket}/root{q}"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = subprocess.run([sys.executable, "-m", "vidcurate", "inspect", f"{bucket}/root{q}"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    console = run.stdout + run.stderr + report.stdout + report.stderr
    assert "s3://videos/root" in console and not [m for m in MARKERS if m in console], console[-3000:]
    seen, found = _scan(fs, "videos/root")
    assert found == []
    assert seen.get(".parquet", 0) >= 3 and seen.get(".json") and seen.get(".log") and seen.get(".html"), seen
    videos = [r for f in fs.get_file_info(pafs.FileSelector("videos/root/videos")) for r in
              pq.read_table(fs.open_input_file(f.path)).to_pylist()]
    assert sorted(r["source"] for r in videos) == [f"s3://videos/raw/{n}.mp4" for n in ("broken", "v0", "v1")]
    assert sum(1 for r in videos if r["error"]) == 1  # the broken file: an error, redacted
