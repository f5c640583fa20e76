"""Cross-modal retrieval metrics: Recall@K, mAP@10, median/mean rank, with bootstrap 95% CIs.

Inputs: ``item_emb`` (N, D), ``cap_emb`` (M, D) and ``cap_item`` (M,) int64, the row in
``item_emb`` of each caption's item (many captions per item). Scores are dot products, so pass
L2-normalised embeddings for cosine similarity. Numpy arrays or torch tensors.

Conventions (ranks are 1-based):

* ``text_to_item``: each caption is a query over the N items; exactly one item is relevant (its own).
  ``recall@K`` = fraction of captions whose item is in the top K. ``mAP@10`` as DCASE computes it:
  AP = 1/rank if rank <= 10 else 0, averaged over captions. ``median_rank``/``mean_rank``: rank
  of the caption's item.
* ``item_to_text``: each item is a query over the M captions; all its captions are relevant.
  ``recall@K``: an item hits if ANY of its captions is in the top K. ``mAP@10``: standard AP@10 over
  the n relevant captions, ``AP = sum_{relevant j with rank_j <= 10} precision@rank_j / min(n, 10)``
  (precision@r = relevant captions in the top r / r); for n = 1 it is DCASE's 1/rank.
  ``median_rank``/``mean_rank``: rank of the first relevant caption. Items without captions are not
  queries.
* Ties: candidates are ordered by score descending, equal scores by ascending index (a stable
  sort). The rank of a target is ``1 + #(score > s) + #(score == s and index < target)``, counted
  directly instead of sorting, so the result is deterministic and equals a stable argsort.
* Chunked: at most ``chunk_size x N`` (text -> item) or ``chunk_size x M`` (item -> text) scores
  exist at a time; ``retrieval_metrics_bruteforce`` is the full-matrix argsort reference.
* ``<key>/ci95`` = [low, high]: percentile bootstrap over queries (``n_boot`` resamples, ``seed``).

Pure numpy (torch tensors are accepted and converted): no ray import here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

MAP_K = 10  # mAP@10, the DCASE metric
DIRECTIONS = ("text_to_item", "item_to_text")


def _as_array(x, dtype=np.float32) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def _check(item_emb: np.ndarray, cap_emb: np.ndarray, cap_item: np.ndarray) -> None:
    if item_emb.ndim != 2 or cap_emb.ndim != 2 or item_emb.shape[1] != cap_emb.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) embeddings, got {item_emb.shape} and {cap_emb.shape}")
    if cap_item.shape != (cap_emb.shape[0],):
        raise ValueError(f"cap_item must be ({cap_emb.shape[0]},), got {cap_item.shape}")
    if len(cap_item) and (cap_item.min() < 0 or cap_item.max() >= item_emb.shape[0]):
        raise ValueError(f"cap_item values must be rows of item_emb in [0, {item_emb.shape[0]})")


def _rank_of(scores: np.ndarray, target_score: np.ndarray, target_index: np.ndarray) -> np.ndarray:
    """1-based rank of a target in each row of ``scores`` (Q, C) under (score desc, index asc)."""
    s = target_score[:, None]  # (Q, 1)
    rank = 1 + np.count_nonzero(scores > s, axis=1)  # 1 + strictly better candidates, (Q,)
    equal = scores == s  # (Q, C); the target itself is one of them
    tied = np.nonzero(np.count_nonzero(equal, axis=1) > 1)[0]  # rows where another candidate ties
    if len(tied):  # rare with real-valued scores: only those rows pay for the index comparison
        before = np.arange(scores.shape[1])[None, :] < target_index[tied, None]  # (T, C)
        rank[tied] += np.count_nonzero(equal[tied] & before, axis=1)  # equal score, lower index first
    return rank


def _relevant_table(cap_item: np.ndarray, num_items: int) -> np.ndarray:
    """(N, R) caption indices of each item, ascending, padded with -1 (R = most captions of one item)."""
    order = np.argsort(cap_item, kind="stable")  # captions grouped by item, index ascending within
    counts = np.bincount(cap_item, minlength=num_items)  # (N,)
    starts = np.cumsum(counts) - counts  # first position of each item in `order`
    table = np.full((num_items, max(int(counts.max(initial=0)), 1)), -1, dtype=np.int64)
    slot = np.arange(len(cap_item)) - starts[cap_item[order]]  # position within its item
    table[cap_item[order], slot] = order
    return table


def _text_to_item_ranks(item_emb, cap_emb, cap_item, chunk_size: int) -> np.ndarray:
    """(M,) rank of each caption's item among all items."""
    ranks = [np.zeros(0, np.int64)]
    for lo in range(0, cap_emb.shape[0], chunk_size):
        scores = cap_emb[lo : lo + chunk_size] @ item_emb.T  # (chunk, N)
        target = cap_item[lo : lo + chunk_size]  # (chunk,)
        ranks.append(_rank_of(scores, scores[np.arange(len(target)), target], target))
    return np.concatenate(ranks)


