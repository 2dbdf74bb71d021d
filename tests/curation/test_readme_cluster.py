"""The README's Ray cluster commands, run as written by a new user: a fresh `ray start --head` on
127.0.0.1 from a shell where the venv is not activated (system PATH, no PYTHONPATH, a new HOME without a
Ray token), then the README's `ray job submit` line."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from curation import tables
from curation.storage import Storage
from curation.synth import Scene, make_video

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def readme_cluster_lines() -> list[str]:
    """The shell lines of the README block that starts a Ray head."""
    text = open(os.path.join(REPO, "README.md")).read()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        if "ray start --head" in block:
            return [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
    raise AssertionError("README.md has no block with `ray start --head`")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_readme_block_pins_the_interpreter_and_the_token():
    lines = readme_cluster_lines()
    submit = next(ln for ln in lines if "ray job submit" in ln)
    assert '-- "$PWD/.venv/bin/python" -m vidcurate run "$PWD/pipelines.yaml"' in submit
    assert any("get-auth-token --generate" in ln for ln in lines) and "export RAY_AUTH_MODE=token" in lines


@pytest.mark.heavy
def test_readme_ray_start_and_job_submit_as_a_new_user(tmp_path):
    lines = readme_cluster_lines()
    exports = [ln for ln in lines if ln.startswith("export ")]
    setup = [ln for ln in lines if "get-auth-token" in ln]
    start = next(ln for ln in lines if "ray start --head" in ln)
    submit = next(ln for ln in lines if "ray job submit" in ln)
    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(2):
        make_video(str(raw / f"v{k}.mp4"), [Scene(48, 2, k), Scene(48, 3, k + 50)], 128, 80, 24.0)
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"root: {tmp_path / 'root'}\ninputs: ['{raw}/*.mp4']\nsplit: {{min_clip_s: 1.0}}\n")
    home = tmp_path / "home"
    home.mkdir()
    # A new user's shell: the venv not activated, nothing of this test process's environment.
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "RAY_USAGE_STATS_ENABLED": "0"}
    # What the test adds to the README's lines: free ports (other Rays may run on this machine), a short
    # temp dir (Unix socket paths <= 107 bytes), --block so the head lives in this process group and the
    # test stops exactly it (the README's `ray stop` would stop every Ray on the machine).
    port, dash, agent, agent_grpc, rt_env, metrics, client = free_ports(7)
    start += (f" --port {port} --dashboard-host 127.0.0.1 --dashboard-port {dash} --dashboard-agent-listen-port "
              f"{agent} --dashboard-agent-grpc-port {agent_grpc} --runtime-env-agent-port {rt_env} "
              f"--metrics-export-port {metrics} --ray-client-server-port {client} --block "
              f"--temp-dir {tempfile.mkdtemp(prefix='ray', dir='/tmp')}")
    # ... and its own config instead of the repository's (whose sample videos the demo makes).
    assert '"$PWD/pipelines.yaml"' in submit
    submit = submit.replace('"$PWD/pipelines.yaml"', f"'{cfg}'") + " --stage probe,split"
    head = subprocess.Popen(["bash", "-c", "\n".join(["set -e", *setup, *exports, start])], cwd=REPO, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert (home / ".ray" / "auth_token").exists() or _wait_for(home / ".ray" / "auth_token")
        job_env = {**env, "RAY_ADDRESS": f"http://127.0.0.1:{dash}"}  # the dashboard's port, chosen above
        script = "\n".join(["set -e", *exports, submit])
        deadline = time.time() + 240
        while True:  # the dashboard and its agent take a few seconds to accept jobs
            out = subprocess.run(["bash", "-c", script], cwd=REPO, env=job_env, capture_output=True, text=True,
                                 timeout=400)
            text = out.stdout + out.stderr
            if out.returncode == 0 or time.time() > deadline or not any(
                    m in text for m in ("Connection", "No available agent", "try again", "Failed to connect")):
                break
            time.sleep(3)
        assert out.returncode == 0, text[-4000:]
        assert "succeeded" in out.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
    clips = tables.read_table(Storage(str(tmp_path / "root")), "clips", tables.CLIPS).to_pylist()
    assert len(clips) == 4 and all(c["status"] == "ok" for c in clips)
    assert "summary of run" in out.stdout  # the job's console (driver output) ends with the run summary


def _wait_for(path, seconds: float = 60) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if path.exists():
            return True
        time.sleep(0.5)
    return False
