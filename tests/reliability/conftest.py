"""Fixtures of the reliability suite (the session's `ray_local` comes from tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_helpers import ray_sessions

from e2i.config import TrainConfig, save_train_config

SMALL = {"model.type": "mlp", "loss.type": "softmax_infonce", "model.output_dim": 16, "model.hidden_dim": 32,
         "model.num_layers": 1, "optim.epochs": 2, "optim.batch_size": 64, "logging.tensorboard": False}


@pytest.fixture(scope="session")
def rel_store(tmp_path_factory) -> Path:
    """A small synthetic store: train 120 / val 30 / test 30 items, 5 captions each, dims 16 / 12."""
    from e2i.store.synthetic import make_synthetic_store

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
    from e2i.train.driver import train_local

    cfg = load_train_config(rel_config)
    train_local(cfg, evaluate=False)
    return Path(cfg.run_dir)


@pytest.fixture
def ray_tmp() -> Iterator[str]:
    """A fresh, short RAY_TMPDIR for a command run in a subprocess (Ray's socket paths must stay < 108 bytes)."""
    path = tempfile.mkdtemp(prefix="e2i-ray-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_start_is_visible() -> None:
    """Checks that "no session under RAY_TMPDIR" really means "Ray did not start": a process that starts Ray
    with RAY_TMPDIR set leaves a session directory there (if a Ray version stopped doing so, the absence
    would prove nothing)."""
    path = tempfile.mkdtemp(prefix="e2i-ray-")
    try:
        start = "import ray; ray.init(num_cpus=1, include_dashboard=False); ray.shutdown()"
        subprocess.run([sys.executable, "-c", start], env={**os.environ, "RAY_TMPDIR": path}, check=True,
                       capture_output=True, timeout=120)
        assert ray_sessions(path), f"ray.init() left no session_* under RAY_TMPDIR={path}"
    finally:
        shutil.rmtree(path, ignore_errors=True)
