"""The dataset layouts other tools read, both ways: export a curated root, import a user's dataset.

    python -m shards.formats export pipelines.yaml --format hf --out /data/export
    python -m shards.formats import /data/their_dataset --root /data/new_root   # then --stage shard, train

Exported is exactly what the shard stage would write (shards.writer.select: kept, selected, captioned,
not flagged), as one of:
  cogvideo            videos/<clip>.mp4, prompts.txt and videos.txt (line i of each: one clip), the layout
                      of CogVideoX's finetune scripts and finetrainers' "two file" format
  finetrainers-csv    videos/ + dataset.csv (caption, video_file, clip_id, duration_s, scores)
  finetrainers-json   videos/ + dataset.json (a list of the same records)
  hf                  videos/ + metadata.jsonl (file_name, text, ...): a Hugging Face `datasets` videofolder
                      (`load_dataset("videofolder", data_dir=...)`)
Import reads any of them (file names as the peers accept them: prompt(s).txt / caption(s).txt, video(s).txt;
caption column caption/text/prompt; video column video_file/video/file_name/video_path) into a dataset
root: the video files under clips/imported/, a clips table (probed), and a captions run `imported`; the
shard stage (shard.writer.require_scores: false) then makes training shards of them, uncurated.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import sys
from typing import Literal

from captioning.table import CAPTIONS, normalize
from curation import tables
from curation.config import ConfigError
from curation.storage import Storage
from shards.config import WriterConfig
from shards.writer import select

Format = Literal["cogvideo", "finetrainers-csv", "finetrainers-json", "hf"]
FORMATS: tuple[str, ...] = ("cogvideo", "finetrainers-csv", "finetrainers-json", "hf")
CAPTION_FILES = ("prompts.txt", "prompt.txt", "captions.txt", "caption.txt")  # as finetrainers accepts them
VIDEO_FILES = ("videos.txt", "video.txt")
CAPTION_COLUMNS = ("caption", "text", "prompt")
VIDEO_COLUMNS = ("video_file", "video", "file_name", "video_path")


# ----------------------------------------------------------------------------------------- export ---

def records(storage: Storage, captions_run: str | None = None) -> list[dict]:
    """The clips the shard stage would keep, sorted by clip id: clip_id, path, caption, duration, scores."""
    sel = select(storage, WriterConfig(captions_run=captions_run, require_scores=False))
    out = []
    for s in sorted(sel.samples, key=lambda s: s["key"]):
        clip, scores = s["meta"]["clip"], s["meta"]["scores"]
        out.append({"clip_id": s["key"], "path": s["path"], "caption": " ".join(s["caption"].split()),
                    "duration_s": (clip["frames"] or 0) / (clip["fps"] or 1.0), "fps": clip["fps"],
                    "width": clip["width"], "height": clip["height"], "captions_run": sel.captions_run,
                    **{k: v for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}})
    return out


def export(storage: Storage, out: str, fmt: Format, captions_run: str | None = None) -> int:
    """Write the kept, captioned clips of `storage` under folder `out` in layout `fmt`; returns clips written."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    recs = records(storage, captions_run)
    if not recs:
        raise ValueError(f"{storage.root}: no kept, captioned clips to export")
    os.makedirs(os.path.join(out, "videos"), exist_ok=True)
    for r in recs:
        r["video_file"] = f"videos/{r['clip_id']}.mp4"
        with open(os.path.join(out, r["video_file"]), "wb") as f:
            f.write(storage.read_bytes(r.pop("path")))
    WRITERS[fmt](out, recs)
    return len(recs)


def _write_cogvideo(out: str, recs: list[dict]) -> None:
    with open(os.path.join(out, "prompts.txt"), "w") as p, open(os.path.join(out, "videos.txt"), "w") as v:
        for r in recs:
            p.write(r["caption"] + "\n")
            v.write(r["video_file"] + "\n")


