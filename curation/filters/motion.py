"""Motion scorer: how much the picture moves, and whether the camera or the scene moves it.

Units are scale- and rate-free: displacement per second divided by the frame diagonal ("diagonals per
second"), so a threshold means the same at any resolution, frame rate or sample rate.
- mean: mean displacement over the whole frame and every sampled pair;
- min_patch: the same, per cell of a `patches` x `patches` grid averaged over time, then the minimum
  cell (a small moving object on a still background scores low here: Cosmos-Curate's patch minimum);
- still_share: share of consecutive sampled pairs whose mean is below `still_eps` (frozen stretches).

Camera and scene apart (always from the optical flow): between each sampled pair a global similarity
(translation, rotation, uniform scale: the camera) is fitted to the flow with RANSAC
(cv2.estimateAffinePartial2D, on textured points); what the fit leaves is the scene's own motion.
- camera: mean displacement the camera model makes over the frame;
- object: 99th percentile of the residual motion (a small mover counts, flow noise does not);
- moving_area: share of the (textured) frame whose residual is above `still_eps`;
- shake: high-frequency jitter of the camera path, measured frame to frame: at each sampled frame the
  decoder also hands over the next `shake_burst - 1` frames; the camera is fitted between consecutive
  frames of that burst, and shake is the RMS change of camera velocity from one frame to the next / sqrt 2
  (diagonals per second). A smooth pan or zoom, even a fast or eased one, changes its velocity little
  between two frames; handheld jitter changes it every frame. (Measured between the 2 fps samples, as
  before issue 21, jitter aliases and an eased pan reads as shake: bench/judgement.py.)
  A shaky clip (docs/judgement.md): the camera position jitters by >= ~1% of the frame diagonal (RMS,
  frame to frame) on top of whatever smooth move it makes;
- level: max(camera, object), the motion of whatever moves most: a static camera watching a few
  people walk is not "still", and the default rule drops a clip only when both are low;
- camera_type (string): static, pan, tilt, zoom, rotate, shaky or mixed, from the mean model.

method "flow": OpenCV DIS (or Farneback) on grayscale frames with short side `short_side`, between
consecutive sampled frames (2 fps by default). method "mv": the H.264/HEVC/MPEG-4 motion vectors the
decoder exports for every frame (no extra image work); codecs without vectors fall back to flow.
bench/filter.py measures both against each other (agreement and speed).
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from curation.filters.base import ClipFrames, FrameSpec, Scorer
from curation.filters.config import ScorerConfig


class MotionConfig(ScorerConfig):
    """filter.scorers.<name> with type: motion."""

    method: Literal["flow", "mv"] = "flow"  # dense optical flow, or the codec's motion vectors (fast path)
    flow: Literal["dis", "farneback"] = "dis"  # OpenCV flow algorithm for method "flow"
    short_side: int = Field(96, ge=16, le=512)  # flow frames are scaled to this short side (64 aliases on 720p periodic texture)
    patches: int = Field(4, ge=1, le=16)  # grid for min_patch (patches x patches cells)
    still_eps: float = Field(0.01, ge=0)  # a sampled pair moving less than this (diagonals/s) counts as still
    ransac_px: float = Field(0.5, gt=0)  # RANSAC inlier distance of the camera fit, pixels at short_side
    shake_burst: int = Field(3, ge=3, le=8)  # consecutive frames per sample the shake metric fits the camera on
    dominant: float = Field(0.7, gt=0.5, le=1)  # camera_type: a component (pan/tilt/zoom/rotate) this share of the camera motion names it, else "mixed"


class MotionScorer(Scorer):
    Config = MotionConfig
    step = "cpu"

    def metrics(self) -> dict[str, pa.DataType]:
        return {"mean": pa.float32(), "min_patch": pa.float32(), "still_share": pa.float32(),
                "camera": pa.float32(), "object": pa.float32(), "moving_area": pa.float32(),
                "shake": pa.float32(), "level": pa.float32(), "camera_type": pa.string()}

    def frame_specs(self) -> list[FrameSpec]:
        # The mv method keeps small gray frames too: the fallback for codecs without motion vectors.
        return [self._spec()]

    def _spec(self) -> FrameSpec:
        return FrameSpec("gray", self.cfg.short_side, burst=self.cfg.shake_burst)

    def mv_cells(self) -> int | None:
        return self.cfg.patches if self.cfg.method == "mv" else None

    def setup(self, encoder: Any = None) -> None:
        import cv2

        cv2.setNumThreads(1)  # one clip per CPU worker: determinism and no oversubscription

    def score(self, clip: ClipFrames, embeddings: np.ndarray | None = None) -> dict[str, Any]:
        flows = self.pair_flows(clip)
        if self.cfg.method == "mv" and clip.mv_grid is not None and len(clip.mv_grid):
            out = self._from_mvs(clip)
        else:
            out = self._from_flow(clip, flows)
        bursts = clip.frames[self._spec().key]
        return {**out, **camera_scene(flows, self.cfg), "shake": frame_shake(bursts, clip.fps, self.cfg)}

    def pair_flows(self, clip: ClipFrames) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """(flow, first frame, dt) per consecutive sampled pair, flow in pixels at short_side."""
        import cv2

        g = clip.frames[self._spec().key][:, 0]
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) if self.cfg.flow == "dis" else None
        out = []
        for i in range(len(g) - 1):
            dt = max(float(clip.times[i + 1] - clip.times[i]), 1e-3)
            if dis is not None:
                f = dis.calc(g[i], g[i + 1], None)
            else:
                f = cv2.calcOpticalFlowFarneback(g[i], g[i + 1], None, 0.5, 3, 15, 3, 5, 1.2, 0)
            out.append((f, g[i], dt))
        return out

    def _summary(self, cells: np.ndarray, window_means: np.ndarray) -> dict[str, Any]:
        """cells: (N, G, G) diagonals/s per step; window_means: (P,) per sampled pair."""
        if not len(cells) or not len(window_means):
            return {"mean": None, "min_patch": None, "still_share": None}
        per_cell = np.nanmean(cells, axis=0)
        return {"mean": float(np.nanmean(cells)),
                "min_patch": float(np.nanmin(per_cell)) if np.isfinite(per_cell).any() else None,
                "still_share": float(np.mean(window_means < self.cfg.still_eps))}

    def _from_flow(self, clip: ClipFrames, flows: list) -> dict[str, Any]:
        if not flows:
            return self._summary(np.zeros((0, 1, 1)), np.zeros(0))
        p = self.cfg.patches
        cells = np.empty((len(flows), p, p), np.float32)
        for i, (f, _, dt) in enumerate(flows):
            diag = float(np.hypot(f.shape[0], f.shape[1]))
            cells[i] = _grid_mean(np.hypot(f[..., 0], f[..., 1]) / diag / dt, p)
        return self._summary(cells, cells.reshape(len(cells), -1).mean(axis=1))

    def _from_mvs(self, clip: ClipFrames) -> dict[str, Any]:
        diag = float(np.hypot(clip.width, clip.height))
        cells = clip.mv_grid * (clip.fps / diag)  # pixels/frame -> diagonals/s
        per_frame = np.nanmean(cells.reshape(len(cells), -1), axis=1)
        # One value per sampled interval, so still_share means the same as with flow.
        edges = np.append(clip.times[1:], np.inf) if len(clip.times) > 1 else np.array([np.inf])
        win = np.searchsorted(edges, clip.mv_times, side="right")
        means = np.array([np.nanmean(per_frame[win == w]) for w in np.unique(win)])
        return self._summary(cells, means[np.isfinite(means)])


def _grid_mean(a: np.ndarray, p: int) -> np.ndarray:
    """Mean of a 2-D array over a p x p grid of (nearly) equal cells."""
    ys = np.linspace(0, a.shape[0], p + 1).astype(int)
    xs = np.linspace(0, a.shape[1], p + 1).astype(int)
    return np.array([[a[ys[i]:ys[i + 1], xs[j]:xs[j + 1]].mean() for j in range(p)] for i in range(p)],
                    np.float32)


_NONE = {"camera": None, "object": None, "moving_area": None, "shake": None, "level": None, "camera_type": None}


def camera_scene(flows: list[tuple[np.ndarray, np.ndarray, float]], cfg: MotionConfig) -> dict[str, Any]:
    """Camera / scene metrics of a clip from its per-pair flows (see the module docstring)."""
    pairs = [_pair(f, g, dt, cfg) for f, g, dt in flows]
    if not pairs:
        return dict(_NONE)
    cam = np.array([p["camera"] for p in pairs])
    obj = np.array([p["object"] for p in pairs])
    vel = np.array([p["v"] for p in pairs])  # (P, 2) camera velocity at the frame centre
    shake = float(np.sqrt(np.mean(np.sum(np.diff(vel, axis=0) ** 2, axis=1)) / 2)) if len(vel) > 1 else 0.0
    steady = {"pan": abs(vel[:, 0].mean()), "tilt": abs(vel[:, 1].mean()),
              "zoom": abs(np.mean([p["zoom"] for p in pairs])), "rotate": abs(np.mean([p["rotate"] for p in pairs]))}
    return {"camera": float(cam.mean()), "object": float(obj.mean()),
            "moving_area": float(np.mean([p["moving_area"] for p in pairs])), "shake": shake,
            "level": float(max(cam.mean(), obj.mean())),
            "camera_type": _camera_type(float(cam.mean()), shake, steady, cfg)}


def frame_shake(bursts: np.ndarray, fps: float, cfg: MotionConfig) -> float | None:
    """RMS frame-to-frame change of the camera velocity / sqrt 2 (diagonals/s) over (T, B, H, W) bursts."""
    import cv2

    if not len(bursts):
        return None
    use = bursts[:-1] if len(bursts) > 1 else bursts  # the last burst may be cut short by the clip's end
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dt = 1.0 / max(fps, 1e-3)
    jumps = []
    for b in use:
        v = [_pair(dis.calc(b[i], b[i + 1], None), b[i], dt, cfg)["v"] for i in range(len(b) - 1)]
        jumps += [np.sum((v[i + 1] - v[i]) ** 2) for i in range(len(v) - 1)]
    return float(np.sqrt(np.mean(jumps) / 2))


def _camera_type(camera: float, shake: float, steady: dict[str, float], cfg: MotionConfig) -> str:
    if camera < cfg.still_eps:
        return "static"
    total = sum(steady.values())
    if shake > cfg.still_eps and shake > np.hypot(steady["pan"], steady["tilt"]) + steady["zoom"] + steady["rotate"]:
        return "shaky"  # the camera jitters more than it travels
    kind, top = max(steady.items(), key=lambda kv: kv[1])
    return kind if total > 0 and top >= cfg.dominant * total else "mixed"


def _pair(f: np.ndarray, g: np.ndarray, dt: float, cfg: MotionConfig) -> dict[str, Any]:
    """Fit the camera (similarity, RANSAC) to one pair's flow; split its motion into camera and residual."""
    import cv2

    h, w = f.shape[:2]
    diag = float(np.hypot(h, w))
    # Flow is only trustworthy where the picture has texture: fit and judge there.
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    tex = np.hypot(gx, gy) > 16.0
    if tex.mean() < 0.05:
        tex = np.ones_like(tex)
    ys, xs = np.mgrid[2:h:4, 2:w:4]
    sel = tex[ys, xs]
    src = np.stack([xs[sel], ys[sel]], axis=1).astype(np.float32)
    m = None
    if len(src) >= 8:
        dst = src + f[ys[sel], xs[sel]]
        m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=cfg.ransac_px,
                                           maxIters=1000, confidence=0.995, refineIters=10)
    if m is None:  # no fit (flat picture): the median flow as a pure translation
        m = np.array([[1, 0, np.median(f[..., 0])], [0, 1, np.median(f[..., 1])]], np.float64)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cam_dx = m[0, 0] * xx + m[0, 1] * yy + m[0, 2] - xx
    cam_dy = m[1, 0] * xx + m[1, 1] * yy + m[1, 2] - yy
    to_rate = 1.0 / diag / dt  # pixels per pair -> diagonals per second
    res = np.hypot(f[..., 0] - cam_dx, f[..., 1] - cam_dy)[tex] * to_rate
    cx, cy = w / 2, h / 2
    v = np.array([m[0, 0] * cx + m[0, 1] * cy + m[0, 2] - cx, m[1, 0] * cx + m[1, 1] * cy + m[1, 2] - cy]) * to_rate
    r_mean = float(np.mean(np.hypot(xx - cx, yy - cy)))  # zoom / roll move pixels this far from the centre on average
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    return {"camera": float(np.mean(np.hypot(cam_dx, cam_dy))) * to_rate,
            "object": float(np.percentile(res, 99)), "moving_area": float(np.mean(res > cfg.still_eps)),
            "v": v, "zoom": np.log(max(scale, 1e-6)) * r_mean * to_rate,
            "rotate": float(np.arctan2(m[1, 0], m[0, 0])) * r_mean * to_rate}
