"""A headless Chromium driven over the DevTools protocol on a pipe (no extra package): the inspect
page's tests and bench/inspect_page.py load pages, run script, send real mouse input and take screenshots."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time


def chromium_exe() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Chromium:
    """One headless browser with one page. Use as a context manager (the process is always ended)."""

    def __init__(self, exe: str, width: int = 1300, height: int = 1000) -> None:
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        to_child, self._w = os.pipe()  # commands: we write, Chromium reads its fd 3
        self._r, from_child = os.pipe()  # replies: Chromium writes its fd 4

        def fds() -> None:
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
             "--remote-debugging-pipe", f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "--autoplay-policy=no-user-gesture-required", "about:blank"],
            preexec_fn=fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buf = b""
        self._id = 0
        try:
            target = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
            self.session = self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)["sessionId"]
            self.call("Page.enable", session=True)
            self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
        except BaseException:  # never leave a browser or its profile behind
            self.close()
            raise

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def call(self, method: str, session: bool = False, timeout: float = 120.0, **params: object) -> dict:
        """Send one command and wait for its reply (events in between are dropped)."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            while b"\0" not in self._buf:
                if time.time() > deadline:
                    raise TimeoutError(f"chromium: no reply to {method} in {timeout:.0f}s")
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited while waiting for {method}")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"chromium: {method}: {reply['error']}")
                return reply.get("result", {})

    def goto(self, url: str, ready: str = "document.body && document.body.dataset.ready === '1'",
             timeout: float = 120.0) -> float:
        """Open `url` and wait until the `ready` expression is true; returns the seconds it took."""
        t0 = time.time()
        self.call("Page.navigate", session=True, url=url)
        while time.time() - t0 < timeout:
            if self.eval(f"!!({ready}) || !!(document.body && document.body.dataset.error)"):
                err = self.eval("document.body.dataset.error || ''")
                if err:
                    raise RuntimeError(f"page error: {err}")
                return time.time() - t0
            time.sleep(0.05)
        raise TimeoutError(f"{url}: not ready after {timeout:.0f}s")

    def eval(self, expr: str, timeout: float = 120.0) -> object:
        """Evaluate a JS expression in the page (promises awaited) and return its JSON value."""
        r = self.call("Runtime.evaluate", session=True, timeout=timeout, expression=expr, awaitPromise=True,
                      returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails'].get('exception', {}).get('description')}")
        return r["result"].get("value")

    def mouse(self, kind: str, x: float, y: float) -> None:
        """A real mouse event: kind is pressed, moved or released (left button)."""
        self.call("Input.dispatchMouseEvent", session=True, type=f"mouse{kind.capitalize()}", x=x, y=y,
                  button="left", buttons=0 if kind == "released" else 1, clickCount=1)

    def drag(self, x0: float, y0: float, x1: float, y1: float, steps: int = 8) -> None:
        self.mouse("moved", x0, y0)
        self.mouse("pressed", x0, y0)
        for i in range(1, steps + 1):
            self.mouse("moved", x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps)
        self.mouse("released", x1, y1)

    def screenshot(self, path: str, full_page: bool = False) -> None:
        params: dict = {"format": "png"}
        if full_page:
            m = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": m["width"], "height": m["height"], "scale": 1})
        data = self.call("Page.captureScreenshot", session=True, **params)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
