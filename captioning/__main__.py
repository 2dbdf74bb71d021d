"""Command line of the captioning package.

    python -m captioning recaption --root data/demo --run qwen7b-dense-v2 [--config pipelines.yaml]
        [--set model=Qwen/Qwen2.5-VL-7B-Instruct --set engine=vllm ...]
        [--shards 'data/demo/shards/train/*.tar' --out data/demo/shards/train-v2 --caption-key txt]
    python -m captioning enhance --root data/demo [--source default] [--run default-enhanced]
        [--config pipelines.yaml] [--set enhance.model=... --set enhance.engine=openai ...]
    python -m captioning tiny-model OUT_DIR     # the tiny random Qwen2.5-VL used by tests and the demo
    python -m captioning tiny-text-model OUT_DIR   # the tiny random Qwen2 text LM (summary, enhance)

`--set` keys are relative to the `caption` section of pipelines.yaml. Re-running the same command
resumes: clips with a caption in the run are skipped, failed ones retried, finished shards kept.
"""
from __future__ import annotations

import argparse
import os
import sys

import yaml

from captioning.config import demo_models_of, load_caption_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m captioning")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recaption", help="caption an existing clips table or WebDataset shards into a new run")
    r.add_argument("--root", required=True, help="dataset root: holds the clips table and receives captions/<run>/")
    r.add_argument("--run", default=None, help="captions run name (default: caption.run of the config)")
    r.add_argument("--config", default=None, help="pipelines.yaml whose caption section to start from")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a caption key, e.g. model=... engine=openai openai.base_url=...")
    r.add_argument("--shards", nargs="+", default=None, help="WebDataset tar files or globs (instead of the clips table)")
    r.add_argument("--video-ext", default="mp4", help="member extension of the clip in the shards")
    r.add_argument("--out", default=None, help="write re-captioned shards to this folder or URI")
    r.add_argument("--caption-key", default="txt",
                   help="member extension of the new caption: an existing one is replaced, a new one is added")
    r.add_argument("--local", action="store_true", help="run in this process instead of on Ray")
    en = sub.add_parser("enhance", help="rewrite a captions run with a text LM into a new run (caption.enhance)")
    en.add_argument("--root", required=True, help="dataset root holding captions/<source>/")
    en.add_argument("--source", default=None,
                    help="run to rewrite (default: caption.enhance.source_run, else caption.run)")
    en.add_argument("--run", default=None, help="output run (default: caption.enhance.run, else <source>-enhanced)")
    en.add_argument("--config", default=None, help="pipelines.yaml whose caption section to start from")
    en.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a caption key, e.g. enhance.model=... enhance.engine=openai")
    en.add_argument("--local", action="store_true", help="run in this process instead of on Ray")
    t = sub.add_parser("tiny-model", help="build the tiny random Qwen2.5-VL (tests, demo)")
    t.add_argument("out")
    tt = sub.add_parser("tiny-text-model", help="build the tiny random Qwen2 text LM (tests, demo)")
    tt.add_argument("out")
    args = ap.parse_args(argv)

    if args.cmd == "tiny-model":
        from captioning.tiny_vlm import build_tiny_qwen25_vl

        print(build_tiny_qwen25_vl(args.out))
        return 0
    if args.cmd == "tiny-text-model":
        from captioning.tiny_lm import build_tiny_text_lm

        print(build_tiny_text_lm(args.out))
        return 0
    if args.cmd == "enhance":
        return enhance_main(args)

    from curation.config import ConfigError

    try:
        cfg = load_caption_config(args.config, args.set, args.run)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from captioning.recaption import recaption

    def report(c: dict) -> None:
        print(f"[recaption] captioned {c['captioned']}, flagged {c['flagged']}, errors {c['errors']}, "
              f"unreadable {c['unreadable']}", file=sys.stderr)

    try:
        counts = recaption(args.root, cfg, args.shards, args.out, args.caption_key, args.video_ext, args.local, report,
                           demo_models=demo_models_of(args.config))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(yaml.safe_dump({"run": cfg.run, **counts}, sort_keys=False).strip())
    incomplete = counts.get("errors", 0) or counts.get("shards", {}).get("incomplete", 0)
    if incomplete:
        print("some clips have no caption yet (engine errors, see the error column): run the same command again "
              "to retry them", file=sys.stderr)
    return 1 if incomplete else 0


def enhance_main(args: argparse.Namespace) -> int:
    from curation.config import ConfigError

    sets = list(args.set) + ([f"enhance.source_run={args.source}"] if args.source else []) + \
        ([f"enhance.run={args.run}"] if args.run else [])
    try:
        cfg = load_caption_config(args.config, sets, None)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from captioning.enhance import enhance_run
    from captioning.models import prepare_text_model
    from curation.storage import Storage

    cfg = cfg.model_copy(update={"enhance": prepare_text_model(cfg.enhance, demo_models_of(args.config))})
    try:
        if not args.local:
            from curation.runner import init_ray

            init_ray()
        counts = enhance_run(Storage(args.root), cfg, local=args.local)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(counts, sort_keys=False).strip())
    if counts["errors"]:
        print("some clips have no enhanced caption (see the error column): run the same command again to retry "
              "them", file=sys.stderr)
    return 1 if counts["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
