"""On-screen text scorer: RapidOCR's PP-OCRv4 text detector (DBNet, ONNX, shipped in the
rapidocr-onnxruntime wheel) on a few sampled frames per clip, telling overlay text from texture.

The detector also fires on texture (dark walls, skies, striped shirts: single boxes of ~300x300 px),
so a box counts as a text line only when it is shaped like one (issue 21):
- geometry: wider than `line_aspect` x its height and no taller than `max_line_height` of the frame
  (a line is wide and short; a square blob is not);
- where geometry is ambiguous (a box wider than tall but short of `line_aspect`, e.g. a 2-letter
  logo), the PP-OCRv4 recogniser must read at least 2 characters with `min_confidence`;
- frames are never upscaled past the clip's native resolution (upscaling a 144p clip to 480 made
  compression blocks look like text).
Metrics per clip, over the scored frames, from the text lines only:
- `area_mean`, `area_max`: share of the frame the union of the lines covers (full-frame text:
  title cards, slides); `boxes_max`: most lines on one frame;
- `band`: share of frames with a line centred in the bottom `band_height` of the frame (burned-in
  subtitles, lower thirds; on a still, detailed picture only lines that change count);
- `persist`: share of frames with a line that stays put (a line at the same place, IoU >= `persist_iou`,
  on at least half of the other scored frames) while the picture around it moves or is plain (a card):
  overlays stay where they are while the picture moves; a line that moves with the camera (fitted with
  RANSAC between the frames) is scene text, even when it moves too little to fail the IoU test; on a
  still, detailed picture (a screen, a sign filmed from a tripod) a line that stays put counts only when
  it damps the picture's own small changes beneath it (an overlay at least half opaque);
- `corner`: the same for persistent lines inside a corner region (channel logos, watermarks).
With `recognize: true`, `text` holds the recognised lines (truncated to `max_chars`).

Default thresholds (pipelines.yaml) from bench/judgement.py's calibration part (docs/judgement.md):
drop burned-in subtitles (band), persistent logos, watermarks and title cards (persist), slides (area),
keep scene text and texture.
"""
from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from curation.filters.base import ClipFrames, FrameSpec, Scorer, spread
from curation.filters.config import ScorerConfig
from curation.filters.onnx_runtime import providers, require


class TextConfig(ScorerConfig):
    """filter.scorers.<name> with type: text."""

    # cpu: in the decode tasks (onnxruntime on CPU); model: in the model actors (CUDA when they hold a GPU
    # and onnxruntime-gpu is installed).
    step: Literal["cpu", "model"] = "cpu"
    frames: int = Field(4, ge=1)  # frames per clip given to the detector, evenly spread over the sampled ones
    short_side: int = Field(480, ge=64)  # detector input: frames scaled to this short side (then to multiples of 32)
    thresh: float = Field(0.3, gt=0, lt=1)  # DBNet pixel threshold on the text probability map (PaddleOCR 0.3)
    box_thresh: float = Field(0.5, gt=0, lt=1)  # a box is kept when its mean probability is above this (PaddleOCR 0.5)
    unclip_ratio: float = Field(1.6, gt=0)  # box expansion from the shrunk text kernel (PaddleOCR 1.6)
    recognize: bool = False  # also read the text (PP-OCRv4 recogniser) into the <name>_text column
    max_chars: int = Field(200, ge=1)  # recognised text is truncated to this many characters
    # A box is a text line when its width >= line_aspect x its height (sentences: 6-12; texture blobs: 0.5-2.5)
    # and its height <= max_line_height; wider-than-tall boxes short of line_aspect (a "TV5" logo: 1.9) count
    # when the recogniser reads >= 2 characters with min_confidence (overlay text: >= 0.95; texture: <= 0.62).
    line_aspect: float = Field(4.0, ge=1)
    max_line_height: float = Field(0.4, gt=0, le=1)  # ... and its height <= this share of the frame's short side
    verify: bool = True  # false: geometry alone decides (no recogniser: cheaper, misses short logos)
    min_confidence: float = Field(0.8, ge=0, le=1)
    band_height: float = Field(0.3, gt=0, le=1)  # subtitle band: the bottom share of the frame (band metric)
    corner: float = Field(0.3, gt=0, le=0.5)  # corner regions: this share of the width and height from each corner
    persist_iou: float = Field(0.4, gt=0, le=1)  # a line "stays put" when a line on another frame overlaps it this much
    # A line that stays put is an overlay only where that can be told: the picture around it changes (mean
    # absolute frame difference >= move_eps grey levels) or is plain (std <= flat_std: a card). On a still,
    # detailed picture (a screen or a sign filmed from a tripod) it is scene text as likely as an overlay: kept.
    move_eps: float = Field(2.0, ge=0)
    flat_std: float = Field(12.0, ge=0)
    # ... unless the line damps the picture's own small changes: on a still picture a line that stays put is
    # an overlay when its pixels change by <= damp_ratio x those of a ring around it (an overlay of opacity
    # >= 1 - damp_ratio; scene text changes as its surroundings) and that ring changes by >= damp_min grey
    # levels (10x the re-encode noise of a frozen clip: 0.01-0.03). A frozen picture gives no evidence.
    damp_ratio: float = Field(0.5, ge=0, le=1)
    damp_min: float = Field(0.25, ge=0)
    # Camera-compensated stability: the camera (a similarity: shift, zoom, roll) is fitted between the scored
    # frames with RANSAC to corners tracked outside the lines; where it moves a line's box by >= camera_px,
    # the line is an overlay if it stays put in the frame and scene text if it moves with the camera (a
    # screen in a jittered, panned or zoomed shot). false: frame position alone.
    camera: bool = True
    camera_px: float = Field(2.0, ge=0)
    threads: int = Field(1, ge=0)  # onnxruntime intra-op threads per worker (0 = all cores)


