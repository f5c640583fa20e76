"""Exact top-k lists and threshold counts on score blocks: the building blocks of the one pass.

* :func:`count_buffer`: the float scratch comparisons write 0/1 into, because a float sum counts
  about twice as fast as a bool mask's (which converts to an integer copy first);
* :func:`topk_rows`: exact top-k of each row, ties by ascending index;
* :class:`ColumnTopK`: a running exact top-k of every column of a matrix seen in row chunks;
  :func:`merge_lists` joins the lists of several such runs over disjoint rows.

Order convention: score descending, equal scores by ascending index. Pure torch: no ray import.
"""

from __future__ import annotations

import torch

COUNT_EXACT = 1 << 24  # float32 represents every integer below this exactly
SLAB = 512  # columns per transposed copy (first chunk) and per merge sort


def count_buffer(rows: int, cols: int, device) -> torch.Tensor:
    """(rows, cols) scratch that the comparisons write 0/1 into before counting.

    Floats, not bools: on CPU ``bool_mask.sum(dim)`` first converts the whole mask to an integer
    copy, while a float sum is one vectorised pass (about 2x faster per count). float32 holds every
    integer below 2^24 exactly, so the counts are exact up to 16.7 M candidates a row or chunk rows a
    column; beyond that the scratch is float64 (exact to 2^53).
    """
    dtype = torch.float32 if max(rows, cols) < COUNT_EXACT else torch.float64
    return torch.empty((rows, cols), dtype=dtype, device=device)


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


def _above(block: torch.Tensor, kth: torch.Tensor, buf: torch.Tensor | None = None):
    """(rows, cols) of the entries of ``block`` (c, C) above their column's ``kth`` (C,), rows
    ascending within a column.

    Candidates are sparse (a column gains about k / chunk-number of them per chunk), and finding a
    few entries in a big mask with ``torch.nonzero`` costs more than the comparison. So a column
    maximum first finds the touched columns; when they are few only those are compared.
    """
    touched = torch.nonzero(block.amax(0) > kth).flatten()  # (U,) columns with a candidate
    if 8 * len(touched) >= block.shape[1]:
        return _above_in(block, kth, buf)
    if len(touched) == 0:
        return touched, touched
    rows, cols = _above_in(block.index_select(1, touched), kth[touched])
    return rows, touched[cols]


def _above_in(block: torch.Tensor, kth: torch.Tensor, buf: torch.Tensor | None = None):
    """:func:`_above` on columns that mostly have candidates. Two per-column sums read the 0/1 mask
    for every column's candidate count and the sum of their row numbers (``r (c,) @ mask (c, C)``):
    a column with one candidate has its row in that sum (one nonzero term: exact in float32); only
    columns with several go through ``nonzero``."""
    c, width = block.shape
    mask = torch.gt(block, kth, out=count_buffer(c, width, block.device) if buf is None else buf[:c])
    count = mask.sum(0)  # (C,)
    many = torch.nonzero(count > 1).flatten()
    if 4 * len(many) > width:  # early chunks: most columns gain several, one nonzero over the mask is cheaper
        return torch.nonzero(mask, as_tuple=True)  # row-major: rows ascending within a column
    one = torch.nonzero(count == 1).flatten()
    rows = (torch.arange(c, dtype=mask.dtype, device=mask.device) @ mask)[one].long()  # (U1,) the one row
    cols = one
    if len(many):
        r, j = torch.nonzero(mask.index_select(1, many), as_tuple=True)  # row-major: rows ascending
        rows, cols = torch.cat([rows, r]), torch.cat([cols, many[j]])
    return rows, cols


