"""Retrieval metrics: hand-worked examples, chunked == brute force (with ties), CIs, memory bound."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from e2i.evaluate.metrics import retrieval_metrics, retrieval_metrics_bruteforce

# Hand-made scores: items are one-hot, so scores = cap_emb @ I = the matrix below (captions x items).
HAND_SCORES = np.array(
    [
        [0.9, 0.1, 0.2],  # c0 -> item 0: rank 1
        [0.3, 0.8, 0.1],  # c1 -> item 0: rank 2
        [0.7, 0.6, 0.5],  # c2 -> item 1: rank 2
        [0.1, 0.2, 0.9],  # c3 -> item 1: rank 2
        [0.4, 0.5, 0.3],  # c4 -> item 2: rank 3
    ],
    dtype=np.float32,
)
HAND_CAP_ITEM = np.array([0, 0, 1, 1, 2])


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        np.testing.assert_allclose(value, b[key], rtol=1e-12, err_msg=key)


@pytest.mark.parametrize("impl", [retrieval_metrics, retrieval_metrics_bruteforce])
def test_hand_worked_example(impl):
    m = impl(np.eye(3, dtype=np.float32), HAND_SCORES, HAND_CAP_ITEM, ks=(1, 2, 3), ci=False)
    # text -> item: ranks [1, 2, 2, 2, 3]
    assert m["text_to_item/recall@1"] == pytest.approx(1 / 5)
    assert m["text_to_item/recall@2"] == pytest.approx(4 / 5)
    assert m["text_to_item/recall@3"] == pytest.approx(1.0)
    assert m["text_to_item/mAP@10"] == pytest.approx((1 + 1 / 2 + 1 / 2 + 1 / 2 + 1 / 3) / 5)
    assert m["text_to_item/median_rank"] == 2.0 and m["text_to_item/mean_rank"] == pytest.approx(2.0)
    assert m["text_to_item/num_queries"] == 5
    # item -> text (columns): item 0 ranks c0, c2, c4, c1, c3 -> relevant {c0, c1} at ranks 1, 4;
    # item 1 ranks c1, c2, c4, c3, c0 -> {c2, c3} at 2, 4; item 2 ranks c3, c2, c4, ... -> {c4} at 3.
    assert m["item_to_text/recall@1"] == pytest.approx(1 / 3)
    assert m["item_to_text/recall@2"] == pytest.approx(2 / 3)
    assert m["item_to_text/recall@3"] == pytest.approx(1.0)
    ap = [(1 / 1 + 2 / 4) / 2, (1 / 2 + 2 / 4) / 2, 1 / 3]
    assert m["item_to_text/mAP@10"] == pytest.approx(sum(ap) / 3)
    assert m["item_to_text/median_rank"] == 2.0 and m["item_to_text/mean_rank"] == pytest.approx(2.0)
    assert m["item_to_text/num_queries"] == 3


@pytest.mark.parametrize("impl", [retrieval_metrics, retrieval_metrics_bruteforce])
def test_map_at_10_truncates_and_ties_break_by_index(impl):
    """13 captions; item 0 owns c0 and c11, item 1 owns the rest.

    Item 0 scores caption j with 1 - j/100: its captions rank 1 and 12, so AP@10 = (1/1) / 2.
    Item 1 scores every caption 0 (all tied): ties go by caption index, so its 11 captions sit at
    ranks 2..11 and only the first 9 (ranks 2..10) count: AP = sum_{r=0..8} (r+1)/(r+2) / min(11, 10).
    """
    cap_item = np.array([0] + [1] * 10 + [0, 1])
    caps = np.zeros((13, 2), dtype=np.float32)
    caps[:, 0] = 1 - np.arange(13) / 100
    m = impl(np.eye(2, dtype=np.float32), caps, cap_item, ks=(1, 10), ci=False)
    ap_item1 = sum((r + 1) / (r + 2) for r in range(9)) / 10
    assert m["item_to_text/mAP@10"] == pytest.approx((0.5 + ap_item1) / 2)
    assert m["item_to_text/recall@1"] == pytest.approx(0.5)  # item 1's first caption is at rank 2
    assert m["item_to_text/mean_rank"] == pytest.approx(1.5)
    # text -> item: item 0 scores 1 - j/100 > 0 = item 1 for every caption -> item 0 is rank 1
    t2i_ranks = np.where(cap_item == 0, 1, 2)
    assert m["text_to_item/mean_rank"] == pytest.approx(t2i_ranks.mean())
    assert m["text_to_item/mAP@10"] == pytest.approx((1 / t2i_ranks).mean())


def test_tied_scores_rank_lower_index_first():
    """All-zero scores: every query ranks candidates by index."""
    cap_item = np.array([2, 0, 1, 1])
    m = retrieval_metrics(
        np.zeros((3, 4), np.float32), np.zeros((4, 4), np.float32), cap_item, ks=(1,), ci=False
    )
    assert m["text_to_item/mean_rank"] == pytest.approx((3 + 1 + 2 + 2) / 4)  # rank = item index + 1
    # item 0 -> c1 at rank 2; item 1 -> c2 at rank 3; item 2 -> c0 at rank 1
    assert m["item_to_text/mean_rank"] == pytest.approx(2.0)
    assert m["item_to_text/recall@1"] == pytest.approx(1 / 3)


def _random_setup(seed: int, n: int, m: int, d: int, integer: bool):
    rng = np.random.default_rng(seed)
    # skewed caption counts: some items with 0 captions, some with more than 10
    cap_item = np.minimum(rng.geometric(0.08, size=m) - 1, n - 1)
    if integer:  # small integers: exact dot products with many ties
        items = rng.integers(-1, 2, (n, d)).astype(np.float32)
        caps = items[cap_item] + rng.integers(-1, 2, (m, d))
    else:
        items = rng.standard_normal((n, d)).astype(np.float32)
        caps = items[cap_item] + 1.5 * rng.standard_normal((m, d))
    return items, caps.astype(np.float32), cap_item


@pytest.mark.parametrize("integer", [False, True], ids=["continuous", "ties"])
@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_equals_bruteforce(seed, integer):
    items, caps, cap_item = _random_setup(seed, n=120, m=500, d=6, integer=integer)
    assert (
        np.bincount(cap_item, minlength=120).max() > 10 and (np.bincount(cap_item, minlength=120) == 0).any()
    )
    ref = retrieval_metrics_bruteforce(items, caps, cap_item, ks=(1, 5, 10, 50), ci=True, n_boot=50)
    for chunk in (1, 7, 64, 1024):
        got = retrieval_metrics(
            items, caps, cap_item, ks=(1, 5, 10, 50), chunk_size=chunk, ci=True, n_boot=50
        )
        _close(got, ref)


def test_accepts_torch_tensors():
    items, caps, cap_item = _random_setup(3, n=40, m=100, d=5, integer=False)
    ref = retrieval_metrics(items, caps, cap_item, ci=False)
    got = retrieval_metrics(
        torch.from_numpy(items), torch.from_numpy(caps), torch.from_numpy(cap_item), ci=False
    )
    _close(got, ref)


def test_confidence_intervals():
    items, caps, cap_item = _random_setup(4, n=200, m=800, d=8, integer=False)
    m = retrieval_metrics(items, caps, cap_item, n_boot=300, seed=0)
    metric_keys = [k for k in m if not k.endswith(("/ci95", "/num_queries"))]
    assert len(metric_keys) == 2 * 6
    for key in metric_keys:
        low, high = m[f"{key}/ci95"]
        assert low <= m[key] <= high, key
        assert low < high or key.endswith("median_rank"), key
    assert m == retrieval_metrics(items, caps, cap_item, n_boot=300, seed=0)  # seeded: reproducible
    assert retrieval_metrics(items, caps, cap_item, n_boot=300, seed=1) != m
    assert not any(k.endswith("/ci95") for k in retrieval_metrics(items, caps, cap_item, ci=False))
    # perfect retrieval: degenerate interval at 1
    perfect = retrieval_metrics(
        np.eye(5, dtype=np.float32), np.eye(5, dtype=np.float32), np.arange(5), n_boot=50
    )
    assert perfect["text_to_item/recall@1/ci95"] == [1.0, 1.0]


def test_rejects_inconsistent_inputs():
    with pytest.raises(ValueError, match="cap_item values"):
        retrieval_metrics(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="embeddings"):
        retrieval_metrics(np.zeros((3, 4)), np.zeros((2, 5)), np.array([0, 1]))


def test_large_eval_stays_within_chunk_memory():
    """25 000 captions x 5 000 items at d=64: the full score matrix would be 500 MB (plus 1 GB for an
    argsort); the chunked run must add well under that to the process's peak memory. Run in a fresh
    interpreter so the peak RSS measures only this computation."""
    script = textwrap.dedent(
        """
        import resource, numpy as np
        from e2i.evaluate.metrics import retrieval_metrics
        rng = np.random.default_rng(0)
        items = rng.standard_normal((5000, 64), dtype=np.float32)
        cap_item = np.repeat(np.arange(5000), 5)
        caps = items[cap_item] + 2 * rng.standard_normal((25000, 64), dtype=np.float32)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        m = retrieval_metrics(items, caps, cap_item, chunk_size=1024, n_boot=100)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(grown // 1024, m["text_to_item/recall@10"], m["item_to_text/recall@10"], m["text_to_item/num_queries"])
        """
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    grown_mb, t2i_r10, i2t_r10, queries = out.split()
    assert int(grown_mb) < 400, f"peak memory grew by {grown_mb} MB"
    assert int(queries) == 25000
    assert 0.5 < float(t2i_r10) < 1.0 and float(i2t_r10) > float(t2i_r10)  # real signal, far above chance