def _models() -> str:
    import rapidocr_onnxruntime

    return os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models")


def _crop(img: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The text line under a 4-point box, straightened (as RapidOCR crops lines for its recogniser)."""
    import cv2

    w = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
    h = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    m = cv2.getPerspectiveTransform(box.astype(np.float32), dst)
    out = cv2.warpPerspective(img, m, (max(w, 1), max(h, 1)), borderMode=cv2.BORDER_REPLICATE,
                              flags=cv2.INTER_CUBIC)
    return np.rot90(out) if out.shape[0] >= 1.5 * out.shape[1] else out


def text_area(boxes: np.ndarray, height: int, width: int) -> float:
    """Share of a height x width frame covered by the union of 4-point boxes."""
    import cv2

    if not len(boxes):
        return 0.0
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(b).astype(np.int32) for b in boxes], 1)
    return float(mask.mean())


class TextScorer(Scorer):
    Config = TextConfig

    def __init__(self, name: str, cfg: TextConfig) -> None:
        require(name, "text", "rapidocr_onnxruntime", "rapidocr-onnxruntime")
        super().__init__(name, cfg)
        self.step = cfg.step

    def metrics(self) -> dict[str, pa.DataType]:
        out = {"area_mean": pa.float32(), "area_max": pa.float32(), "boxes_max": pa.int32(), "band": pa.float32(),
               "persist": pa.float32(), "corner": pa.float32()}
        return {**out, "text": pa.string()} if self.cfg.recognize else out

    def frame_specs(self) -> list[FrameSpec]:
        return [FrameSpec("rgb24", self.cfg.short_side)]

    def max_frames(self) -> int | None:
        return self.cfg.frames

    def setup(self, encoder: Any = None) -> None:
        from rapidocr_onnxruntime.ch_ppocr_det import TextDetector

        cuda = providers(self.step)[0] == "CUDAExecutionProvider"
        threads = {"intra_op_num_threads": self.cfg.threads or -1, "inter_op_num_threads": 1}
        self.det = TextDetector({
            "model_path": os.path.join(_models(), "ch_PP-OCRv4_det_infer.onnx"), "use_cuda": cuda, **threads,
            "limit_side_len": self.cfg.short_side, "limit_type": "min", "mean": [0.5] * 3, "std": [0.5] * 3,
            "thresh": self.cfg.thresh, "box_thresh": self.cfg.box_thresh, "unclip_ratio": self.cfg.unclip_ratio,
            "max_candidates": 1000, "use_dilation": True, "score_mode": "fast"})
        self.rec = None
        if self.cfg.recognize or self.cfg.verify:
            from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer

            self.rec = TextRecognizer({"model_path": os.path.join(_models(), "ch_PP-OCRv4_rec_infer.onnx"),
                                       "use_cuda": cuda, **threads, "rec_img_shape": [3, 48, 320],
                                       "rec_batch_num": 6})

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        """(N, 4, 2) text boxes of one RGB frame, in its pixel coordinates (never upscaled)."""
        self.det.limit_side_len = min(self.cfg.short_side, min(rgb.shape[:2]))  # limit_type min would upscale
        boxes, _ = self.det(np.ascontiguousarray(rgb[..., ::-1]))  # PP-OCR models read BGR
        return np.zeros((0, 4, 2), np.float32) if boxes is None or not len(boxes) else boxes

    def lines(self, rgb: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The boxes of one frame that are text lines (geometry, then the recogniser where ambiguous)."""
        boxes = self.detect(rgb)
        if not len(boxes):
            return boxes, []
        w = np.maximum(np.linalg.norm(boxes[:, 0] - boxes[:, 1], axis=1), np.linalg.norm(boxes[:, 2] - boxes[:, 3], axis=1))
        h = np.maximum(np.linalg.norm(boxes[:, 0] - boxes[:, 3], axis=1), np.linalg.norm(boxes[:, 1] - boxes[:, 2], axis=1))
        long, short = np.maximum(w, h), np.minimum(w, h).clip(1e-3)
        small = short <= self.cfg.max_line_height * min(rgb.shape[:2])
        line = small & (long >= self.cfg.line_aspect * short)
        ambiguous = small & ~line & (w > h)
        texts = [""] * len(boxes)
        ask = [i for i in range(len(boxes)) if line[i] and self.cfg.recognize or ambiguous[i] and self.cfg.verify]
        if ask and self.rec is not None:
            bgr = np.ascontiguousarray(rgb[..., ::-1])
            res, _ = self.rec([_crop(bgr, boxes[i]) for i in ask])
            for i, (t, conf) in zip(ask, res):
                texts[i] = t.strip()
                if ambiguous[i] and conf >= self.cfg.min_confidence and len(texts[i]) >= 2:
                    line[i] = True
        keep = np.nonzero(line)[0]
        return boxes[keep], [texts[i] for i in keep]

    def score(self, clip: ClipFrames, embeddings: np.ndarray | None = None) -> dict[str, Any]:
        frames = spread(clip.frames[self.frame_specs()[0].key], self.cfg.frames)
        frames = _native(frames, min(clip.width, clip.height))
        per_frame, found = [], []
        for f in frames:
            boxes, texts = self.lines(f)
            per_frame.append(boxes)
            found += [t for t in texts if t and t not in found]
        fh, fw = frames.shape[1:3]
        areas = [text_area(b, fh, fw) for b in per_frame]
        rects = [_rects(b) for b in per_frame]
        gray = frames.astype(np.float32).mean(axis=3)
        cams = _camera(gray, rects) if self.cfg.camera else None
        stays, scene = _persistent(rects, self.cfg.persist_iou, cams, self.cfg.camera_px)
        # Lines that move with the camera are scene text (a screen or a sign in a moving shot): not overlays.
        rects, stays = [r[~s] for r, s in zip(rects, scene)], [t[~s] for t, s in zip(stays, scene)]
        if not _overlay_context(frames, rects, self.cfg.move_eps, self.cfg.flat_std):
            # Still, detailed picture: a line that stays put and whose own pixels stay the same may be scene
            # text (a screen's menu bar): it counts neither as persistent nor in the band. Lines whose text
            # changes in place (subtitles: a new line every second or so) still count in the band. One more
            # piece of evidence: an overlay at least half opaque damps the picture's own small changes (grain,
            # flicker, compression) beneath it, scene text changes as its surroundings do (`damped`).
            keep, over = [], []
            for i, (r, s) in enumerate(zip(rects, stays)):
                damped = s & _damped(gray, i, r, self.cfg.damp_ratio, self.cfg.damp_min)
                k = ~s | damped | _changes(gray, i, r, 3 * self.cfg.move_eps)
                keep.append(r[k])
                over.append(damped[k])
            rects, stays = keep, over
        band = [bool(len(r)) and bool(((r[:, 1] + r[:, 3]) / 2 > (1 - self.cfg.band_height) * fh).any()) for r in rects]
        cw, ch = self.cfg.corner * fw, self.cfg.corner * fh
        corner = []
        for r, s in zip(rects, stays):
            cx, cy = (r[:, 0] + r[:, 2]) / 2, (r[:, 1] + r[:, 3]) / 2
            corner.append(bool((s & ((cx < cw) | (cx > fw - cw)) & ((cy < ch) | (cy > fh - ch))).any()))
        out = {"area_mean": float(np.mean(areas)), "area_max": float(np.max(areas)),
               "boxes_max": int(max(len(b) for b in per_frame)), "band": float(np.mean(band)),
               "persist": float(np.mean([s.any() for s in stays])), "corner": float(np.mean(corner))}
        if self.cfg.recognize:
            out["text"] = " | ".join(found)[:self.cfg.max_chars]
        return out


def _overlay_context(frames: np.ndarray, rects: list[np.ndarray], move_eps: float, flat_std: float) -> bool:
    """Can a line that stays put be told from the scene? True when the picture outside every line moves
    (overlays stay put while the picture moves) or is plain (text on a card)."""
    gray = frames.astype(np.float32).mean(axis=3)
    mask = np.ones(gray.shape[1:], bool)
    for r in rects:
        for x0, y0, x1, y1 in r.astype(int):
            mask[max(0, y0):y1 + 1, max(0, x0):x1 + 1] = False
    if mask.mean() < 0.2:  # text everywhere: a slide
        return True
    moving = len(gray) > 1 and float(np.abs(np.diff(gray, axis=0))[:, mask].mean()) >= move_eps
    return moving or float(np.median([g[mask].std() for g in gray])) <= flat_std


def _changes(gray: np.ndarray, i: int, rects: np.ndarray, eps: float) -> np.ndarray:
    """Per line of frame i: do its pixels change on some other frame (mean absolute difference >= eps)?"""
    out = np.zeros(len(rects), bool)
    for k, (x0, y0, x1, y1) in enumerate(rects.astype(int)):
        box = (slice(max(0, y0), y1 + 1), slice(max(0, x0), x1 + 1))
        out[k] = any(float(np.abs(gray[j][box] - gray[i][box]).mean()) >= eps for j in range(len(gray)) if j != i)
    return out


def _damped(gray: np.ndarray, i: int, rects: np.ndarray, ratio: float, min_change: float) -> np.ndarray:
    """Per line of frame i: does it change over the frames by at most `ratio` x what the picture right around
    it does (a ring one line-height wide), where that ring changes by >= min_change grey levels? An overlay
    of opacity a passes only (1 - a) of the picture's change beneath it."""
    out = np.zeros(len(rects), bool)
    if len(gray) < 2:
        return out
    h, w = gray.shape[1:]
    diff = np.abs(np.diff(gray, axis=0)).mean(axis=0)
    for k, (x0, y0, x1, y1) in enumerate(rects.astype(int)):
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1 + 1), min(h, y1 + 1)
        m = max(2, y1 - y0)
        ring = np.zeros((h, w), bool)
        ring[max(0, y0 - m):y1 + m, max(0, x0 - m):x1 + m] = True
        ring[y0:y1, x0:x1] = False
        around = float(diff[ring].mean()) if ring.any() else 0.0
        out[k] = around >= min_change and float(diff[y0:y1, x0:x1].mean()) <= ratio * around
    return out


