"""e2i.store.mix: epoch draws per part, distinct item ids, dim/encoder checks, the record from files."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from e2i.errors import ConfigError
from e2i.store import SplitData, write_split
from e2i.store.mix import draw_rows, epoch_draws, load_mix, mix_record, mix_splits
from e2i.store.synthetic import synthetic_splits
from e2i.train_parts import TrainPart


def part(store="s", split="train", repeat=None, weight=None) -> TrainPart:
    return TrainPart(store=store, split=split, repeat=repeat, weight=weight)


def tiny_split(n_items: int, caps_per_item: int, dim: int = 4, seed: int = 0,
               encoder: str = "enc") -> SplitData:
    """Items ``toy_0000``... (the same ids in every store, as two toy corpora have) with k captions each."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"toy_{i:04d}" for i in range(n_items)], dtype=object)
    return SplitData(
        path=f"<tiny{seed}>", item_ids=ids, item_emb=rng.standard_normal((n_items, dim)).astype(np.float32),
        caption_ids=np.array([f"{i}#{c}" for i in ids for c in range(caps_per_item)], dtype=object),
        caption_item=np.repeat(np.arange(n_items, dtype=np.int64), caps_per_item),
        caption_emb=rng.standard_normal((n_items * caps_per_item, dim + 1)).astype(np.float32),
        manifest={"dataset": f"d{seed}", "encoders": {"audio": {"name": encoder}, "text": {"name": "t"}}},
    )


def test_epoch_draws_from_repeats_and_weights():
    # repeat: round(r * C_i); no repeat = 1
    assert epoch_draws([100, 40], [part(), part(repeat=3)]) == [100, 120]
    assert epoch_draws([100, 40], [part(repeat=0.5), part(repeat=2.5)]) == [50, 100]
    # weight: shares of sum(C) = 140 draws, weights normalised (1:3 -> 35 + 105)
    assert epoch_draws([100, 40], [part(weight=1), part(weight=3)]) == [35, 105]
    assert epoch_draws([100, 40], [part(weight=0.5), part(weight=0.5)]) == [70, 70]
    with pytest.raises(ConfigError, match=r"^data.train\[1\]: repeat 0.001 draws no caption row of s/train"):
        epoch_draws([100, 40], [part(), part(repeat=0.001)])


def test_draw_rows_repeats_every_row_then_a_seeded_sample():
    rows = draw_rows(4, 10, seed=0, index=1)  # 2.5x of 4 rows: each twice, two rows a third time
    counts = Counter(rows.tolist())
    assert len(rows) == 10 and set(counts) == {0, 1, 2, 3}
    assert sorted(counts.values()) == [2, 2, 3, 3]
    assert np.array_equal(rows, draw_rows(4, 10, seed=0, index=1))  # deterministic
    samples = {tuple(draw_rows(1000, 500, seed=s, index=i)) for s in (0, 1) for i in (0, 1)}
    assert len(samples) == 4  # (seed, part) pick different halves
    assert len(set(draw_rows(1000, 500, seed=0, index=0).tolist())) == 500  # without replacement


def test_mixed_items_keep_their_store_and_captions_point_at_their_own_item():
    a, b = tiny_split(5, 2, seed=0), tiny_split(3, 4, seed=1)  # both have items toy_0000...toy_0002
    mixed = mix_splits([a, b], [part("a"), part("b", repeat=3)], seed=0)
    assert mixed.num_items == 8 and len(set(mixed.item_ids)) == 8
    assert list(mixed.item_ids[:2]) == ["0:toy_0000", "0:toy_0001"] and mixed.item_ids[5] == "1:toy_0000"
    assert mixed.num_captions == 5 * 2 + 3 * 4 * 3
    # brute force: each mixed caption row is a row of its own store, and its item is that row's item
    sources = {"0": a, "1": b}
    for j in range(mixed.num_captions):
        store, cid = mixed.caption_ids[j].split(":", 1)
        src = sources[store]
        row = list(src.caption_ids).index(cid)
        np.testing.assert_array_equal(mixed.caption_emb[j], src.caption_emb[row])
        item = mixed.caption_item[j]
        assert mixed.item_ids[item] == f"{store}:{src.item_ids[src.caption_item[row]]}"
        np.testing.assert_array_equal(mixed.item_emb[item], src.item_emb[src.caption_item[row]])
    # store b's captions are drawn exactly 3 times each, store a's once; no caption of b points at a's items
    per_caption = Counter(mixed.caption_ids.tolist())
    assert {c for c, k in per_caption.items() if k == 3} == {f"1:{c}" for c in b.caption_ids}
    from_b = np.array([c.startswith("1:") for c in mixed.caption_ids])
    assert (mixed.caption_item[from_b] >= 5).all() and (mixed.caption_item[~from_b] < 5).all()
    record = mixed.manifest["mix"]
    assert [(p["items"], p["captions"], p["draws"], p["times"]) for p in record["parts"]] == [
        (5, 10, 10, 1.0), (3, 12, 36, 3.0)]
    assert record["parts"][1]["share"] == pytest.approx(36 / 46) and mixed.manifest["parents"] == ["a/train",
                                                                                                     "b/train"]


def test_parts_must_agree_on_dims_and_encoders():
    with pytest.raises(ConfigError) as err:
        mix_splits([tiny_split(3, 2), tiny_split(3, 2, dim=6)], [part("a"), part("gen")], seed=0)
    assert str(err.value) == ("data.train[1].store: gen/train has item embeddings of dim 6, data.train[0] "
                              "(a/train) has 4")
    with pytest.raises(ConfigError, match=r"^data.train\[1\].store: gen/train was embedded with audio "
                       r"encoder 'other', data.train\[0\] \(a/train\) with 'enc'"):
        mix_splits([tiny_split(3, 2), tiny_split(3, 2, encoder="other")], [part("a"), part("gen")], seed=0)


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    for name, seed in (("toy", 0), ("toy_gen", 1)):
        data = synthetic_splits(n_items=40, item_dim=8, caption_dim=6, splits={"train": 30, "val": 10},
                                seed=seed)
        for split in ("train", "val"):
            write_split(data[split], root / name / split, name, split, encoders={"audio": {"name": "syn"}})
    return root


@pytest.mark.parametrize("subset", [None, 7])
def test_record_from_the_files_equals_the_loaded_mix(two_stores, subset):
    parts = [part(str(two_stores / "toy")), part(str(two_stores / "toy_gen"), repeat=2.5)]
    loaded = load_mix(parts, seed=3, train_subset=subset)
    record = mix_record(parts, seed=3, train_subset=subset,
                        as_written={"data.train[1].store": "stores/toy_gen"})
    assert [p.pop("store_as_written") for p in record["parts"]] == [str(two_stores / "toy"), "stores/toy_gen"]
    assert record == loaded.manifest["mix"]
    n = subset or 30
    assert [(p["items"], p["captions"], p["draws"]) for p in record["parts"]] == [(n, 5 * n, 5 * n),
                                                                                  (n, 5 * n, round(12.5 * n))]
    assert record["parts"][1]["dataset"] == "toy_gen" and record["parts"][1]["created_at"]
    assert loaded.num_captions == record["draws_per_epoch"] and loaded.num_items == 2 * n
