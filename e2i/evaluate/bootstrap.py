"""Cluster (item-level) percentile bootstrap for retrieval metrics, single and paired.

The captions of one item are not independent queries: when retrieval difficulty depends on the item,
resampling captions one by one treats 5 correlated draws as 5 independent ones and the interval comes
out too narrow. Here the resampling unit is the *cluster* (the item): a replicate draws C clusters
with replacement out of the C clusters that have queries and takes every query of each drawn cluster
(as many times as it was drawn). A replicate's statistic is the mean over all queries in it (the same
estimator as the point value: the mean over queries), and the median rank is the median of the
resampled multiset of ranks. Clusters of size one give the ordinary query-level bootstrap.

Pure numpy/scipy: no ray, no torch.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

MEMORY = 1 << 24  # elements of the (batch, clusters) work arrays per batch (~128 MB int64 at most)
BLOCK = 256  # sorted values per block of the two-level median search


def _clusters(clusters, q: int) -> tuple[np.ndarray, int]:
    """Cluster ids -> (0..C-1 codes (Q,), C)."""
    if clusters is None:
        return np.arange(q), q
    clusters = np.asarray(clusters)
    if clusters.shape != (q,):
        raise ValueError(f"clusters must be ({q},), got {clusters.shape}")
    uniq, code = np.unique(clusters, return_inverse=True)
    return code.reshape(-1), len(uniq)


def replicates(means: np.ndarray, medians: np.ndarray, clusters, n_boot: int, seed: int, batch: int = 50):
    """Bootstrap replicates over clusters.

    ``means`` (Q, S): per-query values whose mean is a statistic; ``medians`` (Q, R): per-query values
    whose median is one (ranks); ``clusters`` (Q,) or None (every query its own cluster).
    Returns (rep_means (n_boot, S), rep_medians (n_boot, R)); the same ``seed`` and clusters give the
    same resampled cluster sets, which is what makes a paired comparison paired.
    """
    q = means.shape[0]
    code, c = _clusters(clusters, q)
    sums = np.zeros((c, means.shape[1]))
    np.add.at(sums, code, means)  # (C, S) per-cluster sums
    sizes = np.bincount(code, minlength=c).astype(np.float64)  # (C,)
    columns = [_SortedColumn(medians[:, r], code, c) for r in range(medians.shape[1])]
    rng = np.random.default_rng(seed)
    batch = max(1, min(batch, MEMORY // max(q, 1)))
    rep_means, rep_medians = [], []
    for lo in range(0, n_boot, batch):
        b = min(batch, n_boot - lo)
        draws = rng.integers(0, c, size=(b, c))  # (b, C) drawn cluster ids
        w = np.bincount((draws + c * np.arange(b)[:, None]).ravel(), minlength=b * c).reshape(b, c)
        total = w @ sizes  # (b,) queries in each replicate
        rep_means.append((w @ sums) / total[:, None])
        cols = [col.median(w, total.astype(np.int64)) for col in columns]
        rep_medians.append(np.stack(cols, 1) if cols else np.zeros((b, 0)))
    return np.concatenate(rep_means), np.concatenate(rep_medians)


class _SortedColumn:
    """One column of per-query values, sorted, for the medians of weighted resamples.

    A replicate holds value i ``w[cluster(i)]`` times; its median (np.median's: the mean of the two
    middle values) is found in two levels: the replicate's weight per block of ``BLOCK`` sorted values
    (one sparse product, (b, C) @ (C, blocks)) locates the block of each middle position, and only
    that block is expanded into a cumulative count, so the work is b x (Q / BLOCK + BLOCK), not b x Q.
    """

    def __init__(self, values: np.ndarray, code: np.ndarray, c: int) -> None:
        order = np.argsort(values, kind="stable")
        self.vals, self.code = values[order], code[order]  # (Q,) ascending, cluster of each
        q = len(order)
        self.member = scipy.sparse.csr_matrix(  # (C, blocks): queries of each cluster per block
            (np.ones(q), (self.code, np.arange(q) // BLOCK)), shape=(c, -(-q // BLOCK)))

    def median(self, w: np.ndarray, total: np.ndarray) -> np.ndarray:
        """(b,) medians of the b replicates with cluster multiplicities ``w`` (b, C), sizes ``total``."""
        b, q = len(w), len(self.vals)
        cum_blocks = np.cumsum(np.asarray((self.member.T @ w.T).T), 1)  # (b, blocks) weight up to each block
        middle = []
        for p in ((total - 1) // 2, total // 2):  # 0-based positions of the middle pair
            blk = (cum_blocks <= p[:, None]).sum(1)  # (b,) the block that covers position p
            pos = blk[:, None] * BLOCK + np.arange(BLOCK)  # (b, BLOCK) value indices in that block
            inside = pos < q
            wts = np.where(inside, np.take_along_axis(w, self.code[np.minimum(pos, q - 1)], 1), 0)
            before = np.where(blk > 0, cum_blocks[np.arange(b), blk - 1], 0)  # weight before the block
            cum = before[:, None] + np.cumsum(wts, 1)  # (b, BLOCK)
            middle.append(self.vals[pos[np.arange(b), (cum <= p[:, None]).sum(1)]])
        return (middle[0] + middle[1]) / 2


def percentile_ci(reps: np.ndarray) -> np.ndarray:
    """(n_boot, S) replicates -> (S, 2) 2.5 / 97.5 percentile bounds."""
    return np.percentile(reps, [2.5, 97.5], axis=0).T


SKIP = ("/cluster", "/query")  # per-query entries that are ids, not metrics


def paired_bootstrap(per_query_a: dict, per_query_b: dict, clusters=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Difference of two runs on the same queries with one set of resampled clusters for both.

    ``per_query_a``/``per_query_b``: the per-query dicts of
    ``retrieval_metrics(..., per_query=True)`` (``<direction>/<metric>`` -> (Q,) arrays, plus
    ``<direction>/cluster``). ``clusters``: one (Q,) array used for every key, or None to use each
    direction's ``<direction>/cluster`` (which must agree between the runs: the same test split).
    Every replicate resamples the same items for run A and run B, so the interval of the
    difference reflects how consistently B beats A item by item.

    Returns ``{key: {"a": mean_a, "b": mean_b, "diff": b - a, "ci95": [low, high]}}`` for every
    metric key, and ``<direction>/median_rank`` from the ``mean_rank`` arrays (per-query ranks).
    """
    groups: dict[str, list[str]] = {}
    for key in per_query_a:
        if not key.endswith(SKIP):
            if key not in per_query_b:
                raise ValueError(f"paired_bootstrap: run B has no {key!r}")
            groups.setdefault(key.rsplit("/", 1)[0], []).append(key)
    out = {}
    for direction, keys in groups.items():
        cl = clusters
        if cl is None:
            cl = per_query_a.get(f"{direction}/cluster")
            other = per_query_b.get(f"{direction}/cluster")
            if cl is None or other is None or not np.array_equal(cl, other):
                raise ValueError(f"paired_bootstrap: {direction}: runs do not share the same queries/clusters")
        a = np.stack([np.asarray(per_query_a[k], np.float64) for k in keys], 1)  # (Q, S)
        b = np.stack([np.asarray(per_query_b[k], np.float64) for k in keys], 1)
        if a.shape != b.shape:
            raise ValueError(f"paired_bootstrap: {direction}: {a.shape[0]} vs {b.shape[0]} queries")
        rank_keys = [k for k in keys if k.endswith("/mean_rank")]
        ranks = [np.asarray(p[k], np.float64) for p in (per_query_a, per_query_b) for k in rank_keys]
        ranks = np.stack(ranks, 1) if ranks else np.zeros((len(a), 0))  # (Q, 2R): A's then B's
        rep, rep_med = replicates(np.concatenate([a, b], 1), ranks, cl, n_boot, seed)
        s = a.shape[1]
        bounds = percentile_ci(rep[:, s:] - rep[:, :s])
        for j, key in enumerate(keys):
            out[key] = _entry(a[:, j].mean(), b[:, j].mean(), bounds[j])
        r = len(rank_keys)
        med_bounds = percentile_ci(rep_med[:, r:] - rep_med[:, :r]) if r else []
        for j, key in enumerate(rank_keys):
            name = key.replace("/mean_rank", "/median_rank")
            out[name] = _entry(np.median(ranks[:, j]), np.median(ranks[:, r + j]), med_bounds[j])
    return out


def _entry(a: float, b: float, bounds) -> dict:
    return {"a": float(a), "b": float(b), "diff": float(b - a), "ci95": [float(bounds[0]), float(bounds[1])]}
