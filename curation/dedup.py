"""Dedup stage: near-duplicate clips among those the filter kept, one kept per duplicate group.

    python -m vidcurate run pipelines.yaml --stage dedup

scores (passed) ─► pHash step (Ray tasks, CPU: a few frames per clip, cached in <root>/dedup/phash/)
    ─► partition (driver: k-means on a seeded sample, every clip to its nearest centroid)
    ─► clusters (Ray tasks, in parallel: links inside each cluster, its border guests included)
    ─► groups (driver: connected components of all links, the kept clip) ─► <root>/dedup/part-*.parquet

Two signals (`dedup.signals`): `phash` (model-free, 64 bits per frame at `phash_frames` evenly spaced
positions: re-encodes, rescales, crops by a few pixels) and `embedding` (the mean CLIP embedding the
filter stage stored: semantic near-duplicates). Two clips are linked when the mean Hamming distance of
their frame hashes is at most `phash_max_distance` bits of 64, or their embedding cosine is at least
`embedding_min_similarity`. Groups are the connected components of the links. As in Cosmos-Curate and
NeMo Curator, links are only searched inside a k-means cluster (of embeddings; of the hash bits when
only phash is used), so the cost is sum(cluster size^2) rather than N^2. A clip near a border is also a
guest of the neighbouring clusters it could have a link in (`partition`: the band is exact, only capped
by `border_clusters`), so a pair split by a border is still found; links are then joined across clusters
(bench/dedup.py measures recall, time and memory against the exact search and the band-less one). The
kept clip of a group: highest `keep_by` score (aesthetic), then the longest, then the smallest clip_id. Same inputs and seed give the same groups; a re-run recomputes them whole
(hashes are reused) and replaces the table.
"""
from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from curation import tables
from curation.schema import Resources, Step, Strict, move_key, step_resources
from curation.stage import Stage, StageResources
from curation.storage import Storage
from curation.table_stage import TableStage, execute

