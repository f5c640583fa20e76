"""The one-pass engine: top_k in both directions equals a stable argsort (with ties), the exact
fallback path for item -> text equals the pass (its lists down to each item's weakest own caption),
bad arguments are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from e2i.evaluate.column_topk import ColumnTopK, count_buffer, merge_lists
from e2i.evaluate import ranking
from e2i.evaluate.ranking import _item_rows, as_tensor, scan, score_block, top_k


def _case(seed: int, ties: bool):
    rng = np.random.default_rng(seed)
    cap_item = np.repeat(np.arange(50), rng.integers(1, 6, 50))
    items = rng.standard_normal((50, 4)).astype(np.float32)
    caps = (items[cap_item] + rng.standard_normal((len(cap_item), 4))).astype(np.float32)
    return (np.round(items), np.round(caps), cap_item) if ties else (items, caps, cap_item)


@pytest.mark.parametrize("ties", [False, True], ids=["continuous", "ties"])
@pytest.mark.parametrize("direction", ["text_to_item", "item_to_text"])
def test_top_k_equals_stable_argsort(direction, ties):
    items, caps, cap_item = _case(0, ties)
    scores = score_block(torch.from_numpy(caps), torch.from_numpy(items)).numpy()  # (M, N)
    if direction == "item_to_text":
        scores = scores.T
    for k, chunk in ((1, 7), (12, 5), (12, 1000), (10_000, 16)):
        idx, val = top_k(items, caps, k, direction=direction, chunk_size=chunk)
        kk = min(k, scores.shape[1])
        ref = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
        assert idx.shape == (scores.shape[0], kk) and idx.dtype == np.int64 and val.dtype == np.float32
        assert np.array_equal(idx, ref), (k, chunk)
        # values: same order; last bits may differ between block shapes of a BLAS (not used for ranks)
        np.testing.assert_allclose(val, np.take_along_axis(scores, ref, 1), rtol=1e-6, atol=1e-6)


def test_item_rows_fallback_equals_the_pass():
    items, caps, cap_item = _case(1, ties=True)
    it, cp, ci = as_tensor(items), as_tensor(caps), torch.from_numpy(cap_item)
    res = scan(it, cp, ci, torch.arange(len(cp)), ci[:, None], chunk_size=9)
    ids = torch.arange(len(it))
    rank, top = _item_rows(it, cp, ci, ids, chunk_size=4)
    assert torch.equal(rank, res.i2t_rank)
    # The pass keeps each item's list exact down to its weakest own caption's score (all AP@10 reads)
    scores = score_block(it, cp)  # (N, M)
    floor = torch.full((len(it),), torch.inf).scatter_reduce(0, ci, scores[ci, torch.arange(len(cp))], "amin")
    exact_part = torch.gather(scores, 1, top.clamp(min=0)) >= floor[:, None]  # (N, 10)
    assert exact_part.sum() > len(it)  # the comparison covers more than each item's first entry
    assert torch.equal(torch.where(exact_part, top, -2), torch.where(exact_part, res.i2t_top, -2))


def test_top_k_rejects_bad_arguments():
    items, caps, _ = _case(2, ties=False)
    with pytest.raises(ValueError, match="direction"):
        top_k(items, caps, 3, direction="sideways")
    with pytest.raises(ValueError, match="k must be"):
        top_k(items, caps, 0)
    with pytest.raises(ValueError, match="embeddings"):
        top_k(items, caps[:, :2], 3)


@pytest.mark.parametrize("chunk", [3, 10, 64])
def test_column_topk_with_floor_and_small_pending_arrays_equals_argsort(chunk):
    """Tiny pending arrays (2 x 3 columns) overflow and flush often; integer scores tie a lot. The
    lists equal a stable argsort wherever the score is at least the column's floor."""
    rng = np.random.default_rng(3)
    scores = torch.from_numpy(rng.integers(-40, 41, (200, 3)).astype(np.float32))  # (rows, columns)
    floor = torch.tensor([-torch.inf, -40.0, float(scores[:, 2].sort(descending=True).values[5])])  # mid-list
    tops = ColumnTopK(3, 10, "cpu", floor)
    for lo in range(0, 200, chunk):
        tops.update(scores[lo : lo + chunk], lo)
    vals, idx = tops.result()
    ref = torch.from_numpy(np.argsort(-scores.T.numpy(), axis=1, kind="stable")[:, :10].copy())  # (3, 10)
    ref_vals = torch.gather(scores.T, 1, ref)
    kept = ref_vals >= floor[:, None]
    assert kept[0].all() and kept[2].any() and not kept[2].all()  # the floor cuts column 2's list
    assert torch.equal(torch.where(kept, idx, -2), torch.where(kept, ref, -2))
    assert torch.equal(torch.where(kept, vals, 0), torch.where(kept, ref_vals, 0))


