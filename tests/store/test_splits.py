"""Item-level splits: sizes, determinism, spec errors, and no leakage through `e2i split`."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from e2i.errors import ConfigError
from e2i.store import StoreWriter, load_split, make_captions_table, make_items_table, splits
from e2i.store.splits import assign_splits, parse_spec


def ids(n):
    return np.array([f"item{i:04d}" for i in range(n)], dtype=object)


def test_sizes_fractions_counts_and_subset():
    out = assign_splits(ids(1000), {"train": 0.8, "val": 0.1, "test": 0.1, "train_subset": 100}, seed=0)
    assert {k: len(v) for k, v in out.items()} == {"train": 800, "val": 100, "test": 100, "train_subset": 100}
    everything = np.concatenate([out["train"], out["val"], out["test"]])
    assert len(np.unique(everything)) == 1000  # fractions summing to 1 assign every item exactly once
    assert set(out["train_subset"]) <= set(out["train"])
    assert all(np.all(np.diff(v) > 0) for v in out.values())  # sorted row indices
    # fractions that do not divide evenly still add up to N (largest remainders get the extra items)
    odd = assign_splits(ids(101), {"train": 0.7, "val": 0.15, "test": 0.15})
    assert sum(len(v) for v in odd.values()) == 101
    mixed = assign_splits(ids(50), {"train": 0.5, "test": 7})
    assert (len(mixed["train"]), len(mixed["test"])) == (25, 7)
    assert len(assign_splits(ids(50), {"train": 0.5, "train_subset": 0.2})["train_subset"]) == 5  # of train


def test_deterministic_by_seed_and_independent_of_row_order():
    item_ids = ids(500)
    spec = {"train": 0.6, "val": 0.2, "test": 0.2, "train_subset": 50}
    a, b = assign_splits(item_ids, spec, seed=3), assign_splits(item_ids, spec, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in spec)
    assert not np.array_equal(a["val"], assign_splits(item_ids, spec, seed=4)["val"])
    perm = np.random.default_rng(1).permutation(500)
    shuffled = assign_splits(item_ids[perm], spec, seed=3)
    assert all(set(item_ids[perm][shuffled[k]]) == set(item_ids[a[k]]) for k in spec)
    small = assign_splits(item_ids, {**spec, "train_subset": 20}, seed=3)["train_subset"]
    assert set(item_ids[small]) <= set(item_ids[a["train_subset"]])  # nested subsets for one seed


@pytest.mark.parametrize("spec, message", [
    ({"train": 0.8, "val": 0.3}, "add up to 1.1 > 1"),
    ({"train": -0.1}, "size must be > 0"),
    ({"train": 0}, "size must be > 0"),
    ({"train": 1.5}, "fraction 1.5 > 1"),
    ({"dev": 0.5}, "unknown split 'dev' (valid: train, val, test, train_subset)"),
    ({"train": "lots"}, "is not a number"),
    ({"train": 90, "test": 20}, "needs 110 items"),
    ({"train_subset": 10}, "needs a train split"),
    ({"train": 0.5, "train_subset": 80}, "train has 50"),
    ({"train": 0.5, "val": 0.001}, "gives 0 of 100 items"),
    ({}, "spec is empty"),
])
def test_bad_specs_raise_config_error(spec, message):
    with pytest.raises(ConfigError) as err:
        assign_splits(ids(100), spec)
    assert message in str(err.value)


def test_parse_spec_and_duplicate_ids():
    assert parse_spec("train=0.8, val=0.1,test=0.1,train_subset=100") == \
        {"train": 0.8, "val": 0.1, "test": 0.1, "train_subset": 100}
    assert isinstance(parse_spec("train=1")["train"], int) and isinstance(parse_spec("train=1.0")["train"], float)
    for bad in ("train", "train=", "train=abc"):
        with pytest.raises(ConfigError, match="--spec"):
            parse_spec(bad)
    with pytest.raises(ConfigError, match="duplicate item id 'item0003'"):
        assign_splits(np.concatenate([ids(10), ids(5)[3:4]]), {"train": 0.5})


def make_source(path, n_items=120, seed=0):
    """A source split with a variable number of captions (1..5) per item, captions shuffled."""
    rng = np.random.default_rng(seed)
    item_ids = ids(n_items)
    counts = rng.integers(1, 6, n_items)
    cap_item = np.repeat(np.arange(n_items), counts)
    order = rng.permutation(len(cap_item))
    cap_item = cap_item[order]
    cap_ids = [f"{item_ids[i]}#{k}" for k, i in enumerate(cap_item)]
    w = StoreWriter(path, dataset="toy", split="all", encoders={"audio": {"name": "a", "dim": 6}})
    w.write_shard("items", make_items_table(item_ids, item_ids, rng.normal(size=(n_items, 6))), "part-00000")
    w.write_shard("captions", make_captions_table(cap_ids, item_ids[cap_item], cap_ids,
                                                  rng.normal(size=(len(cap_ids), 3))), "part-00000")
    w.finalize()
    return load_split(path)


def test_split_command_has_no_leakage(tmp_path, capsys):
    src = make_source(tmp_path / "toy" / "all")
    parser = argparse.ArgumentParser()
    splits.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "toy" / "all"), "--spec", "train=0.7,val=0.15,test=0.15,train_subset=20",
                              "--seed", "7"])
    assert splits.run(args) == 0
    assert "wrote 4 splits" in capsys.readouterr().out
    out = {name: load_split(tmp_path / "toy" / name) for name in ("train", "val", "test", "train_subset")}
    item_sets = {name: set(d.item_ids) for name, d in out.items()}
    # no item in two of train/val/test, and together they cover the source
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not item_sets[a] & item_sets[b], (a, b)
    assert item_sets["train"] | item_sets["val"] | item_sets["test"] == set(src.item_ids)
    assert item_sets["train_subset"] <= item_sets["train"] and len(item_sets["train_subset"]) == 20
    # every caption goes with its item: each split holds exactly all captions of its items
    src_caps = {}
    for cid, row in zip(src.caption_ids, src.caption_item):
        src_caps.setdefault(src.item_ids[row], set()).add(cid)
    for name, d in out.items():
        got = {}
        for cid, row in zip(d.caption_ids, d.caption_item):
            got.setdefault(d.item_ids[row], set()).add(cid)
        assert got == {i: src_caps[i] for i in d.item_ids}, name
        assert d.manifest["split"] == name and d.manifest["split_seed"] == 7
    assert sum(out[n].num_captions for n in ("train", "val", "test")) == src.num_captions
    # re-running without --overwrite refuses; with it the result is identical (deterministic)
    with pytest.raises(ConfigError, match="already exists"):
        splits.run(args)
    args.overwrite = True
    splits.run(args)
    assert set(load_split(tmp_path / "toy" / "val").item_ids) == item_sets["val"]


def test_split_refuses_to_overwrite_its_source(tmp_path):
    make_source(tmp_path / "toy" / "train", n_items=20)
    with pytest.raises(ConfigError, match="is the source split itself"):
        splits.split_store(tmp_path / "toy" / "train", tmp_path / "toy", {"train": 0.5, "val": 0.5})
