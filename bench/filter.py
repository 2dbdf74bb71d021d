"""Filter-stage benchmark: clips/s and scoring cost relative to a bare decode, for both motion methods.

    .venv/bin/python bench/filter.py                       # synthetic 1280x720 clips, random ViT-B-32 CLIP
    .venv/bin/python bench/filter.py --testdata ../shared/testdata --arch tiny

For each clip, in this process (no Ray, so the numbers are the work itself):
- bare decode: decode every frame, convert the sampled ones (2 fps) to the sizes the scorers need;
- decode step: the same decode (+ codec motion-vector export for method mv) + the motion scorer;
- model step: CLIP embeddings of the sampled frames + LAION aesthetic MLP + zero-shot classes.
The ratio (decode step + model step - bare decode) / bare decode is what scoring adds on top of
decoding (target: <= 1.0 on CPU with a ViT-B-32-sized CLIP). Motion methods are also compared to
each other: rank correlation of motion_mean, and error against the known motion of synthetic clips.
The ONNX scorers (text, nsfw) are timed the same way (their decode step against a bare decode of
their frames), and the text area of rendered subtitles, logos, title cards and slides is printed (the
basis of the text threshold).
"""
from __future__ import annotations

import argparse
import os
import pickle
import platform
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore", category=RuntimeWarning)

from curation.filters.config import FilterConfig  # noqa: E402
from curation.filters.decode import decode_clip  # noqa: E402
from curation.synth import Scene, make_video  # noqa: E402

MOTIONS = [0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0]  # px/frame of the synthetic pattern


def pipeline_clips(sources: list[str], root: str, stride_s: float) -> list[str]:
    """Cut sources with the split stage (fixed windows, libx264 veryfast crf 20, <= 1280x720): the clips
    the filter stage really sees."""
    from curation.probe import probe_video
    from curation.config import SplitConfig
    from curation.split import split_video
    from curation.storage import Storage

    params = SplitConfig(detector="stride", stride_s=stride_s, min_clip_s=1.0, max_clip_s=stride_s)
    os.makedirs(root, exist_ok=True)
    out = []
    for src in sources:
        rows = split_video(probe_video(src), params, Storage(root), root)
        out += [os.path.join(root, r["path"]) for r in rows if r["status"] == "ok"]
    return out


def synthetic_clips(folder: str, w: int, h: int, seconds: float) -> list[tuple[str, float | None]]:
    """One clip per known motion, cut by the split stage from a synthetic source."""
    out = []
    for i, m in enumerate(MOTIONS):
        src = os.path.join(folder, "src", f"motion_{i}_{m}.mp4")
        os.makedirs(os.path.dirname(src), exist_ok=True)
        make_video(src, [Scene(int(24 * seconds), m, i + 10)], w, h, 24.0)
        true = np.hypot(m, 2 * m / 3) * 24 / np.hypot(w, h)  # diagonals per second
        out += [(c, true) for c in pipeline_clips([src], os.path.join(folder, "root"), seconds)]
    return out


def real_clips(testdata: str, folder: str) -> list[tuple[str, float | None]]:
    names = ["sintel/test_video_30s.mp4", "bbb/bigbuckbunny.mp4", "scenedetect/testvideo.mp4",
             "scenedetect/goldeneye-vfr-drop3.mp4", "decord/flipping_a_pancake.mkv"]
    srcs = [os.path.join(testdata, n) for n in names if os.path.exists(os.path.join(testdata, n))]
    return [(c, None) for c in pipeline_clips(srcs, os.path.join(folder, "root"), 10.0)]


def score_all(sco, rows: list[dict], batch: int) -> tuple[float, list[dict]]:
    """The model step over all rows in batches of filter.model.resources.batch_size clips, as the actor gets them."""
    t0 = time.perf_counter()
    out = []
    for i in range(0, len(rows), batch):
        out += sco([dict(r) for r in rows[i:i + batch]])
    return time.perf_counter() - t0, out


# The picture judgements of issue 21 (pipelines.yaml defaults): each timed alone against a bare decode.
PICTURE_SCORERS = (("borders", {"type": "borders"}), ("sharpness", {"type": "sharpness"}),
                   ("exposure", {"type": "exposure"}), ("frozen", {"type": "frozen"}), ("quality", {"type": "quality"}))


