"""Stage accounting of a run (runs/<run_id>.json, see curation/accounting.py) as text and HTML.

`terminal_lines(manifest)`: per stage a table (workers and nodes, busy and CPU seconds, utilisation,
queue waits, rows in/out, rows/s, MB/s, bottleneck share) and a timeline: one row per step whose
characters show its workers' utilisation over time (" ▁▂▃▄▅▆▇█"), and a row naming the bottleneck
step of each moment. `html_section(manifest)` is the same as a self-contained HTML <section> (a table
and an SVG timeline), for `python -m vidcurate inspect`'s page.
"""
from __future__ import annotations

import html as H
import json

from curation.storage import Storage

LEVELS = " ▁▂▃▄▅▆▇█"
COLUMNS = ("step", "workers", "nodes", "busy s", "cpu s", "util", "wait mean s", "wait max s", "rows in",
           "rows out", "rows/s", "MB/s", "bottleneck")


def latest_manifest(storage: Storage) -> dict | None:
    """The newest run manifest that has stage accounting (None when there is none)."""
    for rel in reversed(storage.list("runs", ".json")):
        try:
            man = json.loads(storage.read_bytes(rel))
        except (OSError, ValueError):
            continue
        if any(s.get("accounting") for s in man.get("stages", {}).values()):
            return man
    return None


def _row(step: str, v: dict) -> list[str]:
    return [step, str(v["workers"]), str(v["nodes"]), f"{v['busy_s']:.2f}", f"{v['cpu_s']:.2f}",
            f"{100 * v['utilization']:.0f}%", f"{v['queue_wait_mean_s']:.2f}", f"{v['queue_wait_max_s']:.2f}",
            str(v["rows_in"]), str(v["rows_out"]), f"{v['rows_per_s']:.2f}", f"{v['bytes_per_s'] / 1e6:.2f}",
            f"{100 * v['bottleneck_share']:.0f}%"]


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in rows]


def _spark(values: list[float]) -> str:
    return "".join(LEVELS[min(len(LEVELS) - 1, int(round(v * (len(LEVELS) - 1))))] for v in values)


def terminal_lines(manifest: dict) -> list[str]:
    """The run's stage accounting as terminal lines (empty when the manifest has none)."""
    out: list[str] = []
    for stage, entry in manifest.get("stages", {}).items():
        acct = entry.get("accounting") or {}
        if not acct.get("steps"):
            continue
        steps = acct["steps"]
        neck = max(steps, key=lambda s: steps[s]["bottleneck_share"])
        out.append(f"stage {stage}: {acct['wall_s']:.1f}s on Ray, bottleneck {neck} "
                   f"({100 * steps[neck]['bottleneck_share']:.0f}% of the time)")
        out.extend("  " + line for line in _table([list(COLUMNS)] + [_row(s, v) for s, v in steps.items()]))
        w = max(len(s) for s in steps)
        out.append(f"  timeline ({acct['bin_s']:.2f}s per character, utilisation of each step's workers):")
        for s, v in steps.items():
            out.append(f"    {s.ljust(w)} |{_spark(v['timeline'])}|")
        key = {s: chr(ord("A") + i) for i, s in enumerate(steps)}
        marks = "".join(key.get(n, " ") if n else " " for n in acct.get("bottleneck", []))
        out.append(f"    {'bottleneck'.ljust(w)} |{marks}|  " + ", ".join(f"{k}={s}" for s, k in key.items()))
    if out:
        out.insert(0, f"run {manifest.get('run_id', '?')}: stage accounting")
    return out


def html_section(manifest: dict) -> str:
    """The run's stage accounting as one <section> (empty string when the manifest has none)."""
    e = H.escape
    parts: list[str] = []
    for stage, entry in manifest.get("stages", {}).items():
        acct = entry.get("accounting") or {}
        if not acct.get("steps"):
            continue
        steps = acct["steps"]
        parts.append(f"<h3>{e(stage)} <small>{acct['wall_s']:.1f}s on Ray</small></h3><table class=acct><tr>"
                     + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr>")
        for s, v in steps.items():
            parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in _row(s, v)) + "</tr>")
        parts.append("</table>" + _svg_timeline(steps, acct.get("bottleneck", []), acct["bin_s"]))
    if not parts:
        return ""
    return (f"<section id=run-accounting><h2>Stage accounting: run {e(str(manifest.get('run_id', '?')))}</h2>"
            "<p>Per step: its workers' busy time and utilisation, how long rows queued for it, throughput, and "
            "the share of time it was the bottleneck (its workers the busiest). Timeline: darker = busier; "
            "a red bar marks the bottleneck step of each moment.</p>" + "".join(parts) + "</section>")


def _svg_timeline(steps: dict, neck: list, bin_s: float) -> str:
    names = list(steps)
    bins = max((len(v["timeline"]) for v in steps.values()), default=0)
    label, cell, rowh = 110, 8, 16
    width, height = label + bins * cell + 4, rowh * len(names) + 18
    out = [f"<svg class=timeline width={width} height={height} xmlns='http://www.w3.org/2000/svg'>"]
    for i, s in enumerate(names):
        y = i * rowh
        out.append(f"<text x=0 y={y + 12} font-size=11>{H.escape(s)}</text>")
        for b, u in enumerate(steps[s]["timeline"]):
            x = label + b * cell
            out.append(f"<rect x={x} y={y + 2} width={cell - 1} height={rowh - 4} fill='#1565c0' "
                       f"fill-opacity='{max(u, 0.04):.2f}'><title>{H.escape(s)} t={b * bin_s:.1f}s: "
                       f"{100 * u:.0f}% busy</title></rect>")
            if b < len(neck) and neck[b] == s:
                out.append(f"<rect x={x} y={y + rowh - 3} width={cell - 1} height=2 fill='#d32f2f'/>")
    out.append(f"<text x={label} y={height - 3} font-size=10>0s</text><text x={width - 40} y={height - 3} "
               f"font-size=10>{bins * bin_s:.1f}s</text></svg>")
    return "".join(out)
