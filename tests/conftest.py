"""Shared fixtures: one local Ray instance for the whole suite, quiet temp dirs for Ray/W&B/HF."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile

import pytest

# Keep every tool's scratch files out of $HOME and /tmp/ray, and never touch the network.
_SCRATCH = tempfile.mkdtemp(prefix="e2i-tests-")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_DIR", os.path.join(_SCRATCH, "wandb"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "0")
# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default): a run's
# end, a reported checkpoint and a dead worker are each noticed up to that late. 0.5 s for the suite (inherited
# by the Ray instances and `e2i` commands the tests start); a slow poll only counts as missed, and a worker is
# declared dead after 10 min of them (RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S), so load does not fail runs.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Ray 2.60 turns token auth on and writes ~/.ray/auth_token; give it a token by env instead so the
# suite leaves no token file behind and CLI clients (ray job submit) in tests can authenticate.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the suite: 4 logical CPUs (over-subscribing 2 cores avoids Ray Data's
    actor-vs-read-task deadlock) and 2 fake GPUs (to check GPU requests; torch still runs on CPU)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            num_gpus=2,
            include_dashboard=False,
            _temp_dir=os.path.join(_SCRATCH, "ray"),
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    # Shut down at session end (pytest_sessionfinish) so later fixtures can still use it.


def pytest_sessionfinish(session, exitstatus):
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - best effort cleanup at exit
        pass
    shutil.rmtree(_SCRATCH, ignore_errors=True)
