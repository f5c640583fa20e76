"""``data.train`` of a train config: parsing, one-line errors, paths, overrides, a tune space over the mix."""

from __future__ import annotations

import optuna
import pytest
import yaml

from e2i.config import TrainConfig, load_train_config, save_train_config, train_config_from_dict
from e2i.errors import ConfigError
from e2i.store.synthetic import make_synthetic_store
from e2i.train.loop import load_data
from e2i.train_parts import TrainPart
from e2i.tune.space import load_space, space_from_dict

MIX = {"store": "stores/toy", "train": [{"store": "stores/toy", "split": "train", "repeat": 1},
                                        {"store": "stores/toy_gen", "split": "train", "repeat": 3}]}


def test_parts_are_typed_and_the_single_store_form_is_the_default():
    cfg = train_config_from_dict({"data": MIX})
    assert cfg.data.train == (TrainPart("stores/toy", "train", 1.0),
                              TrainPart("stores/toy_gen", "train", 3.0))
    parts = [{"store": "a", "weight": 0.25}, {"store": "b", "weight": 0.75}]
    weighted = train_config_from_dict({"data": {"train": parts}})
    assert [p.weight for p in weighted.data.train] == [0.25, 0.75] and weighted.data.train[0].split == "train"
    assert TrainConfig().data.train == () and TrainConfig().data.train_split == "train"
    assert train_config_from_dict({"data": {"train": None}}).data.train == ()


@pytest.mark.parametrize(("data", "expected"), [
    ({"train": [{"store": "a"}, {"store": "b", "repeat": 2, "weight": 0.5}]},
     "x.yaml: data.train[1].weight: give repeat or weight, not both"),
    ({"train": [{"store": "a", "weight": 0.5}, {"store": "b", "repeat": 2}]},
     ("x.yaml: data.train[1].weight: needed on every part when one has a weight (train[0] has one; use "
      "weights or repeats, not both)")),
    ({"train": [{"store": "a"}, {"store": "a/", "repeat": 2}]},
     "x.yaml: data.train[1].store: a/train is also train[0] (give one part a repeat instead)"),
    ({"train": [{"store": "a"}, {"split": "train"}]}, "x.yaml: data.train[1].store: must not be empty"),
    ({"train": [{"store": "a", "repeat": 0}]}, "x.yaml: data.train[0].repeat: must be > 0, got 0.0"),
    ({"train": [{"store": "a", "repeats": 2}]},
     "x.yaml: data.train[0].repeats: unknown key (valid keys: repeat, split, store, weight)"),
    ({"train": {"store": "a"}}, "x.yaml: data.train: expected a list of mappings, got dict"),
    ({"train": [{"store": "a"}], "train_split": "train_subset"},
     ("x.yaml: data.train_split: unused when data.train lists the parts (got 'train_subset'; give each part "
      "its split)")),
])
def test_bad_parts_are_one_line_errors_naming_the_field(data, expected):
    with pytest.raises(ConfigError) as err:
        train_config_from_dict({"data": data}, "x.yaml")
    assert str(err.value) == expected


def test_part_paths_resolve_like_data_store_and_the_saved_config_reruns_elsewhere(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "mix.yaml").write_text(yaml.safe_dump({"data": MIX}))
    monkeypatch.chdir(tmp_path / "a")
    cfg = load_train_config("mix.yaml", ["data.train[1].repeat=5"])
    assert [p.store for p in cfg.data.train] == [f"{tmp_path}/a/stores/toy", f"{tmp_path}/a/stores/toy_gen"]
    assert cfg.data.train[1].repeat == 5.0
    assert cfg.paths_as_written["data.train[1].store"] == "stores/toy_gen"
    save_train_config(cfg, tmp_path / "a" / "saved.yaml")
    monkeypatch.chdir(tmp_path / "b")
    again = load_train_config(tmp_path / "a" / "saved.yaml")
    assert again.data == cfg.data and again.paths_as_written == cfg.paths_as_written
    moved = load_train_config(tmp_path / "a" / "saved.yaml", ["data.train[1].store=gen2"])
    assert moved.data.train[1].store == f"{tmp_path}/b/gen2"
    assert moved.paths_as_written["data.train[1].store"] == "gen2"
    one = load_train_config(tmp_path / "a" / "saved.yaml", {"data.train": [{"store": "only"}]})
    assert "data.train[1].store" not in one.paths_as_written  # a part no longer listed is dropped
    assert cfg.replace({"data.train[0].repeat": 2}).data.train[0].repeat == 2.0  # on to_dict()'s tuple
    with pytest.raises(ConfigError, match=r"/a/mix.yaml \(--set\): data.train\[2\].repeat: \[2\]: no such "
                       r"entry \(the list has 2 entries\)$"):
        load_train_config(tmp_path / "a" / "mix.yaml", ["data.train[2].repeat=1"])
    with pytest.raises(ConfigError, match=r"data.train.repeat: 'train' is a list; index it, e.g. \[0\]$"):
        load_train_config(tmp_path / "a" / "mix.yaml", ["data.train.repeat=1"])
    with pytest.raises(ConfigError, match=r"data.train\[x\].repeat: 'train\[x\]': an index must look like"):
        load_train_config(tmp_path / "a" / "mix.yaml", ["data.train[x].repeat=1"])


