"""Judgement benchmark: how accurate each filter rule is on real footage with labelled degradations.

    .venv/bin/python bench/judgement.py                        # default set (../shared/testdata), ~15 min on 2 cores
    .venv/bin/python bench/judgement.py --smoke                # seconds: one synthetic source, a few kinds
    .venv/bin/python bench/judgement.py --write-doc docs/judgement.md   # also regenerate the docs table
    .venv/bin/python bench/judgement.py --set filter.scorers.ocr.frames=8 --only text

The labelled set (bench/judgement_set.py) is made once and cached under --cache (~/.cache/vidcurate/judgement).
Every clip is scored in this process (no Ray: the numbers are the work itself) by the scorers of
pipelines.yaml's `filter.scorers` that need no CLIP embedding (the default CLIP models are tiny random
ones: their scores mean nothing), with the decode the filter stage does (curation.filters.decode), plus
the probe row (curation.probe) for probe-level rules. Scores are cached per clip and scorer config.

Each judgement of bench/judgements.yaml (its drop rules, the score it ranks, the tags it should drop)
is reported per part of the set (calibration: the sources thresholds may be tuned on; report: the
others, never tuned on): precision, recall and F1 of its rules, AUC of its score, the share of clean
clips it drops (all sizes, then 144p and 1080p apart: the resolution drift), and its scoring time
against a bare decode of the same clips measured in the same run. Last, the whole default rule set:
the share of clean clips it keeps.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore", category=RuntimeWarning)

from bench.judgement_set import DUPLICATES, Clip, SetOptions, Source, build_set  # noqa: E402
from curation.filters.base import Rule, Scorer, ScorerSet  # noqa: E402
from curation.filters.config import FilterConfig  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# Natural tags that do not make a clean clip unclean for the whole rule set (bars, a handheld camera and
# text that is part of the scene are all kept by design).
BENIGN = {"letterbox", "border", "handheld", "scene_text"}
# Clips and scores are cached per user, outside the repository (a few hundred MB; delete it to start over).
DEFAULT_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vidcurate", "judgement")
DOC_BEGIN, DOC_END = "<!-- judgement-table:begin -->", "<!-- judgement-table:end -->"


@dataclass
class Judgement:
    """One entry of bench/judgements.yaml."""

    name: str
    rules: list  # the drop rules that decide it: Rules (pipelines.yaml thresholds) or the PrefilterRule
    score: str  # column ranked for the AUC
    sign: float  # +1: higher score = more positive; -1: lower
    positive: set[str]  # tags it should drop
    ignore: set[str] = field(default_factory=set)  # negatives with these tags are left out (not positives)


def load_filter(pipelines: str, overrides: list[str]) -> tuple[FilterConfig, "object"]:
    """pipelines.yaml's filter section and probe prefilter (with --set overrides), validated as the stages do."""
    from curation.config import apply_overrides
    from curation.prefilter import PrefilterConfig

    data = apply_overrides(yaml.safe_load(open(pipelines)) or {}, overrides)
    if "filter" not in data:
        raise ValueError(f"{pipelines}: has no `filter` section")
    base = {"base_dir": os.path.dirname(os.path.abspath(pipelines))}
    pre = PrefilterConfig.model_validate((data.get("probe") or {}).get("prefilter") or {})
    return FilterConfig.model_validate(data["filter"], context=base), pre


def bench_scorers(fcfg: FilterConfig) -> list[Scorer]:
    """The configured scorers that can be judged here: all but those reading CLIP embeddings."""
    return [s for s in ScorerSet.from_config(fcfg.enabled_scorers()).scorers if not s.needs_embedding]


def load_judgements(path: str, scorers: list[Scorer], prefilter: "object" = None) -> list[Judgement]:
    """bench/judgements.yaml -> Judgements whose rules exist among the scorers (others are skipped, said)."""
    raw = (yaml.safe_load(open(path)) or {}).get("judgements") or {}
    by_name = {s.name: s for s in scorers}
    out = []
    for name, e in raw.items():
        rules: list = []
        for ref in e.get("rules", []):
            if ref == "prefilter":
                rules.append(PrefilterRule(prefilter))
                continue
            scorer, _, metric = ref.partition(".")
            if scorer not in by_name:
                print(f"  judgement {name}: scorer {scorer!r} is not configured (or needs CLIP): skipped")
                rules = []
                break
            got = [r for r in by_name[scorer].rules() if not metric or r.column == f"{scorer}_{metric}"]
            if not got:
                raise ValueError(f"{path}: judgements.{name}.rules: {ref!r} has no threshold in filter.scorers")
            rules += got
        if "detect" in e:  # a detector that drops nothing (borders): judged by a detection threshold instead
            d = dict(e["detect"])
            col = d.pop("column")
            if col.split("_", 1)[0] not in by_name:
                print(f"  judgement {name}: column {col!r} has no configured scorer: skipped")
                continue
            rules = [Rule(col, **d)]
        if not rules:
            continue
        score = e.get("score") or rules[0].column
        out.append(Judgement(name, rules, score.lstrip("-"), -1.0 if score.startswith("-") else 1.0,
                             set(e["positive"]), set(e.get("ignore", []))))
    return out


