"""Caption quality of a dataset root's captions runs, for `python -m vidcurate inspect`.

Reads `<root>/captions/<run>/part-*.parquet` directly with pyarrow (only the report's columns) and
keeps one row per clip the way captioning.table.read_captions does (a caption beats an error, a later
row an earlier one). Per run: the length distribution in words and in tokens (the generating model's
own count), quality flags, the most frequent openings and word 3-grams, captions shared by several
clips (a broken captioner writes the same text for everything), and the share of captions that name
the camera motion the motion scorer detected (scores column `motion_camera_type`, when present; the
rule is captioning/camera.py's). Caption QA against the clip: the CLIP similarity of each caption's
text and the clip's frames (`clip_text_similarity`, below), and the borders scorer's letterbox label
(`borders_kind`) beside the captions that mention black bars. `--compare RUN_A RUN_B` adds the two
runs side by side and a seeded sample of clips with both captions next to a contact sheet of the clip.
"""
from __future__ import annotations

import base64
import html as H
import re
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from captioning.camera import CAMERA_COLUMN, camera_phrase, camera_types, mentions_camera
from curation import tables
from curation.filters.config import ClipModelConfig
from curation.storage import Storage

if TYPE_CHECKING:  # open_clip and torch load only when a report computes CLIP similarity
    from curation.filters.clip_model import ClipEncoder

QUANTILES = (0.0, 0.05, 0.5, 0.95, 1.0)
TOP = 8  # openings, n-grams and shared captions listed per run
OPENING_WORDS = 3  # an opening is a caption's first this many words
NGRAM = 3  # word n-grams counted (once per caption)
SHARED_MIN = 2  # a text written for at least this many clips counts as shared
COMPARE_SAMPLE = 8  # clips shown with both captions
TEXT_SAMPLE = 5000  # openings and n-grams are counted on a seeded sample of this many captions (speed)
_COLUMNS = ("clip_id", "text", "flags", "error", "tokens_out", "text_tokens", "mode", "model")

# Black bars named in a caption; compared with the borders scorer's `borders_kind` (issue 21).
BORDERS_COLUMN = "borders_kind"
_BARS = re.compile(r"\b(letter-?box\w*|pillar-?box\w*|black (?:bars?|borders?|bands?|stripes?)|widescreen bars?)\b")


def mentions_bars(text: str | None) -> bool:
    """Whether a caption names black bars / letterboxing."""
    return bool(_BARS.search((text or "").lower()))


# ----------------------------------------------------------------------------------------------- data
def list_runs(storage: Storage) -> list[str]:
    """Captions runs under the root (folders of captions/ holding Parquet parts), in name order."""
    import pyarrow.fs as pafs

    sel = pafs.FileSelector(storage.path("captions"), allow_not_found=True)
    return sorted(i.base_name for i in storage.fs.get_file_info(sel)
                  if i.type == pafs.FileType.Directory and storage.list(f"captions/{i.base_name}", ".parquet"))


def read_run(storage: Storage, run: str) -> pa.Table:
    """One row per clip of a captions run (a caption beats an error; later beats earlier)."""
    parts = storage.list(f"captions/{run}", ".parquet")
    if not parts:
        known = ", ".join(list_runs(storage)) or "none"
        raise ValueError(f"no captions run {run!r} under {storage.root} (runs: {known})")
    # every column, then ours: caption.checks' check_<name> / check_<name>_yes columns have config names
    ts = [t.select([c for c in t.column_names if c in _COLUMNS or c.startswith("check_")])
          for t in (tables.read_part(storage, p) for p in parts) if t is not None]
    if not ts:  # every part rotten (quarantined): the run is to be captioned again
        raise ValueError(f"captions run {run!r} under {storage.root}: every part was unreadable (quarantined)")
    t = pa.concat_tables(ts, promote_options="permissive")
    n = t.num_rows
    # Vectorised "a caption beats an error, a later row an earlier one": the max of ok * n + row index per clip.
    ok = np.asarray(pc.is_null(t.column("error")).to_numpy(zero_copy_only=False), bool) if "error" in t.column_names \
        else np.ones(n, bool)
    score = pa.array(ok.astype(np.int64) * n + np.arange(n))
    best = pa.table({"clip_id": t.column("clip_id"), "s": score}).group_by("clip_id").aggregate([("s", "max")])
    return t.take(np.sort(best.column("s_max").to_numpy() % n)) if n else t