def test_single_store_data_is_unchanged_and_a_mismatched_val_split_is_named(tmp_path):
    store = make_synthetic_store(tmp_path / "toy", n_items=40, item_dim=8, caption_dim=6,
                                 splits={"train": 30, "val": 10}, seed=0)
    other = make_synthetic_store(tmp_path / "wide", n_items=20, item_dim=9, caption_dim=6,
                                 splits={"train": 20}, seed=1)
    train, val = load_data(TrainConfig().replace({"data.store": str(store), "data.train_subset": 12}))
    assert (train.num_items, train.num_captions, val.num_items) == (12, 60, 10)
    assert train.item_ids[0] == "syn_000000" and train.manifest.get("mix") is None  # ids as stored
    bad = TrainConfig().replace({"data.store": str(other), "data.val_split": "train",
                                 "data.train": [{"store": str(store)}]})
    with pytest.raises(ConfigError) as err:
        load_data(bad)
    assert str(err.value) == (f"data.store: {other}/train has item/caption embeddings of dim 9/6, the "
                              "data.train parts 8/6")


def _space(tmp_path, space: dict) -> dict:
    return {"base": {"data": {"store": str(tmp_path / "toy"), "train": [
        {"store": str(tmp_path / "toy")}, {"store": str(tmp_path / "toy_gen"), "repeat": 1}]}},
        "space": space, "scheduler": {"max_t": 2, "grace_period": 1}}


def test_a_tune_space_searches_the_repeat_of_the_generated_part(tmp_path):
    space = space_from_dict(_space(tmp_path, {"data.train[1].repeat": {"choice": [1, 3, 5]},
                                              "optim.lr": {"loguniform": [1e-4, 1e-2]}}),
                            name="mix", source="mix.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        cfg = space.trial_config(space.sample(trial))
        seen.add(cfg.data.train[1].repeat)
        assert cfg.data.train[0].repeat is None and cfg.data.train[1].store == str(tmp_path / "toy_gen")
        study.tell(trial, 0.0)
    assert seen == {1.0, 3.0, 5.0}


@pytest.mark.parametrize(("space", "expected"), [
    ({"data.train[2].repeat": {"choice": [1, 3]}},
     ("mix.yaml: space: sampled config (data.train[2].repeat=1.0) is invalid: data.train[2].repeat: [2]: "
      "no such entry (the list has 2 entries)")),
    ({"data.train[1].weight": {"uniform": [0.1, 0.9]}},
     ("mix.yaml: space: sampled config (data.train[1].weight=0.1) is invalid: data.train[1].weight: give "
      "repeat or weight, not both")),
    ({"data.train[1].store": {"choice": ["a", "b"]}},
     "mix.yaml: space.data.train[1].store: cannot be searched"),
])
def test_a_mix_the_base_cannot_take_is_a_load_error(tmp_path, space, expected):
    with pytest.raises(ConfigError) as err:
        space_from_dict(_space(tmp_path, space), name="mix", source="mix.yaml")
    assert str(err.value).startswith(expected)


def test_shipped_mix_config_and_a_space_file_over_it(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cfg = load_train_config(root / "configs" / "mix.yaml")
    assert [(p.split, p.repeat) for p in cfg.data.train] == [("train", 1.0), ("development", 3.0)]
    doc = {"base_config": str(root / "configs" / "mix.yaml"),
           "space": {"data.train[1].repeat": {"choice": [1, 2, 3]}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    assert [p.key for p in load_space(tmp_path / "s.yaml").params] == ["data.train[1].repeat"]
