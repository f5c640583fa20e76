"""`e2i tune --time-budget`: durations, trials keep coming until the budget is spent, and Ctrl-C
(SIGINT to the driver) ends the search with the best trial so far exported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from study_db import study_ready

from e2i.store.synthetic import make_synthetic_store
from e2i.tune.search import parse_duration, tune_space

ROOT = Path(__file__).resolve().parents[2]
NUM_SAMPLES = 2  # the space's fixed count; a budgeted run without --num-samples must go past it


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1h", 3600), ("45", 45), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10x", "", "m", "0", "-5m"])
def test_parse_duration_rejects_nonsense(text):
    with pytest.raises(ValueError, match="duration|> 0"):
        parse_duration(text)


def _space(tmp_path: Path, store: Path, name: str) -> Path:
    """Tiny trials (1 epoch of a small linear head) so that many fit in a few seconds."""
    doc = {
        "base": {"data": {"store": str(store)}, "model": {"type": "siglip", "output_dim": 16},
                 "loss": {"type": "softmax_infonce"},
                 "optim": {"batch_size": 64, "early_stopping_patience": 0, "warmup_epochs": 0},
                 "logging": {"tensorboard": False}},
        "space": {"optim.lr": {"loguniform": [1.0e-3, 1.0e-2]}},
        "scheduler": {"type": "fifo", "max_t": 1, "grace_period": 1},
        "search": {"sampler": "random", "seed": 0, "num_samples": NUM_SAMPLES, "max_concurrent_trials": 1,
                   "resources_per_trial": {"cpu": 1, "gpu": 0}},
        "storage": {"output_dir": str(tmp_path / "results")},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    return make_synthetic_store(tmp_path_factory.mktemp("budget") / "store", n_items=80, seed=0)


def _study(tmp_path: Path, name: str) -> optuna.Study:
    url = f"sqlite:///{tmp_path / 'results' / name / 'optuna.db'}"
    return optuna.load_study(study_name=name, storage=url)


@pytest.mark.slow
def test_time_budget_keeps_sampling_then_stops(ray_local, tiny_store, tmp_path):
    # 12 s: measured here, the first trial (worker start, imports) takes ~4 s and each one after it ~0.2 s,
    # so ~35 trials fit (25 s gave 99): far past NUM_SAMPLES even with the machine several times slower
    budget = 12.0
    start = time.monotonic()
    summary = tune_space(_space(tmp_path, tiny_store, "budget"), time_budget_s=budget, report=False)
    elapsed = time.monotonic() - start
    trials = _study(tmp_path, "budget").get_trials()
    assert len(trials) > NUM_SAMPLES  # the count of the space file did not cap a budgeted search
    assert elapsed < budget + 45  # it stopped by itself (slack: Ray start-up, last snapshot, export)
    # nothing is left RUNNING: trials the budget cut are PRUNED and say why
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert all(t.user_attrs.get("stopped_by") == "time_budget" for t in trials if t.state == TrialState.PRUNED)
    assert Path(summary["best_config"]).is_file()


@pytest.mark.slow
def test_ctrl_c_ends_the_search_and_exports_the_best_so_far(ray_local, tiny_store, tmp_path):
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    space = _space(tmp_path, tiny_store, "sigint")
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "e2i", "tune", str(space), "--time-budget", "10m",
                                 "--no-report"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        complete = 0
        while time.monotonic() < deadline and proc.poll() is None and not complete:
            time.sleep(0.5)
            if not study_ready(tmp_path / "results" / "sigint" / "optuna.db"):
                continue
            try:
                complete = len(_study(tmp_path, "sigint").get_trials(states=(TrialState.COMPLETE,)))
            except Exception:  # noqa: BLE001, S112 - study not created yet
                continue
        assert complete, f"no trial completed (exit code {proc.poll()}):\n{log.read_text()[-3000:]}"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert time.monotonic() - sent < 120  # ended long before the 10 minute budget
    best = tmp_path / "results" / "sigint" / "best_config.yaml"
    assert best.is_file() and "Best trial" in best.read_text()
    assert "-> " + str(best) in text
