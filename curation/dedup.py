"""Dedup stage: near-duplicate clips among those the filter kept, one kept per duplicate group.

    python -m curation run pipelines.yaml --stage dedup

scores (passed) ─► pHash step (Ray tasks, CPU: a few frames per clip, cached in <root>/dedup/phash/)
    ─► partition (driver: k-means on a seeded sample, every clip to its nearest centroid)
    ─► clusters (Ray tasks, in parallel: pairwise similarity inside each cluster, groups, the kept clip)
    ─► <root>/dedup/part-*.parquet (one row per clip)

Two signals (`dedup.signals`): `phash` (model-free, 64 bits per frame at `phash_frames` evenly spaced
positions: re-encodes, rescales, crops by a few pixels) and `embedding` (the mean CLIP embedding the
filter stage stored: semantic near-duplicates). Two clips are linked when the mean Hamming distance of
their frame hashes is at most `phash_max_distance` bits of 64, or their embedding cosine is at least
`embedding_min_similarity`. Groups are the connected components of the links. As in Cosmos-Curate and
NeMo Curator, links are only searched inside a k-means cluster (of embeddings; of the hash bits when
only phash is used), so the cost is sum(cluster size^2) rather than N^2 (bench/dedup.py measures the
recall this costs). The kept clip of a group: highest `keep_by` score (aesthetic), then the longest,
then the smallest clip_id. Same inputs and seed give the same groups; a re-run recomputes them whole
(hashes are reused) and replaces the table.
"""
from __future__ import annotations

import importlib.util
import sys
import time
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation import tables
from curation.schema import Resources
from curation.stage import Stage, StageResources
from curation.table_stage import TableStage, execute

DEDUP = pa.schema([
    ("clip_id", pa.string()),        # every clip that passed the filter
    ("cluster", pa.int32()),         # k-means partition the clip was compared in
    ("group", pa.string()),          # clip_id of the kept clip of its duplicate group (its own id if unique)
    ("duplicate_of", pa.string()),   # the kept clip this one duplicates; null for kept clips
    ("similarity", pa.float32()),    # to the kept clip: embedding cosine (pHash similarity 1 - d/64 without embeddings)
    ("method", pa.string()),         # direct links to the kept clip: phash, embedding, phash+embedding, or chain
    ("kept", pa.bool_()),            # false: left out of the shards as a duplicate
])
PHASH = pa.schema([
    ("clip_id", pa.string()),
    ("phash", pa.binary()),          # phash_frames x 8 bytes (64 bits per frame)
    ("frames", pa.int32()),          # frames hashed (the phash_frames it was made with)
    ("error", pa.string()),          # why the clip could not be hashed (it is then compared by embedding only)
])