def scores_column(storage: Storage, column: str) -> dict:
    """clip id -> a scores column's value (later parts win; nulls skipped); empty without that column."""
    return tables.column_by_clip(storage, "scores", column)


# -------------------------------------------------------------------------- caption-video CLIP similarity
# Computed here, at report time, from the captions run and the scores table's `clip_embedding` (the filter's
# mean frame embedding), rather than written by the caption stage: the caption stage would have to load
# the CLIP model in every VLM actor and add a column to the captions schema, while here only the text
# tower runs, once per report, and it also works for runs captioned before this existed. The encoder is
# the one that wrote the embeddings (the filter section of the newest run manifest, or one passed in), so
# text and image live in the same space. open_clip truncates text at its context length (77 tokens for
# CLIP): a long caption is judged on its opening, which is also what a CLIP-conditioned trainer would see.
CLIP_SIM_COLUMN = "clip_text_similarity"
LOWEST = 5  # lowest-matching captions listed per run
TEXT_BATCH = 256  # captions per text-tower forward pass


def manifest_clip_model(storage: Storage) -> ClipModelConfig | None:
    """The filter's CLIP model config (curation.filters.config.ClipModelConfig) of the newest run manifest
    that has one; None without manifests or a filter section."""
    import json

    for rel in reversed(storage.list("runs", ".json")):
        try:
            clip = (json.loads(storage.read_bytes(rel)).get("config") or {}).get("filter", {}).get("clip")
        except (OSError, ValueError, AttributeError):
            continue
        if clip:
            return ClipModelConfig(**clip)
    return None


def clip_text_similarity(caps: list[dict], embeddings: dict[str, list], encoder: ClipEncoder) -> dict[str, float]:
    """clip id -> cosine similarity of its caption's CLIP text embedding and the clip's stored image
    embedding (both L2-normalised by the encoder / filter). Clips without an embedding are left out."""
    have = [r for r in caps if embeddings.get(r["clip_id"])]
    out: dict[str, float] = {}
    for i in range(0, len(have), TEXT_BATCH):
        chunk = have[i:i + TEXT_BATCH]
        txt = encoder.embed_texts([r["text"] for r in chunk])
        img = np.asarray([embeddings[r["clip_id"]] for r in chunk], np.float32)
        if img.shape[1] != txt.shape[1]:  # embeddings from another CLIP than the manifest's: no comparison
            raise ValueError(f"{CLIP_SIM_COLUMN}: the scores' clip_embedding has {img.shape[1]} dims, the "
                             f"CLIP text tower {txt.shape[1]}: not the encoder that scored the clips")
        img /= np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
        out.update(zip((r["clip_id"] for r in chunk), (txt * img).sum(1).astype(float).tolist()))
    return out


def similarity_stats(caps: list[dict], sims: dict[str, float]) -> dict:
    """Distribution (QUANTILES, mean) and the LOWEST lowest-matching captions of a run."""
    got = sorted((sims[r["clip_id"]], r["clip_id"], r["text"]) for r in caps if r["clip_id"] in sims)
    v = np.array([g[0] for g in got], float)
    return {"n": len(got), "quantiles": np.quantile(v, QUANTILES).tolist() if len(v) else [],
            "mean": float(v.mean()) if len(v) else None, "lowest": got[:LOWEST]}


