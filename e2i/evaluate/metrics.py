"""Cross-modal retrieval metrics: Recall@K, mAP@K, nDCG@10, median/mean rank, item-level bootstrap CIs.

Inputs: ``item_emb`` (N, D), ``cap_emb`` (M, D) and ``cap_item`` (M,) int64, the row in
``item_emb`` of each caption's item (many captions per item). Scores are dot products, so pass
L2-normalised embeddings for cosine similarity. Numpy arrays or torch tensors (CUDA tensors are
scored on the GPU).

Conventions (ranks are 1-based):

* ``text_to_item``: each caption is a query over the N items; exactly one item is relevant (its own).
  ``recall@K`` = fraction of captions whose item is in the top K. ``mAP@10`` as DCASE computes it:
  AP = 1/rank if rank <= 10 else 0, averaged over captions. ``median_rank``/``mean_rank``: rank
  of the caption's item.
* ``text_to_item`` with ``relevance`` (DCASE 2025 Task 6, see :mod:`e2i.evaluate.relevance`): the
  queries are the listed captions and their relevant items are the listed ones (the own item only
  if listed). ``recall@K``: a hit if ANY relevant item is in the top K; ``median_rank``/``mean_rank``:
  rank of the first relevant item; ``mAP@K`` for every K in ``map_ks`` (default 16 and 10) as the
  DCASE 2025 baseline's ``average_precision_at_k`` (``d25_t6/retrieval_module.py``):
  ``AP@K = sum_{relevant j with rank_j <= K} precision@rank_j / n_rel``, normalised by the number of
  relevant items n_rel (not min(n_rel, K)); ``nDCG@10`` when grades are given: linear gains,
  ``DCG = sum_{r <= 10} grade(r) / log2(r + 1)`` over the ideal DCG of the query's grades.
* ``item_to_text``: each item is a query over the M captions; all its captions are relevant.
  ``recall@K``: an item hits if ANY of its captions is in the top K. ``mAP@10``: standard AP@10 over
  the n relevant captions, ``AP = sum_{relevant j with rank_j <= 10} precision@rank_j / min(n, 10)``
  (precision@r = relevant captions in the top r / r); for n = 1 it is DCASE's 1/rank.
  ``median_rank``/``mean_rank``: rank of the first relevant caption. Items without captions are not
  queries.
* Ties: candidates are ordered by score descending, equal scores by ascending index (a stable
  sort; the DCASE baseline's ``torch.argsort`` leaves tie order unspecified). A rank is
  ``1 + #(score > s) + #(score == s and index < target)``, counted directly instead of sorting.
* One pass (:mod:`e2i.evaluate.ranking`): each chunk of ``chunk_size`` captions x N items of scores
  is computed once (torch.mm) and both directions read it; ``retrieval_metrics_bruteforce`` is the
  full-matrix argsort reference on the same float scores.
* ``<key>/ci95`` = [low, high]: percentile bootstrap over ITEMS (:mod:`e2i.evaluate.bootstrap`):
  text -> item resamples items and takes all captions (queries) of each drawn item together;
  item -> text resamples the item queries. ``n_boot`` resamples, ``seed``.

Pure numpy/torch: no ray import here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from e2i.evaluate.bootstrap import percentile_ci, replicates
from e2i.evaluate.ranking import MAP_K, as_tensor, scan, score_block
from e2i.evaluate.relevance import Relevance

DIRECTIONS = ("text_to_item", "item_to_text")
DCASE_MAP_KS = (16, 10)  # mAP@16 ranks DCASE 2025 Task 6; mAP@10 as in earlier editions
NDCG_K = 10


def _as_array(x, dtype=np.float32) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def _check(item_emb, cap_emb, cap_item: np.ndarray) -> None:
    if item_emb.ndim != 2 or cap_emb.ndim != 2 or item_emb.shape[1] != cap_emb.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) embeddings, got {tuple(item_emb.shape)} and {tuple(cap_emb.shape)}")
    if cap_item.shape != (cap_emb.shape[0],):
        raise ValueError(f"cap_item must be ({cap_emb.shape[0]},), got {cap_item.shape}")
    if len(cap_item) and (cap_item.min() < 0 or cap_item.max() >= item_emb.shape[0]):
        raise ValueError(f"cap_item values must be rows of item_emb in [0, {item_emb.shape[0]})")


def _map_ks(relevance: Relevance | None, map_ks: Sequence[int] | None) -> tuple[int, ...]:
    ks = tuple(map_ks) if map_ks is not None else (DCASE_MAP_KS if relevance is not None else (MAP_K,))
    if not ks or any(not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"map_ks must be positive integers, got {map_ks!r}")
    return ks


def _queries(cap_item: np.ndarray, relevance: Relevance | None, num_items: int):
    """Text queries: (caption rows (Q,), relevant items (Q, R) -1 padded, gains (Q, R) or None)."""
    if relevance is None:
        return np.arange(len(cap_item)), cap_item[:, None], None
    relevance.check(len(cap_item), num_items)
    queries, table, gains = relevance.table()
    return queries, table, gains if relevance.grade is not None else None


def _text_stats(rank, top, table, gains, map_ks) -> dict[str, np.ndarray]:
    """Per text query: AP@K for each K and nDCG@10 from the top lists (Q, k) and relevant table (Q, R)."""
    out: dict[str, np.ndarray] = {}
    if top.shape[1] == 0:  # one relevant item: AP@K = 1/rank within the top K
        for k in map_ks:
            out[f"mAP@{k}"] = np.where(rank <= k, 1.0 / rank, 0.0)
        return out
    hit = (top[:, :, None] == table[:, None, :]) & (table[:, None, :] >= 0)  # (Q, k, R)
    rel = hit.any(-1)  # (Q, k) relevant at list position p
    n_rel = (table >= 0).sum(1)
    for k in map_ks:
        ap = np.zeros(len(rank))
        for p in range(min(k, rel.shape[1])):  # precision at each relevant position, in order
            ap += np.where(rel[:, p], rel[:, : p + 1].sum(1) / (p + 1), 0.0)
        out[f"mAP@{k}"] = ap / n_rel
    if gains is not None:
        out[f"nDCG@{NDCG_K}"] = _ndcg((hit * gains[:, None, :]).sum(-1), gains)
    return out


def _ndcg(list_gains: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """nDCG@10: list_gains (Q, >=10) gains in ranking order; gains (Q, R) the query's graded items."""
    disc = 1.0 / np.log2(np.arange(2, NDCG_K + 2))  # 1/log2(r + 1), r = 1..10
    dcg = (list_gains[:, :NDCG_K] * disc[: min(NDCG_K, list_gains.shape[1])]).sum(1)
    ideal = -np.sort(-gains, axis=1)[:, :NDCG_K]
    idcg = (ideal * disc[: ideal.shape[1]]).sum(1)
    return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0)