def _cfg_key(s: Scorer) -> str:
    return hashlib.sha1(s.cfg.model_dump_json().encode()).hexdigest()[:10]


def score_clips(clips: list[Clip], scorers: list[Scorer], fcfg: FilterConfig, cache: str,
                log=print) -> tuple[dict[str, dict], dict[str, float]]:
    """Scores of every clip (clip_id -> column -> value) and seconds spent: decode, probe, each scorer."""
    from curation.filters.decode import decode_clip
    from curation.probe import probe_video

    os.makedirs(cache, exist_ok=True)
    stores = {s.name: _Store(os.path.join(cache, f"{s.name}-{_cfg_key(s)}.jsonl")) for s in scorers}
    base = _Store(os.path.join(cache, f"decode-{fcfg.sample_fps}-{fcfg.max_frames}.jsonl"))
    specs = [sp for s in scorers for sp in s.frame_specs()]
    mv = max([s.mv_cells() or 0 for s in scorers] or [0]) or None
    for s in scorers:
        s.setup()
    secs: dict[str, float] = {"decode": 0.0, "probe": 0.0, **{s.name: 0.0 for s in scorers}}
    rows: dict[str, dict] = {}
    t_log = time.time()
    for i, c in enumerate(clips):
        todo = [s for s in scorers if c.clip_id not in stores[s.name].rows]
        if not todo and _box_changed(c.clip_id, scorers, stores):
            todo = scorers
        if todo or c.clip_id not in base.rows:
            td = time.perf_counter()
            frames = decode_clip(c.path, specs, fcfg.sample_fps, fcfg.max_frames, mv)
            t1 = time.perf_counter()
            probe = {f"probe_{k}": v for k, v in probe_video(c.path).items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)}
            base.add(c.clip_id, {"decode_s": t1 - td, "probe_s": time.perf_counter() - t1, **probe})
            # Border finders first: the other scorers see the picture inside the bars, as in the filter stage.
            for s in sorted(scorers, key=lambda s: not s.crops):
                row = stores[s.name].rows.get(c.clip_id)
                if row is None or s.crops or row.get("_content", "?") not in ("?", _box(frames.content)):
                    t0 = time.perf_counter()
                    vals = s.score(frames)
                    stores[s.name].add(c.clip_id, {"_s": time.perf_counter() - t0, "_decode_s": t1 - td,
                                                    "_content": _box(frames.content),
                                                    **{f"{s.name}_{k}": v for k, v in vals.items()}})
                if s.crops:
                    got = stores[s.name].rows[c.clip_id]
                    frames.content = s.content_box({k[len(s.name) + 1:]: v for k, v in got.items() if k[0] != "_"})
        row = dict(base.rows[c.clip_id])
        dec = row.pop("decode_s")
        secs["decode"] += dec
        secs["probe"] += row.pop("probe_s")
        for s in scorers:
            r = dict(stores[s.name].rows[c.clip_id])
            secs[s.name] += r.pop("_s")
            # The decode of the pass that scored it: the ratio pairs timings taken together (same load).
            secs[f"{s.name}:decode"] = secs.get(f"{s.name}:decode", 0.0) + (r.pop("_decode_s", None) or dec)
            r.pop("_content", None)
            row.update(r)
        rows[c.clip_id] = row
        if time.time() - t_log > 30:
            log(f"  scored {i + 1}/{len(clips)} clips")
            t_log = time.time()
    return rows, secs


def _box(content) -> list | None:
    return [round(float(v), 5) for v in content] if content is not None else None


def _box_changed(clip_id: str, scorers: list[Scorer], stores: dict) -> bool:
    """Cached scores were made inside another picture box than the border finder's cached one gives now
    (a border finder that changed): score the clip again. Rows without a box (older caches) count as valid."""
    crops = [s for s in scorers if s.crops]
    if not crops:
        return False
    got = stores[crops[0].name].rows[clip_id]
    box = _box(crops[0].content_box({k[len(crops[0].name) + 1:]: v for k, v in got.items() if k[0] != "_"}))
    return any(stores[s.name].rows[clip_id].get("_content", box) != box for s in scorers if not s.crops)


