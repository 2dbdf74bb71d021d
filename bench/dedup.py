"""Dedup benchmark: the stage's k-means-partitioned search vs a brute-force exact search.

    .venv/bin/python bench/dedup.py                    # 1M embeddings, 256 dims, planted duplicates
    .venv/bin/python bench/dedup.py --n 200000 --subset 10000 --topics 4000 --backends faiss,sklearn

Synthetic embeddings shaped like CLIP's: `topics` unit centres, every clip near one (unrelated clips of a
topic have cosine ~0.5), and `dup_share` of the clips get one or two planted near-copies (cosine ~0.99).
For each k-means backend (faiss, scikit-learn) the stage's own code runs in this process
(curation.dedup.find_links: k-means partition with border guests, every cluster's links one after another
(on Ray the clusters run in parallel), groups over all links); then an exact search (every pair, blocked matmul) runs on a subset of `subset` clips, and
the same partitioned search on that subset. The peer of the same run is main's search before the border
band (`before`: each clip in its nearest cluster only), run interleaved with ours. Printed: recall and precision of the planted pairs (a pair is
found when both clips end in one group), time, peak memory (RSS above the start of the step), and the
speed-up of the partitioned search over the exact one (measured on the subset, and extrapolated to N:
exact search costs N^2).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def embeddings(n: int, dim: int, topics: int, dup_share: float, seed: int):
    """(x (N, dim) float32 unit rows, family (N,) int: clips with one family id are planted copies)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_orig = int(n / (1 + 1.5 * dup_share))
    centres = rng.normal(size=(topics, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n_orig, 65536):  # chunks: the temporaries stay small
        e = min(n_orig, s + 65536)
        v = rng.normal(size=(e - s, dim)).astype(np.float32) / np.sqrt(dim)
        x[s:e] = centres[rng.integers(0, topics, e - s)] + v
    family = np.arange(n, dtype=np.int64)
    i = n_orig
    while i < n:  # copies of random originals (some get two)
        src = int(rng.integers(0, n_orig))
        x[i] = x[src] + rng.normal(size=dim).astype(np.float32) * (0.12 / np.sqrt(dim))
        family[i] = src
        i += 1
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, family


class PeakRSS:
    """Peak resident memory above the value at entry, sampled every 10 ms (numpy, faiss, BLAS alike)."""

    def __enter__(self) -> "PeakRSS":
        import psutil

        self.proc, self.stop = psutil.Process(), False
        self.base = self.peak = self.proc.memory_info().rss
        self.t = threading.Thread(target=self._poll, daemon=True)
        self.t.start()
        return self

    def _poll(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        self.stop = True
        self.t.join()

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def quality(labels, family) -> tuple[float, float, int]:
    """(recall of planted pairs, precision of all same-group pairs, groups with duplicates)."""
    import numpy as np

    fam_of = {}
    planted = found = 0
    for f in np.unique(family[family != np.arange(len(family))]):
        fam_of[int(f)] = np.nonzero(family == f)[0]  # the original (family[f] == f) and its copies
    for members in fam_of.values():  # pairs inside a planted family, found when they share a label
        lab = labels[members]
        planted += len(members) * (len(members) - 1) // 2
        _, c = np.unique(lab, return_counts=True)
        found += int((c * (c - 1) // 2).sum())
    _, sizes = np.unique(labels, return_counts=True)
    grouped_pairs = int((sizes * (sizes - 1) // 2).sum())
    return found / max(planted, 1), found / max(grouped_pairs, 1), int((sizes > 1).sum())


def partitioned(x, cfg):
    """The stage's search: k-means partition with border guests, every cluster's links, groups over all
    links. Returns (labels, info)."""
    import numpy as np

    from curation.dedup import find_links, kept_of

    part, i, j, info = find_links(x, x, None, None, cfg, local=True)
    t0 = time.perf_counter()
    labels = kept_of(len(x), i, j, np.full(len(x), np.nan), np.ones(len(x)))
    info["search_s"] += time.perf_counter() - t0
    return labels, {**info, "k": part.k}


def before(x, cfg):
    """The search of main before the border band (commit 4afc5b4), kept here as the peer: every clip in
    its nearest cluster only, the full similarity matrix of each cluster, groups and a row per clip built
    cluster by cluster. Returns (labels, info)."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from curation.dedup import centroids, n_clusters

    t0 = time.perf_counter()
    k = n_clusters(len(x), cfg)
    c = centroids(x, k, cfg)
    label = np.concatenate([np.argmax(x[s:s + 65536] @ c.T, 1) for s in range(0, len(x), 65536)])
    t1 = time.perf_counter()
    order = np.argsort(label, kind="stable")
    bounds = np.searchsorted(label[order], np.arange(k + 1))
    groups = np.empty(len(x), np.int64)
    sizes = []
    for cl in range(k):
        m = order[bounds[cl]:bounds[cl + 1]]
        if not len(m):
            continue
        sizes.append(len(m))
        ii, jj = [], []
        for s in range(0, len(m), 2048):  # main's links(): block rows x the whole cluster
            i, j = np.nonzero(x[m[s:s + 2048]] @ x[m].T >= cfg.embedding_min_similarity)
            ii.append(i[j > i + s] + s)
            jj.append(j[j > i + s])
        i, j = np.concatenate(ii), np.concatenate(jj)
        _, lab = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(len(m),) * 2), directed=False)
        kept_of = {}
        for q in np.lexsort((np.array([str(v) for v in m]),)):
            kept_of.setdefault(int(lab[q]), int(q))
        rows = [{"clip_id": str(m[q]), "group": str(m[kept_of[int(lab[q])]])} for q in range(len(m))]
        groups[m] = [int(r["group"]) for r in rows]
    return groups, {"k": k, "partition_s": t1 - t0, "search_s": time.perf_counter() - t1, "max_cluster": max(sizes),
                    "mean_cluster": float(np.mean(sizes)), "guests": 0}


def exact(x, thr: float):
    """Brute force: every pair (blocked x @ x.T), groups = connected components."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from curation.dedup import links

    i, j = links(x, thr)
    return connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(len(x),) * 2), directed=False)[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000, help="embeddings")
    ap.add_argument("--dim", type=int, default=256, help="dimensions (CLIP ViT-L-14: 768; 256 keeps 1M at 1 GiB)")
    ap.add_argument("--topics", type=int, default=20000, help="topic centres the clips scatter around")
    ap.add_argument("--dup-share", type=float, default=0.02, help="share of clips with planted copies")
    ap.add_argument("--subset", type=int, default=20000, help="clips of the exact-search comparison")
    ap.add_argument("--backends", default="faiss", help="faiss,sklearn compares the k-means libraries "
                    "(scikit-learn's k-means is ~3.7x slower: leave it out of the default run)")
    ap.add_argument("--sample", type=int, default=None, help="dedup.kmeans_sample (default: the stage's)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS / faiss threads (same for every method)")
    ap.add_argument("--border-clusters", type=int, default=None, help="dedup.border_clusters (default: the stage's)")
    ap.add_argument("--border-band", type=float, default=None, help="dedup.border_band (default: the stage's)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of main's search and ours (interleaved)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = str(a.threads)
    import numpy as np

    from curation.dedup import DedupConfig

    base = DedupConfig(signals=["embedding"], seed=a.seed, **({"kmeans_sample": a.sample} if a.sample else {}),
                       **({"border_clusters": a.border_clusters} if a.border_clusters is not None else {}),
                       **({"border_band": a.border_band} if a.border_band is not None else {}))
    print(f"# dedup bench {time.strftime('%Y-%m-%d %H:%M')} | {platform.machine()}, {os.cpu_count()} CPUs "
          f"(load avg {os.getloadavg()[0]:.1f}), {a.threads} thread(s) | N={a.n:,} dim={a.dim} topics={a.topics} "
          f"dup_share={a.dup_share} | threshold cosine >= {base.embedding_min_similarity} | cluster_size "
          f"{base.cluster_size}, border_clusters {base.border_clusters}, border_band {base.border_band}, kmeans_sample {base.kmeans_sample}, iters {base.kmeans_iters}")
    t0 = time.perf_counter()
    x, family = embeddings(a.n, a.dim, a.topics, a.dup_share, a.seed)
    print(f"# data: {time.perf_counter() - t0:.1f} s, {x.nbytes / 2**20:.0f} MiB, "
          f"{int((family != np.arange(a.n)).sum()):,} planted copies")
    print("\n| method | clips | clusters (mean / max size) | time s | peak MiB | planted recall | pair precision |")
    print("|---|---|---|---|---|---|---|")
    full, ratios = {}, []
    for b in a.backends.split(","):
        if b == "faiss":
            import faiss

            faiss.omp_set_num_threads(a.threads)
        cfg = base.model_copy(update={"backend": b})
        for rep in range(a.repeats):  # main's search and ours, interleaved: the same load for both
            res = {}
            for name, fn in (("main: nearest cluster only", before), ("border band (ours)", partitioned)):
                with PeakRSS() as mem:
                    labels, info = fn(x, cfg)
                r, p, _ = quality(labels, family)
                t = info["partition_s"] + info["search_s"]
                res[name] = (t, mem.mib, r, p)
                print(f"| k-means ({b}) + {name} | {a.n:,} | {info['k']} ({info['mean_cluster']:.0f} / "
                      f"{info['max_cluster']}; {info['guests']:,} guests) | {t:.1f} (k-means "
                      f"{info['partition_s']:.1f}, search {info['search_s']:.1f}) | {mem.mib:.0f} | {r:.4f} | {p:.4f} |")
            (t0_, m0, _, _), (t1_, m1, r1, p1) = res.values()
            ratios.append((t1_ / t0_, m1 / max(m0, 1e-9), r1, p1))
            full[b] = t1_
    print("\nours / main, per repeat (time, peak memory): " + ", ".join(f"{t:.2f}x / {m:.2f}x" for t, m, _, _ in ratios)
          + f" | median time {np.median([q[0] for q in ratios]):.2f}x, memory {np.median([q[1] for q in ratios]):.2f}x"
          + f" | recall {ratios[-1][2]:.4f} (target >= 0.99), precision {ratios[-1][3]:.4f} (target 1.0) | "
          f"load avg {os.getloadavg()[0]:.1f}\n")
    print("| method | clips | clusters | time s | peak MiB | planted recall | pair precision |")
    print("|---|---|---|---|---|---|---|")
    # Subset: whole planted families, so every planted pair of the subset is complete.
    rng = np.random.default_rng(a.seed + 1)
    size = np.bincount(family, minlength=a.n)  # members per family (0 for copies)
    roots = rng.permutation(np.nonzero(size)[0])
    roots = np.sort(roots[:np.searchsorted(np.cumsum(size[roots]), a.subset, side="right")])
    sub = np.nonzero(np.isin(family, roots))[0]
    xs, fs = x[sub], np.searchsorted(sub, family[sub])  # family ids as subset positions
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        lab = exact(xs, base.embedding_min_similarity)
        t_exact = time.perf_counter() - t0
    r, p, _ = quality(lab, fs)
    print(f"| exact (all pairs) | {len(sub):,} | - | {t_exact:.1f} | {mem.mib:.0f} | {r:.4f} | {p:.4f} |")
    b0 = a.backends.split(",")[0]
    cfg = base.model_copy(update={"backend": b0, "cluster_size": base.cluster_size})
    with PeakRSS() as mem:
        lab2, info = partitioned(xs, cfg)
    t_sub = info["partition_s"] + info["search_s"]
    r2, p2, _ = quality(lab2, fs)
    print(f"| k-means ({b0}) + border band (ours) | {len(sub):,} | {info['k']} | {t_sub:.1f} | {mem.mib:.0f} | "
          f"{r2:.4f} | {p2:.4f} |")
    scale = (a.n / len(sub)) ** 2
    print(f"\nspeed-up over exact search: {t_exact / t_sub:.1f}x on {len(sub):,} clips (same run); at N={a.n:,} exact "
          f"search would take ~{t_exact * scale:.0f} s (x(N/subset)^2 = {scale:.0f}): "
          + ", ".join(f"{b} {t_exact * scale / t:.0f}x" for b, t in full.items()))
    if len(full) == 2:
        f, s = full.get("faiss"), full.get("sklearn")
        print(f"k-means backends at N={a.n:,}: sklearn / faiss time = {s / f:.2f}x (recall is printed above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
