"""One pass over the similarity matrix: exact ranks and top-K lists for both retrieval directions.

The (M captions x N items) score matrix is never held whole. Captions are cut into chunks of
``chunk_size`` rows; each chunk's block ``S = cap_emb[chunk] @ item_emb.T`` (chunk, N) is computed
once with ``torch.mm`` into one reused buffer (on CUDA when the embeddings are there) and everything
is read from it before the next block. Per chunk only counts are taken: a comparison written as
0/1 floats into one scratch block and a float sum (:func:`~e2i.evaluate.column_topk.count_buffer`).

* text -> item (rows of S): the target's score is gathered from the same block, so a rank is
  ``1 + #(S_row > t) + #(S_row == t, index < target)`` counted on exactly the numbers it is compared
  with. The pass counts ``> t`` and ``== t``; the rare rows where another item ties the target are
  recounted after the pass from their own rows with the index order. Top-K lists with
  :func:`~e2i.evaluate.column_topk.topk_rows` (only when relevance lists ask for them).
* item -> text (columns of S): an item's column is spread over all chunks, so its target t* (the
  score of its best caption c*) must be known before the pass. A pre-pass computes every caption's
  score with its own item from small ``torch.mm`` blocks (1-2 % of the main matmul); the main pass
  counts ``#(S_col > t*)`` and ``#(S_col == t*)`` and keeps a running top-10 per column
  (:class:`~e2i.evaluate.column_topk.ColumnTopK`) for AP@10, floored at the item's weakest own
  caption: a caption scoring below all of them cannot move any of them, so AP@10 needs nothing
  below it (the lists are exact down to that floor). Each caption's own score is also read from
  its block; items where that differs from the pre-pass (a BLAS whose bits depend on the block
  shape) or where another caption ties t* are redone exactly from their own rows
  (``item_emb[redo] @ cap_emb.T``), so ranks stay self-consistent.

Order convention everywhere: score descending, equal scores by ascending candidate index (what a
stable argsort of ``-score`` gives). Pure torch: no ray import here.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from e2i.evaluate.column_topk import ColumnTopK, count_buffer, merge_lists, topk_rows

MAP_K = 10  # the column lists kept for item -> text AP@10
PRE_CHUNK = 256  # captions per pre-pass block (grouped by item)
WORKERS = 2  # Python threads sharing a CPU pass (see scan)


def as_tensor(x, dtype=torch.float32, device=None) -> torch.Tensor:
    """numpy array or tensor -> contiguous tensor of ``dtype`` (kept on its device unless given)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device=device or t.device, dtype=dtype).contiguous()


