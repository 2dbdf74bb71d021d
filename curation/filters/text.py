"""On-screen text scorer: RapidOCR's PP-OCRv4 text detector (DBNet, ONNX, shipped in the
rapidocr-onnxruntime wheel) on a few sampled frames per clip.

Per frame the detector returns text-line boxes; the frame's text area is the share of the frame the
union of those boxes covers (boxes rasterised onto a mask, so overlaps count once). Metrics per clip:
`area_mean` and `area_max` over the scored frames, `boxes_max` (most lines on one frame). With
`recognize: true` the PP-OCRv4 recogniser also reads the boxes and `text` holds the recognised lines
(truncated to `max_chars`); it is off by default because it costs more than the detection.

Default threshold (`area_mean` max 0.06) from the measurement in tests/curation/test_text_nsfw.py and
docs/measurements.md: subtitles and corner logos cover 0.5-3% of a frame, slides and title cards
10-40%, natural footage ~0.
"""
from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from curation.filters.base import ClipFrames, FrameSpec, Scorer
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
        out = {"area_mean": pa.float32(), "area_max": pa.float32(), "boxes_max": pa.int32()}
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
        if self.cfg.recognize:
            from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer

            self.rec = TextRecognizer({"model_path": os.path.join(_models(), "ch_PP-OCRv4_rec_infer.onnx"),
                                       "use_cuda": cuda, **threads, "rec_img_shape": [3, 48, 320],
                                       "rec_batch_num": 6})

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        """(N, 4, 2) text-line boxes of one RGB frame, in its pixel coordinates."""
        boxes, _ = self.det(np.ascontiguousarray(rgb[..., ::-1]))  # PP-OCR models read BGR
        return np.zeros((0, 4, 2), np.float32) if boxes is None or not len(boxes) else boxes

    def score(self, clip: ClipFrames, embeddings: np.ndarray | None = None) -> dict[str, Any]:
        frames = _spread(clip.frames[self.frame_specs()[0].key], self.cfg.frames)
        areas, counts, lines = [], [], []
        for f in frames:
            boxes = self.detect(f)
            areas.append(text_area(boxes, *f.shape[:2]))
            counts.append(len(boxes))
            if self.rec is not None and len(boxes):
                bgr = np.ascontiguousarray(f[..., ::-1])
                res, _ = self.rec([_crop(bgr, b) for b in boxes])
                lines += [t for t, _ in res if t.strip() and t not in lines]
        out = {"area_mean": float(np.mean(areas)), "area_max": float(np.max(areas)), "boxes_max": int(max(counts))}
        if self.cfg.recognize:
            out["text"] = " | ".join(lines)[:self.cfg.max_chars]
        return out


def _spread(frames: np.ndarray, k: int) -> np.ndarray:
    """At most k frames, evenly spread (first and last included), as the CLIP frames are chosen."""
    if len(frames) <= k:
        return frames
    return frames[np.unique(np.linspace(0, len(frames) - 1, k).round().astype(int))]
