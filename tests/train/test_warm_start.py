"""model.warm_start: the skip branch starts exactly at the closed-form baseline's ranking, survives a
checkpoint round trip, and a warm-started run trains and evaluates through `e2i train`'s path."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from e2i.config import ModelConfig, TrainConfig, load_train_config
from e2i.errors import ConfigError
from e2i.evaluate.baselines import run_baselines
from e2i.evaluate.metrics import retrieval_metrics
from e2i.model.heads import HEADS, SkipHead, build_model
from e2i.store import load_split
from e2i.store.synthetic import make_synthetic_store
from e2i.train.checkpoint import load_into, load_weights, save_weights
from e2i.train.loop import SplitTensors, embed_split
from e2i.train.warm_start import fit_linear_maps, warm_start_

KEYS = ("recall@1", "recall@5", "recall@10", "mAP@10", "median_rank", "mean_rank")
SMALL = {"output_dim": 24, "hidden_dim": 32, "num_heads": 4, "num_layers": 1, "num_tokens": 4, "dropout": 0.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_synthetic_store(tmp_path_factory.mktemp("ws") / "store", n_items=240, captions_per_item=3,
                                item_dim=20, caption_dim=14, difficulty=0.5, seed=3)


def _splits(store):
    return tuple(load_split(f"{store}/{s}", with_text=False) for s in ("train", "val", "test"))


def _cfg(head: str, method: str, **extra):
    return types.SimpleNamespace(model=ModelConfig(type=head, warm_start=method, **{**SMALL, **extra}), seed=0)


def _test_metrics(model, test) -> dict:
    item_z, cap_z = embed_split(model, SplitTensors(test, torch.device("cpu")))
    return retrieval_metrics(item_z, cap_z, torch.from_numpy(test.caption_item), ci=False)


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("method", ["cca", "pls", "procrustes"])
def test_warm_started_model_ranks_the_test_split_exactly_as_the_baseline(store, head, method):
    """Before any training step the model's test metrics (both directions, every K and the ranks) are
    the baseline's of `e2i baseline`: the probed affine map, its standardisation and the zeroed last
    layer reproduce g_item / g_cap up to float32 rounding."""
    train, val, test = _splits(store)
    torch.manual_seed(0)
    cfg = _cfg(head, method, warm_start_init=True)
    model = build_model(cfg.model, train.item_dim, train.caption_dim)
    assert isinstance(model.item_head, SkipHead) and isinstance(model.caption_head, SkipHead)
    info = warm_start_(model, cfg, train, val)
    assert info["method"] == method
    got = _test_metrics(model, test)
    want = run_baselines(store, methods=(method,))[method]
    for direction in ("text_to_item", "item_to_text"):
        for key in KEYS:
            assert got[f"{direction}/{key}"] == pytest.approx(want[f"{direction}/{key}"], abs=1e-9), (direction, key)
    # the head's own output is exactly zero: the skip branch alone is the model at the start
    x = torch.from_numpy(test.item_emb[:5])
    assert torch.count_nonzero(model.item_head.head(x)) == 0


def test_best_is_picked_on_val_and_a_wide_map_is_reduced_to_output_dim(store):
    """`best` scores every method on val (never on test); ridge keeps the item side's 20 dims, more
    than output_dim 8, so its map is reduced to 8 columns; the maps fit the model's skip layers."""
    train, val, _ = _splits(store)
    fitted = fit_linear_maps(train, val, method="best", output_dim=8)
    assert set(fitted["val"]) == {"cca", "pls", "ridge", "procrustes"}  # no cosine: dims differ
    assert fitted["method"] == max(fitted["val"], key=fitted["val"].get)
    ridge = fit_linear_maps(train, val, method="ridge", output_dim=8)
    for side, dim in ((ridge["item"], 20), (ridge["caption"], 14)):
        mean, std, w, b = side
        assert mean.shape == std.shape == (dim,) and w.shape == (dim, 8) and b.shape == (8,)
    with pytest.raises(ValueError, match="one dim"):
        fit_linear_maps(train, val, method="cosine", output_dim=8)


def test_skip_weights_survive_a_checkpoint_round_trip(store, tmp_path):
    """The fitted map (mean/std buffers, skip Linear) is part of the state_dict: a model rebuilt from
    the config and loaded from safetensors gives the same embeddings; without loading it does not."""
    train, val, test = _splits(store)
    cfg = _cfg("mlp", "cca", warm_start_init=True)
    model = build_model(cfg.model, train.item_dim, train.caption_dim)
    warm_start_(model, cfg, train, val)
    save_weights(model.state_dict(), tmp_path / "m.safetensors")
    state = load_weights(tmp_path / "m.safetensors")
    assert {"item_head.mean", "item_head.std", "item_head.skip.weight", "caption_head.skip.bias"} <= set(state)
    fresh = build_model(cfg.model, train.item_dim, train.caption_dim)
    x, c = torch.from_numpy(test.item_emb), torch.from_numpy(test.caption_emb)
    assert not torch.allclose(fresh.encode_items(x), model.encode_items(x))
    load_into(fresh, state, tmp_path / "m.safetensors")
    fresh.eval(), model.eval()
    torch.testing.assert_close(fresh.encode_items(x), model.encode_items(x))
    torch.testing.assert_close(fresh.encode_captions(c), model.encode_captions(c))