def onnx_scorer_costs(clips: list[tuple[str, float | None]],
                      entries: tuple = (("ocr", {"type": "text"}), ("nsfw", {"type": "nsfw"}))) -> None:
    """Cost of CPU scorers (default: the ONNX ones, text and nsfw) relative to a bare decode of the same
    frames: each scorer alone, its decode step (decode + scoring) against the decode alone, clip by clip."""
    from curation.filter import build_stages

    print("\n| scorer (defaults, CPU) | frames sampled | bare decode s | decode step s | scoring / decode |")
    print("|---|---|---|---|---|")
    for name, entry in entries:
        cfg = FilterConfig(scorers={name: entry})
        dec, _, scorers = build_stages("/", cfg)
        dec.setup()
        bare = step = 0.0
        n = 0
        for path, _ in clips:
            t0 = time.perf_counter()
            c = decode_clip(path, dec.specs, cfg.sample_fps, cfg.max_frames, None)
            t1 = time.perf_counter()
            dec.process_row({"clip_id": path, "path": os.path.abspath(path)})
            bare, step = bare + t1 - t0, step + time.perf_counter() - t1
            n += min(len(c.times), scorers.scorers[0].max_frames() or len(c.times))
        print(f"| {entry['type']} | {n} | {bare:.2f} | {step:.2f} | {(step - bare) / bare:.2f}x |")