def test_count_buffer_is_exact_float32_below_2_24_else_float64():
    assert count_buffer(256, 5000, "cpu").dtype == torch.float32
    assert count_buffer(1, 1 << 24, "cpu").dtype == torch.float64  # sums of 2^24 ones leave float32


def test_merge_lists_equals_one_list_over_all_rows():
    """Lists of disjoint interleaved row sets (integer scores: many ties across the sets) merge into the
    stable-argsort list of all rows; -1 padding (a set with fewer than k rows) goes last."""
    rng = np.random.default_rng(4)
    scores = torch.from_numpy(rng.integers(-5, 6, (23, 4)).astype(np.float32))  # (rows, columns)
    parts = []
    for w in range(3):
        rows = torch.arange(w, 23, 3)
        tops = ColumnTopK(4, 10, "cpu")
        tops.update(scores[rows], 0)
        vals, local = tops.result()
        parts.append((vals, torch.where(local >= 0, rows[local.clamp(min=0)], -1)))  # local -> global rows
    vals, idx = merge_lists(parts)
    ref = torch.from_numpy(np.argsort(-scores.T.numpy(), axis=1, kind="stable")[:, :10].copy())  # (4, 10)
    assert torch.equal(idx, ref) and torch.equal(vals, torch.gather(scores.T, 1, ref))


@pytest.mark.parametrize("ties", [False, True], ids=["continuous", "ties"])
def test_scan_in_two_threads_equals_one(ties, monkeypatch):
    """The CPU pass split over ranking.WORKERS Python threads gives the one-thread pass's ranks and lists
    (ties across the threads' chunks included), and leaves the caller's torch thread count alone."""
    items, caps, cap_item = _case(5, ties)
    it, cp, ci = as_tensor(items), as_tensor(caps), torch.from_numpy(cap_item)
    table = ci[:, None]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # one torch thread: one worker
        one = scan(it, cp, ci, torch.arange(len(cp)), table, t2i_k=3, chunk_size=8)
        torch.set_num_threads(2)  # two: the chunks go to ranking.WORKERS threads
        calls = []
        real = ranking.ColumnTopK.update
        monkeypatch.setattr(ranking.ColumnTopK, "update", lambda self, *a, **k: (calls.append(id(self)), real(self, *a, **k)))
        two = scan(it, cp, ci, torch.arange(len(cp)), table, t2i_k=3, chunk_size=8)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(set(calls)) == ranking.WORKERS  # the pass really was split
    for a, b in zip((one.t2i_rank, one.t2i_top, one.i2t_rank), (two.t2i_rank, two.t2i_top, two.i2t_rank)):
        assert torch.equal(a, b)
    # item -> text lists: exact down to each item's weakest own caption (what AP@10 reads) in both
    scores = score_block(it, cp)  # (N, M)
    floor = torch.full((len(it),), torch.inf).scatter_reduce(0, ci, scores[ci, torch.arange(len(cp))], "amin")
    ref = torch.from_numpy(np.argsort(-scores.numpy(), axis=1, kind="stable")[:, :10].copy())  # (N, 10)
    exact = torch.gather(scores, 1, ref) >= floor[:, None]
    assert exact.sum() > len(it)
    for top in (one.i2t_top, two.i2t_top):
        assert torch.equal(torch.where(exact, top, -2), torch.where(exact, ref, -2))
