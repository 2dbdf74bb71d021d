"""Bucket choice, frame indices and crop geometry (pure functions of metadata)."""
from __future__ import annotations

from shards.buckets import choose_bucket, cover_resize, max_frames, plan_sample, sample_rng
from shards.config import Bucket

BUCKETS = [Bucket(frames=1, height=64, width=64), Bucket(frames=1, height=64, width=128),
           Bucket(frames=9, height=64, width=96), Bucket(frames=9, height=64, width=64),
           Bucket(frames=17, height=64, width=96)]


def test_longest_fitting_frame_count_then_nearest_aspect():
    # 2 s at 24 fps sampled at 8 fps -> 16 frames: 17 does not fit, 9 does; 160x96 is nearest 96x64.
    assert max_frames(48, 24.0, 8.0) == 16
    assert choose_bucket(BUCKETS, 160, 96, 48, 24.0, 8.0, False) == 2
    assert choose_bucket(BUCKETS, 96, 96, 48, 24.0, 8.0, False) == 3
    assert choose_bucket(BUCKETS, 160, 96, 49, 24.0, 8.0, False) == 4  # 49 frames -> 17 at 8 fps
    assert choose_bucket(BUCKETS, 160, 96, 20, 24.0, 8.0, False) is None  # 7 frames: too short
    # Slower sources keep every frame: 12 frames at 6 fps fill a 9-frame bucket at a 8 fps target.
    assert max_frames(12, 6.0, 8.0) == 12 and choose_bucket(BUCKETS, 64, 64, 12, 6.0, 8.0, False) == 3


def test_images_only_go_to_image_buckets():
    assert choose_bucket(BUCKETS, 300, 150, 1, 0.0, 8.0, True) == 1
    assert choose_bucket(BUCKETS, 90, 100, 1, 0.0, 8.0, True) == 0
    assert choose_bucket(BUCKETS[2:], 90, 100, 1, 0.0, 8.0, True) is None


def test_plan_indices_step_at_the_target_fps_and_cover_crop():
    p = plan_sample(BUCKETS, 2, 160, 96, 48, 24.0, 8.0, None)
    assert p.indices == (0, 3, 6, 9, 12, 15, 18, 21, 24) and p.fps == 8.0
    assert p.resize == (107, 64) and p.crop == (5, 0)  # cover 96x64 keeping 5:3, centre crop
    p = plan_sample(BUCKETS, 2, 160, 96, 48, 30.0, 8.0, None)  # non-integer step 3.75 rounds per frame
    assert p.indices == (0, 4, 8, 11, 15, 19, 22, 26, 30) and abs(p.fps - 8.0) < 1e-9
    rs = [plan_sample(BUCKETS, 2, 160, 96, 48, 24.0, 8.0, sample_rng(0, e, "k")).indices[0] for e in range(20)]
    assert len(set(rs)) > 3 and max(rs) <= 47 - 24  # random starts stay inside the clip
    assert rs == [plan_sample(BUCKETS, 2, 160, 96, 48, 24.0, 8.0, sample_rng(0, e, "k")).indices[0]
                  for e in range(20)]  # ... and are reproducible
    assert cover_resize(100, 300, 64, 64) == (64, 192)


def test_plan_with_a_picture_box_crops_inside_the_bars():
    """A 640x480 frame with 60-px letterbox bars: the 640x360 picture alone covers the bucket."""
    from shards.buckets import picture_box

    b = [Bucket(frames=1, height=72, width=128)]
    content = (0.0, 60 / 480, 1.0, 420 / 480)
    assert picture_box(640, 480, content) == (0, 60, 640, 360)
    assert picture_box(640, 480, None) == (0, 0, 640, 480)
    p = plan_sample(b, 0, 640, 480, 1, 0.0, 8.0, None, content=content)
    # Whole frame scaled by 0.2 (128x96); the picture starts at y=12 there and is exactly the bucket.
    assert p.resize == (128, 96) and p.crop == (0, 12)
    assert plan_sample(b, 0, 640, 480, 1, 0.0, 8.0, None) == plan_sample(b, 0, 640, 480, 1, 0.0, 8.0, None, content=None)