class _Store:
    """An append-only JSON-lines cache: clip_id -> values (a killed run keeps what it scored)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows: dict[str, dict] = {}
        if os.path.exists(path):
            for line in open(path):
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:  # a torn last line of a killed run
                    continue
                self.rows[d.pop("clip_id")] = d

    def add(self, clip_id: str, values: dict) -> None:
        self.rows[clip_id] = values
        with open(self.path, "a") as f:
            f.write(json.dumps({"clip_id": clip_id, **values}) + "\n")


@dataclass
class PrefilterRule:
    """The probe-level prefilter of pipelines.yaml (curation/prefilter.py) on a clip's probe row."""

    cfg: "object"  # PrefilterConfig
    column: str = "prefilter"

    def fires(self, row: dict) -> bool:
        from curation.prefilter import prefilter_reasons

        probe = {k[len("probe_"):]: v for k, v in row.items() if k.startswith("probe_")}
        return bool(prefilter_reasons(probe, self.cfg))


def drops(rules: list, row: dict) -> bool:
    return any(r.fires(row) if isinstance(r, PrefilterRule) else r.reason(_num(row.get(r.column))) for r in rules)


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def auc(pos: list[float], neg: list[float]) -> float | None:
    """Probability that a random positive outranks a random negative (ties count half); None if undefined."""
    if not pos or not neg:
        return None
    p, n = np.asarray(pos, float)[:, None], np.asarray(neg, float)[None, :]
    return float(np.mean((p > n) + 0.5 * (p == n)))


@dataclass
class Row:
    """One judgement's numbers on one part of the set."""

    judgement: str
    part: str
    n_pos: int
    n_neg: int
    precision: float | None
    recall: float | None
    f1: float | None
    auc: float | None
    clean_drop: float | None  # share of clean clips (all sizes) the rules drop
    drop_144: float | None
    drop_1080: float | None
    cost: float  # scoring seconds / bare-decode seconds over the same clips
    dropped_clean: list[str]  # ids of the clean clips dropped (to look at)


def evaluate(j: Judgement, clips: list[Clip], rows: dict[str, dict], part: str, cost: float) -> Row:
    pos_tags = j.positive
    use = [c for c in clips if c.part == part and c.kind not in DUPLICATES]
    pos = [c for c in use if set(c.tags) & pos_tags]
    neg = [c for c in use if not set(c.tags) & (pos_tags | j.ignore)]
    tp = sum(drops(j.rules, rows[c.clip_id]) for c in pos)
    fp = sum(drops(j.rules, rows[c.clip_id]) for c in neg)
    prec = tp / (tp + fp) if tp + fp else None
    rec = tp / len(pos) if pos else None
    f1 = 2 * prec * rec / (prec + rec) if prec and rec else (0.0 if pos else None)
    sc = lambda cs: [j.sign * v for c in cs if (v := _num(rows[c.clip_id].get(j.score))) is not None]  # noqa: E731
    clean = [c for c in neg if c.kind == "clean"]

    def rate(cs: list[Clip]) -> float | None:
        return sum(drops(j.rules, rows[c.clip_id]) for c in cs) / len(cs) if cs else None

    return Row(j.name, part, len(pos), len(neg), prec, rec, f1, auc(sc(pos), sc(neg)), rate(clean),
               rate([c for c in clean if c.short_side == 144]), rate([c for c in clean if c.short_side == 1080]),
               cost, [c.clip_id for c in clean if drops(j.rules, rows[c.clip_id])])


def rule_set_keep(rules: list[Rule], clips: list[Clip], rows: dict[str, dict], part: str) -> tuple[float, int, list[str]]:
    """Share of clean clips (benign natural tags allowed) the whole rule set keeps, their count, the dropped."""
    clean = [c for c in clips if c.part == part and c.kind == "clean" and set(c.tags) <= BENIGN]
    dropped = [c.clip_id for c in clean if drops(rules, rows[c.clip_id])]
    return (1 - len(dropped) / len(clean)) if clean else float("nan"), len(clean), dropped


def _f(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.0f}%" if pct else f"{v:.2f}"


