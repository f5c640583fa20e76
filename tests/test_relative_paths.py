"""Relative paths as users type them: the whole chain from a fresh working directory.

Ray Train starts workers in Ray's session artifacts and Tune starts trials in their trial dirs, so a
relative path that reaches a worker resolves elsewhere (issue: `make demo` failed at "train a head"
with `stores/toy/train: no such store split directory`). Here every path is relative:

1. subprocesses in a fresh temporary cwd, one per stage, as a user types them
   (`e2i toy → cache → split → train → tune (2 trials) → evaluate → report`), connected to the
   suite's Ray (RAY_ADDRESS), whose workers run in other directories; then the saved
   `best_config.yaml` retrained from *another* directory;
2. the same chain as one `ray job submit --working-dir .` job: in tests/test_jobs.py
   (test_relative_chain_as_a_ray_job_resolves_in_the_uploaded_working_dir), on that module's head.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SPLIT_SPEC = "train=0.6,val=0.2,test=0.2,train_subset=0.5"
LIGHT = ["--audio-encoder", "logmel-stats", "--text-encoder", "ngram-hash"]
CONFIG = """\
name: rel
data: {store: stores/toy}
model: {type: clip, output_dim: 32, hidden_dim: 64}
loss: {type: softmax_infonce}
optim: {epochs: 2, batch_size: 64, warmup_epochs: 0}
"""
SPACE = """\
base_config: rel.yaml
space:
  optim.lr: {loguniform: [1.0e-3, 1.0e-2]}
scheduler: {type: asha, max_t: 2, grace_period: 1, reduction_factor: 2}
search: {sampler: random, seed: 0, num_samples: 2, max_concurrent_trials: 1,
         resources_per_trial: {cpu: 1, gpu: 0}}
"""


def e2i(cwd: Path, *args: str, env: dict) -> str:
    """Run `python -m e2i ARGS` in `cwd` as a user would; returns stdout+stderr, fails with its tail."""
    res = subprocess.run([sys.executable, "-m", "e2i", *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"e2i {' '.join(args)} exited {res.returncode}:\n{out[-3000:]}"
    return out


@pytest.fixture(scope="module")
def user_env(ray_local):
    """The user's environment, pointed at the suite's Ray instance (workers run in Ray's dirs)."""
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_whole_chain_with_relative_paths_from_a_fresh_directory(tmp_path, user_env):
    work = tmp_path / "project"
    work.mkdir()
    e2i(work, "toy", "--root", "data/toy", "--n-items", "40", env=user_env)
    e2i(work, "cache", "--metadata", "data/toy", "--cache-dir", "stores", "--dataset", "toy", *LIGHT,
        env=user_env)
    e2i(work, "split", "stores/toy/development", "--out", "stores/toy", "--spec", SPLIT_SPEC, env=user_env)
    (work / "rel.yaml").write_text(CONFIG)
    # --no-evaluate: `e2i evaluate rel.yaml` below is the run's only evaluation, so its check of
    # test_metrics.json is not satisfied by a file the train command wrote
    out = e2i(work, "train", "rel.yaml", "--no-evaluate", env=user_env)
    run_dir = work / "results" / "rel"
    assert f"-> {run_dir}" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and len(metrics["history"]) == 2
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["store"] == str(work / "stores" / "toy")  # resolved on the driver ...
    assert saved["paths_as_written"] == {"data.store": "stores/toy", "output_dir": "results"}  # ... as typed

    (work / "space.yaml").write_text(SPACE)
    e2i(work, "tune", "space.yaml", "--no-report", env=user_env)
    exp = work / "results" / "space"
    assert (exp / "optuna.db").is_file() and (exp / "tune").is_dir()
    best = yaml.safe_load((exp / "best_config.yaml").read_text())
    assert best["data"]["store"] == str(work / "stores" / "toy")
    assert best["paths_as_written"]["data.store"] == "stores/toy"

    assert not (run_dir / "evaluation_results").exists()
    out = e2i(work, "evaluate", "rel.yaml", "--no-plots", env=user_env)
    assert (run_dir / "evaluation_results" / "test_metrics.json").is_file(), out
    out = e2i(work, "report", "results/space", env=user_env)
    assert "2 trials" in out and (exp / "report" / "leaderboard.csv").is_file()

    # The exported config repeats the run from another directory: its paths are absolute.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = e2i(elsewhere, "train", str(exp / "best_config.yaml"), "--no-evaluate", env=user_env)
    assert (work / "results" / "space-best" / "best_model.safetensors").is_file(), out
    assert not (elsewhere / "results").exists()