def borders_stats(caps: list[dict], kinds: dict[str, str], t: pa.Table) -> dict | None:
    """Letterbox label vs captions: clips with a `borders_kind`, those with bars, captions naming bars
    among each, and, when the run has a `letterbox` check (caption.checks question named so), its
    agreement with the label. None when the scores have no borders scorer."""
    if not kinds:
        return None
    known = [(kinds[r["clip_id"]] != "none", mentions_bars(r["text"])) for r in caps if r["clip_id"] in kinds]
    out = {"known": len(known), "bars": sum(b for b, _ in known),
           "named_with_bars": sum(b and m for b, m in known), "named_without": sum(m and not b for b, m in known)}
    if "check_letterbox_yes" in t.column_names:
        both = [(r["check_letterbox_yes"], kinds[r["clip_id"]] != "none") for r in
                t.select(["clip_id", "check_letterbox_yes"]).to_pylist()
                if r["check_letterbox_yes"] is not None and r["clip_id"] in kinds]
        out["check_agree"] = (sum(a == b for a, b in both), len(both))
    return out


_PUNCT = str.maketrans({c: " " for c in '!"#$%&()*+,./:;<=>?@[\\]^_`{|}~'})


def _norm(text: str) -> str:
    """Lower case, punctuation out, single spaces: captions that differ only in those count as one."""
    return " ".join(text.lower().translate(_PUNCT).split())


def text_presence(storage: Storage) -> dict[str, bool]:
    """clip id -> whether the OCR text scorer found text (its <name>_boxes_max > 0); empty without one."""
    out: dict[str, bool] = {}
    for p in storage.list("scores", ".parquet"):  # parts in write order: later rows win
        t = tables.read_part(storage, p)
        col = next((c for c in t.column_names if c.endswith("_boxes_max")), None) if t is not None else None
        if col is None:
            continue
        out.update((c, v > 0) for c, v in zip(t.column("clip_id").to_pylist(), t.column(col).to_pylist())
                   if v is not None)
    return out


# Near-duplicate captions: word 3-gram sets with Jaccard similarity >= NEAR_DUP (identical texts are "shared").
NEAR_DUP = 0.8
_RARE = 50  # a 3-gram in more captions than this is boilerplate: it proposes no pairs


def near_duplicates(caps: list[dict]) -> list[tuple[str, str, float]]:
    """(clip a, clip b, Jaccard) of caption pairs of different clips that are near, not exactly, the same."""
    from collections import defaultdict

    sets = [{" ".join(w[i:i + NGRAM]) for i in range(len(w) - NGRAM + 1)}
            for w in (_norm(r["text"]).split() for r in caps)]
    index: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sets):
        for g in s:
            index[g].append(i)
    pairs = {(a, b) for ids in index.values() if len(ids) <= _RARE for k, a in enumerate(ids) for b in ids[k + 1:]}
    out = []
    for a, b in sorted(pairs):
        j = len(sets[a] & sets[b]) / len(sets[a] | sets[b])
        if j >= NEAR_DUP and sets[a] != sets[b]:
            out.append((caps[a]["clip_id"], caps[b]["clip_id"], round(j, 3)))
    return out


