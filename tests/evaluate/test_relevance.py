"""Multi-relevance (DCASE 2025) text -> item metrics: hand-worked values with ties, brute force on random
cases with heavy ties, validation of the relevance pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from e2i.evaluate.metrics import retrieval_metrics, retrieval_metrics_bruteforce
from e2i.evaluate.relevance import Relevance, RelevanceError, build_relevance

# Items are one-hot, so scores = caption rows below (captions x 4 items); item 3 has no caption.
SCORES = np.array(
    [
        [0.9, 0.5, 0.5, 0.1],  # c0 ranks i0, i1, i2, i3 (i1 and i2 tie: lower index first)
        [0.2, 0.8, 0.3, 0.8],  # c1 ranks i1, i3, i2, i0 (i1 and i3 tie)
        [0.1, 0.2, 0.3, 0.4],  # c2 ranks i3, i2, i1, i0
    ],
    dtype=np.float32,
)
CAP_ITEM = np.array([0, 1, 2])
# c0 -> {i1: 2, i2: 1} (its own item i0 is NOT listed, so not relevant); c1 -> {i3: 3};
# c2 -> {i0: 1, i2: 0} (grade 0 = annotated not relevant)
REL = Relevance(np.array([0, 0, 1, 2, 2]), np.array([1, 2, 3, 0, 2]), np.array([2, 1, 3, 1, 0], np.float32))


@pytest.mark.parametrize("impl", [retrieval_metrics, retrieval_metrics_bruteforce])
def test_hand_worked_multi_relevance_with_ties(impl):
    m = impl(np.eye(4, dtype=np.float32), SCORES, CAP_ITEM, ks=(1, 2, 4), ci=False, relevance=REL, map_ks=(16, 10, 2))
    # relevant ranks: c0 {2, 3}, c1 {2}, c2 {4}; AP normalised by n_rel (DCASE 2025 baseline)
    ap16 = [(1 / 2 + 2 / 3) / 2, 1 / 2, 1 / 4]
    assert m["text_to_item/mAP@16"] == pytest.approx(sum(ap16) / 3)
    assert m["text_to_item/mAP@10"] == pytest.approx(sum(ap16) / 3)
    assert m["text_to_item/mAP@2"] == pytest.approx((1 / 4 + 1 / 2 + 0) / 3)  # c0: only rank 2 counts, / 2
    assert m["text_to_item/recall@1"] == 0.0
    assert m["text_to_item/recall@2"] == pytest.approx(2 / 3)
    assert m["text_to_item/recall@4"] == 1.0
    assert m["text_to_item/mean_rank"] == pytest.approx(8 / 3) and m["text_to_item/median_rank"] == 2.0
    assert m["text_to_item/num_queries"] == 3
    ndcg = [
        (2 / math.log2(3) + 1 / math.log2(4)) / (2 + 1 / math.log2(3)),
        (3 / math.log2(3)) / 3,
        (1 / math.log2(5)) / 1,
    ]
    assert m["text_to_item/nDCG@10"] == pytest.approx(sum(ndcg) / 3)
    # item -> text is untouched by the relevance file: each item's own captions
    plain = impl(np.eye(4, dtype=np.float32), SCORES, CAP_ITEM, ks=(1, 2, 4), ci=False)
    assert {k: v for k, v in m.items() if k.startswith("item_to_text")} == {
        k: v for k, v in plain.items() if k.startswith("item_to_text")
    }
    assert "text_to_item/mAP@16" not in plain and "text_to_item/nDCG@10" not in plain


def test_without_grades_no_ndcg_and_own_items_helper():
    binary = Relevance(REL.query, REL.item)  # every listed pair relevant, c2 -> {i0, i2}
    m = retrieval_metrics(np.eye(4, dtype=np.float32), SCORES, CAP_ITEM, ks=(1,), ci=False, relevance=binary)
    assert "text_to_item/nDCG@10" not in m and set(m) >= {"text_to_item/mAP@16", "text_to_item/mAP@10"}
    # c2's relevant items i2, i0 sit at ranks 2 and 4: AP = (1/2 + 2/4) / 2
    assert m["text_to_item/mAP@16"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 / 2 + (1 / 2 + 2 / 4) / 2) / 3)
    own = binary.with_own_items(CAP_ITEM)  # adds (c0, i0) and (c1, i1); (c2, i2) is already there
    assert sorted(zip(own.query.tolist(), own.item.tolist())) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 3), (2, 0), (2, 2)]
    m = retrieval_metrics(np.eye(4, dtype=np.float32), SCORES, CAP_ITEM, ks=(1,), ci=False, relevance=own)
    assert m["text_to_item/recall@1"] == pytest.approx(2 / 3)  # c0 and c1 now hit at rank 1


def _random_case(seed: int, ties: bool):
    rng = np.random.default_rng(seed)
    n = 70
    cap_item = np.repeat(np.arange(n), rng.integers(1, 6, n))  # 1-5 captions per item
    items = rng.standard_normal((n, 5)).astype(np.float32)
    caps = (items[cap_item] + rng.standard_normal((len(cap_item), 5))).astype(np.float32)
    if ties:  # rounded embeddings: exact equal scores everywhere
        items, caps = np.round(items), np.round(caps)
    pairs = np.unique(rng.integers(0, len(cap_item), 150) * n + rng.integers(0, n, 150))
    grades = rng.integers(0, 4, len(pairs)).astype(np.float32)
    return items, caps, cap_item, Relevance(pairs // n, pairs % n, grades)


@pytest.mark.parametrize(("seed", "ties"), [(0, False), (1, True)], ids=["continuous", "ties"])
def test_chunked_equals_bruteforce_with_relevance(seed, ties):
    items, caps, cap_item, rel = _random_case(seed, ties)
    for relevance in (rel, Relevance(rel.query, rel.item).with_own_items(cap_item)):
        ref = retrieval_metrics_bruteforce(items, caps, cap_item, ks=(1, 5, 10), ci=True, n_boot=40, relevance=relevance)
        assert ref["text_to_item/num_queries"] == len(relevance.table()[0]) > 50
        for chunk in (7, 4096):
            got = retrieval_metrics(
                items, caps, cap_item, ks=(1, 5, 10), chunk_size=chunk, ci=True, n_boot=40, relevance=relevance
            )
            assert got.keys() == ref.keys()
            for key, value in got.items():
                np.testing.assert_allclose(value, ref[key], rtol=1e-12, err_msg=f"{key} chunk {chunk}")


def test_relevance_validation_messages():
    with pytest.raises(RelevanceError, match="pair 2: .*listed twice"):
        Relevance(np.array([0, 1, 0]), np.array([3, 3, 3]))
    with pytest.raises(RelevanceError, match="pair 1: grade nan"):
        Relevance(np.array([0, 1]), np.array([0, 0]), np.array([1, np.nan]))
    with pytest.raises(RelevanceError, match="query has 2 rows but item has 1"):
        Relevance(np.array([0, 1]), np.array([0]))
    with pytest.raises(RelevanceError, match="integer"):
        Relevance(np.array([0.5]), np.array([0]))
    with pytest.raises(RelevanceError, match="pair 1: item row 9 is out of range"):
        retrieval_metrics(np.eye(4, dtype=np.float32), SCORES, CAP_ITEM, relevance=Relevance([0, 1], [1, 9]))
    with pytest.raises(ValueError, match="map_ks"):
        retrieval_metrics(np.eye(4, dtype=np.float32), SCORES, CAP_ITEM, relevance=REL, map_ks=(0,))


def test_build_relevance_maps_ids_and_names_bad_rows():
    rel = build_relevance(
        ["a", "b", "a"], ["x", "y", "y"], [1, 0.5, 2], caption_index={"a": 2, "b": 0}, item_index={"x": 1, "y": 0}
    )
    assert rel.query.tolist() == [2, 0, 2] and rel.item.tolist() == [1, 0, 0]
    assert rel.grade.dtype == np.float32 and rel.grade.tolist() == [1, 0.5, 2]
    with pytest.raises(RelevanceError, match=r"rel.csv: row 1: item 'zz' is not in the evaluated split"):
        build_relevance(["a", "a"], ["x", "zz"], caption_index={"a": 0}, item_index={"x": 1}, source="rel.csv")
    with pytest.raises(RelevanceError, match=r"rel.csv: pair 1: .*listed twice"):
        build_relevance(["a", "a"], ["x", "x"], caption_index={"a": 0}, item_index={"x": 1}, source="rel.csv")