DEDUP = pa.schema([
    ("clip_id", pa.string()),        # every clip that passed the filter
    ("cluster", pa.int32()),         # k-means partition the clip belongs to (its nearest centroid)
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


class DedupConfig(Strict):
    """The `dedup:` section: near-duplicate removal after the filter stage."""

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
    hash: Step = Step(resources=Resources(num_cpus=1, batch_size=4))  # pHash step: Ray tasks, each decodes batch_size clips
    # each clip is also compared in up to this many next-nearest clusters whose border band it lies in
    # (0: its own cluster only, pairs split by a k-means border are lost)
    border_clusters: int = Field(2, ge=0)
    # width of that band as a share of the exact one (1.0: no linked pair is lost to a border, but in high
    # dimensions most clips are guests; a link's difference rarely points across the border: at 1M clips
    # 0.05 kept planted recall 0.9986 at 0.42 guests per clip, 0.1 gave 0.9988 at 0.8: bench/dedup.py)
    border_band: float = Field(0.05, gt=0, le=1)
    # link step: clusters are packed by cost into `workers` Ray tasks of num_cpus each (workers null: one
    # task per cluster, as many at once as the CPUs allow)
    link: Step = Step(resources=Resources(num_cpus=1, workers=16))

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:  # the keys of the previous release, with a warning naming the new one
        old = {"cluster_cpus": ("num_cpus", 1.0), "cluster_tasks": ("workers", 16)}  # old key -> new field, old default
        if not isinstance(data, dict) or not set(old) & set(data):
            return step_resources(data, "dedup", ("hash", "link"))
        for key, (name, _) in old.items():
            data = move_key(data, "dedup", key, f"link.resources.{name}")
        res = data["link"]["resources"]
        if isinstance(res, dict):
            for name, default in old.values():  # the old key left out keeps its old default
                res.setdefault(name, default)
        return step_resources(data, "dedup", ("hash", "link"))

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
    error_columns = ("error", "frames")  # failed() reads both: a hash of another phash_frames is redone

    def __init__(self, storage: "object", clips: list[dict], cfg: DedupConfig) -> None:
        super().__init__(storage, "dedup/phash", PHASH, key="clip_id")
        self.clips, self.cfg = clips, cfg

    def items(self) -> list[dict]:
        return [{"clip_id": c["clip_id"], "path": c["path"], "frames": c["frames"]} for c in self.clips]

    def steps(self) -> list[Stage]:
        return [HashStage(self.storage.root, self.cfg.phash_frames, StageResources.from_config(self.cfg.hash.resources))]

    def failed(self, row: dict) -> bool:
        # a hash made with another phash_frames is no hash of this run (the clip is hashed again)
        return row.get("error") is not None or row.get("frames") != self.cfg.phash_frames


def hash_clips(storage: "object", clips: list[dict], cfg: DedupConfig, local: bool,
               progress: bool, ctx: "object" = None) -> tuple[dict[str, bytes], list[str]]:
    """pHashes of `clips` (clip_id -> bytes) and the hashing errors; only clips not cached with the same
    frame count are decoded."""
    result = execute(PhashTable(storage, clips, cfg), local=local, progress=progress, ctx=ctx)
    t = tables.read_table(storage, "dedup/phash", PHASH, key="clip_id")
    have = {c: h for c, h, n, e in zip(*(t.column(k).to_pylist() for k in ("clip_id", "phash", "frames", "error")))
            if e is None and n == cfg.phash_frames}
    return have, result.errors


# ------------------------------------------------------------------------------------- partition ---

@dataclass
class Partition:
    """Where every clip is searched: its home cluster, and the neighbouring clusters it is a guest of."""

    home: np.ndarray          # (N,) int32: nearest centroid (the `cluster` column)
    guest: np.ndarray         # (G,) int64: clip index of each guest entry
    guest_cluster: np.ndarray  # (G,) int32: the cluster that clip is a guest of
    k: int                    # clusters


def n_clusters(n: int, cfg: DedupConfig) -> int:
    k = cfg.clusters or max(1, int(round(n / cfg.cluster_size)))
    return max(1, min(k, n, cfg.kmeans_sample))


def link_radius(cfg: DedupConfig, phash_only: bool) -> float:
    """Largest distance between two linked unit feature vectors: cosine >= t <=> |a - b| <= sqrt(2 - 2t).
    pHash signs / sqrt(bits): linked at mean distance <= d bits of 64 <=> cosine >= 1 - d / 32."""
    t = 1 - cfg.phash_max_distance / 32 if phash_only else cfg.embedding_min_similarity
    return float(np.sqrt(max(0.0, 2 - 2 * t)))


def centroids(x: np.ndarray, k: int, cfg: DedupConfig) -> np.ndarray:
    """(k, D) unit centroids of k-means fit on a seeded sample of x (L2-normalised float32 rows)."""
    rng = np.random.default_rng(cfg.seed)
    sample = x[np.sort(rng.choice(len(x), min(len(x), cfg.kmeans_sample), replace=False))]
    if cfg.backend == "faiss":
        import faiss

        km = faiss.Kmeans(x.shape[1], k, niter=cfg.kmeans_iters, seed=cfg.seed, spherical=True,
                          max_points_per_centroid=max(256, len(sample) // k + 1), verbose=False)
        km.train(np.ascontiguousarray(sample))
        c = km.centroids
    else:
        from sklearn.cluster import KMeans

        c = KMeans(n_clusters=k, n_init=1, max_iter=cfg.kmeans_iters, random_state=cfg.seed).fit(sample).cluster_centers_
    c = np.asarray(c, np.float32)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def partition(x: np.ndarray, k: int, cfg: DedupConfig, radius: float, block: int = 8192) -> Partition:
    """Home cluster of every row of x (nearest unit centroid) and its guest clusters: the clusters C among
    its `border_clusters` next nearest with cos(x, home) - cos(x, C) <= border_band * radius * |home - C| / 2.

    Why that band is exact at border_band 1: for linked a, b (|a - b| <= radius) with homes A != B, the two gaps
    (a.A - a.B) + (b.B - b.A) = (a - b).(A - B) <= radius * |A - B|, so one of them is at most half of
    that: a is a guest of B or b a guest of A, and the pair is compared there. Only the cap on the
    neighbours looked at can lose a pair."""
    if k == 1:
        return Partition(np.zeros(len(x), np.int32), np.zeros(0, np.int64), np.zeros(0, np.int32), 1)
    c = centroids(x, k, cfg)
    m = min(k, 1 + cfg.border_clusters)
    gram = c @ c.T  # |A - C| = sqrt(2 - 2 A.C) for unit centroids
    home = np.empty(len(x), np.int32)
    guests, guest_cl = [], []
    for s in range(0, len(x), block):  # blocks: the (block, k) similarity matrix stays small
        sim = x[s:s + block] @ c.T
        top = np.argpartition(-sim, m - 1, axis=1)[:, :m] if m < k else np.tile(np.arange(k), (len(sim), 1))
        ts = np.take_along_axis(sim, top, 1)
        o = np.argsort(-ts, axis=1, kind="stable")
        top, ts = np.take_along_axis(top, o, 1), np.take_along_axis(ts, o, 1)
        home[s:s + len(sim)] = top[:, 0]
        if m > 1:
            dist = np.sqrt(np.maximum(0, 2 - 2 * gram[top[:, :1], top[:, 1:]]))
            r, j = np.nonzero(ts[:, :1] - ts[:, 1:] <= cfg.border_band * radius * dist / 2 + 1e-6)
            guests.append(r.astype(np.int64) + s)
            guest_cl.append(top[r, j + 1].astype(np.int32))
    cat = (lambda a, t: np.concatenate(a) if a else np.zeros(0, t))
    return Partition(home, cat(guests, np.int64), cat(guest_cl, np.int32), k)


def cluster_inputs(part: Partition) -> list[dict]:
    """One dict per non-empty cluster: "id", "members" (clip indices: homes first, then guests) and "homes"
    (how many). The feature rows stay in one shared array (`run_clusters`): no copy per cluster in advance."""
    order = np.argsort(part.home, kind="stable")
    hb = np.searchsorted(part.home[order], np.arange(part.k + 1))
    gorder = np.argsort(part.guest_cluster, kind="stable")
    gb = np.searchsorted(part.guest_cluster[gorder], np.arange(part.k + 1))
    out = []
    for c in range(part.k):
        homes = order[hb[c]:hb[c + 1]]
        if len(homes):
            m = np.concatenate([homes, part.guest[gorder[gb[c]:gb[c + 1]]]]).astype(np.int64)
            out.append({"id": c, "members": m, "homes": len(homes)})
    return out


# ------------------------------------------------------------------------------ inside a cluster ---

def pairs(x: np.ndarray, homes: int, thr: float, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) with x_i . x_j >= thr where i is one of the first `homes` rows: home-home and
    home-guest pairs (guest-guest pairs belong to other clusters), in row blocks of the upper triangle
    (memory: block x n floats)."""
    ii, jj = [], []
    for s in range(0, homes, block):
        sim = x[s:min(homes, s + block)] @ x[s:].T
        i, j = np.nonzero(sim >= thr)
        keep = j > i
        ii.append(i[keep] + s)
        jj.append(j[keep] + s)
    return (np.concatenate(ii), np.concatenate(jj)) if ii else (np.zeros(0, np.int64), np.zeros(0, np.int64))


def links(x: np.ndarray, thr: float, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of x with x_i . x_j >= thr (the exact all-pairs search)."""
    return pairs(x, len(x), thr, block)


def cluster_links(c: dict, data: dict, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """Links of one cluster (see cluster_inputs) as clip-index pairs, by every signal; `data` holds every
    clip's "emb", "signs", "has_hash" (None for an unused signal)."""
    edges, m = [], c["members"]
    if data["emb"] is not None:
        edges.append(pairs(data["emb"][m], c["homes"], cfg.embedding_min_similarity))
    if data["signs"] is not None:
        signs = data["signs"][m]
        bits = signs.shape[1]
        # a.b = bits - 2 * Hamming; mean distance per 64-bit frame hash <= max  <=>  a.b >= bits - 2 * max * frames
        i, j = pairs(signs, c["homes"], bits - 2 * cfg.phash_max_distance * bits / 64 - 1e-3)
        ok = data["has_hash"][m[i]] & data["has_hash"][m[j]]
        edges.append((i[ok], j[ok]))
    i = np.concatenate([e[0] for e in edges])
    j = np.concatenate([e[1] for e in edges])
    return c["members"][i], c["members"][j]


def clusters_links(chunk: list[dict], data: dict, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """One Ray task: the links of several clusters, one after another."""
    ls = [cluster_links(c, data, cfg) for c in chunk]
    return np.concatenate([x[0] for x in ls]), np.concatenate([x[1] for x in ls])


def pack_clusters(clusters: list[dict], tasks: int) -> list[list[dict]]:
    """Clusters into at most `tasks` chunks of similar cost (homes x members), largest first."""
    chunks: list[list[dict]] = [[] for _ in range(min(tasks, len(clusters)))]
    cost = [0] * len(chunks)
    for c in sorted(clusters, key=lambda c: -c["homes"] * len(c["members"])):
        i = int(np.argmin(cost))
        chunks[i].append(c)
        cost[i] += c["homes"] * len(c["members"])
    return [ch for ch in chunks if ch]


def find_links(feats: np.ndarray, emb: np.ndarray | None, signs: np.ndarray | None, has_hash: np.ndarray | None,
               cfg: DedupConfig, local: bool) -> tuple[Partition, np.ndarray, np.ndarray, dict]:
    """Partition by `feats`, then every cluster's links (Ray tasks, or this process). Returns the partition,
    the linked clip-index pairs and stats (seconds per part, guests, cluster sizes)."""
    t0 = time.perf_counter()
    part = partition(feats, n_clusters(len(feats), cfg), cfg, link_radius(cfg, emb is None))
    t1 = time.perf_counter()
    clusters = cluster_inputs(part)
    i, j = run_clusters(clusters, {"emb": emb, "signs": signs, "has_hash": has_hash}, cfg, local)
    sizes = [c["homes"] for c in clusters]
    return part, i, j, {"partition_s": t1 - t0, "search_s": time.perf_counter() - t1, "clusters": len(clusters),
                        "guests": len(part.guest), "max_cluster": max(sizes), "mean_cluster": float(np.mean(sizes))}


def kept_of(n: int, i: np.ndarray, j: np.ndarray, score: np.ndarray, length: np.ndarray) -> np.ndarray:
    """(n,) index of the kept clip of every clip's group (the connected component of the links). Keep rule:
    highest score (NaN last), then longest, then the smallest index (clips are in clip_id order)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    _, label = connected_components(coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n)), directed=False)
    order = np.lexsort((np.arange(n), -length, -np.nan_to_num(score, nan=-np.inf)))
    first = np.empty(label.max() + 1 if n else 0, np.int64)
    first[label[order[::-1]]] = order[::-1]  # the last write wins: the first clip of each group in keep order
    return first[label]


def relation(m: int, k: int, emb: np.ndarray | None, signs: np.ndarray | None, has_hash: np.ndarray | None,
             cfg: DedupConfig) -> tuple[float | None, str]:
    """How clip m relates to the kept clip k of its group: a similarity and the direct links (or chain)."""
    via, sim = [], None
    if signs is not None and has_hash[m] and has_hash[k]:
        bits = signs.shape[1]
        dist = (bits - float(signs[m] @ signs[k])) / 2 / (bits / 64)  # mean bits per frame hash
        sim = 1 - dist / 64
        if dist <= cfg.phash_max_distance + 1e-6:
            via.append("phash")
    if emb is not None:
        sim = float(emb[m] @ emb[k])
        if sim >= cfg.embedding_min_similarity:
            via.append("embedding")
    return sim, "+".join(via) or "chain"


# ------------------------------------------------------------------------------------------- run ---

def candidates(storage: "object", cfg: DedupConfig) -> tuple[list[dict], np.ndarray | None]:
    """Clips that passed the filter (sorted by clip_id) with path, frames, length, score; and their embeddings."""
    parts = storage.list("scores", ".parquet")
    if not parts:
        raise ValueError(f"{storage.uri('scores')}: no scores table (run the filter stage before dedup)")
    want = ["clip_id", "passed", "error"] + (["clip_embedding"] if "embedding" in cfg.signals else [])
    ts = []
    for p in parts:
        t = tables.read_part(storage, p, want + ([cfg.keep_by] if cfg.keep_by else []))  # only the columns it has
        if t is not None:  # a rotten part is quarantined (its clips are scored again by the next filter run)
            ts.append(t)
    if not ts:
        raise ValueError(f"{storage.uri('scores')}: every scores part was unreadable (quarantined): run the filter "
                         "stage again")
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


def dedup(storage: "object", cfg: DedupConfig, local: bool = False, progress: bool = True,
          ctx: "object" = None) -> dict:
    """Find the duplicate groups of the kept clips and write the dedup table; returns counts (and
    `errors`: clips that could not be hashed)."""
    t0 = time.time()
    clips, emb = candidates(storage, cfg)
    counts = {"clips": len(clips), "clusters": 0, "groups": 0, "duplicates": 0, "hash_errors": 0}
    errors: list[str] = []
    signs = has_hash = None
    if "phash" in cfg.signals and clips:
        hashes, errors = hash_clips(storage, clips, cfg, local, progress, ctx)
        has_hash = np.array([c["clip_id"] in hashes for c in clips])
        blank = bytes(8 * cfg.phash_frames)
        from curation.phash import as_signs

        packed = np.frombuffer(b"".join(hashes.get(c["clip_id"], blank) for c in clips), np.uint8)
        signs = as_signs(packed.reshape(len(clips), cfg.phash_frames, 8))
        counts["hash_errors"] = int((~has_hash).sum())
    table = pa.Table.from_pylist([], schema=DEDUP)
    if clips:
        feats = emb if emb is not None else signs / np.sqrt(signs.shape[1])
        part, i, j, info = find_links(feats, emb, signs, has_hash, cfg, local)
        score = np.array([np.nan if c["score"] is None else c["score"] for c in clips], np.float64)
        kept = kept_of(len(clips), i, j, score, np.array([c["length"] for c in clips], np.float64))
        table = dedup_table([c["clip_id"] for c in clips], part.home, kept, emb, signs, has_hash, cfg)
        counts.update(clusters=info["clusters"], guests=info["guests"])
    dup = np.nonzero(~np.asarray(table.column("kept").to_numpy(zero_copy_only=False), bool))[0]
    counts["duplicates"] = len(dup)
    counts["groups"] = len(set(table.column("group").take(pa.array(dup)).to_pylist()))
    replace_table(storage, table)
    counts["seconds"] = round(time.time() - t0, 3)
    counts["errors"] = errors
    return counts


def dedup_table(ids: list[str], home: np.ndarray, kept: np.ndarray, emb: np.ndarray | None,
                signs: np.ndarray | None, has_hash: np.ndarray | None, cfg: DedupConfig) -> pa.Table:
    """The dedup table in clip order, built by columns (no dict per clip: a million rows stay small)."""
    n = len(ids)
    sim: list[float | None] = [None] * n
    method: list[str | None] = [None] * n
    dup_of: list[str | None] = [None] * n
    for m in np.nonzero(kept != np.arange(n))[0]:
        sim[m], method[m] = relation(int(m), int(kept[m]), emb, signs, has_hash, cfg)
        dup_of[m] = ids[kept[m]]
    ids_a = pa.array(ids, pa.string())
    return pa.table({"clip_id": ids_a, "cluster": pa.array(home, pa.int32()), "group": ids_a.take(pa.array(kept)),
                     "duplicate_of": pa.array(dup_of, pa.string()), "similarity": pa.array(sim, pa.float32()),
                     "method": pa.array(method, pa.string()), "kept": pa.array(kept == np.arange(n))}, schema=DEDUP)


def run_clusters(clusters: list[dict], data: dict, cfg: DedupConfig, local: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every cluster's links: Ray tasks in parallel (packed by cost; the features put in the object store
    once and read there without a copy), or in this process."""
    chunks = pack_clusters(clusters, cfg.link.resources.workers or len(clusters))
    if local:
        out = [clusters_links(ch, data, cfg) for ch in chunks]
    else:
        import ray

        task = ray.remote(num_cpus=cfg.link.resources.num_cpus)(clusters_links)
        ref = ray.put(data)
        out = ray.get([task.remote(ch, ref, cfg) for ch in chunks])
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])


def replace_table(storage: "object", table: pa.Table) -> None:
    """Write the new table (one part per 1M rows), then remove the parts of earlier runs."""
    old = storage.list("dedup", ".parquet")
    for s in range(0, table.num_rows, 1_000_000):
        tables.write_part(storage, "dedup", table.slice(s, 1_000_000), DEDUP)
    for p in old:
        storage.delete(p)


def read_dedup(storage: "object") -> pa.Table:
    """The dedup table (empty when the stage has not run)."""
    return tables.read_table(storage, "dedup", DEDUP, key="clip_id")


def run(cfg: "object", ctx: "object") -> dict:
    """Stage entry point (curation.pipeline)."""
    counts = dedup(ctx.storage, cfg.dedup, progress=cfg.ray.progress, ctx=ctx)
    ctx.stages.setdefault("dedup", {})["errors"] = counts.pop("errors")
    print(f"[dedup] {counts['duplicates']} duplicates in {counts['groups']} groups among {counts['clips']} kept "
          f"clips ({counts['clusters']} clusters)", file=sys.stderr)
    return counts