def _native(frames: np.ndarray, native_short: int) -> np.ndarray:
    """Frames scaled back down to the clip's own short side when the decoder scaled them up."""
    import cv2

    h, w = frames.shape[1:3]
    if native_short >= min(h, w):
        return frames
    s = native_short / min(h, w)
    size = (max(8, round(w * s)), max(8, round(h * s)))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def _rects(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) axis-aligned x0, y0, x1, y1 of 4-point boxes."""
    if not len(boxes):
        return np.zeros((0, 4), np.float32)
    return np.concatenate([boxes.min(axis=1), boxes.max(axis=1)], axis=1)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over union of axis-aligned rects."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = (x1 - x0).clip(0) * (y1 - y0).clip(0)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter).clip(1e-6)


def _persistent(rects: list[np.ndarray], min_iou: float, cams: np.ndarray | None = None, camera_px: float = 2.0,
                vote_margin: float = 0.1) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per frame, which of its lines stay put (overlapped on >= half of the other frames; one frame: none) and
    which move with the camera (scene text). cams[i, j] (3x3, NaN where unknown) maps frame i onto frame j;
    where it moves a line's box by >= camera_px, the pair votes: frame j's lines overlap the box where it
    was (overlay) or where the camera took it (scene) better, by an IoU margin of vote_margin.
    A line is scene text when scene votes outnumber overlay votes; it then never stays put."""
    n = len(rects)
    stays, scene = [], []
    for i, r in enumerate(rects):
        if n < 2 or not len(r):
            stays.append(np.zeros(len(r), bool))
            scene.append(np.zeros(len(r), bool))
            continue
        hits = np.zeros(len(r), int)
        votes = np.zeros(len(r), int)  # + overlay, - scene
        for j, o in enumerate(rects):
            if j == i or not len(o):
                continue
            hits += (_iou(r, o) >= min_iou).any(axis=1)
            if cams is None or not np.isfinite(cams[i, j]).all():
                continue
            moved = _warp_rects(r, cams[i, j])
            sep = np.abs(moved - r).max(axis=1)
            # Which place does frame j's text fit better: where the box was (overlay) or where the camera took it
            # (scene)? Best overlap (IoU) with frame j's lines at each place; a vote needs the camera to move the
            # box and one place to fit clearly better (on a screen full of text another word may sit near the
            # other place; text typed on changes one edge).
            iou0, iou1 = _iou(r, o).max(axis=1), _iou(moved, o).max(axis=1)
            decisive = (sep >= camera_px) & (np.abs(iou0 - iou1) >= vote_margin)
            votes += np.where(decisive, np.where(iou0 > iou1, 1, -1), 0)
        is_scene = votes < 0
        stays.append((hits >= np.ceil((n - 1) / 2)) & ~is_scene)  # a detector miss on 1 of 3 frames: still put
        scene.append(is_scene)
    return stays, scene


