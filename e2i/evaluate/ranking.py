"""One pass over the similarity matrix: exact ranks and top-K lists for both retrieval directions.

The (M captions x N items) score matrix is never held whole. Captions are cut into chunks of
``chunk_size`` rows; each chunk's block ``S = cap_emb[chunk] @ item_emb.T`` (chunk, N) is computed
once with ``torch.mm`` (on CUDA when the embeddings are there) and everything is read from it
before the next block:

* text -> item (rows of S): the target's score is gathered from the same block, so a rank is
  ``1 + #(S_row > t) + #(S_row == t, index < target)`` counted on exactly the numbers it is compared
  with; top-K lists with :func:`topk_rows`.
* item -> text (columns of S): an item's column is spread over all chunks, so its target (the score
  of its best caption) must be known before the pass. A pre-pass computes every caption's score with
  its own item from small ``torch.mm`` blocks (1-2 % of the main matmul); the main pass then counts
  ``#(S_col > t*)`` and the exact ties per column in two elementwise passes, keeps a running top-10
  per column (:class:`ColumnTopK`) for AP@10, and checks bit-for-bit that the pre-pass targets equal
  the block's own values. MKL returns the same bits for an entry whatever the block shape (checked
  here), so that check passes; where a BLAS does not, the items concerned are redone exactly from
  their own rows (``item_emb[bad] @ cap_emb.T``), so ranks stay self-consistent.

Order convention everywhere: score descending, equal scores by ascending candidate index (what a
stable argsort of ``-score`` gives). Pure torch: no ray import here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MAP_K = 10  # the column lists kept for item -> text AP@10
PRE_CHUNK = 256  # captions per pre-pass block (grouped by item)


def as_tensor(x, dtype=torch.float32, device=None) -> torch.Tensor:
    """numpy array or tensor -> contiguous tensor of ``dtype`` (kept on its device unless given)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device=device or t.device, dtype=dtype).contiguous()


