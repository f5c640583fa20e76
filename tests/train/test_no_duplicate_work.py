"""Work one `e2i train` must not do twice (issue 16, `make demo` <= 90 s): the closed-form baseline fits
shared by the warm start and the test evaluation's baseline line, and the skip branch of a head trained
cold (frozen at zero). Counts calls, no timings."""

from __future__ import annotations

import json

import pytest
import torch

from e2i.config import ModelConfig, TrainConfig
from e2i.evaluate import baseline_fits
from e2i.evaluate.baselines import best_baseline_for_store
from e2i.model.heads import SkipHead, build_model
from e2i.store.synthetic import make_synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_synthetic_store(tmp_path_factory.mktemp("dup") / "store", n_items=120, captions_per_item=3,
                                item_dim=20, caption_dim=14, difficulty=0.5, seed=5)


def test_one_train_run_fits_each_closed_form_baseline_once(store, tmp_path):
    """warm_start: best fits every method on the train split (picked on val) and the test evaluation's
    baseline line needs the same fits: one `e2i train` with its evaluation computes each method once,
    a second run on the same store none, and the kept fits give the numbers of a fresh fit."""
    from e2i.train.driver import fit

    baseline_fits.clear_fit_cache()
    base = {"output_dir": str(tmp_path), "data.store": str(store), "model.output_dim": 16, "model.hidden_dim": 32,
            "model.warm_start": "best", "loss.type": "softmax_infonce", "optim.epochs": 1,
            "optim.min_steps_per_epoch": 3, "optim.batch_size": 64, "logging.tensorboard": False}
    first = fit(TrainConfig().replace({**base, "name": "one", "model.type": "siglip"}))
    once = {"cca": 1, "pls": 1, "ridge": 1, "procrustes": 1}  # no cosine: the dims differ
    assert dict(baseline_fits.fit_counts) == once
    assert first["baseline"]["baseline"] in once
    fit(TrainConfig().replace({**base, "name": "two", "model.type": "clip"}))  # e.g. the demo's retrained best
    assert dict(baseline_fits.fit_counts) == once
    written = json.loads((tmp_path / "one" / "evaluation_results" / "baseline_test.json").read_text())
    baseline_fits.clear_fit_cache()
    fresh = best_baseline_for_store(store, split="test")
    assert dict(baseline_fits.fit_counts) == once
    assert written["name"] == fresh["name"]
    for key, value in fresh["metrics"].items():
        if key != "seconds":
            assert written["metrics"][key] == pytest.approx(value, abs=1e-12), key


def test_a_fit_is_kept_per_train_split_and_parameters():
    """The cache key is the data's contents and what the method depends on: another train split, or
    ridge with another val split, is fitted anew; the same arrays in new objects are not."""
    rng = torch.Generator().manual_seed(0)
    items, caps = torch.randn(30, 6, generator=rng).double().numpy(), torch.randn(90, 5, generator=rng).double().numpy()
    cap_item = torch.arange(90).numpy() % 30
    pairs = baseline_fits._Pairs(items, caps, cap_item)
    baseline_fits.clear_fit_cache()
    a = baseline_fits.fit_method("cca", pairs, 4)
    b = baseline_fits.fit_method("cca", baseline_fits._Pairs(items.copy(), caps.copy(), cap_item.copy()), 4)
    assert baseline_fits.fit_counts["cca"] == 1 and a[0] is b[0]
    baseline_fits.fit_method("cca", baseline_fits._Pairs(items + 1e-3, caps, cap_item), 4)
    baseline_fits.fit_method("cca", pairs, 3)
    assert baseline_fits.fit_counts["cca"] == 3
    val = baseline_fits._Pairs(items[:10], caps[:30], cap_item[:30] % 10)
    baseline_fits.fit_method("ridge", pairs, 4, val=val)
    baseline_fits.fit_method("ridge", pairs, 4, val=val)
    baseline_fits.fit_method("ridge", pairs, 4, val=None)  # alpha picked on a train hold-out instead
    assert baseline_fits.fit_counts["ridge"] == 2


def test_a_skip_branch_frozen_at_zero_is_not_computed():
    """Trained cold (warm_start_init: false) the skip branch is frozen at zero and adds exactly 0: the
    head's forward leaves it out. With a baseline's map loaded (the warm-start state, or a kept
    baseline) or a trainable branch it is computed, and the output is the same formula either way."""
    model = build_model(ModelConfig(type="siglip", output_dim=8, warm_start="best", dropout=0.0), 6, 5)
    head = model.item_head
    assert isinstance(head, SkipHead)
    calls = []
    head.skip.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(4, 6)
    head.skip.requires_grad_(False)
    cold = {k: v.clone() for k, v in model.state_dict().items()}
    torch.testing.assert_close(head(x), head.head(x))
    assert calls == []
    head.set_linear_(torch.randn(6), torch.rand(6) + 0.5, torch.randn(6, 3), torch.randn(3))  # a baseline's map
    want = head.head(x) + head.skip((x - head.mean) / head.std)
    calls.clear()
    torch.testing.assert_close(head(x), want)
    assert calls == [1]
    model.load_state_dict(cold)  # back to cold: left out again
    calls.clear()
    head(x)
    assert calls == []
    head.skip.requires_grad_(True)  # trained from the baseline (warm_start_init): always computed
    head(x)
    assert calls == [1]


def test_the_demo_trains_its_heads_on_the_worker_cpus(monkeypatch):
    """`e2i demo` trains its heads in its own process beside the Ray instance it started: with the
    threads a 1-CPU Ray worker gets (scaling.cpus_per_worker), not one per core, restored afterwards."""
    import e2i.train.driver
    from e2i import demo

    seen = []
    monkeypatch.setattr(e2i.train.driver, "fit", lambda cfg: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    demo._fit_in_process(TrainConfig())
    demo._fit_in_process(TrainConfig().replace({"scaling.cpus_per_worker": 3.0}))
    assert seen == [1, 3] and torch.get_num_threads() == before