def _warp_rects(rects: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Axis-aligned rects moved by a 3x3 transform (the bounding rect of the moved corners)."""
    x0, y0, x1, y1 = rects.T
    pts = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x1, y1], 1), np.stack([x0, y1], 1)], 1)
    moved = pts @ m[:2, :2].T + m[:2, 2]
    return np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1)


def _camera(gray: np.ndarray, rects: list[np.ndarray]) -> np.ndarray:
    """(n, n, 3, 3): the camera from frame i to frame j, a similarity fitted with RANSAC to corners tracked
    (pyramidal Lucas-Kanade) outside the text lines between consecutive frames, composed for the others;
    NaN where a fit fails (too few corners: a flat picture). Overlays are masked out so that they cannot
    pull the fit towards "still"."""
    import cv2

    n, h, w = gray.shape
    g8 = [np.clip(g, 0, 255).astype(np.uint8) for g in gray]
    step = [np.full((3, 3), np.nan)] * max(n - 1, 0)
    tol = max(1.0, min(h, w) / 360)  # RANSAC inlier distance (px): one pixel at 360p
    for i in range(n - 1):
        mask = np.full((h, w), 255, np.uint8)
        for r in (rects[i], rects[i + 1]):
            for x0, y0, x1, y1 in r.astype(int):
                mask[max(0, y0 - 3):y1 + 4, max(0, x0 - 3):x1 + 4] = 0
        pts = cv2.goodFeaturesToTrack(g8[i], 400, 1e-5, 5, mask=mask)  # the 400 best: soft pictures too
        if pts is None or len(pts) < 8:
            continue
        nxt, ok, _ = cv2.calcOpticalFlowPyrLK(g8[i], g8[i + 1], pts, None, winSize=(21, 21), maxLevel=4)
        ok = ok.ravel() == 1
        if ok.sum() < 8:
            continue
        m, inl = cv2.estimateAffinePartial2D(pts[ok], nxt[ok], method=cv2.RANSAC, ransacReprojThreshold=tol)
        if m is not None and inl is not None and int(inl.sum()) >= 8:
            step[i] = np.vstack([m, [0, 0, 1]])
    out = np.full((n, n, 3, 3), np.nan)
    for i in range(n):
        out[i, i] = np.eye(3)
        for j in range(i + 1, n):
            out[i, j] = step[j - 1] @ out[i, j - 1]
            if np.isfinite(out[i, j]).all():
                out[j, i] = np.linalg.inv(out[i, j])
    return out


