"""Fixtures of the reliability suite (the session's `ray_local` comes from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2i.config import TrainConfig, save_train_config

SMALL = {"model.type": "mlp", "loss.type": "softmax_infonce", "model.output_dim": 16, "model.hidden_dim": 32,
         "model.num_layers": 1, "optim.epochs": 2, "optim.batch_size": 64, "logging.tensorboard": False}


@pytest.fixture(scope="session")
def rel_store(tmp_path_factory) -> Path:
    """A small synthetic store: train 120 / val 30 / test 30 items, 5 captions each, dims 16 / 12."""
    from e2i.synthetic import make_synthetic_store

    return make_synthetic_store(tmp_path_factory.mktemp("rel") / "syn", n_items=180, item_dim=16, caption_dim=12,
                                splits={"train": 120, "val": 30, "test": 30}, seed=0)


@pytest.fixture(scope="session")
def rel_config(rel_store, tmp_path_factory) -> Path:
    """A valid train config YAML for `rel_store` (2 epochs of a small MLP head); output under tmp."""
    out = tmp_path_factory.mktemp("rel-results")
    cfg = TrainConfig(name="small").replace({**SMALL, "data.store": str(rel_store), "output_dir": str(out)})
    path = out / "small.yaml"
    save_train_config(cfg, path)
    return path


@pytest.fixture(scope="session")
def trained_run(rel_config) -> Path:
    """The run directory of `rel_config` trained in-process (no Ray): config.yaml, best_model.safetensors,
    checkpoints/checkpoint_epochNNNN/."""
    from e2i.config import load_train_config
    from e2i.train import train_local

    cfg = load_train_config(rel_config)
    train_local(cfg, evaluate=False)
    return Path(cfg.run_dir)