def run_stats(t: pa.Table, cameras: dict[str, str]) -> dict:
    """Statistics of one run's rows (see module doc)."""
    rows = t.to_pylist()
    caps = [r for r in rows if r.get("error") is None and r.get("text") is not None]
    words = np.array([len(r["text"].split()) for r in caps], float)
    toks = np.array([r.get("text_tokens") if r.get("text_tokens") is not None else (r.get("tokens_out") or 0)
                     for r in caps], float)
    flags = Counter(f for r in caps for f in (r.get("flags") or []))
    norm = [_norm(r["text"]) for r in caps]
    some = norm if len(norm) <= TEXT_SAMPLE else \
        [norm[i] for i in np.random.default_rng(0).choice(len(norm), TEXT_SAMPLE, replace=False)]
    openings = Counter(" ".join(n.split()[:OPENING_WORDS]) for n in some if n)
    grams: Counter = Counter()
    for n in some:
        w = n.split()
        grams.update({" ".join(w[i:i + NGRAM]) for i in range(len(w) - NGRAM + 1)})
    same = Counter(n for n in norm if n)
    shared = [(text, k) for text, k in same.most_common() if k >= SHARED_MIN]
    cam = [mentions_camera(r["text"], cameras.get(r["clip_id"])) for r in caps]
    known = [c for c in cam if c is not None]
    q = lambda v: np.quantile(v, QUANTILES).tolist() if len(v) else []  # noqa: E731
    return {"clips": len(rows), "captioned": len(caps), "errors": len(rows) - len(caps),
            "modes": dict(Counter(r.get("mode") or "video" for r in rows)),
            "models": sorted({r.get("model") or "?" for r in rows}),
            "words": q(words), "words_mean": float(words.mean()) if len(words) else None,
            "tokens": q(toks), "flags": dict(flags.most_common()),
            "flagged": sum(bool(r.get("flags")) for r in caps), "openings": openings.most_common(TOP),
            "ngrams": grams.most_common(TOP), "shared": shared[:TOP],
            "shared_clips": sum(k for _, k in shared), "distinct": len(same),
            "camera_known": len(known), "camera_mentioned": sum(known), "text_sample": len(some),
            "checks": check_stats(caps),
            "near_dups": near_duplicates([r for r in caps if r["clip_id"] in _sample_ids(caps)])}


def _sample_ids(caps: list[dict]) -> set[str]:
    """The clips whose captions the pairwise statistics look at (all, or a fixed sample of TEXT_SAMPLE)."""
    if len(caps) <= TEXT_SAMPLE:
        return {r["clip_id"] for r in caps}
    return {caps[i]["clip_id"] for i in np.random.default_rng(0).choice(len(caps), TEXT_SAMPLE, replace=False)}


def label_agreement(t: pa.Table, texts: dict[str, bool]) -> tuple[int, int] | None:
    """(clips where caption.checks' overlay_text answer agrees with the OCR scorer, clips with both); None
    when the run has no such check or the scores no OCR."""
    if "check_overlay_text_yes" not in t.column_names or not texts:
        return None
    both = [(r["check_overlay_text_yes"], texts[r["clip_id"]]) for r in
            t.select(["clip_id", "check_overlay_text_yes"]).to_pylist()
            if r["check_overlay_text_yes"] is not None and r["clip_id"] in texts]
    return sum(a == b for a, b in both), len(both)


def check_stats(caps: list[dict]) -> dict[str, tuple[int, int, float | None]]:
    """caption.checks per question: (clips answered yes, clips answered, mean P(yes))."""
    out = {}
    for c in sorted({k for r in caps for k in r if k.startswith("check_") and not k.endswith("_yes")}):
        ps = [r[c] for r in caps if r.get(c) is not None]
        yes = sum(bool(r.get(f"{c}_yes")) for r in caps)
        out[c.removeprefix("check_")] = (yes, len(ps), float(np.mean(ps)) if ps else None)
    return out


def _checks_text(s: dict) -> str:
    return "; ".join(f"{k} {y} of {n}" + (f" (mean P {m:.2f})" if m is not None else "")
                     for k, (y, n, m) in s.get("checks", {}).items())


# ------------------------------------------------------------------------------------------- terminal
def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.1f}%" if b else "-"


def _q(v: list) -> str:
    return " / ".join(f"{x:.0f}" for x in v) if v else "-"


