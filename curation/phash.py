"""Perceptual hashes of a few frames per clip (the model-free signal of the dedup stage).

pHash as in imagehash / pHash.org: a frame is scaled to 32x32 gray (swscale area filter, straight
from the decoder's YUV), a 2-D DCT is taken, and the 8x8 lowest frequencies are compared with their
median: 64 bits per frame. Re-encodes, rescales and crops by a few pixels change few bits; another
scene changes about half. A clip's hash is `frames` such hashes at evenly spaced positions of the clip
(the centres of `frames` equal slices), so two copies of one clip hash the same moments.
"""
from __future__ import annotations

import av
import cv2
import numpy as np

from curation.video import VideoError, first_video_stream, open_container

HASH_SIZE = 8  # 8x8 DCT coefficients -> 64 bits per frame
_DCT_SIZE = 32  # frames are scaled to 32x32 before the DCT (the standard pHash size)


def frame_hash(gray32: np.ndarray) -> np.ndarray:
    """64-bit pHash of one 32x32 gray frame, as 8 packed bytes."""
    d = cv2.dct(gray32.astype(np.float32))[:HASH_SIZE, :HASH_SIZE]
    return np.packbits((d > np.median(d)).ravel())


def targets(frames: int, k: int) -> list[int]:
    """Frame indices hashed in a clip of `frames` frames: the centres of k equal slices."""
    return sorted({min(frames - 1, int((i + 0.5) * frames / k)) for i in range(k)}) if frames > 0 else []


def clip_hash(source: str, frames: int | None, k: int) -> np.ndarray:
    """(k, 8) uint8 pHashes of a clip; decodes up to the last hashed frame only.

    `frames` is the clip's frame count (clips table); None reads it from the stream. A clip shorter
    than k frames repeats its hashes so every clip hash has k rows. Raises VideoError on bad files.
    """
    with open_container(source) as c:
        st = first_video_stream(c, source)
        st.thread_type = "AUTO"
        n_total = int(frames or st.frames or 0)
        want = targets(n_total, k) if n_total else list(range(k))
        out: list[np.ndarray] = []
        i = -1
        try:
            for i, fr in enumerate(c.decode(st)):
                if i in want:
                    g = fr.reformat(width=_DCT_SIZE, height=_DCT_SIZE, format="gray", interpolation="AREA")
                    out.append(frame_hash(g.to_ndarray()))
                    if len(out) == len(want):
                        break
        except av.error.FFmpegError as e:
            raise VideoError(f"{source}: decode failed after {i + 1} frames ({e})") from None
    if not out:
        raise VideoError(f"{source}: no decodable video frames")
    idx = np.linspace(0, len(out) - 1, k).round().astype(int)  # fewer frames than asked: repeat
    return np.stack(out)[idx]


def as_signs(hashes: np.ndarray) -> np.ndarray:
    """(n, k, 8) packed hashes -> (n, 64k) float32 of +-1, so that a.b = bits - 2 * Hamming distance."""
    bits = np.unpackbits(hashes.reshape(len(hashes), -1), axis=1).astype(np.float32)
    return bits * 2.0 - 1.0