def score_block(rows: torch.Tensor, cols: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The one scoring function: (A, D) x (B, D) -> (A, B) dot products (torch.mm).
    ``out``: a reused (>= A, B) buffer; a fresh multi-MB result per chunk costs page faults."""
    if out is None:
        return torch.mm(rows, cols.T)
    return torch.mm(rows, cols.T, out=out[: len(rows)])


def ranks_in_rows(scores: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(Q,) int64 1-based rank of candidate ``index`` (score ``target``) in each row of ``scores`` (Q, C),
    equal scores by ascending index: the exact path for the few queries the pass recounts."""
    t = target[:, None]
    rank = 1 + (scores > t).sum(1)  # strictly better candidates
    before = torch.arange(scores.shape[1], device=scores.device)[None, :] < index[:, None]
    return rank + ((scores == t) & before).sum(1)  # ... and equal ones with a lower index


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
        block = score_block(caps.index_select(0, rows), items[uniq])  # (<= PRE_CHUNK, <= PRE_CHUNK)
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
    captions); ``i2t_top`` (N, MAP_K) caption indices, exact down to the item's weakest own caption
    (what AP@10 reads; entries below it may be missing: :func:`top_k` gives complete lists).
    """

    t2i_rank: torch.Tensor
    t2i_top: torch.Tensor
    i2t_rank: torch.Tensor | None
    i2t_top: torch.Tensor | None


def scan(items, caps, cap_item, t2i_queries, t2i_table, *, t2i_k=0, i2t=True, chunk_size=256) -> Scan:
    """One chunked pass. ``t2i_queries`` (Q,) ascending caption rows; ``t2i_table`` (Q, R) their
    relevant items (-1 padding). Item -> text uses ``cap_item`` (every caption relevant to its item).

    Per chunk only counts are taken (a comparison written into ``buf`` and a float sum per
    direction and threshold); rows and columns whose target is tied by another candidate, which
    need the index order, are recounted exactly after the pass from their own rows (rare).

    On CPU with T >= 2 torch threads the chunks go to :data:`WORKERS` Python threads of T / WORKERS
    torch threads each, every one taking blocks of ``chunk_size / WORKERS`` rows in turn (the same
    memory as one ``chunk_size`` block): the matmul scales with torch's threads, but the small
    counting ops on a block (~1 ms each) do not, and side by side they run on a core each. Each
    thread has its own column counts and top-10 lists, summed and merged after the pass (exact:
    counts are integers, lists merge in ranking order).
    """
    dev, (m, n) = caps.device, (len(caps), len(items))
    nq, padded = len(t2i_queries), bool((t2i_table < 0).any())
    t2i_above = torch.zeros(nq, dtype=torch.float64, device=dev)  # (Q,) items scoring above the target
    t2i_tied = torch.zeros(nq, dtype=torch.float64, device=dev)  # (Q,) items scoring equal to it
    t2i_top = torch.zeros((nq, min(t2i_k, n)), dtype=torch.int64, device=dev)
    if i2t:
        pre = caption_targets(items, caps, cap_item)  # (M,)
        t_star, c_star = _best_caption(pre, cap_item, n)  # (N,), (N,); +inf / M for captionless items
        own = torch.empty(m, dtype=caps.dtype, device=dev)  # (M,) each caption's own score, from its block
        # Only captions scoring at least an item's weakest own caption can move a relevant caption
        # down its list, so that score is the floor of its top-10 (AP@10 needs nothing below it).
        floor = torch.full((n,), torch.inf, device=dev).scatter_reduce(0, cap_item, pre, "amin")
    threads = torch.get_num_threads()
    workers = WORKERS if dev.type == "cpu" and threads >= WORKERS and m > chunk_size else 1
    step = max(1, chunk_size // workers)
    starts = np.arange(0, m, step)
    bounds = np.searchsorted(t2i_queries.cpu().numpy(), np.append(starts, m))  # queries per chunk

    rows = min(step, m)
    rows_c = torch.arange(rows, device=dev)

    def state() -> tuple:
        """One worker's buffers, allocated here (this thread's malloc arena, not a short-lived thread's):
        (scratch, block, above (N,), tied (N,), ColumnTopK) or Nones without i2t."""
        buf = count_buffer(rows, n, dev)  # the comparisons' scratch, as big as a block
        scores = torch.empty((rows, n), dtype=caps.dtype, device=dev)  # every chunk's block
        if not i2t:
            return buf, scores, None, None, None
        return (buf, scores, torch.zeros(n, dtype=torch.float64, device=dev),  # (N,) captions above t*
                torch.zeros(n, dtype=torch.float64, device=dev),  # (N,) captions equal to t*, c* included
                ColumnTopK(n, MAP_K, dev, floor))

    def work(chunks: range, own_state: tuple) -> tuple:
        """The pass over the chunks ``chunks`` (ascending) with ``own_state``: (above, tied, ColumnTopK)."""
        if workers > 1:
            torch.set_num_threads(max(1, threads // workers))  # per thread (OpenMP): restored below for ours
        buf, scores, above, tied, tops = own_state
        for ci in chunks:
            lo = int(starts[ci])
            block = score_block(caps[lo : lo + step], items, scores)  # (c, N) in the one block buffer
            c, hi = block.shape[0], lo + block.shape[0]
            q_lo, q_hi = int(bounds[ci]), int(bounds[ci + 1])
            if q_hi > q_lo:  # text -> item: the queries of this chunk
                table = t2i_table[q_lo:q_hi]
                sub = block if q_hi - q_lo == c else block[t2i_queries[q_lo:q_hi] - lo]  # (q, N)
                vals = sub.gather(1, table.clamp(min=0))  # (q, R) scores of the relevant items
                t = (torch.where(table >= 0, vals, -torch.inf) if padded else vals).amax(1, keepdim=True)
                t2i_above[q_lo:q_hi] = torch.gt(sub, t, out=buf[: len(sub)]).sum(1)
                t2i_tied[q_lo:q_hi] = torch.eq(sub, t, out=buf[: len(sub)]).sum(1)
                if t2i_k:
                    t2i_top[q_lo:q_hi] = topk_rows(sub, t2i_k)[1]
            if i2t:
                own[lo:hi] = block[rows_c[:c], cap_item[lo:hi]]
                above += torch.gt(block, t_star, out=buf[:c]).sum(0)
                tied += torch.eq(block, t_star, out=buf[:c]).sum(0)
                tops.update(block, lo, buf)  # after the counts: it overwrites buf
        return above, tied, tops

    states = [state() for _ in range(workers)]
    if workers == 1:
        parts = [work(range(len(starts)), states[0])]
    else:  # worker w takes chunks w, w + workers, ...: ascending row order within each (ColumnTopK needs it);
        # worker 0 is this thread (one thread fewer to start)
        try:
            with ThreadPoolExecutor(workers - 1, thread_name_prefix="e2i-scan") as pool:
                others = [pool.submit(work, range(w, len(starts), workers), states[w]) for w in range(1, workers)]
                parts = [work(range(0, len(starts), workers), states[0])]
                parts += [f.result() for f in others]
        finally:  # after every worker has set its own: torch also keeps the last count for threads it starts
            torch.set_num_threads(threads)
    del states
    t2i_rank = 1 + t2i_above.long()
    redo = torch.nonzero(t2i_tied != 1).flatten()  # another item ties the best relevant one
    if len(redo):
        t2i_rank[redo] = _text_rows(caps[t2i_queries[redo]], items, t2i_table[redo], chunk_size)
    if not i2t:
        return Scan(t2i_rank, t2i_top, None, None)
    above, tied = sum(p[0] for p in parts), sum(p[1] for p in parts)
    i2t_top = merge_lists([p[2].result() for p in parts])[1] if workers > 1 else parts[0][2].result()[1]
    i2t_rank = torch.where(c_star < m, 1 + above.long(), 0)
    bad = torch.zeros(n, dtype=torch.bool, device=dev)
    bad[cap_item[own != pre]] = True  # the pre-pass disagrees with a block: t* was not the block's value
    redo = torch.nonzero(bad | ((c_star < m) & (tied != 1))).flatten()  # ... or another caption ties c*
    if len(redo):
        i2t_rank[redo], i2t_top[redo] = _item_rows(items[redo], caps, cap_item, redo, chunk_size)
    return Scan(t2i_rank, t2i_top, i2t_rank, i2t_top)


def _text_rows(caps_q, items, table, chunk_size):
    """Exact text -> item ranks of a few queries from their own rows (ties by index)."""
    ranks = []
    for lo in range(0, len(caps_q), chunk_size):
        block, tab = score_block(caps_q[lo : lo + chunk_size], items), table[lo : lo + chunk_size]
        t, r = best_target(torch.where(tab >= 0, block.gather(1, tab.clamp(min=0)), -torch.inf), tab)
        ranks.append(ranks_in_rows(block, t, r))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.int64, device=items.device)


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
        top = topk_rows(block, MAP_K)[1]  # (c, min(MAP_K, M)); -1 pads like ColumnTopK's lists
        tops.append(torch.nn.functional.pad(top, (0, MAP_K - top.shape[1]), value=-1))
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
        vals, idx = tops.result()
    return idx.long().cpu().numpy(), vals.float().cpu().numpy()
