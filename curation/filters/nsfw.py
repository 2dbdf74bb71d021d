"""NSFW scorer: NudeNet's 320n detector (a YOLOv8n ONNX model shipped in the nudenet wheel).

Frames are prepared exactly as `nudenet.NudeDetector.detect` prepares an image (its own `_read_image`:
padded to a square, 320x320, BGR), then the model runs here through onnxruntime so the provider
(CUDA in the model step on a GPU, else CPU) and the batch are ours (NudeDetector ignores both).
Each of the 2100 anchors votes for its best class with that class's confidence, as NudeNet's own
post-processing does; a clip's `score` is the highest such confidence of the configured `classes`
(the exposed ones) over its scored frames, 0 when none. `max: 0.5` by default: NudeNet's detections
start at 0.2 (it reports boxes from 0.25 after NMS).

False positives on cartoons and animals (issue 21: Big Buck Bunny's rabbit scores 0.77 as an exposed
breast on 5 of its 11 sampled frames, with boxes of 1.6-1.9% of the model input) are cut two ways:
- an anchor counts only when its box covers at least `min_box` of the model's 320x320 input (the frame's
  long side squared): a small box on a cartoon or a distant figure does not decide a clip;
- the clip's score is the `min_frames`-th highest frame score: one frame alone (a flash, a misfire) is
  not enough.
Neither can be checked for recall here: the test data holds no NSFW footage and none is generated, so
bench/judgement.py measures only the clean clips these rules drop.
"""
from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from curation.filters.base import ClipFrames, FrameSpec, Scorer, spread
from curation.filters.config import ScorerConfig, Threshold
from curation.filters.onnx_runtime import require, session

# NudeNet 3.4's class order (nudenet.nudenet.__labels), the rows 4.. of the model output.
LABELS = ["FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
          "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
          "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED",
          "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED"]
EXPOSED = ["BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "ANUS_EXPOSED",
           "MALE_GENITALIA_EXPOSED"]


class NsfwConfig(ScorerConfig):
    """filter.scorers.<name> with type: nsfw."""

    # cpu: in the decode tasks; model: in the model actors (CUDA when they hold a GPU and onnxruntime-gpu is installed)
    step: Literal["cpu", "model"] = "cpu"
    frames: int = Field(8, ge=1)  # frames per clip given to the detector, evenly spread over the sampled ones
    classes: list[str] = Field(default_factory=lambda: list(EXPOSED), min_length=1)  # NudeNet classes that count
    short_side: int = Field(320, ge=32)  # frames decoded at this short side (the model itself sees 320x320)
    min_box: float = Field(0.025, ge=0, le=1)  # an anchor counts when its box covers this share of the 320x320 input
    min_frames: int = Field(2, ge=1)  # score = the min_frames-th highest frame score (1 = the highest)
    batch: int = Field(8, ge=1)  # frames per onnxruntime call
    threads: int = Field(1, ge=0)  # onnxruntime intra-op threads per worker (0 = all cores)
    thresholds: dict[str, Threshold] = Field(default_factory=lambda: {"score": Threshold(max=0.5)})

    @field_validator("classes")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = sorted(set(v) - set(LABELS))
        if bad:
            raise ValueError(f"unknown NudeNet class(es) {bad}; known: {', '.join(LABELS)}")
        return v


class NsfwScorer(Scorer):
    Config = NsfwConfig

    def __init__(self, name: str, cfg: NsfwConfig) -> None:
        require(name, "nsfw", "nudenet", "nudenet")
        super().__init__(name, cfg)
        self.step = cfg.step

    def metrics(self) -> dict[str, pa.DataType]:
        return {"score": pa.float32()}

    def frame_specs(self) -> list[FrameSpec]:
        return [FrameSpec("rgb24", self.cfg.short_side)]

    def max_frames(self) -> int | None:
        return self.cfg.frames

    def setup(self, encoder: Any = None) -> None:
        import nudenet

        self.session = session(os.path.join(os.path.dirname(nudenet.__file__), "320n.onnx"), self.step,
                               self.cfg.threads)
        self.input = self.session.get_inputs()[0].name
        self.cols = np.array([LABELS.index(c) for c in self.cfg.classes])

    def class_scores(self, frames: np.ndarray, min_box: float = 0.0) -> np.ndarray:
        """(T, 18): per frame and class, the highest confidence of anchors whose best class it is (and whose
        box covers at least min_box of the 320x320 input)."""
        from nudenet.nudenet import _read_image

        out = []
        for i in range(0, len(frames), self.cfg.batch):
            blob = np.concatenate([_read_image(np.ascontiguousarray(f[..., ::-1]), 320)[0]
                                   for f in frames[i:i + self.cfg.batch]])
            raw = self.session.run(None, {self.input: blob})[0]  # (B, 4 box + 18 classes, 2100 anchors)
            pred = raw[:, 4:, :]
            best = pred.argmax(axis=1)
            conf = np.where(raw[:, 2, :] * raw[:, 3, :] >= min_box * 320 * 320, pred.max(axis=1), 0.0)
            per = np.where(best[:, None, :] == np.arange(len(LABELS))[None, :, None], conf[:, None, :], 0.0)
            out.append(per.max(axis=2))
        return np.concatenate(out)

    def score(self, clip: ClipFrames, embeddings: np.ndarray | None = None) -> dict[str, Any]:
        frames = spread(clip.frames[self.frame_specs()[0].key], self.cfg.frames)
        per_frame = np.sort(self.class_scores(frames, self.cfg.min_box)[:, self.cols].max(axis=1))[::-1]
        return {"score": float(per_frame[min(self.cfg.min_frames, len(per_frame)) - 1])}