def merge_lists(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k lists of the same columns over disjoint row sets [(values (C, k), index (C, k))] -> the
    lists of their union (C, k): score desc, equal scores by ascending index; -inf / -1 padding last."""
    k = parts[0][0].shape[1]
    vals, idx = torch.cat([v for v, _ in parts], 1), torch.cat([i for _, i in parts], 1)  # (C, P k)
    big = torch.iinfo(torch.int64).max
    perm = torch.argsort(torch.where(idx < 0, big, idx), dim=1, stable=True)  # index asc, padding last
    vals, idx = vals.gather(1, perm), idx.gather(1, perm)
    perm = torch.argsort(-vals, dim=1, stable=True)[:, :k]  # score desc; equal scores keep index order
    return vals.gather(1, perm), idx.gather(1, perm)


class ColumnTopK:
    """Running exact top-``k`` of every column of a matrix seen in row chunks of ascending row index.

    :meth:`result` gives ``values``/``index`` (C, k): best first; -inf / -1 while a column has fewer
    than k rows. A chunk's candidates are its entries above their column's current k-th value (a later
    row that only ties it ranks after it). They wait in pending arrays that are merged (one stable
    sort per slab of columns) when full (``PENDING`` x C entries) and at the end. Between merges the
    k-th values are stale, lower than they could be: a few more candidates get in, no exactness is
    lost, and the merge runs a handful of times (candidates thin out like k / chunks seen), not per
    chunk.
    """

    PENDING = 2  # pending arrays hold PENDING x columns candidates

    def __init__(self, columns: int, k: int, device, floor: torch.Tensor | None = None) -> None:
        self.k, self.columns = k, columns
        self.values = torch.full((columns, k), -torch.inf, device=device)
        self.index = torch.full((columns, k), -1, dtype=torch.int64, device=device)
        # floor (C,): after the first chunk, entries below a column's floor are not kept (the lists
        # stay exact down to it); the next float below it makes ``> threshold`` keep ties with it.
        self._floor = None if floor is None else torch.nextafter(floor, torch.tensor(-torch.inf, device=device))
        self._set_kth()
        self._seen = 0  # rows seen while the lists were not full
        self._full = False  # every column has k rows
        # Pending candidates live in three preallocated arrays (values, rows, cols): thousands of small
        # long-lived tensors between the chunks' temporaries would fragment the heap and grow RSS.
        cap = self.PENDING * columns
        self._pv = torch.empty(cap, device=device)
        self._pr = torch.empty(cap, dtype=torch.int64, device=device)
        self._pc = torch.empty(cap, dtype=torch.int64, device=device)
        self._size = 0

    def update(self, block: torch.Tensor, row0: int, buf: torch.Tensor | None = None) -> None:
        """Take the chunk ``block`` (c, C) whose first row is ``row0``; ``buf``: optional
        :func:`count_buffer` of at least (c, C) used as scratch."""
        if not self._full and self._seen == 0 and len(block) >= self.k:  # the first chunk fills every list
            for lo in range(0, self.columns, SLAB):  # exact top-k per column, a slab of columns at a time
                vals, rows = topk_rows(block[:, lo : lo + SLAB].T, self.k)  # (slab, k): a slab-sized copy
                self.values[lo : lo + SLAB], self.index[lo : lo + SLAB] = vals, rows + row0
            self._set_kth()
        elif not self._full:  # fewer than k rows so far (chunks shorter than k): take every entry
            row, col = torch.nonzero(torch.ones_like(block, dtype=torch.bool), as_tuple=True)
            self._merge(block[row, col], row + row0, col)
        if not self._full:
            self._seen += len(block)
            self._full = self._seen >= self.k
            return
        row, col = _above(block, self._kth, buf)
        if self._size + len(row) > len(self._pv):
            self._flush()
        if len(row) > len(self._pv):  # more candidates than the pending arrays hold: merge them now
            self._merge(block[row, col], row + row0, col)
        elif len(row):
            end = self._size + len(row)
            self._pv[self._size : end], self._pr[self._size : end], self._pc[self._size : end] = block[row, col], row + row0, col
            self._size = end

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(values (C, k), index (C, k) int64) of everything seen so far."""
        self._flush()
        return self.values, self.index

    def _flush(self) -> None:
        if self._size:
            size, self._size = self._size, 0
            self._merge(self._pv[:size], self._pr[:size], self._pc[:size])

    def _merge(self, vals: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> None:
        """Current lists + candidates, per slab of SLAB columns: one stable sort by (column asc,
        score desc), k kept per column; slabs bound the sort's memory to SLAB x (k + candidates).

        Row order needs no key: in each column the current entries (rows of earlier chunks, in ranking
        order) come first and the candidates follow with rows ascending, so the stable sorts leave
        equal scores in index order. Every column has its k current entries (padding -inf / -1
        included), so exactly k are kept.
        """
        dev, k = vals.device, self.k
        order = torch.argsort(cols, stable=True)  # candidates grouped by column, rows still ascending
        vals, rows, cols = vals[order], rows[order], cols[order]
        edges = torch.searchsorted(cols, torch.arange(0, self.columns + SLAB, SLAB, device=dev)).tolist()
        for i, lo in enumerate(range(0, self.columns, SLAB)):
            hi, (a, b) = min(lo + SLAB, self.columns), edges[i : i + 2]
            if a == b:
                continue  # no candidate in this slab
            own = torch.arange(hi - lo, device=dev).repeat_interleave(k)  # (w*k,) slab column of each entry
            col = torch.cat([own, cols[a:b] - lo])
            val = torch.cat([self.values[lo:hi].flatten(), vals[a:b]])
            row = torch.cat([self.index[lo:hi].flatten(), rows[a:b]])
            key = (col << 32) | (0x7FFFFFFF - _ordered_bits(val))  # int64: column, then score desc
            perm = torch.sort(key, stable=True).indices
            keep = perm[_position_in_group(col[perm]) < k]  # (w*k,) column-major, best first
            self.values[lo:hi], self.index[lo:hi] = val[keep].view(hi - lo, k), row[keep].view(hi - lo, k)
        self._set_kth()

    def _set_kth(self) -> None:
        """The candidates' threshold (C,): the k-th value, or the floor when higher. Contiguous: a
        strided view would slow every comparison ~3x."""
        kth = self.values[:, -1]
        self._kth = (kth if self._floor is None else torch.maximum(kth, self._floor)).contiguous()


def _ordered_bits(x: torch.Tensor) -> torch.Tensor:
    """float32 (n,) -> int64 in [-2^31, 2^31) with the same order as the floats (no NaN): the IEEE
    bits read as int32 grow with positive floats and shrink with negative ones, so the negatives'
    magnitude bits are flipped. ``x + 0.0`` turns -0.0 into +0.0 (equal scores, equal keys)."""
    bits = (x.float() + 0.0).view(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()