def _item_to_text_ranks(item_emb, cap_emb, cap_item, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per item query with >= 1 caption: (first relevant rank (Q,), AP@10 (Q,)).

    Relevant captions of a query are sorted by (score desc, index asc), i.e. in ranking order, so
    the r-th of them (0-based) has rank >= r + 1 and exactly r relevant captions rank above it:
    precision at its rank is (r + 1) / rank, and only r < 10 can fall in the top 10.
    """
    table = _relevant_table(cap_item, item_emb.shape[0])  # (N, R)
    n_rel = (table >= 0).sum(axis=1)  # (N,)
    queries = np.nonzero(n_rel > 0)[0]
    first, ap = [np.zeros(0, np.int64)], [np.zeros(0)]
    for lo in range(0, len(queries), chunk_size):
        q = queries[lo : lo + chunk_size]
        scores = item_emb[q] @ cap_emb.T  # (chunk, M)
        rel = table[q]  # (chunk, R)
        rel_scores = np.where(rel >= 0, np.take_along_axis(scores, np.maximum(rel, 0), axis=1), -np.inf)
        order = np.argsort(-rel_scores, axis=1, kind="stable")  # ranking order of the relevant captions
        rel, rel_scores = np.take_along_axis(rel, order, 1), np.take_along_axis(rel_scores, order, 1)
        ap_sum = np.zeros(len(q))
        for r in range(min(rel.shape[1], MAP_K)):
            rank = _rank_of(scores, rel_scores[:, r], rel[:, r])  # (chunk,)
            if r == 0:
                first.append(rank)
            hit = (rel[:, r] >= 0) & (rank <= MAP_K)
            ap_sum += np.where(hit, (r + 1) / rank, 0.0)  # precision at this relevant hit
        ap.append(ap_sum / np.minimum(n_rel[q], MAP_K))
    return np.concatenate(first), np.concatenate(ap)


def _summarise(
    direction: str, ranks: np.ndarray, ap: np.ndarray, ks: Sequence[int], ci: bool, n_boot: int, seed: int
) -> dict:
    """Per-query ranks/AP -> metric dict (means, medians) and optional bootstrap CIs."""
    per_query = {f"recall@{k}": (ranks <= k).astype(np.float64) for k in ks}
    per_query["mAP@10"] = ap
    per_query["mean_rank"] = ranks.astype(np.float64)
    out: dict = {
        f"{direction}/{name}": float(v.mean()) if len(v) else float("nan") for name, v in per_query.items()
    }
    out[f"{direction}/median_rank"] = float(np.median(ranks)) if len(ranks) else float("nan")
    out[f"{direction}/num_queries"] = len(ranks)
    if ci and len(ranks):
        stats = np.stack([*per_query.values()], axis=1)  # (Q, S) per-query values of mean statistics
        names = [*per_query, "median_rank"]
        bounds = _bootstrap(stats, ranks, n_boot, seed)  # (S + 1, 2)
        for name, (low, high) in zip(names, bounds):
            out[f"{direction}/{name}/ci95"] = [float(low), float(high)]
    return out


def _bootstrap(stats: np.ndarray, ranks: np.ndarray, n_boot: int, seed: int, batch: int = 25) -> np.ndarray:
    """Percentile bootstrap over queries: 95% intervals of each column mean of ``stats`` and of the
    median of ``ranks``; resampled ``batch`` replicates at a time to bound memory."""
    rng = np.random.default_rng(seed)
    q = len(ranks)
    stats32, ranks = stats.astype(np.float32), ranks.astype(np.float64)
    reps = []
    for lo in range(0, n_boot, batch):
        idx = rng.integers(0, q, size=(min(batch, n_boot - lo), q))  # (b, Q) resampled query indices
        means = stats32[idx].mean(axis=1, dtype=np.float64)  # (b, S)
        medians = np.median(ranks[idx], axis=1)[:, None]  # (b, 1)
        reps.append(np.concatenate([means, medians], axis=1))
    reps = np.concatenate(reps)  # (n_boot, S + 1)
    return np.percentile(reps, [2.5, 97.5], axis=0).T  # (S + 1, 2)


def retrieval_metrics(
    item_emb,
    cap_emb,
    cap_item,
    *,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
    ci: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Text->item and item->text retrieval metrics (conventions in the module docstring).

    Returns keys ``text_to_item/recall@{k}``, ``text_to_item/mAP@10``, ``text_to_item/median_rank``,
    ``text_to_item/mean_rank``, ``text_to_item/num_queries``, the same for ``item_to_text``, and,
    with ``ci``, ``<key>/ci95`` = [low, high] for every metric except num_queries.
    """
    item_emb, cap_emb, cap_item = _as_array(item_emb), _as_array(cap_emb), _as_array(cap_item, np.int64)
    _check(item_emb, cap_emb, cap_item)
    t2i = _text_to_item_ranks(item_emb, cap_emb, cap_item, chunk_size)
    i2t_ranks, i2t_ap = _item_to_text_ranks(item_emb, cap_emb, cap_item, chunk_size)
    t2i_ap = np.where(t2i <= MAP_K, 1.0 / t2i, 0.0)  # one relevant item: AP@10 = 1/rank within top 10
    return {
        **_summarise("text_to_item", t2i, t2i_ap, ks, ci, n_boot, seed),
        **_summarise("item_to_text", i2t_ranks, i2t_ap, ks, ci, n_boot, seed),
    }


def retrieval_metrics_bruteforce(
    item_emb,
    cap_emb,
    cap_item,
    *,
    ks: Sequence[int] = (1, 5, 10),
    ci: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Reference implementation: full (M, N) score matrix, stable argsort per query, explicit loops
    over relevant captions. Same conventions and keys as :func:`retrieval_metrics`; O(M x N) memory."""
    item_emb, cap_emb, cap_item = _as_array(item_emb), _as_array(cap_emb), _as_array(cap_item, np.int64)
    _check(item_emb, cap_emb, cap_item)
    scores = cap_emb @ item_emb.T  # (M, N)

    order = np.argsort(-scores, axis=1, kind="stable")  # (M, N) items by score desc, index asc
    t2i = np.argmax(order == cap_item[:, None], axis=1) + 1  # 1-based rank of the caption's item
    t2i_ap = np.where(t2i <= MAP_K, 1.0 / t2i, 0.0)

    order = np.argsort(-scores.T, axis=1, kind="stable")  # (N, M) captions by score desc, index asc
    i2t_ranks, i2t_ap = [], []
    for i in range(item_emb.shape[0]):
        relevant = cap_item[order[i]] == i  # (M,) relevance in ranking order
        if not relevant.any():
            continue
        hits = np.nonzero(relevant)[0] + 1  # ranks of the relevant captions, ascending
        i2t_ranks.append(hits[0])
        ap = sum((r + 1) / rank for r, rank in enumerate(hits) if rank <= MAP_K)
        i2t_ap.append(ap / min(len(hits), MAP_K))
    i2t_ranks_arr = np.asarray(i2t_ranks, dtype=np.int64)
    return {
        **_summarise("text_to_item", t2i, t2i_ap, ks, ci, n_boot, seed),
        **_summarise(
            "item_to_text", i2t_ranks_arr, np.asarray(i2t_ap, dtype=np.float64), ks, ci, n_boot, seed
        ),
    }
