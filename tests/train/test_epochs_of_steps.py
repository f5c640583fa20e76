"""Training length in optimizer steps: epochs of >= optim.min_steps_per_epoch steps on small stores,
plain passes on large ones, and the lr schedules (cosine, linear, constant, torch's OneCycleLR)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from e2i.config import TrainConfig
from e2i.errors import ConfigError
from e2i.store.synthetic import make_synthetic_store
from e2i.train.loop import run_training
from e2i.train.schedule import PassPermutations, epoch_plan, lr_at


def test_epoch_plan_counts_steps_not_passes():
    assert epoch_plan(3, 1, 100) == (100, 100)  # 3 batches per pass: the epoch runs on over ~33 passes
    assert epoch_plan(10, 3, 5) == (5, 15)  # 5 steps of 3 micro-batches each
    assert epoch_plan(500, 1, 100) == (500, 500)  # a pass is already long enough: one pass per epoch
    assert epoch_plan(10, 3, 0) == (4, 10)  # plain passes: the last step has one micro-batch
    assert epoch_plan(10, 3, 4) == (4, 10)  # a pass gives exactly the minimum: still one pass


def test_onecycle_is_torchs_one_cycle_lr():
    total, warmup = 50, 10
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2.0, total_steps=total, pct_start=warmup / total,
                                                cycle_momentum=False)
    for step in range(total):
        assert lr_at(step, peak=2.0, warmup_steps=warmup, total_steps=total, schedule="onecycle") == pytest.approx(
            opt.param_groups[0]["lr"], rel=1e-12), step
        opt.step()
        sched.step()


def test_other_schedules_after_warmup():
    lrs = {s: [lr_at(k, peak=1.0, warmup_steps=4, total_steps=12, schedule=s) for k in range(13)]
           for s in ("cosine", "linear", "constant")}
    for s, values in lrs.items():
        assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]), s  # the same linear warmup
    assert lrs["constant"][4:] == pytest.approx([1.0] * 9)
    assert lrs["linear"][4:] == pytest.approx([1 - k / 8 for k in range(9)])
    assert lrs["cosine"][8] == pytest.approx(0.5) and lrs["cosine"][12] == pytest.approx(0.0)


def test_unknown_schedule_is_a_config_error():
    with pytest.raises(ConfigError, match=r"optim\.schedule: 'step' is not one of cosine, onecycle"):
        TrainConfig().replace({"optim.schedule": "step"}, "x.yaml")


def test_pass_permutations_are_seeded_per_pass():
    perms = PassPermutations(10, seed=3, device=torch.device("cpu"))
    first, second = perms[0].clone(), perms[1].clone()
    assert sorted(first.tolist()) == list(range(10)) and not torch.equal(first, second)
    assert torch.equal(perms[0], first)  # pass 0 again: the same order


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    """60 train items x 1 caption: 0 full batches of 256, one batch of 60 rows per pass."""
    return make_synthetic_store(tmp_path_factory.mktemp("tiny") / "store", n_items=100, item_dim=12,
                                caption_dim=10, splits={"train": 60, "val": 20, "test": 20}, captions_per_item=1,
                                seed=0)


def _cfg(store: Path, **overrides) -> TrainConfig:
    small = {"data.store": str(store), "model.type": "mlp", "loss.type": "softmax_infonce", "model.output_dim": 8,
             "model.hidden_dim": 16, "model.num_layers": 1, "optim.epochs": 3, "logging.tensorboard": False,
             "optim.early_stopping_patience": 0}
    return TrainConfig(name="steps").replace({**small, **overrides})


def test_default_epochs_on_a_tiny_store_have_100_steps(tiny_store):
    """The default (min_steps_per_epoch 100): 60 captions in batches of up to 256 give one step per
    pass, so an epoch is 100 passes; with plain passes (0) an epoch would be a single step."""
    out = run_training(_cfg(tiny_store), report=lambda m, c: None)
    assert [h["step"] for h in out["history"]] == [100, 200, 300]
    assert [h["passes"] for h in out["history"]] == [100.0, 200.0, 300.0]
    plain = run_training(_cfg(tiny_store, **{"optim.min_steps_per_epoch": 0}), report=lambda m, c: None)
    assert [h["step"] for h in plain["history"]] == [1, 2, 3]
    # 300 steps fit the 60 pairs (train loss far below log(60) = 4.09), 3 steps barely move it
    assert out["history"][-1]["train/loss"] < 0.5 * plain["history"][-1]["train/loss"], (out, plain)


def test_resume_mid_pass_repeats_the_uninterrupted_run(tiny_store, tmp_path):
    """Epochs of 7 micro-batches over passes of 2 (batch 24 of 60 captions): epoch boundaries fall
    inside a pass; a run resumed from epoch 2's checkpoint continues exactly as the uninterrupted one."""
    cfg = _cfg(tiny_store, **{"optim.batch_size": 24, "optim.min_steps_per_epoch": 7})
    saved: dict[int, str] = {}

    def keep(metrics, checkpoint_dir):
        if checkpoint_dir:
            target = tmp_path / f"ep{metrics['epoch']}"
            Path(checkpoint_dir).rename(target)
            saved[metrics["epoch"]] = str(target)
            return True
        return None

    full = run_training(cfg, report=keep, checkpoint_when=lambda epoch, improved, last: True)
    assert [h["step"] for h in full["history"]] == [7, 14, 21] and full["history"][0]["passes"] == 3.5
    resumed = run_training(cfg, report=lambda m, c: None, resume_from=saved[2])
    for key in ("train/loss", "val/loss", "val/mAP@10", "lr", "step"):
        assert resumed["history"][2][key] == full["history"][2][key], key
