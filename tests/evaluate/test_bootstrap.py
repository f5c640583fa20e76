"""Item-level bootstrap: coverage against caption-level, exact weighted medians, paired comparison,
per-query output of retrieval_metrics."""

from __future__ import annotations

import numpy as np
import pytest

from e2i.evaluate.bootstrap import paired_bootstrap, percentile_ci, replicates
from e2i.evaluate.metrics import retrieval_metrics


def test_item_level_intervals_cover_where_caption_level_undercover():
    """200 synthetic test sets: 150 items x 5 captions, hit probability drawn per item (difficulty
    depends on the item), true R@1 = 0.5. Intervals that resample captions treat 5 correlated
    captions as independent and cover far less than 95 %; resampling items covers ~95 %."""
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(150), 5)
    covered = {"caption": 0, "item": 0}
    draws = 200
    for d in range(draws):
        p = rng.uniform(0, 1, 150)  # per-item difficulty, mean 0.5
        hits = (rng.uniform(size=750) < p[clusters]).astype(np.float64)[:, None]  # (Q, 1)
        for name, cl in (("caption", None), ("item", clusters)):
            rep, _ = replicates(hits, np.zeros((750, 0)), cl, n_boot=300, seed=d)
            low, high = percentile_ci(rep)[0]
            covered[name] += low <= 0.5 <= high
    caption, item = covered["caption"] / draws, covered["item"] / draws
    assert caption < 0.86, f"caption-level coverage {caption}"  # ~0.80 expected (design effect 2.3)
    assert item >= 0.9, f"item-level coverage {item}"


def test_replicate_medians_equal_explicit_resamples():
    rng = np.random.default_rng(1)
    ranks = rng.integers(1, 30, 41).astype(np.float64)
    clusters = rng.integers(0, 9, 41)
    rep_mean, rep_med = replicates(ranks[:, None], ranks[:, None], clusters, n_boot=7, seed=3)
    # redo the same draws by hand: the cluster codes are the sorted unique ids
    uniq = np.unique(clusters)
    draws = np.random.default_rng(3).integers(0, len(uniq), size=(7, len(uniq)))
    for b in range(7):
        sample = np.concatenate([ranks[clusters == uniq[c]] for c in draws[b]])
        assert rep_med[b, 0] == np.median(sample)
        assert rep_mean[b, 0] == pytest.approx(sample.mean(), rel=1e-12)


def _embeddings(seed=0, n=80):
    rng = np.random.default_rng(seed)
    cap_item = np.repeat(np.arange(n), rng.integers(1, 6, n))
    items = rng.standard_normal((n, 8)).astype(np.float32)
    caps = (items[cap_item] + 1.2 * rng.standard_normal((len(cap_item), 8))).astype(np.float32)
    return items, caps, cap_item


def test_per_query_output_matches_metrics_and_clusters_are_items():
    items, caps, cap_item = _embeddings()
    m, pq = retrieval_metrics(items, caps, cap_item, ci=False, per_query=True)
    assert m == retrieval_metrics(items, caps, cap_item, ci=False)
    assert np.array_equal(pq["text_to_item/cluster"], cap_item)
    assert np.array_equal(pq["text_to_item/query"], np.arange(len(cap_item)))
    assert np.array_equal(pq["item_to_text/cluster"], np.arange(len(items)))
    for key, value in m.items():
        name = key.rsplit("/", 1)[0]
        if key.endswith("median_rank"):
            assert value == np.median(pq[f"{name}/mean_rank"])
        elif not key.endswith("num_queries"):
            assert value == pytest.approx(pq[key].mean(), rel=1e-12), key


def test_paired_bootstrap_same_items_for_both_runs():
    items, caps, cap_item = _embeddings()
    _, a = retrieval_metrics(items, caps, cap_item, ci=False, per_query=True)
    rng = np.random.default_rng(5)
    better = caps + 0.8 * (items[cap_item] - caps) + 0.01 * rng.standard_normal(caps.shape).astype(np.float32)
    mb, b = retrieval_metrics(items, better, cap_item, ci=False, per_query=True)
    same = paired_bootstrap(a, a, n_boot=200)
    assert same["text_to_item/recall@1"]["diff"] == 0 and same["text_to_item/recall@1"]["ci95"] == [0.0, 0.0]
    out = paired_bootstrap(a, b, n_boot=200, seed=1)
    r1 = out["text_to_item/recall@1"]
    assert r1["b"] == mb["text_to_item/recall@1"] and r1["diff"] == pytest.approx(r1["b"] - r1["a"])
    assert 0 < r1["ci95"][0] <= r1["diff"] <= r1["ci95"][1]  # B is clearly better
    assert out["text_to_item/median_rank"]["diff"] <= 0 and "item_to_text/mAP@10" in out
    assert out == paired_bootstrap(a, b, n_boot=200, seed=1)
    # the difference's interval is narrower than unpaired intervals would suggest: same items in both
    low_a, high_a = retrieval_metrics(items, caps, cap_item, n_boot=200)["text_to_item/recall@1/ci95"]
    assert r1["ci95"][1] - r1["ci95"][0] < 2 * (high_a - low_a)
    shuffled = {**b, "text_to_item/cluster": b["text_to_item/cluster"][::-1]}
    with pytest.raises(ValueError, match="same queries"):
        paired_bootstrap(a, shuffled)