def score_block(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The one scoring function: (A, D) x (B, D) -> (A, B) dot products (torch.mm)."""
    return torch.mm(rows, cols.T)


def ranks_in_rows(scores: torch.Tensor, target: torch.Tensor, index: torch.Tensor, mask=None) -> torch.Tensor:
    """(Q,) int64 1-based rank of candidate ``index`` (score ``target``) in each row of ``scores`` (Q, C).
    ``mask``: optional bool buffer of at least (Q, C) reused for the comparisons."""
    t = target[:, None]
    mask = torch.empty(scores.shape, dtype=torch.bool, device=scores.device) if mask is None else mask[: len(scores)]
    above = torch.gt(scores, t, out=mask).sum(1, dtype=torch.int32)  # strictly better candidates
    at = torch.ge(scores, t, out=mask).sum(1, dtype=torch.int32)  # ... plus every candidate tied with the target
    rank = 1 + above.long()
    tied = torch.nonzero(at - above > 1).flatten()  # rows where another candidate ties: rare
    if len(tied):  # equal score and lower index ranks first
        before = torch.arange(scores.shape[1], device=scores.device)[None, :] < index[tied, None]
        rank[tied] += ((scores[tied] == t[tied]) & before).sum(1)
    return rank


def _order(key_major: torch.Tensor, value: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Permutation sorting by (key_major asc, value desc, index asc), with stable sorts."""
    perm = torch.argsort(index, stable=True)
    perm = perm[torch.argsort(-value[perm], stable=True)]
    return perm[torch.argsort(key_major[perm], stable=True)]


def _position_in_group(group: torch.Tensor) -> torch.Tensor:
    """0-based position of every entry within its run of equal values in the sorted ``group``."""
    new = torch.ones_like(group, dtype=torch.bool)
    new[1:] = group[1:] != group[:-1]
    starts = torch.nonzero(new).flatten()
    run = torch.cumsum(new.long(), 0) - 1  # run id of each position
    return torch.arange(len(group), device=group.device) - starts[run]


def topk_rows(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` of each row (score desc, index asc): (values (Q, k), indices (Q, k) int64).

    ``torch.topk`` finds the k-th value of each row; every entry >= it is a candidate (ties at the
    boundary included), and the candidates are ordered by the stable sorts, so the tie order does not
    depend on torch.topk's.
    """
    q, c = scores.shape
    k = min(k, c)
    kth = torch.topk(scores, k, dim=1, sorted=True).values[:, -1:]  # (Q, 1)
    row, col = torch.nonzero(scores >= kth, as_tuple=True)  # row-major: index ascending in a row
    val = scores[row, col]
    perm = _order(row, val, col)
    keep = perm[_position_in_group(row[perm]) < k]  # exactly k per row
    return val[keep].view(q, k), col[keep].view(q, k)


class ColumnTopK:
    """Running exact top-``k`` of every column of a matrix seen in row chunks of ascending row index.

    ``values``/``index`` (C, k): best first; -inf / -1 while a column has fewer than k rows. A chunk's
    candidates are its entries above the current k-th value (a later row that only ties it ranks
    after it), so after the first chunk only a few entries per column are merged.
    """

    def __init__(self, columns: int, k: int, device) -> None:
        self.k = k
        self.values = torch.full((columns, k), -torch.inf, device=device)
        self.index = torch.full((columns, k), -1, dtype=torch.int64, device=device)

    def update(self, block: torch.Tensor, row0: int) -> None:
        kth = self.values[:, -1]  # (C,)
        full = self.index[:, -1] >= 0
        if bool(full.all()):
            row, col = torch.nonzero(block > kth, as_tuple=True)
        else:  # a column not full yet takes its best k of this chunk, ties at the boundary included
            chunk_kth = torch.topk(block, min(self.k, block.shape[0]), dim=0).values[-1]
            thr = torch.where(full, kth, chunk_kth)
            row, col = torch.nonzero((block > thr) | ((block == thr) & ~full), as_tuple=True)
        if len(row) == 0:
            return
        # Candidates of each touched column side by side with its current list: (U, k + most).
        # Current entries come first and candidates follow in row order, so a stable descending sort
        # puts equal scores in index order (current entries have lower rows than this chunk's).
        perm = torch.argsort(col, stable=True)  # row order kept within a column
        row, col = row[perm], col[perm]
        cols, group = torch.unique_consecutive(col, return_inverse=True)
        pos = _position_in_group(col)
        width = self.k + int(pos.max()) + 1
        vals = torch.full((len(cols), width), -torch.inf, device=block.device)
        idx = torch.full((len(cols), width), -1, dtype=torch.int64, device=block.device)
        vals[:, : self.k], idx[:, : self.k] = self.values[cols], self.index[cols]
        vals[group, self.k + pos], idx[group, self.k + pos] = block[row, col], row + row0
        vals, order = torch.sort(vals, dim=1, descending=True, stable=True)
        self.values[cols], self.index[cols] = vals[:, : self.k], idx.gather(1, order[:, : self.k])


def caption_targets(items: torch.Tensor, caps: torch.Tensor, cap_item: torch.Tensor) -> torch.Tensor:
    """(M,) score of each caption with its own item, from small ``torch.mm`` blocks (the pre-pass).

    Captions are taken grouped by item, so a block of PRE_CHUNK captions meets only ~PRE_CHUNK / 5
    items: (PRE_CHUNK x few) blocks, about 1 % of the main matmul's work for 5 captions per item.
    """
    out = torch.empty(len(caps), device=caps.device)
    order = torch.argsort(cap_item, stable=True)
    for lo in range(0, len(caps), PRE_CHUNK):
        rows = order[lo : lo + PRE_CHUNK]
        uniq, inv = torch.unique(cap_item[rows], return_inverse=True)
        block = score_block(caps[rows], items[uniq])  # (<= PRE_CHUNK, <= PRE_CHUNK)
        out[rows] = block[torch.arange(len(rows), device=caps.device), inv]
    return out


def best_target(values: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of candidate (values, index) (Q, R), -inf = padding: the best one in ranking order."""
    best = values.max(1).values
    big = torch.iinfo(torch.int64).max
    return best, torch.where(values == best[:, None], index, big).min(1).values


@dataclass
class Scan:
    """What one pass produced (torch tensors on the embeddings' device).

    ``t2i_rank`` (Q,): rank of each text query's best relevant item; ``t2i_top`` (Q, k) item indices
    (k = 0 when not asked). ``i2t_rank`` (N,): rank of each item's best caption (0 for items without
    captions); ``i2t_top`` (N, MAP_K) caption indices.
    """

    t2i_rank: torch.Tensor
    t2i_top: torch.Tensor
    i2t_rank: torch.Tensor | None
    i2t_top: torch.Tensor | None


def scan(items, caps, cap_item, t2i_queries, t2i_table, *, t2i_k=0, i2t=True, chunk_size=256) -> Scan:
    """One chunked pass. ``t2i_queries`` (Q,) ascending caption rows; ``t2i_table`` (Q, R) their
    relevant items (-1 padding). Item -> text uses ``cap_item`` (every caption relevant to its item)."""
    dev, (m, n) = caps.device, (len(caps), len(items))
    t2i_rank = torch.zeros(len(t2i_queries), dtype=torch.int64, device=dev)
    t2i_top = torch.zeros((len(t2i_queries), min(t2i_k, n)), dtype=torch.int64, device=dev)
    if i2t:
        pre = caption_targets(items, caps, cap_item)  # (M,)
        t_star, c_star = _best_caption(pre, cap_item, n)  # (N,), (N,); +inf / M for captionless items
        above = torch.zeros(n, dtype=torch.int64, device=dev)
        ties = torch.zeros(n, dtype=torch.int64, device=dev)
        tops, bad = ColumnTopK(n, MAP_K, dev), torch.zeros(n, dtype=torch.bool, device=dev)
    mask = torch.empty((min(chunk_size, m), n), dtype=torch.bool, device=dev)
    starts = np.arange(0, m, chunk_size)
    bounds = np.searchsorted(t2i_queries.cpu().numpy(), np.append(starts, m))  # queries per chunk
    for ci, lo in enumerate(starts.tolist()):
        block = score_block(caps[lo : lo + chunk_size], items)  # (c, N), the only big allocation
        c, hi = block.shape[0], lo + block.shape[0]
        q_lo, q_hi = int(bounds[ci]), int(bounds[ci + 1])
        if q_hi > q_lo:  # text -> item: the queries of this chunk
            rows, table = t2i_queries[q_lo:q_hi] - lo, t2i_table[q_lo:q_hi]
            sub = block if q_hi - q_lo == c else block[rows]  # (q, N): every caption is a query, or some
            vals = torch.where(table >= 0, sub.gather(1, table.clamp(min=0)), -torch.inf)
            t, r = best_target(vals, table)
            t2i_rank[q_lo:q_hi] = ranks_in_rows(sub, t, r, mask)
            if t2i_k:
                t2i_top[q_lo:q_hi] = topk_rows(sub, t2i_k)[1]
        if i2t:
            own = cap_item[lo:hi]
            exact = block[torch.arange(c, device=dev), own]
            bad[own[exact != pre[lo:hi]]] = True  # pre-pass disagrees with the block: redo those items
            above += torch.gt(block, t_star, out=mask[:c]).sum(0, dtype=torch.int32)
            eq = torch.eq(block, t_star, out=mask[:c])
            ties += torch.where(c_star >= hi, eq.sum(0, dtype=torch.int32), 0)  # all rows precede c*
            here = torch.nonzero((c_star >= lo) & (c_star < hi)).flatten()  # c* inside this chunk
            before = torch.arange(c, device=dev)[:, None] < (c_star[here] - lo)[None, :]
            ties[here] += (eq[:, here] & before).sum(0)
            tops.update(block, lo)
    if not i2t:
        return Scan(t2i_rank, t2i_top, None, None)
    i2t_rank, i2t_top = torch.where(c_star < m, 1 + above + ties, 0), tops.index
    redo = torch.nonzero(bad).flatten()
    if len(redo):
        i2t_rank[redo], i2t_top[redo] = _item_rows(items[redo], caps, cap_item, redo, chunk_size)
    return Scan(t2i_rank, t2i_top, i2t_rank, i2t_top)


def _best_caption(score: torch.Tensor, cap_item: torch.Tensor, n: int):
    """Per item: best own-caption score and its (lowest) caption index; +inf / M without captions."""
    m = len(score)
    t_star = torch.full((n,), -torch.inf, device=score.device).scatter_reduce(0, cap_item, score, "amax")
    idx = torch.where(score == t_star[cap_item], torch.arange(m, device=score.device), m)
    c_star = torch.full((n,), m, dtype=torch.int64, device=score.device).scatter_reduce(0, cap_item, idx, "amin")
    return torch.where(c_star < m, t_star, torch.inf), c_star


def _item_rows(items_q, caps, cap_item, item_ids, chunk_size):
    """Exact item -> text rank and top-10 of a few items from their own rows (the fallback path)."""
    ranks, tops = [], []
    for lo in range(0, len(items_q), chunk_size):
        block = score_block(items_q[lo : lo + chunk_size], caps)  # (c, M)
        ids = item_ids[lo : lo + chunk_size]
        own = cap_item[None, :] == ids[:, None]  # (c, M) relevant captions
        t, r = best_target(torch.where(own, block, -torch.inf), torch.arange(len(caps), device=caps.device).expand_as(block))
        ranks.append(ranks_in_rows(block, t, r))
        tops.append(topk_rows(block, MAP_K)[1])
    return torch.cat(ranks), torch.cat(tops)


def top_k(item_emb, cap_emb, k: int, *, direction: str = "text_to_item", chunk_size: int = 256):
    """Top-``k`` candidates of every query, score desc then index asc (the metrics' order).

    ``text_to_item``: one row per caption over the N items; ``item_to_text``: one row per item over the
    M captions. Returns (indices (Q, k) int64, scores (Q, k) float32) as numpy arrays, k clipped to
    the number of candidates. Same single chunked pass as the metrics (torch, CUDA if the inputs are).
    """
    if direction not in ("text_to_item", "item_to_text"):
        raise ValueError(f"direction must be 'text_to_item' or 'item_to_text', got {direction!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    items, caps = as_tensor(item_emb), as_tensor(cap_emb)
    if items.ndim != 2 or caps.ndim != 2 or items.shape[1] != caps.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) embeddings, got {tuple(items.shape)} and {tuple(caps.shape)}")
    caps = caps.to(items.device)
    if direction == "text_to_item":
        kk = min(k, len(items))
        vals, idx = [torch.zeros((0, kk), device=items.device)], [torch.zeros((0, kk), dtype=torch.int64)]
        for lo in range(0, len(caps), chunk_size):
            v, i = topk_rows(score_block(caps[lo : lo + chunk_size], items), k)
            vals.append(v)
            idx.append(i.to(idx[0].device))
        vals, idx = torch.cat(vals), torch.cat(idx)
    else:
        tops = ColumnTopK(len(items), min(k, len(caps)), items.device)
        for lo in range(0, len(caps), chunk_size):
            tops.update(score_block(caps[lo : lo + chunk_size], items), lo)
        vals, idx = tops.values, tops.index
    return idx.long().cpu().numpy(), vals.float().cpu().numpy()
