"""The select table in `inspect`: each quota dimension's distribution before and after the selection.

Before = every kept clip the select stage saw; after = the selected ones. Shares are of clips and of
hours, so a budget in hours and a quota in clips can both be read off. Only the select table is read
(it carries the columns the quotas saw).
"""
from __future__ import annotations

import html as H

import numpy as np
import pandas as pd

from curation.select import read_select
from curation.storage import Storage

DIMENSIONS = ("cluster", "camera_type", "video_id", "bucket")  # grouped columns of the select table
TOP = 8  # groups shown per dimension (largest before the selection)
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def distributions(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per dimension: clips and hours per group before/after, and each share of its total."""
    after = df[df["selected"]]
    out = {}
    for dim in DIMENSIONS:
        if df[dim].isna().all():
            continue
        rows = []
        for name, part in ((("before", df), ("after", after))):
            g = part.groupby(part[dim].astype(str), dropna=False)["duration_s"].agg(["size", "sum"])
            g.columns = [f"{name}_clips", f"{name}_hours"]
            g[f"{name}_hours"] /= 3600
            rows.append(g)
        t = pd.concat(rows, axis=1).fillna(0)
        for name in ("before", "after"):
            t[f"{name}_share"] = t[f"{name}_clips"] / max(1, t[f"{name}_clips"].sum())
        out[dim] = t.sort_values("before_clips", ascending=False)
    return out


def selection_report(storage: Storage) -> tuple[list[str], str]:
    """Terminal lines and an HTML section (both empty when the select stage has not run)."""
    t = read_select(storage)
    if not t.num_rows:
        return [], ""
    df = t.to_pandas()
    sel = df[df["selected"]]
    lines = [f"selection: {len(sel)} of {len(df)} kept clips ({sel['duration_s'].sum() / 3600:.3g} of "
             f"{df['duration_s'].sum() / 3600:.3g} h); not selected: "
             + (", ".join(f"{k} {v}" for k, v in df["reason"].value_counts().items()) or "none")]
    for col in ("score", "duration_s"):
        q = lambda s: " ".join(f"{v:.3g}" for v in np.nanquantile(s, QUANTILES)) if s.notna().any() else "-"  # noqa: E731
        lines.append(f"  {col:<10} quantiles {QUANTILES}: before {q(df[col])} | after {q(sel[col])}")
    parts = []
    for dim, d in distributions(df).items():
        top = d.head(TOP)
        lines.append(f"  {dim} ({len(d)} groups; share of clips before -> after): " + ", ".join(
            f"{k} {r.before_share:.1%}->{r.after_share:.1%}" for k, r in top.iterrows()))
        parts.append(_html_table(dim, top, len(d)))
    return lines, "<h3>Selection (before / after)</h3>" + H.escape(lines[0]) + "".join(parts)


def _html_table(dim: str, top: pd.DataFrame, groups: int) -> str:
    e = H.escape
    body = "".join(f"<tr><td class=l>{e(str(k))}</td><td>{int(r.before_clips)}</td><td>{r.before_share:.1%}</td>"
                   f"<td>{r.before_hours:.3g}</td><td>{int(r.after_clips)}</td><td>{r.after_share:.1%}</td>"
                   f"<td>{r.after_hours:.3g}</td></tr>" for k, r in top.iterrows())
    return (f"<p>{e(dim)}: {groups} groups, the {len(top)} largest</p><table><tr><th class=l>{e(dim)}</th>"
            "<th>clips before</th><th>share</th><th>hours</th><th>clips after</th><th>share</th><th>hours</th></tr>"
            f"{body}</table>")
