"""Synthetic-latent stores: deterministic, item-level disjoint splits, a difficulty knob that works."""

import numpy as np
import pytest

from e2i.store import load_split
from e2i.store.synthetic import make_synthetic_store, synthetic_splits


def _linear_probe_r1(splits) -> float:
    """Text->item R@1 on test of a ridge map caption -> item embedding fitted on train (closed form)."""
    tr, te = splits["train"], splits["test"]
    x, y = tr.caption_emb, tr.item_emb[tr.caption_item]
    w = np.linalg.solve(x.T @ x + 10 * np.eye(x.shape[1]), x.T @ y)  # (Dc, Di)
    p = te.caption_emb @ w
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    items = te.item_emb / np.linalg.norm(te.item_emb, axis=1, keepdims=True)
    return float((np.argmax(p @ items.T, axis=1) == te.caption_item).mean())


def test_shapes_splits_and_subset():
    s = synthetic_splits(
        n_items=100,
        captions_per_item=3,
        item_dim=20,
        caption_dim=12,
        splits={"train": 60, "val": 0.2, "test": 20},
        train_subset=10,
    )
    assert {k: v.num_items for k, v in s.items()} == {"train": 60, "val": 20, "test": 20, "train_subset": 10}
    for split in s.values():
        assert split.item_emb.shape[1] == 20 and split.caption_emb.shape[1] == 12
        assert split.num_captions == 3 * split.num_items
        assert split.item_emb.dtype == np.float32 and split.item_emb.flags.c_contiguous
        # captions point at their own item: "syn_000007#2" -> item "syn_000007"
        owners = np.array([c.split("#")[0] for c in split.caption_ids], dtype=object)
        assert (split.item_ids[split.caption_item] == owners).all()
    ids = [set(s[k].item_ids) for k in ("train", "val", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert list(s["train_subset"].item_ids) == list(s["train"].item_ids[:10])  # first items of train
    np.testing.assert_array_equal(s["train_subset"].item_emb, s["train"].item_emb[:10])


def test_deterministic_by_seed():
    a, b = synthetic_splits(n_items=50, seed=3), synthetic_splits(n_items=50, seed=3)
    c = synthetic_splits(n_items=50, seed=4)
    np.testing.assert_array_equal(a["train"].caption_emb, b["train"].caption_emb)
    np.testing.assert_array_equal(a["test"].item_emb, b["test"].item_emb)
    assert not np.allclose(a["train"].item_emb, c["train"].item_emb)


def test_difficulty_is_a_noise_knob():
    r1 = [_linear_probe_r1(synthetic_splits(n_items=600, difficulty=d, seed=0)) for d in (0.0, 0.5, 1.5)]
    chance = 1 / 90
    assert r1[0] > 0.95  # noise-free: captions are functions of the item's latent
    assert r1[0] > r1[1] > r1[2]
    assert r1[1] > 10 * chance  # the default difficulty leaves real signal
    assert r1[2] < 0.1


def test_modalities_are_different_non_linear_maps():
    s = synthetic_splits(n_items=300, item_dim=16, caption_dim=16, difficulty=0.0)["train"]
    first_caption = s.caption_emb[::5]  # (N, 16), one caption per item, aligned with items
    # not the same map: the embeddings differ although the latents are equal
    assert not np.allclose(first_caption, s.item_emb, atol=0.1)
    # noise-free captions of an item are identical, and each output dim is standardised
    np.testing.assert_allclose(s.caption_emb[0], s.caption_emb[1], atol=1e-6)
    assert np.abs(s.item_emb.std(0) - 1).max() < 0.3


def test_store_round_trip(tmp_path):
    root = make_synthetic_store(tmp_path / "syn", n_items=80, item_dim=10, caption_dim=6, seed=1)
    mem = synthetic_splits(n_items=80, item_dim=10, caption_dim=6, seed=1)
    for name in ("train", "val", "test", "train_subset"):
        loaded = load_split(root / name)
        np.testing.assert_array_equal(loaded.item_emb, mem[name].item_emb)
        np.testing.assert_array_equal(loaded.caption_emb, mem[name].caption_emb)
        np.testing.assert_array_equal(loaded.caption_item, mem[name].caption_item)
        assert loaded.manifest["synthetic"]["seed"] == 1
        assert loaded.manifest["dims"] == {"items": 10, "captions": 6}


def test_bad_arguments():
    with pytest.raises(ValueError, match="splits need"):
        synthetic_splits(n_items=10, splits={"train": 8, "val": 5})
    with pytest.raises(ValueError, match="difficulty"):
        synthetic_splits(n_items=10, difficulty=-1)