class DedupConfig(BaseModel):
    """The `dedup:` section: near-duplicate removal after the filter stage."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    signals: list[Literal["phash", "embedding"]] = Field(["phash", "embedding"], min_length=1)  # what links clips
    phash_frames: int = Field(5, ge=1, le=64)  # frames hashed per clip (centres of equal slices of the clip)
    # linked when the mean Hamming distance per 64-bit frame hash is <= this
    phash_max_distance: float = Field(10.0, ge=0, le=64)
    embedding_min_similarity: float = Field(0.95, gt=0, le=1)  # linked when the CLIP embedding cosine is >= this
    cluster_size: int = Field(1000, ge=2)  # k-means clusters = clips / cluster_size (rounded; 1 below 2x this)
    clusters: int | None = Field(None, ge=1)  # fixed number of clusters instead
    kmeans_sample: int = Field(100_000, ge=100)  # k-means is fit on a seeded sample of at most this many clips
    kmeans_iters: int = Field(20, ge=1)  # Lloyd iterations
    backend: Literal["faiss", "sklearn"] = "faiss"  # k-means library (bench/dedup.py: faiss is faster at equal recall)
    keep_by: str | None = "aesthetic_mean"  # scores column; the highest is kept (null: longest, then clip_id)
    seed: int = 0  # sample and k-means seed: same inputs + seed -> same groups
    hash: Resources = Resources(num_cpus=1, batch_size=4)  # pHash step: Ray tasks, each decodes batch_size clips
    cluster_cpus: float = Field(1.0, gt=0)  # CPUs per cluster task
    cluster_tasks: int = Field(16, ge=1)  # clusters are packed into at most this many Ray tasks

    @field_validator("backend")
    @classmethod
    def _installed(cls, v: str) -> str:
        module, package = {"faiss": ("faiss", "faiss-cpu"), "sklearn": ("sklearn", "scikit-learn")}[v]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"backend {v} needs the package {package} (pip install {package}), which is not installed")
        return v


# ------------------------------------------------------------------------------------------ pHash ---

class HashStage(Stage):
    """One clip row {"clip_id", "path", "frames"} -> its pHash row (decodes up to the last hashed frame)."""

    name = "dedup.phash"

    def __init__(self, root: str, frames: int, resources: StageResources | None = None) -> None:
        super().__init__(resources)
        self.root, self.frames = root, frames

    def setup(self) -> None:
        from curation.storage import Storage

        self.storage = Storage(self.root)

    def process_row(self, row: dict) -> list[dict]:
        from curation.phash import clip_hash

        h = clip_hash(self.storage.uri(row["path"]), row.get("frames"), self.frames)
        return [{"clip_id": row["clip_id"], "phash": h.tobytes(), "frames": self.frames, "error": None}]

    def error_rows(self, row: dict, message: str) -> list[dict]:
        return [{"clip_id": row["clip_id"], "phash": None, "frames": self.frames, "error": message}]


class PhashTable(TableStage):
    """The pHash step of dedup: candidate clips -> dedup/phash rows (cached: a clip hashed with the same
    frame count is not decoded again; errors are retried)."""

    name = "dedup"

    def __init__(self, storage: "object", clips: list[dict], cfg: DedupConfig) -> None:
        super().__init__(storage, "dedup/phash", PHASH, key="clip_id")
        self.clips, self.cfg = clips, cfg

    def items(self) -> list[dict]:
        return [{"clip_id": c["clip_id"], "path": c["path"], "frames": c["frames"]} for c in self.clips]

    def steps(self) -> list[Stage]:
        return [HashStage(self.storage.root, self.cfg.phash_frames, StageResources.from_config(self.cfg.hash))]

    def failed(self, row: dict) -> bool:
        # a hash made with another phash_frames is no hash of this run (the clip is hashed again)
        return row.get("error") is not None or row.get("frames") != self.cfg.phash_frames


def hash_clips(storage: "object", clips: list[dict], cfg: DedupConfig, local: bool,
               progress: bool) -> tuple[dict[str, bytes], list[str]]:
    """pHashes of `clips` (clip_id -> bytes) and the hashing errors; only clips not cached with the same
    frame count are decoded."""
    result = execute(PhashTable(storage, clips, cfg), local=local, progress=progress)
    t = tables.read_table(storage, "dedup/phash", PHASH, key="clip_id")
    have = {c: h for c, h, n, e in zip(*(t.column(k).to_pylist() for k in ("clip_id", "phash", "frames", "error")))
            if e is None and n == cfg.phash_frames}
    return have, result.errors


# ------------------------------------------------------------------------------------- partition ---

def n_clusters(n: int, cfg: DedupConfig) -> int:
    k = cfg.clusters or max(1, int(round(n / cfg.cluster_size)))
    return max(1, min(k, n, cfg.kmeans_sample))


def partition(x: np.ndarray, k: int, cfg: DedupConfig) -> np.ndarray:
    """Cluster of every row of x (L2-normalised float32): k-means fit on a seeded sample, nearest centroid."""
    if k == 1:
        return np.zeros(len(x), np.int32)
    rng = np.random.default_rng(cfg.seed)
    sample = x[np.sort(rng.choice(len(x), min(len(x), cfg.kmeans_sample), replace=False))]
    if cfg.backend == "faiss":
        import faiss

        km = faiss.Kmeans(x.shape[1], k, niter=cfg.kmeans_iters, seed=cfg.seed, spherical=True,
                          max_points_per_centroid=max(256, len(sample) // k + 1), verbose=False)
        km.train(np.ascontiguousarray(sample))
        return km.index.search(np.ascontiguousarray(x), 1)[1][:, 0].astype(np.int32)
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=1, max_iter=cfg.kmeans_iters, random_state=cfg.seed).fit(sample)
    return km.predict(x).astype(np.int32)


# ------------------------------------------------------------------------------ inside a cluster ---

def links(x: np.ndarray, thr: float, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) with x_i . x_j >= thr, in row blocks (memory: block x n floats)."""
    ii, jj = [], []
    for s in range(0, len(x), block):
        sim = x[s:s + block] @ x.T
        i, j = np.nonzero(sim >= thr)
        keep = j > i + s
        ii.append(i[keep] + s)
        jj.append(j[keep])
    return (np.concatenate(ii), np.concatenate(jj)) if ii else (np.zeros(0, int), np.zeros(0, int))