def table(results: list[Row], keep: dict[str, tuple[float, int, list[str]]], secs: dict[str, float],
          clips: list[Clip]) -> str:
    """The markdown table of the docs (report part first) and the targets each judgement meets."""
    lines = ["| judgement | part | pos / neg | precision | recall | F1 | AUC | clean dropped | 144p / 1080p "
             "| drift (pts) | cost vs decode | targets |", "|" + "---|" * 12]
    for r in sorted(results, key=lambda r: (r.part != "report", r.judgement)):
        drift = abs(r.drop_144 - r.drop_1080) * 100 if r.drop_144 is not None and r.drop_1080 is not None else None
        miss = []
        if r.f1 is not None and r.f1 < 0.95:
            miss.append("F1")
        if r.clean_drop is not None and r.clean_drop > 0.02:
            miss.append("clean drop")
        if drift is not None and drift > 2:
            miss.append("drift")
        verdict = "met" if not miss else "missed: " + ", ".join(miss)
        lines.append(f"| {r.judgement} | {r.part} | {r.n_pos} / {r.n_neg} | {_f(r.precision)} | {_f(r.recall)} | "
                     f"{_f(r.f1)} | {_f(r.auc)} | {_f(r.clean_drop, True)} | {_f(r.drop_144, True)} / "
                     f"{_f(r.drop_1080, True)} | {'n/a' if drift is None else f'{drift:.0f}'} | {r.cost:.2f}x | "
                     f"{verdict} |")
    lines.append("")
    for part, (share, n, dropped) in keep.items():
        lines.append(f"Whole default rule set, {part} part: keeps {100 * share:.0f}% of {n} clean clips "
                     f"(target >= 95%){'; drops ' + ', '.join(dropped) if dropped else ''}.")
    n_src = len({c.source for c in clips})
    lines.append(f"\n{len(clips)} clips from {n_src} source videos; bare decode {secs['decode']:.1f} s in all.")
    return "\n".join(lines)


def dedup_table(clips: list[Clip], frames: int, max_distance: float) -> str:
    """Where the pHash signal links near-duplicates: per kind of copy, the mean Hamming distance per 64-bit
    frame hash to its original and the share linked at the configured distance, against other windows of
    the same source video (which must not be linked). The CLIP-embedding signal needs a real CLIP model
    (the configured one is the tiny random demo model), so only pHash is measured here."""
    from curation.phash import clip_hash

    by_id = {c.clip_id: c for c in clips}
    hashes: dict[str, np.ndarray] = {}

    def h(cid: str) -> np.ndarray:
        if cid not in hashes:
            hashes[cid] = np.unpackbits(clip_hash(by_id[cid].path, None, frames), axis=1)
        return hashes[cid]

    def dist(a: str, b: str) -> float:
        return float((h(a) != h(b)).sum(axis=1).mean())

    dups = [c for c in clips if c.kind in DUPLICATES]
    if not dups:
        return ""
    rows: dict[str, list[float]] = {}

    def original(c: Clip) -> str:  # a copy is made from its window's clean clip at the same size
        return f"{c.window}-clean-{c.short_side}"

    for c in dups:
        rows.setdefault(c.kind, []).append(dist(c.clip_id, original(c)))
    originals = sorted({original(c) for c in dups})
    others = [dist(o, c.clip_id) for o in originals for c in clips
              if c.kind == "clean" and c.short_side == by_id[o].short_side and c.source == by_id[o].source
              and c.window != by_id[o].window]
    lines = [f"| copy of a clip (pHash, {frames} frames) | pairs | mean bits differing / 64 | linked at <= {max_distance:g} |",
             "|---|---|---|---|"]
    for kind in DUPLICATES:
        if kind in rows:
            d = np.array(rows[kind])
            lines.append(f"| {kind} | {len(d)} | {d.mean():.1f} (max {d.max():.1f}) | {100 * np.mean(d <= max_distance):.0f}% |")
    if others:
        d = np.array(others)
        lines.append(f"| other shot of the same video (must not link) | {len(d)} | {d.mean():.1f} (min {d.min():.1f}) | "
                     f"{100 * np.mean(d <= max_distance):.0f}% |")
    return "\n".join(lines)


def write_doc(path: str, text: str) -> None:
    """Replace the text between the table markers of a docs file (the rest of the page is hand-written)."""
    doc = open(path).read()
    if DOC_BEGIN not in doc or DOC_END not in doc:
        raise ValueError(f"{path}: needs the markers {DOC_BEGIN} and {DOC_END} around the generated table")
    head, rest = doc.split(DOC_BEGIN, 1)
    tail = rest.split(DOC_END, 1)[1]
    with open(path, "w") as f:
        f.write(f"{head}{DOC_BEGIN}\n{text}\n{DOC_END}{tail}")