def terminal_lines(run: str, s: dict) -> list[str]:
    n = s["captioned"]
    lines = [f"captions run {run}: {s['clips']} clips, {n} captioned, {s['errors']} errors, "
             f"{s['flagged']} flagged ({_pct(s['flagged'], n)}); modes {s['modes']}; model {', '.join(s['models'])}",
             f"  length min/p5/median/p95/max: words {_q(s['words'])}; tokens {_q(s['tokens'])}",
             f"  flags: {', '.join(f'{k} {v}' for k, v in s['flags'].items()) or 'none'}",
             f"  distinct texts {s['distinct']} of {n}; shared by >= {SHARED_MIN} clips: {len(s['shared'])} texts "
             f"covering {s['shared_clips']} clips ({_pct(s['shared_clips'], n)})"]
    if s["camera_known"]:
        lines.append(f"  camera motion named: {s['camera_mentioned']} of {s['camera_known']} clips with a detected "
                     f"type ({_pct(s['camera_mentioned'], s['camera_known'])})")
    else:
        lines.append(f"  camera motion named: - (no {CAMERA_COLUMN} in the scores table)")
    if s.get("checks"):
        lines.append(f"  checks answered yes: {_checks_text(s)}")
    if s.get("text_agree"):
        lines.append(f"  overlay_text check agrees with OCR: {s['text_agree'][0]} of {s['text_agree'][1]} clips")
    sim = s.get("clip_sim")
    if sim and sim["n"]:
        lines.append(f"  {CLIP_SIM_COLUMN} (caption vs frames, filter CLIP) min/p5/median/p95/max: "
                     + " / ".join(f"{x:.3f}" for x in sim["quantiles"]) + f"; mean {sim['mean']:.3f} over {sim['n']} clips")
        for v, cid, text in sim["lowest"][:3]:
            lines.append(f"    lowest {cid} {v:.3f}: {text[:90]!r}")
    elif s.get("clip_sim_note"):
        lines.append(f"  {CLIP_SIM_COLUMN}: - ({s['clip_sim_note']})")
    bs = s.get("borders")
    if bs:
        lines.append(f"  black bars ({BORDERS_COLUMN}): {bs['bars']} of {bs['known']} clips "
                     f"({_pct(bs['bars'], bs['known'])}); captions naming bars: {bs['named_with_bars']} of those "
                     f"{bs['bars']}, {bs['named_without']} of the {bs['known'] - bs['bars']} without"
                     + (f"; letterbox check agrees with it: {bs['check_agree'][0]} of {bs['check_agree'][1]}"
                        if bs.get("check_agree") else ""))
    lines.append(f"  near-duplicate captions (3-gram Jaccard >= {NEAR_DUP}): {len(s.get('near_dups', []))} pairs"
                 + "".join(f"; {a} ~ {b} {j}" for a, b, j in s.get("near_dups", [])[:3]))
    sampled = f" (sample of {s['text_sample']})" if s["text_sample"] < n else ""
    lines.append(f"  top openings{sampled}: " + "; ".join(f"'{o}' {k}" for o, k in s["openings"][:5]))
    lines.append("  top 3-grams (clips): " + "; ".join(f"'{g}' {k}" for g, k in s["ngrams"][:5]))
    for text, k in s["shared"][:3]:
        lines.append(f"  shared x{k}: {text[:90]!r}")
    return lines


# ----------------------------------------------------------------------------------------------- html
def contact_sheet(storage: Storage, path: str | None, frames: int = 3, height: int = 72) -> str | None:
    """Frames at 20%, 50% and 80% of a clip side by side, as a JPEG data URI (None when unreadable)."""
    import cv2

    from curation.video import iter_frames

    if not path:
        return None
    try:
        got = [img for _, _, img in iter_frames(storage.uri(path), height * 3, height, fps=4.0)]
    except Exception:  # a missing or broken clip shows as a placeholder, never stops the report
        return None
    if not got:
        return None
    pick = [got[int(f * (len(got) - 1))] for f in np.linspace(0.2, 0.8, frames)]
    h = min(p.shape[0] for p in pick)
    strip = np.concatenate([p[:h] for p in pick], axis=1)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else None


