<<<<<<< HEAD
"""`python -m curation run|demo|inspect ...`: the project's command line. It lives one layer up
(vidcurate/cli.py), where every package's section and stage are assembled; a program may import it."""
=======
"""Command line: `python -m curation run pipelines.yaml [--stage S ...] [--set key=value ...]`,
`python -m curation run pipelines.yaml --stage filter --rules-only` (new thresholds, stored scores),
`python -m curation inspect <root> [--serve]`."""
>>>>>>> i14-inspect
from __future__ import annotations

import sys

<<<<<<< HEAD
from vidcurate.cli import main
=======

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m curation")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run curation stages from pipelines.yaml")
    r.add_argument("config", help="path to pipelines.yaml")
    r.add_argument("--stage", action="append", help="stage(s) to run (repeatable or comma-separated); "
                   "default: probe, split, filter, caption, shard")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    r.add_argument("--rules-only", action="store_true", help="filter stage: re-apply the configured thresholds "
                   "to the stored scores (passed/reasons recomputed; nothing decoded or scored)")
    d = sub.add_parser("demo", help="generate sample videos at the config's inputs, then run every stage")
    d.add_argument("config", nargs="?", default="pipelines.yaml")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    i = sub.add_parser("inspect", help="summarise the tables under a dataset root")
    i.add_argument("root")
    i.add_argument("--html", default=None, help="write the HTML report here (default <root>/report/index.html)")
    i.add_argument("--no-html", action="store_true")
    i.add_argument("--serve", action="store_true", help="serve the page and the clips on 127.0.0.1 (thumbnails of "
                   "object-store roots; the static page reads local clips itself) until Ctrl-C")
    i.add_argument("--port", type=int, default=8765, help="--serve: port on 127.0.0.1 (0 = any free port)")
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
            if args.rules_only:
                return _rules_only(cfg, stages)
            run_stages(cfg, stages)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.cmd == "demo":
        from curation.pipeline import DEFAULT_STAGES, run_stages
        from curation.synth import demo_videos

        try:
            cfg = load_config(args.config, args.set, check_inputs=False)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        folder = os.path.dirname(cfg.inputs[0])
        if "://" in folder or "*" in folder:
            print(f"error: demo writes sample videos to a local folder; inputs[0] is {cfg.inputs[0]!r}",
                  file=sys.stderr)
            return 2
        print(f"[demo] sample videos: {demo_videos(folder)}", file=sys.stderr)
        run_stages(load_config(args.config, args.set), DEFAULT_STAGES)
        print(f"[demo] done: tables under {cfg.root}; summary: python -m curation inspect {cfg.root}",
              file=sys.stderr)
        return 0
    if args.cmd == "inspect":
        from curation.inspect import main as inspect_main

        if args.serve:
            from curation.inspect import serve

            return serve(args.root, args.port)
        return inspect_main(args.root, html=None if args.no_html else (args.html or ""))
    return 1

>>>>>>> i14-inspect

def _rules_only(cfg: "object", stages: list[str]) -> int:
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
        run_stages(cfg, stages[1:], ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
