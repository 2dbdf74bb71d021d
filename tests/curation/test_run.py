"""Probe + split through Ray: tables, manifest, resume, a killed run, and `ray job submit` to a real head."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from curation import tables
from curation.config import load_config
from curation.pipeline import RunContext, run_stages
from curation.storage import Storage
from curation.synth import Scene, make_video

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_inputs(folder, n: int, frames: int = 60, size=(128, 80)) -> None:
    os.makedirs(folder, exist_ok=True)
    for k in range(n):
        make_video(os.path.join(folder, f"v{k}.mp4"), [Scene(frames, 2, k), Scene(frames, 3, k + 50)], *size, 24.0)


def write_cfg(tmp_path, root, raw, extra: str = "") -> str:
    p = tmp_path / f"p-{os.path.basename(str(root))}.yaml"
    p.write_text(f"root: {root}\ninputs: ['{raw}/*']\nray: {{num_cpus: 2, progress: false}}\n"
                 f"split: {{min_clip_s: 1.0}}\n{extra}")
    return str(p)


def snapshot(root: str) -> tuple:
    st = Storage(root)
    clips = sorted((r["clip_id"], r["start_frame"], r["end_frame"], r["frames"], r["status"], r["path"])
                   for r in tables.read_table(st, "clips", tables.CLIPS).to_pylist())
    files = sorted(p for p in st.walk_files("clips") if p.endswith(".mp4"))
    return clips, files


def test_probe_split_resume(ray_local, tmp_path):
    raw = tmp_path / "raw"
    make_inputs(str(raw), 2)
    (raw / "notes.txt").write_text("not a video")
    cfg = load_config(write_cfg(tmp_path, tmp_path / "root", raw))
    ctx = run_stages(cfg, ["probe", "split"])
    st = Storage(cfg.root)
    videos = tables.read_table(st, "videos", tables.VIDEOS).to_pylist()
    assert len(videos) == 3 and sum(1 for v in videos if v["error"]) == 1
    clips, files = snapshot(cfg.root)
    assert len(clips) == 4 and len(files) == 4 and {c[1] for c in clips} == {0, 60}
    assert ctx.stages["split"]["counts"]["clips"] == 4
    man = json.loads(st.read_bytes(f"runs/{ctx.run_id}.json"))
    assert man["config"]["split"]["min_clip_s"] == 1.0 and "ray" in man["versions"]
    assert any("notes.txt" in e for e in man["stages"]["probe"]["errors"])
    # A second run skips everything already done and changes nothing.
    ctx2 = run_stages(cfg, ["probe", "split"])
    assert ctx2.stages["split"]["counts"]["skipped"] == 2 and ctx2.stages["split"]["counts"]["split"] == 0
    assert snapshot(cfg.root) == (clips, files)
    # A new input is picked up alone.
    make_video(str(raw / "late.mp4"), [Scene(48, 2, 99)], 96, 64, 24.0)
    ctx3 = run_stages(cfg, ["probe", "split"])
    assert ctx3.stages["split"]["counts"]["split"] == 1


def _cli(cfg: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vidcurate", "run", cfg, "--stage", "probe,split", *extra]


@pytest.mark.heavy
def test_killed_run_resumes_to_identical_result(tmp_path):
    raw = tmp_path / "raw"
    make_inputs(str(raw), 8, frames=150, size=(480, 272))  # ~1 s of work per video on one CPU
    env = {**os.environ, "PYTHONPATH": REPO}
    ref = write_cfg(tmp_path, tmp_path / "ref", raw)
    subprocess.run(_cli(ref), check=True, cwd=REPO, env=env, capture_output=True)
    killed = write_cfg(tmp_path, tmp_path / "killed", raw)
    proc = subprocess.Popen(_cli(killed, "--set", "ray.num_cpus=1"), cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clips_dir = tmp_path / "killed" / "clips"
    deadline = time.time() + 120
    while time.time() < deadline and not (clips_dir.exists() and any(
            p.endswith(".parquet") and not p.startswith(".tmp-") for p in os.listdir(clips_dir))):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = snapshot(str(tmp_path / "killed"))[0]
    assert 0 < len({c[0].split("_")[0] for c in partial}) < 8, "the kill must land mid-run"
    subprocess.run(_cli(killed), check=True, cwd=REPO, env=env, capture_output=True)
    assert snapshot(str(tmp_path / "killed")) == snapshot(str(tmp_path / "ref"))
    leftovers = [f for _, _, fs in os.walk(tmp_path / "killed") for f in fs if f.startswith(".tmp-")]
    assert not leftovers


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.heavy
def test_ray_job_submit_to_real_head(tmp_path):
    raw = tmp_path / "raw"
    make_inputs(str(raw), 2)
    cfg = write_cfg(tmp_path, tmp_path / "root", raw)
    bindir = os.path.dirname(sys.executable)
    # Auth off for this throwaway loopback head (short --temp-dir: Unix socket paths are limited to
    # 107 bytes); the head runs in its own process group so the test
    # stops exactly it (not `ray stop`, which would stop every Ray on the machine).
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"], "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled"}
    ray = os.path.join(bindir, "ray")
    # Every port chosen free, so another Ray on the machine (its agents' default ports) cannot collide.
    port, dash, agent, agent_grpc, rt_env, metrics, client = free_ports(7)
    head = subprocess.Popen([ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2",
                             "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port",
                             str(agent_grpc), "--runtime-env-agent-port", str(rt_env), "--metrics-export-port",
                             str(metrics), "--ray-client-server-port", str(client),
                             "--disable-usage-stats", "--temp-dir", tempfile.mkdtemp(prefix="ray", dir="/tmp")],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cmd = [ray, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", REPO,
               "--", sys.executable, "-m", "vidcurate", "run", cfg, "--stage", "probe,split"]
        deadline = time.time() + 180
        while True:  # the dashboard and its agent take a few seconds to accept jobs
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            text = out.stdout + out.stderr
            if out.returncode == 0 or time.time() > deadline or not any(
                    m in text for m in ("Connection", "No available agent", "try again")):
                break
            time.sleep(2)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "succeeded" in out.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
    clips, files = snapshot(str(tmp_path / "root"))
    assert len(clips) == 4 and len(files) == 4


@pytest.mark.heavy
@pytest.mark.testdata
def test_whole_testdata_folder(ray_local, testdata, tmp_path):
    """Every real video completes; the corrupted, empty and fake files are errors, not crashes."""
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is text, not a video\n")
    p = tmp_path / "p.yaml"
    p.write_text(f"root: {tmp_path / 'root'}\ninputs: ['{testdata}/scenedetect/*.mp*', '{testdata}/decord/*',"
                 f" '{testdata}/sintel/*.mp4', '{testdata}/bbb/*.mp4', '{tmp_path}/*.mp4']\n"
                 "ray: {progress: false}\nsplit: {max_height: 240, max_width: 426, min_clip_s: 0.05}\n")
    cfg = load_config(str(p))
    run_stages(cfg, ["probe", "split"])
    st = Storage(cfg.root)
    videos = tables.read_table(st, "videos", tables.VIDEOS).to_pylist()
    errors = sorted(os.path.basename(v["source"]) for v in videos if v["error"])
    assert errors == ["corrupted.mp4", "text.mp4", "zero.mp4"]
    # corrupted.mp4 decodes 20-odd frames before the damage: salvaged (truncated), its clips kept
    assert [os.path.basename(v["source"]) for v in videos if v["truncated"]] == ["corrupted.mp4"]
    clips = tables.read_table(st, "clips", tables.CLIPS).to_pylist()
    split_ids = {c["video_id"] for c in clips if c["status"] in ("ok", "dropped")}
    # every usable video is split, except those a probe prefilter rule set aside (e.g. the 50x50 file)
    assert split_ids == {v["video_id"] for v in videos if tables.usable_video(v) and not v["reasons"]}
    assert {os.path.basename(v["source"]) for v in videos if v["reasons"]} <= {"unordered.mov"}
    by_name = {os.path.basename(v["source"]): v["video_id"] for v in videos}
    tv = sorted(c["start_frame"] for c in clips if c["video_id"] == by_name["testvideo.mp4"])
    assert tv == [0, 30, 180, 394]
    for c in clips:
        if c["status"] == "ok":
            assert c["frames"] == c["end_frame"] - c["start_frame"] and st.exists(c["path"])