def test_warm_start_is_validated_and_off_by_default_and_on_in_the_shipped_configs():
    assert ModelConfig().warm_start == "none"
    assert not isinstance(build_model(ModelConfig(**SMALL), 6, 5).item_head, SkipHead)
    with pytest.raises(ConfigError, match="warm_start"):
        TrainConfig().replace({"model.warm_start": "lda"})
    for name in ("siglip", "clip", "attention", "mlp"):
        model_cfg = load_train_config(f"configs/{name}.yaml").model
        assert model_cfg.warm_start == "best" and not model_cfg.warm_start_init, name
    # token sequences have no flat features: no skip branch
    seq = build_model(ModelConfig(type="attention", warm_start="best", **SMALL), (3, 6), 5)
    assert not isinstance(seq.item_head, SkipHead) and not isinstance(seq.caption_head, SkipHead)


def test_a_warm_started_run_trains_checkpoints_and_evaluates(store, tmp_path):
    """`e2i train`'s in-process path with warm_start: best: the run finishes, its best model holds the
    skip weights and its test evaluation is at least the fitted baseline's level on this easy store."""
    from e2i.train.driver import train_local

    cfg = TrainConfig().replace({
        "name": "ws", "output_dir": str(tmp_path), "data.store": str(store), "model.type": "clip",
        "model.output_dim": 16, "model.hidden_dim": 32, "model.warm_start": "best", "model.warm_start_init": True,
        "loss.type": "softmax_infonce", "optim.epochs": 2, "optim.min_steps_per_epoch": 5, "optim.batch_size": 64,
    })
    summary = train_local(cfg, evaluate=True)
    state = load_weights(tmp_path / "ws" / "best_model.safetensors")
    assert "item_head.skip.weight" in state and state["item_head.skip.weight"].abs().sum() > 0
    assert summary["test"]["text_to_item/recall@1"] > 0.1  # chance is 1/36
    assert json.loads((tmp_path / "ws" / "metrics.json").read_text())["epochs"] == 2


def test_the_warm_start_is_kept_when_no_epoch_beats_it_on_val(store, tmp_path):
    """The warm start is epoch 0 of the best-val selection: with a learning rate that wrecks every
    epoch, the run's best model is the baseline's map and its test metrics are exactly the baseline's."""
    from e2i.train.driver import train_local

    cfg = TrainConfig().replace({
        "name": "wreck", "output_dir": str(tmp_path), "data.store": str(store), "model.type": "mlp",
        "model.output_dim": 16, "model.hidden_dim": 32, "model.warm_start": "cca", "loss.type": "softmax_infonce",
        "optim.lr": 50.0, "optim.grad_clip": 0.0, "optim.warmup_epochs": 0.0, "optim.epochs": 2,
        "optim.min_steps_per_epoch": 5, "optim.batch_size": 64,
    })
    summary = train_local(cfg, evaluate=True)
    assert summary["history"][-1].get("warm_start_kept") == 1.0 and summary["best_epoch"] == 2
    assert summary["history"][0][cfg.metric] < summary["best_metric"]  # the trained epoch was worse
    want = run_baselines(store, methods=("cca",))["cca"]
    for key in KEYS:
        assert summary["test"][f"text_to_item/{key}"] == pytest.approx(want[f"text_to_item/{key}"], abs=1e-9), key


def test_without_warm_start_init_training_is_the_cold_run_and_the_baseline_is_kept_if_better(store, tmp_path):
    """warm_start_init: false (the shipped configs): the skip branch stays frozen at zero, so every
    epoch trains exactly as the run without warm_start; 30 steps of a cold mlp stay below the baseline
    on val here, so the last checkpoint is the baseline (its val metrics, its weights)."""
    from e2i.train.driver import train_local

    base = {"output_dir": str(tmp_path), "data.store": str(store), "model.type": "mlp", "model.output_dim": 16,
            "model.hidden_dim": 32, "loss.type": "softmax_infonce", "optim.epochs": 3,
            "optim.min_steps_per_epoch": 10, "optim.batch_size": 64}
    cold = train_local(TrainConfig().replace({**base, "name": "cold"}), evaluate=False)
    floor = train_local(TrainConfig().replace({**base, "name": "floor", "model.warm_start": "best"}), evaluate=False)
    keys = ("train/loss", "val/loss", "val/recall@1", "val/mAP@10")
    got, want = ([h[k] for h in r["history"][:2] for k in keys] for r in (floor, cold))
    assert got == pytest.approx(want, rel=1e-4, abs=1e-6), (got, want)  # (sklearn's fit may change BLAS threads)
    assert floor["history"][2]["train/loss"] == pytest.approx(cold["history"][2]["train/loss"], rel=1e-4)
    assert floor["history"][2].get("warm_start_kept") == 1.0 and floor["best_epoch"] == 3
    assert floor["best_metric"] > max(h["val/mAP@10"] for h in cold["history"])
    state = load_weights(tmp_path / "floor" / "best_model.safetensors")
    assert state["item_head.skip.weight"].abs().sum() > 0  # the baseline's map
    assert state["item_head.head.net.6.weight"].abs().sum() == 0  # the mlp's last layer (2 hidden layers) zeroed