def dedup_cluster(c: dict, cfg: DedupConfig) -> list[dict]:
    """Rows of one cluster {"id", "ids", "emb" (n, D) | None, "signs" (n, B) +-1 | None, "has_hash",
    "score", "length"}."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n, ids = len(c["ids"]), c["ids"]
    edges = []
    if c["emb"] is not None:
        edges.append(links(c["emb"], cfg.embedding_min_similarity))
    if c["signs"] is not None:
        bits = c["signs"].shape[1]
        # a.b = bits - 2 * Hamming; mean distance per 64-bit frame hash <= max  <=>  a.b >= bits - 2 * max * frames
        i, j = links(c["signs"], bits - 2 * cfg.phash_max_distance * bits / 64 - 1e-3)
        ok = c["has_hash"][i] & c["has_hash"][j]
        edges.append((i[ok], j[ok]))
    i = np.concatenate([e[0] for e in edges])
    j = np.concatenate([e[1] for e in edges])
    _, label = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    # Keep rule: highest score (NaN last), then longest, then smallest clip_id.
    order = np.lexsort((np.array(ids), -c["length"], -np.nan_to_num(c["score"], nan=-np.inf)))
    kept_of: dict[int, int] = {}
    for m in order:
        kept_of.setdefault(int(label[m]), int(m))
    rows = []
    for m in range(n):
        k = kept_of[int(label[m])]
        row = {"clip_id": ids[m], "cluster": c["id"], "group": ids[k], "duplicate_of": None, "similarity": None,
               "method": None, "kept": m == k}
        if m != k:
            row.update(duplicate_of=ids[k], **_relation(c, m, k, cfg))
        rows.append(row)
    return rows


def _relation(c: dict, m: int, k: int, cfg: DedupConfig) -> dict:
    """How clip m relates to the kept clip k of its group: the direct links and a similarity."""
    via, sim = [], None
    if c["signs"] is not None and c["has_hash"][m] and c["has_hash"][k]:
        bits = c["signs"].shape[1]
        dist = (bits - float(c["signs"][m] @ c["signs"][k])) / 2 / (bits / 64)  # mean bits per frame hash
        sim = 1 - dist / 64
        if dist <= cfg.phash_max_distance + 1e-6:
            via.append("phash")
    if c["emb"] is not None:
        sim = float(c["emb"][m] @ c["emb"][k])
        if sim >= cfg.embedding_min_similarity:
            via.append("embedding")
    return {"similarity": sim, "method": "+".join(via) or "chain"}


def dedup_clusters(chunk: list[dict], cfg: DedupConfig) -> list[dict]:
    """One Ray task: several clusters, one after another."""
    return [r for c in chunk for r in dedup_cluster(c, cfg)]


def pack_clusters(clusters: list[dict], tasks: int) -> list[list[dict]]:
    """Clusters into at most `tasks` chunks of similar cost (n^2), largest first."""
    chunks: list[list[dict]] = [[] for _ in range(min(tasks, len(clusters)))]
    cost = [0] * len(chunks)
    for c in sorted(clusters, key=lambda c: -len(c["ids"])):
        i = int(np.argmin(cost))
        chunks[i].append(c)
        cost[i] += len(c["ids"]) ** 2
    return [ch for ch in chunks if ch]


# ------------------------------------------------------------------------------------------- run ---

def candidates(storage: "object", cfg: DedupConfig) -> tuple[list[dict], np.ndarray | None]:
    """Clips that passed the filter (sorted by clip_id) with path, frames, length, score; and their embeddings."""
    parts = storage.list("scores", ".parquet")
    if not parts:
        raise ValueError(f"{storage.uri('scores')}: no scores table (run the filter stage before dedup)")
    want = ["clip_id", "passed", "error"] + (["clip_embedding"] if "embedding" in cfg.signals else [])
    ts = []
    for p in parts:
        f = pq.ParquetFile(storage.fs.open_input_file(storage.path(p)))
        names = f.schema_arrow.names
        cols = [c for c in want + ([cfg.keep_by] if cfg.keep_by else []) if c in names]
        ts.append(f.read(columns=cols))
    s = tables.dedupe_last(pa.concat_tables(ts, promote_options="permissive"), "clip_id")
    if cfg.keep_by and cfg.keep_by not in s.column_names:
        raise ValueError(f"dedup.keep_by: the scores table has no column {cfg.keep_by!r} "
                         f"(columns: {', '.join(s.column_names)}); name one, or null to keep the longest clip")
    clips = {r["clip_id"]: r for r in tables.read_table(storage, "clips", tables.CLIPS).to_pylist()}
    rows = [r for r in s.to_pylist() if r["passed"] and not r["error"] and r["clip_id"] in clips]
    rows.sort(key=lambda r: r["clip_id"])
    out = [{"clip_id": r["clip_id"], "path": clips[r["clip_id"]]["path"], "frames": clips[r["clip_id"]]["frames"],
            "length": (clips[r["clip_id"]]["frames"] or 0) / (clips[r["clip_id"]]["fps"] or 1.0),
            "score": r.get(cfg.keep_by) if cfg.keep_by else None} for r in rows]
    if "embedding" not in cfg.signals:
        return out, None
    missing = [r["clip_id"] for r in rows if not r.get("clip_embedding")]
    if missing:
        raise ValueError(f"dedup.signals includes embedding, but {len(missing)} kept clips have no clip_embedding "
                         f"in the scores table (e.g. {missing[0]}): set filter.store_embedding: true with a CLIP "
                         "scorer and re-score, or dedup.signals: [phash]")
    emb = np.asarray([r["clip_embedding"] for r in rows], np.float32).reshape(len(rows), -1)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return out, emb


def dedup(storage: "object", cfg: DedupConfig, local: bool = False, progress: bool = True) -> dict:
    """Find the duplicate groups of the kept clips and write the dedup table; returns counts (and
    `errors`: clips that could not be hashed)."""
    t0 = time.time()
    clips, emb = candidates(storage, cfg)
    counts = {"clips": len(clips), "clusters": 0, "groups": 0, "duplicates": 0, "hash_errors": 0}
    errors: list[str] = []
    signs = has_hash = None
    if "phash" in cfg.signals and clips:
        hashes, errors = hash_clips(storage, clips, cfg, local, progress)
        has_hash = np.array([c["clip_id"] in hashes for c in clips])
        blank = bytes(8 * cfg.phash_frames)
        from curation.phash import as_signs

        packed = np.frombuffer(b"".join(hashes.get(c["clip_id"], blank) for c in clips), np.uint8)
        signs = as_signs(packed.reshape(len(clips), cfg.phash_frames, 8))
        counts["hash_errors"] = int((~has_hash).sum())
    rows: list[dict] = []
    if clips:
        feats = emb if emb is not None else signs / np.sqrt(signs.shape[1])
        label = partition(feats, n_clusters(len(clips), cfg), cfg)
        clusters = []
        for k in np.unique(label):
            m = np.nonzero(label == k)[0]
            clusters.append({"id": int(k), "ids": [clips[i]["clip_id"] for i in m],
                             "emb": None if emb is None else emb[m], "signs": None if signs is None else signs[m],
                             "has_hash": None if has_hash is None else has_hash[m],
                             "score": np.array([np.nan if clips[i]["score"] is None else clips[i]["score"] for i in m],
                                               np.float64),
                             "length": np.array([clips[i]["length"] for i in m], np.float64)})
        counts["clusters"] = len(clusters)
        rows = run_clusters(clusters, cfg, local)
    rows.sort(key=lambda r: r["clip_id"])
    counts["duplicates"] = sum(not r["kept"] for r in rows)
    counts["groups"] = len({r["group"] for r in rows if not r["kept"]})
    replace_table(storage, rows)
    counts["seconds"] = round(time.time() - t0, 3)
    counts["errors"] = errors
    return counts


def run_clusters(clusters: list[dict], cfg: DedupConfig, local: bool) -> list[dict]:
    """Every cluster's rows: Ray tasks in parallel (packed by cost), or in this process."""
    chunks = pack_clusters(clusters, cfg.cluster_tasks)
    if local:
        return [r for ch in chunks for r in dedup_clusters(ch, cfg)]
    import ray

    task = ray.remote(num_cpus=cfg.cluster_cpus)(dedup_clusters)
    refs = [task.remote(ch, cfg) for ch in chunks]
    return [r for rs in ray.get(refs) for r in rs]


def replace_table(storage: "object", rows: list[dict]) -> None:
    """Write the new table (one part per 1M rows), then remove the parts of earlier runs."""
    old = storage.list("dedup", ".parquet")
    for s in range(0, len(rows), 1_000_000):
        tables.write_part(storage, "dedup", rows[s:s + 1_000_000], DEDUP)
    for p in old:
        storage.delete(p)


def read_dedup(storage: "object") -> pa.Table:
    """The dedup table (empty when the stage has not run)."""
    return tables.read_table(storage, "dedup", DEDUP, key="clip_id")


def run(cfg: "object", ctx: "object") -> dict:
    """Stage entry point (curation.pipeline)."""
    counts = dedup(ctx.storage, cfg.dedup, progress=cfg.ray.progress)
    ctx.stages.setdefault("dedup", {})["errors"] = counts.pop("errors")
    print(f"[dedup] {counts['duplicates']} duplicates in {counts['groups']} groups among {counts['clips']} kept "
          f"clips ({counts['clusters']} clusters)", file=sys.stderr)
    return counts