def _html_run(run: str, s: dict) -> str:
    e = H.escape
    n = s["captioned"]
    rows = [("clips / captioned / errors", f"{s['clips']} / {n} / {s['errors']}"),
            ("flagged", f"{s['flagged']} ({_pct(s['flagged'], n)}): "
                        + ", ".join(f"{k} {v}" for k, v in s["flags"].items())),
            ("words min/p5/median/p95/max", _q(s["words"])), ("tokens min/p5/median/p95/max", _q(s["tokens"])),
            ("distinct texts", f"{s['distinct']} of {n}"),
            (f"shared by >= {SHARED_MIN} clips", f"{len(s['shared'])} texts, {s['shared_clips']} clips "
                                                 f"({_pct(s['shared_clips'], n)})"),
            ("camera motion named", f"{s['camera_mentioned']} of {s['camera_known']}" if s["camera_known"] else "-"),
            ("modes, model", f"{s['modes']}, {', '.join(s['models'])}")]
    if s.get("checks"):
        rows.append(("checks answered yes (caption.checks)", _checks_text(s)))
    if s.get("text_agree"):
        rows.append(("overlay_text check agrees with OCR", f"{s['text_agree'][0]} of {s['text_agree'][1]}"))
    sim = s.get("clip_sim")
    if sim and sim["n"]:
        rows.append((f"{CLIP_SIM_COLUMN} min/p5/median/p95/max (mean)",
                     " / ".join(f"{x:.3f}" for x in sim["quantiles"]) + f" ({sim['mean']:.3f}, {sim['n']} clips)"))
    elif s.get("clip_sim_note"):
        rows.append((CLIP_SIM_COLUMN, f"- ({s['clip_sim_note']})"))
    bs = s.get("borders")
    if bs:
        rows.append((f"black bars ({BORDERS_COLUMN}) / captions naming them",
                     f"{bs['bars']} of {bs['known']} clips; named in {bs['named_with_bars']} of those, "
                     f"{bs['named_without']} of the others"
                     + (f"; letterbox check agrees {bs['check_agree'][0]} of {bs['check_agree'][1]}"
                        if bs.get("check_agree") else "")))
    rows.append((f"near-duplicate caption pairs (Jaccard >= {NEAR_DUP})",
                 f"{len(s.get('near_dups', []))}" + "".join(f"; {a} ~ {b} {j}" for a, b, j in s.get("near_dups", [])[:5])))
    out = [f"<h3>Run {e(run)}</h3><table>"] + [f"<tr><th class=l>{e(a)}</th><td class=l>{e(str(b))}</td></tr>"
                                                for a, b in rows] + ["</table>"]
    for title, items in (("top openings", s["openings"]), ("top 3-grams (clips containing)", s["ngrams"]),
                         ("shared captions", s["shared"]),
                         (f"lowest {CLIP_SIM_COLUMN} (caption least like its frames)",
                          [(f"{cid}: {text}", f"{v:.3f}") for v, cid, text in (s.get("clip_sim") or {}).get("lowest", [])])):
        out.append(f"<details><summary>{e(title)}</summary><table>" + "".join(
            f"<tr><td class=l>{e(str(a))}</td><td>{k}</td></tr>" for a, k in items) + "</table></details>")
    return "".join(out)


def _clip_paths(storage: Storage) -> dict[str, str]:
    t = tables.read_table(storage, "clips")
    if not t.num_rows or "path" not in t.column_names:
        return {}
    return dict(zip(t.column("clip_id").to_pylist(), t.column("path").to_pylist()))


