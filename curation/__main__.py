"""Command line: `python -m curation run pipelines.yaml [--stage S ...] [--set key=value ...]`,
`python -m curation inspect <root>`."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m curation")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run curation stages from pipelines.yaml")
    r.add_argument("config", help="path to pipelines.yaml")
    r.add_argument("--stage", action="append", help="stage(s) to run (repeatable or comma-separated); "
                   "default: probe, split, filter, caption, shard")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    i = sub.add_parser("inspect", help="summarise the tables under a dataset root")
    i.add_argument("root")
    i.add_argument("--html", default=None, help="write the HTML report here (default <root>/report/index.html)")
    i.add_argument("--no-html", action="store_true")
    args = ap.parse_args(argv)

    from curation.config import ConfigError, load_config

    if args.cmd == "run":
        from curation.pipeline import DEFAULT_STAGES, run_stages

        try:
            cfg = load_config(args.config, args.set)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        stages = [s.strip() for arg in (args.stage or DEFAULT_STAGES) for s in arg.split(",") if s.strip()]
        try:
            run_stages(cfg, stages)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.cmd == "inspect":
        from curation.inspect import main as inspect_main

        return inspect_main(args.root, html=None if args.no_html else (args.html or ""))
    return 1


if __name__ == "__main__":
    sys.exit(main())