def _write_csv(out: str, recs: list[dict]) -> None:
    cols = ["caption", "video_file"] + sorted({k for r in recs for k in r} - {"caption", "video_file"})
    with open(os.path.join(out, "dataset.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(recs)


def _write_json(out: str, recs: list[dict]) -> None:
    with open(os.path.join(out, "dataset.json"), "w") as f:
        json.dump(recs, f, indent=1)


def _write_hf(out: str, recs: list[dict]) -> None:
    with open(os.path.join(out, "metadata.jsonl"), "w") as f:
        for r in recs:  # videofolder: file_name is the video, every other key a column
            rest = {k: v for k, v in r.items() if k not in ("video_file", "caption")}
            f.write(json.dumps({"file_name": r["video_file"], "text": r["caption"], **rest}) + "\n")


WRITERS = {"cogvideo": _write_cogvideo, "finetrainers-csv": _write_csv, "finetrainers-json": _write_json,
           "hf": _write_hf}


# ----------------------------------------------------------------------------------------- import ---

def detect(folder: str) -> str:
    """Which layout `folder` holds (the first that matches, in the order of FORMATS but hf first)."""
    have = set(os.listdir(folder)) if os.path.isdir(folder) else None
    if have is None:
        raise ValueError(f"{folder}: not a folder")
    if "metadata.jsonl" in have:
        return "hf"
    if have & set(CAPTION_FILES) and have & set(VIDEO_FILES):
        return "cogvideo"
    if any(n.endswith(".csv") for n in have):
        return "finetrainers-csv"
    if any(n.endswith(".json") for n in have):
        return "finetrainers-json"
    raise ValueError(f"{folder}: no known dataset layout (expected metadata.jsonl, {'/'.join(CAPTION_FILES)} + "
                     f"{'/'.join(VIDEO_FILES)}, a .csv or a .json file)")


def read_layout(folder: str) -> tuple[str, list[dict]]:
    """(layout, [{"video": absolute path, "caption": text, "extra": other fields}]) of a dataset folder."""
    fmt = detect(folder)
    if fmt == "cogvideo":
        items = _read_cogvideo(folder)
    elif fmt == "hf":
        with open(os.path.join(folder, "metadata.jsonl")) as f:
            items = _from_records(folder, "metadata.jsonl", [json.loads(x) for x in f if x.strip()])
    else:
        name = _one_file(folder, ".csv" if fmt == "finetrainers-csv" else ".json")
        with open(os.path.join(folder, name), newline="") as f:
            rows = list(csv.DictReader(f)) if name.endswith(".csv") else json.load(f)
        if not isinstance(rows, list):
            raise ValueError(f"{os.path.join(folder, name)}: expected a list of records")
        items = _from_records(folder, name, rows)
    missing = [i["video"] for i in items if not os.path.isfile(i["video"])]
    if missing:
        raise ValueError(f"{folder}: {len(missing)} listed videos do not exist, e.g. {missing[0]}")
    return fmt, items


def _one_file(folder: str, ext: str) -> str:
    names = sorted(n for n in os.listdir(folder) if n.endswith(ext))
    preferred = [n for n in names if n.startswith(("dataset", "metadata", "train"))]
    return (preferred or names)[0]


def _read_cogvideo(folder: str) -> list[dict]:
    have = set(os.listdir(folder))
    cap_name = next(n for n in CAPTION_FILES if n in have)
    vid_name = next(n for n in VIDEO_FILES if n in have)
    caps = [x.strip() for x in open(os.path.join(folder, cap_name)) if x.strip()]
    vids = [x.strip() for x in open(os.path.join(folder, vid_name)) if x.strip()]
    if len(caps) != len(vids):
        raise ValueError(f"{folder}: {cap_name} has {len(caps)} lines but {vid_name} has {len(vids)}")
    return [{"video": os.path.join(folder, v), "caption": c, "extra": {}} for c, v in zip(caps, vids)]


def _from_records(folder: str, name: str, rows: list[dict]) -> list[dict]:
    if not rows:
        raise ValueError(f"{os.path.join(folder, name)}: no records")
    keys = set(rows[0])
    cap = next((c for c in CAPTION_COLUMNS if c in keys), None)
    vid = next((c for c in VIDEO_COLUMNS if c in keys), None)
    if cap is None or vid is None:
        raise ValueError(f"{os.path.join(folder, name)}: needs a caption column ({'/'.join(CAPTION_COLUMNS)}) and a "
                         f"video column ({'/'.join(VIDEO_COLUMNS)}); it has {', '.join(sorted(keys))}")
    return [{"video": os.path.join(folder, r[vid]), "caption": str(r[cap]).strip(),
             "extra": {k: v for k, v in r.items() if k not in (cap, vid)}} for r in rows]


def import_layout(folder: str, storage: Storage, run: str = "imported") -> dict:
    """Copy a dataset folder's videos into `storage` with a clips table and captions run `run`; counts."""
    from curation.probe import probe_video

    fmt, items = read_layout(folder)
    clips, caps = [], []
    for it in items:
        rel_src = os.path.relpath(it["video"], folder)
        cid = _clip_id(rel_src, it["extra"])
        rel = f"clips/imported/{cid}.mp4"
        with open(it["video"], "rb") as f:  # copied: the user's folder stays as it was
            storage.write_bytes(rel, f.read())
        m = probe_video(storage.uri(rel))
        clips.append({"clip_id": cid, "video_id": "imported", "source": rel_src, "start_frame": 0,
                      "end_frame": m["frames"], "start_s": 0.0, "end_s": m["duration_s"],
                      "width": m["display_width"] or m["width"], "height": m["display_height"] or m["height"],
                      "fps": m["fps"], "frames": m["frames"], "bytes": m["bytes"], "path": rel, "status": "ok",
                      "reason": None})
        caps.append(normalize({"clip_id": cid, "text": it["caption"], "raw_text": it["caption"],
                               "model": f"import:{fmt}", "engine": "import", "prompt": "imported", "flags": []}))
    tables.write_part(storage, "clips", clips, tables.CLIPS)
    tables.write_part(storage, f"captions/{run}", caps, CAPTIONS)
    return {"format": fmt, "clips": len(clips), "captions_run": run}


def _clip_id(rel_src: str, extra: dict) -> str:
    """The clip's id: its own when the layout carries one (our export), else from the file name."""
    if isinstance(extra.get("clip_id"), str) and re.fullmatch(r"[\w.-]+", extra["clip_id"]):
        return extra["clip_id"]
    stem = re.sub(r"[^\w.-]", "_", os.path.splitext(os.path.basename(rel_src))[0])[:40]
    return f"{stem}-{hashlib.sha1(rel_src.encode()).hexdigest()[:8]}"


# -------------------------------------------------------------------------------------------- cli ---

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shards.formats", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="a curated root -> a layout other tools read")
    ex.add_argument("config", help="pipelines.yaml (its root is exported)")
    ex.add_argument("--format", required=True, choices=FORMATS)
    ex.add_argument("--out", required=True, help="output folder")
    ex.add_argument("--captions-run", default=None, help="captions run (default: shard.writer.captions_run, else latest)")
    im = sub.add_parser("import", help="a dataset folder in one of those layouts -> a dataset root")
    im.add_argument("folder")
    im.add_argument("--root", required=True, help="dataset root to import into (local folder or object-store URI)")
    im.add_argument("--run", default="imported", help="captions run name for the imported captions")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "export":
            cfg = _load(a.config)
            n = export(Storage(cfg["root"]), a.out, a.format, a.captions_run or cfg["captions_run"])
            print(f"exported {n} clips as {a.format} to {a.out}")
        else:
            c = import_layout(a.folder, Storage(a.root), a.run)
            print(f"imported {c['clips']} clips ({c['format']}) into {a.root}: captions run {c['captions_run']}; "
                  "next: --stage shard with shard.writer.require_scores=false")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _load(path: str) -> dict:
    """root and captions run of a pipelines.yaml (read plainly: shards may not import vidcurate)."""
    import yaml

    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    data = yaml.safe_load(open(path)) or {}
    root = data.get("root")
    if not isinstance(root, str):
        raise ConfigError(f"{path}: root: missing")
    if "://" not in root:
        root = os.path.join(os.path.dirname(os.path.abspath(path)), root)
    return {"root": root, "captions_run": ((data.get("shard") or {}).get("writer") or {}).get("captions_run")}


if __name__ == "__main__":
    sys.exit(main())
