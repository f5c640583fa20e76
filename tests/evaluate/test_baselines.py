"""Closed-form baselines (`e2i baseline`): beat chance, cosine only when dims match, CCA exact on a
linear map, the CLI writes its JSON and fails in one line on a missing split."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from e2i.cli import main
from e2i.evaluate.baselines import METHODS, best_baseline, run_baselines
from e2i.store import load_split
from e2i.store.synthetic import make_synthetic_store, synthetic_splits
from e2i.store.writer import write_split


@pytest.fixture(scope="module")
def easy_store(tmp_path_factory):
    return make_synthetic_store(tmp_path_factory.mktemp("easy"), n_items=200, difficulty=0.2, seed=1)


@pytest.fixture(scope="module")
def easy_results(easy_store):
    return run_baselines(easy_store)


def test_every_method_beats_chance_by_a_clear_margin(easy_store, easy_results):
    n_test = len(load_split(easy_store / "test", with_text=False).item_ids)
    chance = 1.0 / n_test
    assert set(easy_results) == set(METHODS) - {"cosine"}  # item_dim 64 != caption_dim 48
    for name, metrics in easy_results.items():
        assert metrics["text_to_item/recall@1"] > 5 * chance, (name, metrics["text_to_item/recall@1"])
        assert metrics["item_to_text/recall@1"] > 5 * chance, name
        assert metrics["seconds"] >= 0 and "text_to_item/mAP@10" in metrics
    name, value = best_baseline(easy_results)
    assert value == max(m["text_to_item/recall@1"] for m in easy_results.values())
    assert easy_results[name]["text_to_item/recall@1"] == value
    assert best_baseline(easy_results, "text_to_item/median_rank")[1] == min(
        m["text_to_item/median_rank"] for m in easy_results.values()
    )


def test_cosine_only_when_dims_match(tmp_path, easy_results):
    assert "cosine" not in easy_results
    same = make_synthetic_store(tmp_path / "same", n_items=200, item_dim=32, caption_dim=32, difficulty=0.2)
    results = run_baselines(same, methods=("cosine", "ridge"))
    assert set(results) == {"cosine", "ridge"}
    assert 0.0 <= results["cosine"]["text_to_item/recall@1"] <= 1.0


def test_cca_is_near_perfect_when_captions_are_a_linear_map_of_items(tmp_path):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((64, 24))  # caption = item @ A
    for name, split in synthetic_splits(n_items=200, difficulty=0.3).items():
        linear = dataclasses.replace(split, caption_emb=np.ascontiguousarray(
            split.item_emb[split.caption_item] @ A, dtype=np.float32))
        write_split(linear, tmp_path / name, "linear", name,
                    encoders={"audio": {"name": "a", "dim": 64}, "text": {"name": "t", "dim": 24}})
    results = run_baselines(tmp_path, methods=("cca",), components=16)
    assert results["cca"]["text_to_item/recall@1"] > 0.97
    assert results["cca"]["params"]["components"] == 16


def test_cli_writes_json_and_exits_0(easy_store, tmp_path, capsys):
    assert main(["baseline", str(easy_store)]) == 0
    out = capsys.readouterr().out
    assert "cca" in out and "procrustes" in out and "t2i R@1" in out
    payload = json.loads((easy_store / "baselines.json").read_text())
    assert set(payload["results"]) == set(METHODS) - {"cosine"}
    assert payload["best"]["method"] in payload["results"] and payload["chance/recall@1"] == pytest.approx(1 / 30)
    target = tmp_path / "sub" / "b.json"
    assert main(["baseline", str(easy_store), "--json", str(target), "--components", "4",
                 "--test-split", "val"]) == 0
    assert json.loads(target.read_text())["results"]["cca"]["params"]["components"] == 4


def test_missing_split_is_one_line_exit_2(easy_store, capsys):
    assert main(["baseline", str(easy_store), "--test-split", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and err.startswith("e2i: error:")


def _pandas_store(root, seed=0):
    """A store written with pandas only (list<float> embeddings, no manifest), as other tools write it."""
    import pandas as pd

    for name, split in synthetic_splits(n_items=120, difficulty=0.3, seed=seed).items():
        (root / name / "items").mkdir(parents=True)
        (root / name / "captions").mkdir(parents=True)
        pd.DataFrame({"item_id": split.item_ids, "path": [f"{i}.wav" for i in split.item_ids],
                      "embedding": list(split.item_emb.astype(float))}).to_parquet(root / name / "items" / "0.parquet")
        pd.DataFrame({"caption_id": [f"c{j}" for j in range(split.num_captions)],
                      "item_id": [split.item_ids[i] for i in split.caption_item],
                      "text": ["a sound"] * split.num_captions,
                      "embedding": list(split.caption_emb.astype(float))}).to_parquet(root / name / "captions" / "0.parquet")
    return root


def test_cli_on_a_pandas_written_store(tmp_path, capsys):
    store = _pandas_store(tmp_path / "pd")
    assert main(["baseline", str(store)]) == 0
    out = capsys.readouterr().out
    assert "ridge" in out and "chance R@1" in out
    payload = json.loads((store / "baselines.json").read_text())
    assert payload["results"]["pls"]["text_to_item/recall@1"] > 5 * payload["chance/recall@1"]


def test_best_baseline_for_store_caches_and_compares(easy_store, easy_results, tmp_path):
    from e2i.evaluate.baselines import best_baseline_for_store, compare_to_baseline, verdict_line

    cache = tmp_path / "cache" / "baseline.json"
    best = best_baseline_for_store(easy_store, "test", cache_path=cache)
    name, value = best_baseline(easy_results)
    assert best["name"] == name and best["metrics"]["text_to_item/recall@1"] == pytest.approx(value)
    cached = json.loads(cache.read_text())
    cached["metrics"]["text_to_item/recall@1"] = 0.5  # the cache is what a second call returns
    cache.write_text(json.dumps(cached))
    assert best_baseline_for_store(easy_store, "test", cache_path=cache)["metrics"]["text_to_item/recall@1"] == 0.5
    loses = compare_to_baseline({"text_to_item/recall@1": 0.25}, cached)
    assert loses["loses"] and loses["delta"] == pytest.approx(-0.25)
    assert "LOSES" in verdict_line(loses) and "0.5000" in verdict_line(loses)
    wins = compare_to_baseline({"text_to_item/recall@1": 0.75}, cached)
    assert not wins["loses"] and "beats" in verdict_line(wins)
    assert best_baseline_for_store(easy_store, "test", train_split="nope") is None
    assert "n/a" in verdict_line(None)


def test_baseline_with_relevance_scores_text_to_item_with_the_same_lists(easy_store):
    """With a relevance file the head's text->item metrics count every listed item; the baseline shown
    beside them must too (it used to stay single-relevance, so the two numbers were not comparable)."""
    from e2i.evaluate.baselines import best_baseline_for_store
    from e2i.evaluate.relevance import Relevance
    from e2i.store import load_split

    test = load_split(f"{easy_store}/test", with_text=False)
    m = len(test.caption_item)
    # each caption: its own item and the item after it are relevant
    rel = Relevance(query=np.repeat(np.arange(m), 2),
                    item=np.stack([test.caption_item, (test.caption_item + 1) % test.num_items], 1).ravel())
    plain = best_baseline_for_store(easy_store, "test")
    graded = best_baseline_for_store(easy_store, "test", relevance=rel)
    assert "text_to_item/mAP@16" in graded["metrics"] and "text_to_item/mAP@16" not in plain["metrics"]
    name = graded["name"]
    direct = run_baselines(easy_store, methods=(name,), relevance=rel)[name]
    single = run_baselines(easy_store, methods=(name,))[name]
    assert graded["metrics"]["text_to_item/mAP@10"] == pytest.approx(direct["text_to_item/mAP@10"])
    assert graded["metrics"]["item_to_text/recall@1"] == pytest.approx(single["item_to_text/recall@1"])