def test_paired_gain_is_the_item_level_bootstrap_standard_error_of_the_paired_difference():
    """paired_gain's error is the cluster-robust one (items as clusters): within a few % of the standard
    deviation of e2i's item-level paired bootstrap of the same difference, wider than the naive
    query-level error when an item's captions move together, and sd/sqrt(n) with one caption per item."""
    from e2i.evaluate.bootstrap import replicates
    from e2i.train.warm_start import paired_gain

    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(60), 4)  # 60 items x 4 captions
    base = rng.random(240)
    epoch = base + 0.02 + np.repeat(rng.normal(0, 0.1, 60), 4) + rng.normal(0, 0.05, 240)  # item effects
    gain, se = paired_gain(epoch, base, clusters)
    assert gain == pytest.approx(float(np.mean(epoch - base)))
    reps, _ = replicates((epoch - base)[:, None], np.zeros((240, 0)), clusters, 4000, 1)
    assert se == pytest.approx(float(reps.std()), rel=0.08)
    assert se > 1.5 * np.std(epoch - base, ddof=1) / np.sqrt(240)  # the 4 captions are not 4 draws
    d = rng.normal(size=50)
    assert paired_gain(d, np.zeros(50), np.arange(50))[1] == pytest.approx(d.std(ddof=1) / np.sqrt(50))
    assert paired_gain(-d, np.zeros(50), np.arange(50), mode="min")[0] == pytest.approx(d.mean())  # ranks: lower wins


def test_a_trained_epoch_replaces_the_baseline_only_by_a_gain_beyond_the_margin():
    """beats_baseline on a 100-query val split: an epoch that finds 6 queries the baseline missed and
    misses 5 it found is one query ahead, within noise (gain 0.01, error 0.033), and keeps the
    baseline at margin 1; 25 won for 5 lost is a real gain; margin 0 is the plain comparison; metrics
    that are no mean over queries (val/loss) fall back to it too."""
    from e2i.train.warm_start import beats_baseline, per_query_key

    assert per_query_key("val/mAP@10") == "text_to_item/mAP@10"
    assert per_query_key("val/item_to_text/recall@1") == "item_to_text/recall@1"
    assert per_query_key("val/loss") is None and per_query_key("val/median_rank") is None
    base = np.r_[np.ones(40), np.zeros(60)]
    pq = lambda hits: {"text_to_item/mAP@10": hits, "text_to_item/cluster": np.arange(100)}  # noqa: E731
    one, twenty = base.copy(), base.copy()
    one[40:46], one[:5] = 1.0, 0.0
    twenty[40:65], twenty[:5] = 1.0, 0.0
    assert not beats_baseline(pq(one), pq(base), "val/mAP@10", "max", 1.0)
    assert beats_baseline(pq(twenty), pq(base), "val/mAP@10", "max", 1.0)
    assert beats_baseline(pq(one), pq(base), "val/mAP@10", "max", 0.0)
    assert beats_baseline(None, None, "val/loss", "min", 1.0)
    with pytest.raises(ConfigError, match="warm_start_margin"):
        TrainConfig().replace({"model.warm_start_margin": -1})


def test_the_loop_keeps_the_baseline_unless_an_epoch_beats_it_by_the_margin(store, tmp_path):
    """The same warm-started training twice (from PLS, whose first fine-tuned epoch is better on val
    here): with margin 0 that epoch replaces the baseline; with a margin no gain can clear, every
    epoch trains the same but the run keeps the baseline (warm_start_kept, its val metrics in the last
    epoch). The shipped configs use margin 1."""
    from e2i.train.driver import train_local

    base = {"output_dir": str(tmp_path), "data.store": str(store), "model.type": "clip", "model.output_dim": 16,
            "model.hidden_dim": 32, "model.warm_start": "pls", "model.warm_start_init": True,
            "loss.type": "softmax_infonce", "optim.epochs": 2, "optim.min_steps_per_epoch": 30,
            "optim.batch_size": 64, "optim.lr": 1e-3}
    plain = train_local(TrainConfig().replace({**base, "name": "m0", "model.warm_start_margin": 0.0}), evaluate=False)
    strict = train_local(TrainConfig().replace({**base, "name": "m9", "model.warm_start_margin": 1e9}), evaluate=False)
    assert plain["best_epoch"] >= 1 and "warm_start_kept" not in plain["history"][-1]
    assert strict["history"][0]["val/mAP@10"] == pytest.approx(plain["history"][0]["val/mAP@10"], rel=1e-4)
    assert strict["history"][-1].get("warm_start_kept") == 1.0
    assert strict["best_metric"] < max(h["val/mAP@10"] for h in plain["history"])  # kept although trained was better
    for name in ("siglip", "clip", "attention", "mlp"):
        assert load_train_config(f"configs/{name}.yaml").model.warm_start_margin == 1.0, name
