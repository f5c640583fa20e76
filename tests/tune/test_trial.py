"""When a Tune trial writes a checkpoint: only where Tune's resume needs one (ASHA rungs, every N, last)."""

from e2i.config import TrainConfig
from e2i.tune.trial import trial_checkpoint_due


def _written(cfg: TrainConfig, rungs: list[int], improved: bool) -> list[int]:
    due = trial_checkpoint_due(cfg, rungs)
    epochs = cfg.optim.epochs
    return [e for e in range(1, epochs + 1) if due(e, improved, e == epochs)]


def test_trial_checkpoints_at_rungs_every_n_and_last_not_at_each_best():
    cfg = TrainConfig().replace({"optim.epochs": 12, "checkpoint.every_n_epochs": 5})
    # every epoch improving (as short trials mostly do) does not add checkpoints: no trial's weights are kept
    assert _written(cfg, [1, 3, 9], improved=True) == [1, 3, 5, 9, 10, 12]
    assert _written(cfg, [], improved=False) == [5, 10, 12]  # FIFO: 3 checkpoints for 12 reports
    assert _written(cfg.replace({"checkpoint.every_n_epochs": 0}), [], improved=True) == [12]