def smoke_sources(folder: str) -> tuple[str, list[Source]]:
    """Two tiny synthetic sources (mechanics only, never accuracy): one per part."""
    from curation.synth import Scene, make_video

    os.makedirs(folder, exist_ok=True)
    for i in range(2):
        p = os.path.join(folder, f"synth{i}.mp4")
        if not os.path.exists(p):
            make_video(p, [Scene(36, 1.5, 7 + i)], 256, 144, 24.0)
    return folder, [Source("synth0", "synth0.mp4", "calibration"), Source("synth1", "synth1.mp4", "report")]


def run(args: argparse.Namespace) -> str:
    fcfg, prefilter = load_filter(args.pipelines, args.set or [])
    scorers = bench_scorers(fcfg)
    judgements = load_judgements(args.judgements, scorers, prefilter)
    if args.only:  # those judgements, and the scorers they read (plus any border finder: it crops for them)
        judgements = [j for j in judgements if j.name in args.only.split(",")]
        used = {r.column.split("_", 1)[0] for j in judgements for r in j.rules} | {j.score.split("_", 1)[0] for j in judgements}
        scorers = [s for s in scorers if s.name in used or s.crops]
    if args.smoke:
        testdata, sources = smoke_sources(os.path.join(args.cache, "smoke-src"))
        opts = SetOptions(window_s=1.0, base_short=144, drift_shorts=(), per_kind=1, duplicates_per_part=1,
                          kinds=("subtitles", "frozen", "jitter"))
    else:
        testdata, sources = args.testdata, None
        opts = SetOptions(per_kind=args.per_kind)
    t0 = time.time()
    clips = build_set(testdata, os.path.join(args.cache, "clips"), opts, sources)
    print(f"labelled set: {len(clips)} clips ({time.time() - t0:.0f} s)")
    scored = [c for c in clips if c.kind not in DUPLICATES]
    rows, secs = score_clips(scored, scorers, fcfg, os.path.join(args.cache, "scores"))
    results = []
    for j in judgements:
        names = {r.column.split("_", 1)[0] for r in j.rules} | ({"probe"} if any(isinstance(r, PrefilterRule) for r in j.rules) else set())
        cost = sum(secs.get(n, 0.0) / max(secs.get(f"{n}:decode") or secs["decode"], 1e-9) for n in names)
        results += [evaluate(j, scored, rows, part, cost) for part in ("calibration", "report")]
    rules = [r for s in scorers for r in s.rules()] + [PrefilterRule(prefilter)]
    keep = {part: rule_set_keep(rules, scored, rows, part) for part in ("calibration", "report")}
    out = table(results, keep, secs, clips)
    dd = yaml.safe_load(open(args.pipelines)).get("dedup") or {}
    out += "\n\n" + dedup_table(clips, int(dd.get("phash_frames", 5)), float(dd.get("phash_max_distance", 10)))
    for r in results:
        if r.dropped_clean:
            out += f"\n<!-- {r.judgement} / {r.part}: clean clips dropped: {', '.join(r.dropped_clean)} -->"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--testdata", default=os.environ.get("VIDEO_TESTDATA", os.path.join(REPO, "..", "shared", "testdata")))
    ap.add_argument("--pipelines", default=os.path.join(REPO, "pipelines.yaml"), help="its filter.scorers are judged")
    ap.add_argument("--judgements", default=os.path.join(HERE, "judgements.yaml"))
    ap.add_argument("--set", action="append", help="override a pipelines.yaml key, e.g. filter.scorers.ocr.frames=8")
    ap.add_argument("--only", help="comma-separated judgement names (their scorers only)")
    ap.add_argument("--cache", default=DEFAULT_CACHE, help="clips and scores are cached here")
    ap.add_argument("--per-kind", type=int, default=3, help="degraded clips per kind and part")
    ap.add_argument("--smoke", action="store_true", help="seconds: two synthetic sources, three kinds")
    ap.add_argument("--write-doc", help="replace the table between the markers of this docs file")
    args = ap.parse_args(argv)
    if not args.smoke and not os.path.isdir(args.testdata):
        ap.error(f"--testdata {args.testdata}: no such folder (the real videos; or run --smoke)")
    out = run(args)
    print(out)
    os.makedirs(args.cache, exist_ok=True)
    with open(os.path.join(args.cache, "report.md"), "w") as f:
        f.write(out + "\n")
    if args.write_doc:
        write_doc(args.write_doc, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