def _item_ap(top: np.ndarray, cap_item: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Item -> text AP@10 from each item query's top-10 caption list (Q, 10)."""
    rel = (top >= 0) & (cap_item[np.maximum(top, 0)] == queries[:, None])  # (Q, 10)
    n_rel = np.bincount(cap_item, minlength=int(queries.max(initial=0)) + 1)[queries]
    ap = np.zeros(len(queries))
    for p in range(rel.shape[1]):
        ap += np.where(rel[:, p], rel[:, : p + 1].sum(1) / (p + 1), 0.0)
    return ap / np.minimum(n_rel, MAP_K)


def _summarise(direction, ranks, extra, ks, clusters, ci, n_boot, seed) -> tuple[dict, dict]:
    """Per-query ranks + extra per-query arrays -> (metric dict with optional CIs, per-query dict)."""
    per_query = {f"recall@{k}": (ranks <= k).astype(np.float64) for k in ks}
    per_query.update(extra)
    per_query["mean_rank"] = ranks.astype(np.float64)
    out: dict = {
        f"{direction}/{name}": float(v.mean()) if len(v) else float("nan") for name, v in per_query.items()
    }
    out[f"{direction}/median_rank"] = float(np.median(ranks)) if len(ranks) else float("nan")
    out[f"{direction}/num_queries"] = len(ranks)
    if ci and len(ranks):
        stats = np.stack([*per_query.values()], axis=1)  # (Q, S) per-query values of mean statistics
        rep, rep_med = replicates(stats, ranks[:, None].astype(np.float64), clusters, n_boot, seed)
        bounds = percentile_ci(np.concatenate([rep, rep_med], 1))  # (S + 1, 2)
        for name, (low, high) in zip([*per_query, "median_rank"], bounds):
            out[f"{direction}/{name}/ci95"] = [float(low), float(high)]
    return out, {f"{direction}/{name}": v for name, v in per_query.items()}


def _finish(parts, per_query: bool):
    metrics, pq = {}, {}
    for m, p in parts:
        metrics.update(m)
        pq.update(p)
    return (metrics, pq) if per_query else metrics


def retrieval_metrics(
    item_emb,
    cap_emb,
    cap_item,
    *,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 256,
    ci: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    relevance: Relevance | None = None,
    map_ks: Sequence[int] | None = None,
    per_query: bool = False,
):
    """Text->item and item->text retrieval metrics (conventions in the module docstring).

    Returns keys ``text_to_item/recall@{k}``, ``text_to_item/mAP@{K}`` (K in ``map_ks``: 10 without
    relevance, 16 and 10 with it), ``text_to_item/nDCG@10`` (graded relevance only),
    ``text_to_item/median_rank``, ``text_to_item/mean_rank``, ``text_to_item/num_queries``,
    ``item_to_text/recall@{k}``, ``item_to_text/mAP@10`` and its ranks/num_queries, and, with ``ci``,
    ``<key>/ci95`` = [low, high] (item-level bootstrap) for every metric except num_queries.

    ``per_query=True`` returns ``(metrics, per_query)``: ``per_query["<direction>/<metric>"]`` (Q,)
    float64 per-query values whose mean is the metric (``mean_rank`` holds the ranks), plus
    ``<direction>/query`` (caption or item rows) and ``<direction>/cluster`` (the item each query's
    bootstrap unit is) -- the input of :func:`e2i.evaluate.bootstrap.paired_bootstrap`.
    """
    items = as_tensor(item_emb)
    caps, cap_t = as_tensor(cap_emb, device=items.device), as_tensor(cap_item, torch.int64, items.device)
    cap_item = cap_t.cpu().numpy()
    _check(items, caps, cap_item)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    mks = _map_ks(relevance, map_ks)
    queries, table, gains = _queries(cap_item, relevance, items.shape[0])
    list_k = 0 if relevance is None else max(*mks, NDCG_K if gains is not None else 0)
    res = scan(items, caps, cap_t, torch.from_numpy(queries).to(items.device),
               torch.from_numpy(table).to(items.device), t2i_k=list_k, chunk_size=chunk_size)
    t2i = res.t2i_rank.cpu().numpy()
    t2i_extra = _text_stats(t2i, res.t2i_top.cpu().numpy(), table, gains, mks)
    i2t_all = res.i2t_rank.cpu().numpy()
    item_q = np.nonzero(i2t_all > 0)[0]  # items with >= 1 caption
    i2t_ap = _item_ap(res.i2t_top.cpu().numpy()[item_q], cap_item, item_q)
    return _finish(
        [_with_ids(_summarise("text_to_item", t2i, t2i_extra, ks, cap_item[queries], ci, n_boot, seed),
                   "text_to_item", queries, cap_item[queries]),
         _with_ids(_summarise("item_to_text", i2t_all[item_q], {"mAP@10": i2t_ap}, ks, item_q, ci, n_boot, seed),
                   "item_to_text", item_q, item_q)],
        per_query,
    )


def _with_ids(part, direction, queries, clusters):
    metrics, pq = part
    pq[f"{direction}/query"], pq[f"{direction}/cluster"] = queries.astype(np.int64), clusters.astype(np.int64)
    return metrics, pq


def retrieval_metrics_bruteforce(
    item_emb,
    cap_emb,
    cap_item,
    *,
    ks: Sequence[int] = (1, 5, 10),
    ci: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    relevance: Relevance | None = None,
    map_ks: Sequence[int] | None = None,
    per_query: bool = False,
):
    """Reference implementation: full (M, N) score matrix (the same torch.mm scores), stable argsort
    per query, explicit loops over relevant candidates. Same conventions and keys as
    :func:`retrieval_metrics`; O(M x N) memory."""
    items = as_tensor(item_emb)
    caps, cap_item = as_tensor(cap_emb, device=items.device), _as_array(cap_item, np.int64)
    _check(items, caps, cap_item)
    mks = _map_ks(relevance, map_ks)
    scores = score_block(caps, items).cpu().numpy()  # (M, N)
    queries, table, gains = _queries(cap_item, relevance, items.shape[0])

    order = np.argsort(-scores[queries], axis=1, kind="stable")  # (Q, N) items by score desc, index asc
    t2i, extra = [], {f"mAP@{k}": [] for k in mks}
    if gains is not None:
        extra[f"nDCG@{NDCG_K}"] = []
    for q in range(len(queries)):
        rel_items = table[q][table[q] >= 0]
        hits = np.nonzero(np.isin(order[q], rel_items))[0] + 1  # ranks of the relevant items, ascending
        t2i.append(hits[0])
        for k in mks:
            ap = sum((j + 1) / rank for j, rank in enumerate(hits) if rank <= k)
            extra[f"mAP@{k}"].append(ap / (len(hits) if relevance is not None else 1))
        if gains is not None:
            grade = dict(zip(table[q].tolist(), gains[q].tolist()))
            dcg = sum(grade.get(int(order[q, r]), 0.0) / np.log2(r + 2) for r in range(min(NDCG_K, order.shape[1])))
            ideal = sorted(gains[q], reverse=True)[:NDCG_K]
            idcg = sum(g / np.log2(r + 2) for r, g in enumerate(ideal))
            extra[f"nDCG@{NDCG_K}"].append(dcg / idcg if idcg > 0 else 0.0)
    t2i_arr = np.asarray(t2i, dtype=np.int64)

    order = np.argsort(-scores.T, axis=1, kind="stable")  # (N, M) captions by score desc, index asc
    i2t_ranks, i2t_ap, item_q = [], [], []
    for i in range(items.shape[0]):
        relevant = cap_item[order[i]] == i  # (M,) relevance in ranking order
        if not relevant.any():
            continue
        hits = np.nonzero(relevant)[0] + 1  # ranks of the relevant captions, ascending
        item_q.append(i)
        i2t_ranks.append(hits[0])
        ap = sum((r + 1) / rank for r, rank in enumerate(hits) if rank <= MAP_K)
        i2t_ap.append(ap / min(len(hits), MAP_K))
    item_q_arr = np.asarray(item_q, dtype=np.int64)
    return _finish(
        [_with_ids(_summarise("text_to_item", t2i_arr, {k: np.asarray(v, np.float64) for k, v in extra.items()},
                              ks, cap_item[queries], ci, n_boot, seed), "text_to_item", queries, cap_item[queries]),
         _with_ids(_summarise("item_to_text", np.asarray(i2t_ranks, dtype=np.int64),
                              {"mAP@10": np.asarray(i2t_ap, dtype=np.float64)}, ks, item_q_arr, ci, n_boot, seed),
                   "item_to_text", item_q_arr, item_q_arr)],
        per_query,
    )