def text_calibration(w: int = 854, h: int = 480) -> None:
    """Text area the detector reports on frames with rendered text of each kind (the threshold's basis)."""
    from PIL import Image, ImageDraw, ImageFont

    from curation.filters.text import TextScorer, text_area
    from curation.synth import _texture

    kinds = {  # (x, y, font px, text) at 854x480; PIL's default font
        "corner logo": [(770, 15, 20, "TV5")],
        "1-line subtitle": [(230, 420, 22, "I told you we should have left")],
        "2-line subtitle": [(170, 395, 22, "I told you we should have left the house"),
                            (240, 428, 22, "before the storm came in")],
        "title card": [(130, 170, 110, "THE END")],
        "title card, 2 lines": [(150, 130, 70, "A FILM BY"), (110, 230, 70, "SOMEONE ELSE")],
        "slide": [(50, 30 + 58 * i, 34, f"- point {i}: more words on the slide") for i in range(7)],
    }
    sc = TextScorer("ocr", FilterConfig(scorers={"ocr": {"type": "text"}}).scorers["ocr"])
    sc.setup()
    print(f"\n| rendered text ({w}x{h}, detector at short side {sc.cfg.short_side}) | glyph bbox area | "
          "detected area | boxes |")
    print("|---|---|---|---|")
    for kind, lines in kinds.items():
        img = Image.fromarray(_texture(3, h, w)[:h, :w])
        d = ImageDraw.Draw(img)
        mask = np.zeros((h, w), bool)
        for x, y, size, text in lines:
            font = ImageFont.load_default(size=size)
            d.text((x, y), text, font=font, fill="white", stroke_width=2, stroke_fill="black")
            x0, y0, x1, y1 = d.textbbox((x, y), text, font=font, stroke_width=2)
            mask[y0:y1, x0:x1] = True
        f = np.asarray(img)
        f = np.asarray(Image.fromarray(f).resize((int(round(w * sc.cfg.short_side / h)), sc.cfg.short_side)))
        boxes = sc.detect(f)
        print(f"| {kind} | {mask.mean():.4f} | {text_area(boxes, *f.shape[:2]):.4f} | {len(boxes)} |")


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def motion_cost_table(clips: list[tuple[str, float | None]]) -> None:
    """Cost of the motion scorer on each clip against a bare decode of the same clip, in this process:
    the flow (DIS) that both the old and the camera/scene metrics need, and the camera fit added on it."""
    from curation.filters.motion import MotionConfig, MotionScorer, camera_scene

    cfg = MotionConfig(type="motion")
    sc = MotionScorer("motion", cfg)
    sc.setup()
    bare = flow = fit = 0.0
    rows = []
    for path, _ in clips:
        t0 = time.process_time()
        clip = decode_clip(path, sc.frame_specs(), 2.0, 64, None)
        t1 = time.process_time()
        flows = sc.pair_flows(clip)
        old = sc._from_flow(clip, flows)
        t2 = time.process_time()
        new = camera_scene(flows, cfg)
        t3 = time.process_time()
        bare, flow, fit = bare + t1 - t0, flow + t2 - t1, fit + t3 - t2
        rows.append((os.path.basename(path), old["mean"], new))
    print(f"\n# motion cost, CPU seconds in one process over {len(clips)} clips (load avg {os.getloadavg()[0]:.1f})")
    print("| bare decode s | flow + old metrics s | camera/scene fit s | fit / decode | all motion / decode |")
    print("|---|---|---|---|---|")
    print(f"| {bare:.2f} | {flow:.2f} | {fit:.2f} | {fit / bare:.2f}x | {(flow + fit) / bare:.2f}x |")
    print("\n| clip | mean | camera | object | moving_area | shake | camera_type |")
    print("|---|---|---|---|---|---|---|")
    for name, mean, n in rows:
        print(f"| {name} | {mean:.4f} | {n['camera']:.4f} | {n['object']:.4f} | {n['moving_area']:.3f} | "
              f"{n['shake']:.4f} | {n['camera_type']} |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="ViT-B-32", help="open_clip architecture with random weights, or 'tiny'")
    ap.add_argument("--models", default=os.path.join(tempfile.gettempdir(), "bench_filter_models"))
    ap.add_argument("--clips", default=os.path.join(tempfile.gettempdir(), "bench_filter_clips"))
    ap.add_argument("--size", default="1280x720", help="synthetic clip size")
    ap.add_argument("--seconds", type=float, default=6.0, help="synthetic clip length")
    ap.add_argument("--testdata", default=None, help="also time these real videos (../shared/testdata)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (decoding uses FFmpeg's own threads)")
    ap.add_argument("--clip-frames", default="all,8,4,2,1", help="filter.clip.max_frames values to sweep")
    ap.add_argument("--motion-only", action="store_true", help="only the motion cost table (camera / scene split)")
    ap.add_argument("--judgements-only", action="store_true",
                    help="only the cost table of the picture judgements (borders, sharpness, exposure, frozen, quality)")
    a = ap.parse_args()
    a.clip_frames = [None if v == "all" else int(v) for v in a.clip_frames.split(",")]

    import torch

    from curation.filter import build_stages
    from curation.filters.make_tiny import make_tiny

    torch.set_num_threads(a.threads)
    mdir = os.path.join(a.models, a.arch)
    if not os.path.exists(os.path.join(mdir, "tiny-aesthetic.safetensors")):
        make_tiny(mdir, None if a.arch == "tiny" else a.arch)
    w, h = map(int, a.size.split("x"))
    import json
    import shutil

    key = os.path.join(a.clips, f"clips-{a.size}-{a.seconds:g}-{bool(a.testdata)}.json")
    if os.path.exists(key):  # the same clips as the last run with these arguments
        clips = [tuple(c) for c in json.load(open(key))]
    else:
        shutil.rmtree(a.clips, ignore_errors=True)
        clips = synthetic_clips(a.clips, w, h, a.seconds) + (real_clips(a.testdata, a.clips) if a.testdata else [])
        json.dump(clips, open(key, "w"))

    if a.judgements_only:
        print(f"# picture judgements {time.strftime('%Y-%m-%d %H:%M')}, {len(clips)} clips, load avg "
              f"{os.getloadavg()[0]:.1f}")
        onnx_scorer_costs(clips, PICTURE_SCORERS)
        return 0
    motion_cost_table(clips)
    if a.motion_only:
        return 0
    print(f"# filter bench {time.strftime('%Y-%m-%d %H:%M')} | {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs (load avg {os.getloadavg()[0]:.1f}), torch {torch.__version__} ({a.threads} threads)"
          f" | CLIP {a.arch} random weights | defaults: motion short_side 96, clip.max_frames 4")
    print(f"# {len(clips)} clips cut by the split stage (libx264 veryfast crf 20): {len(MOTIONS)} synthetic "
          f"{a.size} {a.seconds:g}s 24fps" + (f" + {len(clips) - len(MOTIONS)} from real videos (10 s windows)"
                                               if a.testdata else "") + "; sample 2 fps")
    results: dict[str, dict] = {}
    sweep: dict[int | None, float] = {}
    frames: dict[int | None, int] = {}
    for method in ("flow", "mv"):
        cfg = FilterConfig(clip={"model": os.path.join(mdir, "tiny-clip")}, scorers={
            "motion": {"type": "motion", "method": method},
            "aesthetic": {"type": "aesthetic", "weights": os.path.join(mdir, "tiny-aesthetic.safetensors")},
            "neg": {"type": "clip_zero_shot"}})
        dec, sco, _ = build_stages("/", cfg)
        dec.setup()
        sco.ensure_setup()
        specs = dec.specs
        bare = step = 0.0
        rows = []
        for path, _ in clips:
            t0 = time.perf_counter()
            decode_clip(path, specs, cfg.sample_fps, cfg.max_frames, None)  # bare decode of the same frames
            t1 = time.perf_counter()
            rows.append(dec.process_row({"clip_id": path, "path": os.path.abspath(path)})[0])
            bare, step = bare + t1 - t0, step + time.perf_counter() - t1
        model, out = score_all(sco, rows, cfg.model.resources.batch_size)
        results[method] = {"bare": bare, "step": step, "model": model, "motion": [r["motion_mean"] for r in out]}
        if method == "flow":  # CLIP cost against how many of the sampled frames it sees
            dec.cfg = cfg.model_copy(deep=True)
            dec.cfg.clip.max_frames = None  # ship every sampled frame; the model step picks k of them
            rows = [dec.process_row({"clip_id": p, "path": os.path.abspath(p)})[0] for p, _ in clips]
            for k in a.clip_frames:
                sco.cfg.clip.max_frames = k
                sweep[k] = score_all(sco, rows, cfg.model.resources.batch_size)[0]
                frames[k] = sum(min(len(pickle.loads(r["_frames"]).times), k or 10**6) for r in rows)
            sco.cfg.clip.max_frames = cfg.clip.max_frames

    print("\n| motion method | clips/s (decode+score) | bare decode s | decode step s | model step s | "
          "motion scoring / decode | all scoring / decode |")
    print("|---|---|---|---|---|---|---|")
    for m, r in results.items():
        n = len(clips)
        motion_cost = (r["step"] - r["bare"]) / r["bare"]
        ratio = (r["step"] + r["model"] - r["bare"]) / r["bare"]
        print(f"| {m} | {n / (r['step'] + r['model']):.2f} | {r['bare']:.2f} | {r['step']:.2f} | {r['model']:.2f} | "
              f"{motion_cost:.2f}x | {ratio:.2f}x |")
    bare = results["flow"]["bare"]
    motion_step = results["flow"]["step"] - bare
    print("\n| clip.max_frames (CLIP frames per clip) | CLIP frames | model step s | ms/frame | "
          "all scoring / decode (flow) |")
    print("|---|---|---|---|---|")
    for k, t in sweep.items():
        print(f"| {'all sampled' if k is None else k} | {frames[k]} | {t:.2f} | {1000 * t / frames[k]:.0f} | "
              f"{(motion_step + t) / bare:.2f}x |")
    print("\n| clip | known motion (diag/s) | flow (DIS) | codec MV |")
    print("|---|---|---|---|")
    for (p, true), f, v in zip(clips, results["flow"]["motion"], results["mv"]["motion"]):
        print(f"| {os.path.basename(p)} | {'' if true is None else f'{true:.4f}'} | {f:.4f} | {v:.4f} |")
    syn = [t for _, t in clips if t is not None]
    for m in ("flow", "mv"):
        mv = np.array(results[m]["motion"][:len(syn)])
        moving = np.array(syn) > 0
        rel = np.abs(mv[moving] - np.array(syn)[moving]) / np.array(syn)[moving]
        print(f"{m}: median relative error vs known motion {np.median(rel):.3f}, max {rel.max():.3f}; "
              f"still clip {mv[~moving].max():.5f}")
    print(f"rank correlation flow vs mv, all clips: {spearman(results['flow']['motion'], results['mv']['motion']):.3f}")
    onnx_scorer_costs(clips)
    onnx_scorer_costs(clips, PICTURE_SCORERS)
    text_calibration()
    real = [i for i, (_, t) in enumerate(clips) if t is None]
    if len(real) > 2:
        print(f"rank correlation flow vs mv, real clips: "
              f"{spearman([results['flow']['motion'][i] for i in real], [results['mv']['motion'][i] for i in real]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
