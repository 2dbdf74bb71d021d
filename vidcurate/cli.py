"""Command line: `python -m vidcurate run pipelines.yaml [--stage S ...] [--set key=value ...]`,
`python -m vidcurate run pipelines.yaml --stage filter --rules-only` (new thresholds, stored scores),
`python -m vidcurate demo [pipelines.yaml]`, `python -m vidcurate inspect <root> [--serve]`."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # see _dispatch: no project module at import
    from curation.config import BaseConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vidcurate")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run curation stages from pipelines.yaml")
    r.add_argument("config", help="path to pipelines.yaml")
    r.add_argument("--stage", action="append", help="stage(s) to run (repeatable or comma-separated); "
                   "default: probe, split, filter, dedup, select, caption, shard")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    r.add_argument("--verbose", action="store_true", help="show Ray's own logging (default: runs/<run_id>.log)")
    r.add_argument("--wait", action="store_true", help="another run holds a stage of this root: wait for it "
                   "instead of refusing (curation/lease.py)")
    r.add_argument("--rules-only", action="store_true", help="filter stage: re-apply the configured thresholds "
                   "to the stored scores (passed/reasons recomputed; nothing decoded or scored)")
    d = sub.add_parser("demo", help="the whole flow on generated sample videos: every stage, the report, a short "
                       "tiny VAE and transformer training, a sampled mp4")
    d.add_argument("config", nargs="?", default="pipelines.yaml")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    d.add_argument("--verbose", action="store_true", help="show Ray's and the trainer's own output")
    i = sub.add_parser("inspect", help="summarise the tables under a dataset root")
    i.add_argument("root")
    i.add_argument("--html", default=None, help="write the HTML report here (default <root>/report/index.html)")
    i.add_argument("--no-html", action="store_true")
    i.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="two captions runs side by side")
    i.add_argument("--serve", action="store_true", help="serve the page and the clips on 127.0.0.1 (thumbnails of "
                   "object-store roots; the static page reads local clips itself) until Ctrl-C")
    i.add_argument("--port", type=int, default=8765, help="--serve: port on 127.0.0.1 (0 = any free port)")
    args = ap.parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("interrupted: what finished is kept; run the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # one scrubbed line (no credentials); the traceback with --verbose
        import traceback

        from curation.uris import scrub

        if getattr(args, "verbose", False):
            print(scrub(traceback.format_exc()), file=sys.stderr)
        print(f"error: {scrub(f'{type(e).__name__}: {e}')}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    # Each command imports what it needs, here and not at module level: `--help` loads no project module
    # and `inspect` never imports Ray or the stages.
    from curation.config import ConfigError
    from curation.uris import scrub
    from vidcurate.flow import PipelineConfig, load_config

    if args.cmd == "run":
        from curation.pipeline import run_stages, stage_names

        try:
            cfg = load_config(args.config, args.set)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        stages = [s.strip() for arg in (args.stage or stage_names(PipelineConfig)) for s in arg.split(",") if s.strip()]
        try:
            if args.rules_only:
                return _rules_only(cfg, stages, args.verbose)
            from curation.pipeline import RunContext
            from curation.storage import Storage

            run_stages(cfg, stages, RunContext(cfg, Storage(cfg.root), wait=args.wait), verbose=args.verbose)
        except ValueError as e:
            print(f"error: {scrub(str(e))}", file=sys.stderr)
            return 2
        return 0
    if args.cmd == "demo":
        from vidcurate.demo import run_demo

        return run_demo(args.config, args.set, verbose=args.verbose)
    if args.cmd == "inspect":
        from vidcurate.inspect import main as inspect_main

        if args.serve:
            from vidcurate.inspect import serve

            return serve(args.root, args.port)
        return inspect_main(args.root, html=None if args.no_html else (args.html or ""),
                            compare=tuple(args.compare) if args.compare else None)
    return 1


def _rules_only(cfg: BaseConfig, stages: list[str], verbose: bool = False) -> int:
    """--rules-only: the filter stage re-applies thresholds in this process; later stages run as usual."""
    from curation.filter import run_rules_only
    from curation.pipeline import RunContext, run_stages
    from curation.storage import Storage

    if "filter" not in stages:
        print("error: --rules-only re-applies the filter thresholds: add --stage filter", file=sys.stderr)
        return 2
    i = stages.index("filter")
    if i:
        print(f"error: --rules-only works on stored scores; {', '.join(stages[:i])} cannot run before it in the same "
              "command", file=sys.stderr)
        return 2
    ctx = RunContext(cfg, Storage(cfg.root))
    run_rules_only(cfg, ctx)
    if stages[1:]:
        run_stages(cfg, stages[1:], ctx, verbose=verbose)
    return 0
