"""What a flipped bit in a Parquet part does, with and without page checksums (docs/faults.md).

    .venv/bin/python bench/parquet_rot.py [--trials 400] [--rows 300]

A part like the videos table's is written as curation.tables.write_part writes it (zstd), once without and
once with page checksums; each trial flips one random bit of a copy and reads it back with checksum
verification on. A trial ends as "error" (the reader refuses the part: it is quarantined), "silent"
(it reads, with different values: wrong rows would be trusted), or "unaffected" (the same table).
"""
from __future__ import annotations

import argparse
import io
import random

import pyarrow as pa
import pyarrow.parquet as pq


def trial_counts(table: pa.Table, checksum: bool, trials: int, seed: int = 0) -> dict[str, int]:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_page_checksum=checksum)
    data = buf.getvalue()
    out = {"error": 0, "silent": 0, "unaffected": 0}
    rng = random.Random(seed)
    for _ in range(trials):
        b = bytearray(data)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        try:
            got = pq.ParquetFile(io.BytesIO(bytes(b)), page_checksum_verification=True).read()
            out["unaffected" if got.equals(table) else "silent"] += 1
        except (OSError, pa.ArrowException):
            out["error"] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=400)
    ap.add_argument("--rows", type=int, default=300)
    a = ap.parse_args()
    t = pa.table({"video_id": [f"{i:016x}" for i in range(a.rows)], "frames": list(range(a.rows)),
                  "fps": [24.0 + i % 7 for i in range(a.rows)], "error": [None] * a.rows})
    for checksum in (False, True):
        c = trial_counts(t, checksum, a.trials)
        share = {k: f"{100 * v / a.trials:.1f}%" for k, v in c.items()}
        print(f"page checksums {'on ' if checksum else 'off'}: {share}  ({a.trials} single-bit flips, pyarrow "
              f"{pa.__version__})")


if __name__ == "__main__":
    main()