def compare_section(storage: Storage, a: str, ta: pa.Table, b: str, tb: pa.Table, cameras: dict[str, str],
                    sample: int, seed: int = 0) -> tuple[list[str], str]:
    """Terminal lines and HTML of a seeded sample of clips captioned in both runs, side by side."""
    e = H.escape
    ca = {r["clip_id"]: r["text"] for r in ta.to_pylist() if r.get("error") is None and r.get("text") is not None}
    cb = {r["clip_id"]: r["text"] for r in tb.to_pylist() if r.get("error") is None and r.get("text") is not None}
    both = sorted(set(ca) & set(cb))
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(both, size=min(sample, len(both)), replace=False).tolist()) if both else []
    same = sum(ca[k] == cb[k] for k in both)
    lines = [f"compare {a} vs {b}: {len(both)} clips captioned in both, {same} identical; sample of {len(pick)}:"]
    paths = _clip_paths(storage)
    out = [f"<h3>{e(a)} vs {e(b)}</h3><p>{len(both)} clips captioned in both runs, {same} with identical text; "
           f"a seeded sample of {len(pick)}.</p><table class=compare><tr><th class=l>clip</th>"
           f"<th class=l>{e(a)}</th><th class=l>{e(b)}</th></tr>"]
    for k in pick:
        cam = camera_phrase(cameras.get(k))
        lines += [f"  {k}" + (f" (camera: {cam})" if cam else ""), f"    {a}: {ca[k][:150]}", f"    {b}: {cb[k][:150]}"]
        img = contact_sheet(storage, paths.get(k))
        pic = f"<img src='{img}' alt='{e(k)}'>" if img else "<div class=missing>no frame</div>"
        out.append(f"<tr><td class=l>{pic}<small>{e(k)}{'<br>camera: ' + e(cam) if cam else ''}</small></td>"
                   f"<td class=l>{e(ca[k])}</td><td class=l>{e(cb[k])}</td></tr>")
    out.append("</table>")
    return lines, "".join(out)


def caption_report(storage: Storage, runs: list[str] | None = None, compare: tuple[str, str] | None = None,
                   sample: int = COMPARE_SAMPLE, clip_model: ClipModelConfig | None = None) -> tuple[list[str], str]:
    """(terminal lines, HTML section) of the caption quality of `runs` (default: every run), and with
    `compare` two runs side by side. `clip_model` (a ClipModelConfig) is the filter's CLIP for
    clip_text_similarity; None takes it from the newest run manifest. Raises ValueError naming a compare
    run that does not exist."""
    runs = list_runs(storage) if runs is None else runs
    if compare:
        runs = list(dict.fromkeys([*runs, *compare]))
    if not runs:
        return [], ""
    cameras = camera_types(storage)
    texts = text_presence(storage)
    kinds = scores_column(storage, BORDERS_COLUMN)
    loaded = {r: read_run(storage, r) for r in runs}
    embeddings = scores_column(storage, "clip_embedding")
    encoder, note = None, None
    if not embeddings:
        note = "no clip_embedding in the scores table (run the filter stage with a CLIP scorer)"
    else:
        cfg = clip_model or manifest_clip_model(storage)
        if cfg is None:
            note = "no run manifest names the filter's CLIP model"
        else:
            try:
                from curation.filters.clip_model import ClipEncoder

                encoder = ClipEncoder(cfg)  # the text tower of the filter's encoder, on the CPU
            except (OSError, ValueError) as e:  # a model folder moved since the filter ran: report, not fail
                note = f"filter CLIP {cfg.model!r} does not load: {e}"
    lines, html = [], ["<h2 id=captions>Captions</h2>"]
    for r in runs:
        s = run_stats(loaded[r], cameras)
        s["text_agree"] = label_agreement(loaded[r], texts)
        caps = [c for c in loaded[r].select([k for k in ("clip_id", "text", "error") if k in loaded[r].column_names])
                .to_pylist() if c.get("error") is None and c.get("text") is not None]
        s["borders"] = borders_stats(caps, kinds, loaded[r])
        if encoder is not None:
            try:
                s["clip_sim"] = similarity_stats(caps, clip_text_similarity(caps, embeddings, encoder))
            except ValueError as e:
                s["clip_sim_note"] = str(e)
        else:
            s["clip_sim_note"] = note
        lines += terminal_lines(r, s)
        html.append(_html_run(r, s))
    if compare:
        a, b = compare
        more, section = compare_section(storage, a, loaded[a], b, loaded[b], cameras, sample)
        lines += more
        html.append(section)
    return lines, "".join(html)
