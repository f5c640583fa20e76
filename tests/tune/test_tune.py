"""e2i tune: the searcher's PRUNED/COMPLETE/FAIL bookkeeping and study repair on resume, a small
search on a synthetic store (study, best config, report, TensorBoard, optuna-dashboard), a killed
driver resumed with --resume, and Tune storage on a real S3-compatible server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from study_db import fresh_after_pruned

from e2i.config import load_train_config
from e2i.errors import E2IError
from e2i.store.synthetic import make_synthetic_store
from e2i.tune.asha import RecordingASHA, rung_verdict
from e2i.tune.optuna_search import (
    FAIL_REASON,
    FAIL_REASON_ORPHAN,
    TRIAL_KEY,
    E2IOptunaSearch,
)
from e2i.tune.search import tune_space
from e2i.tune.space import load_space

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
optuna.logging.set_verbosity(optuna.logging.WARNING)
METRIC = "best/val/mAP@10"


def _space_file(tmp_path: Path, store: Path, *, name: str = "small", **sections) -> Path:
    """A small two-head search; sections override scheduler/search/storage/base."""
    doc = {
        "base": {"data": {"store": str(store)}, "model": {"output_dim": 32, "hidden_dim": 64},
                 "optim": {"batch_size": 64, "early_stopping_patience": 0, "warmup_epochs": 0.5}},
        "space": {
            "model.type": {"choice": ["siglip", "mlp"]},
            "loss.type": {"choice": ["sigmoid_infonce", "softmax_infonce"]},
            "optim.lr": {"loguniform": [1.0e-3, 1.0e-2]},
            "conditional": [{"when": {"model.type": "mlp"}, "model.num_layers": {"int": [1, 2]}}],
        },
        "scheduler": {"type": "asha", "max_t": 3, "grace_period": 1, "reduction_factor": 2},
        "search": {"sampler": "tpe", "seed": 0, "num_samples": 4, "max_concurrent_trials": 2,
                   "n_startup_trials": 2, "resources_per_trial": {"cpu": 1, "gpu": 0}},
        "storage": {"output_dir": str(tmp_path / "results")},
    }
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def syn_store(tmp_path_factory) -> Path:
    return make_synthetic_store(tmp_path_factory.mktemp("syn") / "store", n_items=240, seed=0)


def _searcher(url: str = "sqlite://", name: str = "s", num_samples: int | None = None) -> E2IOptunaSearch:
    space = load_space(ROOT / "tune_spaces" / "default.yaml")
    return E2IOptunaSearch(space=space.sample, metric=METRIC, mode="max", study_name=name,
                           storage=optuna.storages.RDBStorage(url), num_samples=num_samples,
                           sampler=optuna.samplers.RandomSampler(seed=0))


def _result(epoch: int, value: float, **extra) -> dict:
    return {"epoch": epoch, "training_iteration": epoch, METRIC: value, **extra}


# --------------------------------------------------------------------------------------------------
# The searcher (real Optuna + Ray's OptunaSearch, no trials run)


def test_asha_stopped_trials_are_pruned_with_their_curve():
    search = _searcher()
    configs = {tid: search.suggest(tid) for tid in ("a", "b", "c", "d")}
    assert [c[TRIAL_KEY] for c in configs.values()] == [0, 1, 2, 3]
    assert all("model.type" in c for c in configs.values())
    for epoch, value in ((1, 0.2), (2, 0.3), (3, 0.35)):
        search.on_trial_result("a", _result(epoch, value))
    search.on_trial_complete("a", _result(3, 0.35, done=True))
    search.on_trial_result("b", _result(1, 0.1))
    search.stopped_early.add("b")  # what RecordingASHA does when it stops a trial at a rung
    search.on_trial_complete("b", _result(2, 0.15, done=True))  # Tune never passed this result on
    search.on_trial_result("c", _result(1, float("nan")))
    search.on_trial_complete("c", _result(1, float("nan"), done=True))
    search.on_trial_complete("d", error=True)
    search.on_trial_complete("d", _result(1, 0.9))  # a second completion is ignored

    a, b, c, d = search._ot_study.get_trials()
    assert (a.state, a.value, a.intermediate_values) == (TrialState.COMPLETE, 0.35, {1: 0.2, 2: 0.3, 3: 0.35})
    assert (b.state, b.intermediate_values, b.user_attrs["stopped_by"]) == (TrialState.PRUNED, {1: 0.1, 2: 0.15}, "asha")
    assert b.value == 0.15  # Optuna records the last intermediate value; TPE ranks pruned below complete
    assert c.state == TrialState.FAIL and "no finite" in c.user_attrs[FAIL_REASON]
    assert d.state == TrialState.FAIL and d.user_attrs[FAIL_REASON] == "trial errored"
    assert search._ot_study.best_trial.number == 0  # best_trial only looks at complete trials
    assert all(t.user_attrs["tune_trial_id"] == tid for t, tid in zip((a, b, c, d), "abcd"))


def test_rung_verdict_waits_for_reduction_factor_results():
    """A rung promotes the top n // rf of its n results; with fewer than rf results it waits (Ray's
    ASHA promoted the first trial to reach a rung whatever its value); at the end the best goes on."""
    rung = {"a": 0.5}
    assert rung_verdict(rung, "a", 3) == "wait"
    assert rung_verdict(rung, "a", 3, final=True) == "promote"  # nothing else can reach the rung
    rung["b"] = 0.4
    assert [rung_verdict(rung, t, 3) for t in "ab"] == ["wait", "wait"]
    assert [rung_verdict(rung, t, 3, final=True) for t in "ab"] == ["promote", "stop"]
    rung["c"] = 0.6
    assert [rung_verdict(rung, t, 3) for t in "abc"] == ["stop", "stop", "promote"]
    rung.update(d=0.55, e=0.1, f=float("nan"))  # 6 results: the top 2 go on; NaN ranks last
    assert [rung_verdict(rung, t, 3) for t in "abcdef"] == ["stop", "stop", "promote", "promote", "stop", "stop"]
    assert rung_verdict({"x": 0.2, "y": 0.3}, "y", 2) == "promote"  # rf 2: 2 results are enough


class _Controller:
    """The part of Tune's controller the scheduler uses: the trials, and stop_trial, which tells the
    scheduler (on_trial_remove) before the trial is TERMINATED, as Tune does for a paused trial."""

    def __init__(self, trials, scheduler=None):
        self.trials, self.scheduler, self.stopped = trials, scheduler, []

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        self.stopped.append(trial.trial_id)
        self.scheduler.on_trial_remove(self, trial)
        trial.set_status("TERMINATED")


def _asha_run(ids, *, num_samples, max_t, rf):
    from ray.tune.experiment import Trial

    search = _searcher(num_samples=num_samples)
    asha = RecordingASHA(searcher=search, time_attr="epoch", metric=METRIC, mode="max", max_t=max_t,
                         grace_period=1, reduction_factor=rf)
    trials = [Trial("fn", trial_id=t, stub=True) for t in ids]
    tune = _Controller(trials, asha)
    for trial in trials:
        search.suggest(trial.trial_id)
        asha.on_trial_add(tune, trial)
        trial.set_status(Trial.RUNNING)
    return search, asha, trials, tune


def test_recording_asha_waits_at_a_rung_then_promotes_the_best():
    from ray.tune.experiment import Trial

    search, asha, trials, tune = _asha_run(("first", "second", "third", "fourth"), num_samples=4, max_t=9,
                                           rf=3)  # rungs 1, 3
    # the first two results at rung 1 wait (paused: their slots run other trials), whatever their value
    assert asha.on_trial_result(tune, trials[0], _result(1, 0.5)) == "PAUSE"
    assert asha.on_trial_result(tune, trials[1], _result(1, 0.2)) == "PAUSE"
    assert search.running() == {"third", "fourth"}  # waiting trials hold no concurrency slot
    # the third result ranks the rung: the best of three goes on, the others stop
    assert asha.on_trial_result(tune, trials[2], _result(1, 0.3)) == "STOP"
    assert tune.stopped == ["second"] and asha.promoted == {"first"} and not asha.waiting
    trials[2].set_status(Trial.TERMINATED)  # Tune carries out the STOP
    trials[0].set_status(Trial.PAUSED)
    assert asha.choose_trial_to_run(tune) is trials[0]
    assert search.stopped_early == {"second", "third"}
    # "fourth" is better than "first" at rung 3 but comes alone: it waits until no result can reach
    # rung 3 any more ("first" is still below it), then, as the rung's best, goes on to max_t
    assert asha.on_trial_result(tune, trials[3], _result(1, 0.9)) == "CONTINUE"
    assert asha.on_trial_result(tune, trials[3], _result(3, 0.95)) == "PAUSE"
    trials[0].set_status(Trial.RUNNING)
    assert asha.on_trial_result(tune, trials[0], _result(2, 0.55)) == "CONTINUE"
    assert asha.on_trial_result(tune, trials[0], _result(3, 0.6)) == "STOP"  # rung 3 closed: final
    assert asha.promoted == {"fourth"} and asha.on_trial_result(tune, trials[3], _result(9, 0.97)) == "STOP"
    assert search.stopped_early == {"first", "second", "third"}
    asha.replay({"x": {1: 0.9, 2: 0.8}})  # rungs refilled from the study on resume
    assert dict(asha._brackets[0]._rungs[-1][1])["x"] == 0.9


def test_the_last_result_of_a_rung_stops_the_waiting_trial_and_goes_on():
    """The waiting trial's stop calls back into the scheduler (Tune's stop_trial -> on_trial_remove),
    which must not decide the current trial a second time."""
    search, asha, trials, tune = _asha_run(("slow", "fast"), num_samples=2, max_t=2, rf=2)
    assert asha.on_trial_result(tune, trials[0], _result(1, 0.1)) == "PAUSE"
    assert asha.on_trial_result(tune, trials[1], _result(1, 0.5)) == "CONTINUE"
    assert tune.stopped == ["slow"] and not asha.waiting and search.stopped_early == {"slow"}


def test_a_trial_stopped_while_paused_at_a_rung_is_pruned_with_its_curve():
    search = _searcher()
    search.suggest("a")
    search.on_trial_result("a", _result(1, 0.25))
    search.stopped_early.add("a")
    search.on_trial_complete("a")  # Tune's stop_trial of a PAUSED trial passes no result
    (a,) = search._ot_study.get_trials()
    assert (a.state, a.intermediate_values, a.value) == (TrialState.PRUNED, {1: 0.25}, 0.25)


def test_the_tune_driver_does_not_import_torch():
    """torch is ~2 s of a search's start on 2 cores; only the trials need it."""
    code = ("import sys; from e2i.tune.search import tensorboard_logger; from e2i.store.mix import load_train_val; "
            "tensorboard_logger(); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_budget_and_study_repair_on_restore(tmp_path):
    """The study is ahead of the snapshot Tune restores: nothing counted twice, nothing RUNNING."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = _searcher(url, num_samples=5)
    for tid in ("a", "b", "c"):
        search.suggest(tid)
    search.on_trial_complete("a", _result(3, 0.4))
    search.save(str(tmp_path / "snapshot.pkl"))  # Tune's experiment snapshot
    search.on_trial_complete("b", _result(3, 0.5))  # finished after the snapshot
    orphan = search.suggest("d")  # asked after the snapshot: Tune will not know it
    # -- the driver is killed here; a new driver restores the snapshot
    restored = _searcher(url, num_samples=5)
    restored.restore(str(tmp_path / "snapshot.pkl"))
    states = {t.number: t.state for t in restored._ot_study.get_trials()}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.COMPLETE, 2: TrialState.RUNNING,
                      3: TrialState.FAIL, 4: TrialState.WAITING}  # orphan failed, its params re-queued
    assert restored._ot_study.trials[3].user_attrs[FAIL_REASON] == FAIL_REASON_ORPHAN
    assert restored.finished_elsewhere == {"b"}  # Tune resumes it; the stopper ends it, no second tell
    restored.on_trial_complete("b", _result(3, 0.9))
    assert restored._ot_study.trials[1].value == 0.5
    assert restored.budget_used() == 3  # a, b, c (the orphan does not count)
    again = restored.suggest("e")  # takes the re-queued point
    assert {k: v for k, v in again.items() if k != TRIAL_KEY} == {k: v for k, v in orphan.items() if k != TRIAL_KEY}
    restored.suggest("f")
    assert restored.suggest("g") == "FINISHED"  # 5 counted trials: the budget is the study's


# --------------------------------------------------------------------------------------------------
# A small search in the session's Ray instance


@pytest.mark.slow
def test_small_search_end_to_end(ray_local, syn_store, tmp_path):
    from servers import get_json, optuna_dashboard, tensorboard, tensorboard_scalars

    from e2i.train import run_training
    from e2i.train.loop import load_data

    # fractional GPUs: the session's Ray has 2 logical GPUs, torch has none (trials fall back to CPU)
    path = _space_file(tmp_path, syn_store, search={"resources_per_trial": {"cpu": 1, "gpu": 0.5}})
    summary = tune_space(path)
    exp = tmp_path / "results" / "small"
    study = optuna.load_study(study_name="small", storage=f"sqlite:///{exp / 'optuna.db'}")
    trials = study.get_trials()
    assert len(trials) == 4 and sum(summary["trials"].values()) == 4
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for t in trials:
        steps = sorted(t.intermediate_values)
        assert steps == list(range(1, len(steps) + 1))  # one value per epoch
        if t.state == TrialState.COMPLETE:
            assert steps[-1] == 3 and t.value == pytest.approx(max(t.intermediate_values.values()))
        else:
            assert steps[-1] < 3 and t.user_attrs["stopped_by"] == "asha"

    # best_config.yaml is a plain train config with the best trial's params, and retraining it
    # (the loop `e2i train` runs) gives the best trial's value
    best = study.best_trial
    cfg = load_train_config(exp / "best_config.yaml")
    assert cfg.model.type == best.params["model.type"] and cfg.optim.lr == pytest.approx(best.params["optim.lr"])
    assert cfg.optim.epochs == 3 and summary["best_value"] == best.value
    again = run_training(cfg, report=lambda metrics, ckpt: None, data=load_data(cfg))
    assert again["best_metric"] == pytest.approx(best.value, abs=0.02)

    for name in ("optimization_history", "param_importances", "parallel_coordinates", "asha_learning_curves"):
        assert (exp / "report" / f"{name}.png").stat().st_size > 1000

    # `tensorboard --logdir <tune dir>` (the real server, over HTTP) shows every trial, with the
    # objective per epoch (TensorBoard writes @ as _)
    trial_dirs = [d for d in (exp / "tune" / "small").iterdir() if d.is_dir()]
    assert len(trial_dirs) == 4
    with tensorboard(exp / "tune" / "small", runs=4) as url:
        tags = get_json(f"{url}/data/plugin/scalars/tags")
        assert sorted(tags) == sorted(d.name for d in trial_dirs)
        for d in trial_dirs:
            epochs = json.loads((d / "result.json").read_text().splitlines()[-1])["epoch"]
            assert len(tensorboard_scalars(url, d.name, "ray/tune/best/val/mAP_10")) == epochs

    # `optuna-dashboard sqlite:///…/optuna.db --port N` serves the study with its 4 trials
    with optuna_dashboard(f"sqlite:///{exp / 'optuna.db'}") as url:
        studies = get_json(f"{url}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["small"]
        detail = get_json(f"{url}/api/studies/{studies[0]['study_id']}")
        assert len(detail["trials"]) == 4
        assert sorted(t["state"] for t in detail["trials"]) == sorted(t.state.name.capitalize() for t in trials)

    # a second run refuses to mix into the existing experiment
    with pytest.raises(E2IError, match="--resume"):
        tune_space(path)


def test_resume_without_experiment_is_an_error(tmp_path, syn_store):
    with pytest.raises(E2IError, match="nothing to resume"):
        tune_space(_space_file(tmp_path, syn_store), resume=True)


# --------------------------------------------------------------------------------------------------
# Drivers in their own process (own Ray instance): kill + resume, S3 storage

DRIVER = """
import os, sys
import ray
ray.init(num_cpus=2, include_dashboard=False, _temp_dir=sys.argv[1], configure_logging=False)
from e2i.cli import main
sys.exit(main(["tune", *sys.argv[2:]]))
"""


@pytest.fixture
def ray_tmp():
    """A short temp dir for a driver's own Ray instance (socket paths must stay < 108 bytes)."""
    path = tempfile.mkdtemp(prefix="e2i-ray-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _driver(tmp_path: Path, ray_tmp: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
    with open(tmp_path / f"driver-{time.monotonic_ns()}.log", "w") as log:  # the child keeps its own fd
        return subprocess.Popen([sys.executable, "-c", DRIVER, ray_tmp, *args], stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=ROOT,
                                start_new_session=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and everything in its session (its Ray instance), like a lost head node."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def _wait(proc: subprocess.Popen, tmp_path: Path, timeout: float = 600) -> None:
    try:
        code = proc.wait(timeout=timeout)
    finally:
        _kill_group(proc)  # whatever Ray left in the session
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("driver-*.log")))
    assert code == 0, logs


def _states(url: str, name: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in optuna.load_study(study_name=name, storage=url).get_trials():
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _kill_at_an_orphan(proc: subprocess.Popen, url: str, study_name: str, timeout: float = 400) -> tuple[dict, int]:
    """Poll the study and SIGKILL the driver (with its Ray) as soon as a trial was PRUNED and the next one,
    asked after that, is RUNNING without a reported epoch: asked by the searcher but in no experiment
    snapshot yet (snapshots follow trial checkpoints, and the pruned trial's rung checkpoint came before
    it), so after the kill it is an orphan. Returns ({number: FrozenTrial} of the finished trials, the
    orphan's number)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
        fresh = fresh_after_pruned(url, study_name)
        if fresh:
            _kill_group(proc)
            trials = optuna.load_study(study_name=study_name, storage=url).get_trials()
            return {t.number: t for t in trials if t.state.is_finished()}, fresh[0]
    raise AssertionError(f"no moment with a pruned trial and a fresh running one (driver exit code {proc.poll()})")


NUM_SAMPLES = 5


@pytest.mark.slow
def test_killed_driver_resumes_same_experiment_and_study_on_s3(tmp_path, ray_tmp):
    """Tune storage on a real S3-compatible server; the driver (and its Ray) is SIGKILLed after a trial
    was pruned, while the next trial is running, then `e2i tune --resume` completes the budget: finished
    trials kept, the running one marked FAIL as an orphan and its point re-run, nothing counted twice."""
    import pyarrow.fs as pafs
    from s3_server import create_bucket, run_moto_server, s3_env

    store = make_synthetic_store(tmp_path / "store", n_items=600, seed=1)
    # one trial at a time (no other trial's checkpoint snapshots the experiment while a new trial starts),
    # ASHA with rungs after epochs 1 and 2, and lr 1e-7 (learns nothing) vs 5e-3: random sampler seed 0
    # draws lr 1e-7, 5e-3, 1e-7, ...: trials 0 and 2 are below trial 1 at rung 1: PRUNED for sure
    path = _space_file(tmp_path, store, name="resumable", scheduler={"type": "asha", "max_t": 3},
                       space={"optim.lr": {"choice": [5.0e-3, 1.0e-7]}},
                       search={"num_samples": NUM_SAMPLES, "max_concurrent_trials": 1, "sampler": "random",
                               "seed": 0},
                       # batch 16: a trial's start to its first epoch (the moment caught below) lasts
                       # ~0.45 s here (batch 8: ~0.6 s, batch 32: ~0.3 s); the poll takes ~1 ms
                       base={"data": {"store": str(store)}, "model": {"output_dim": 64, "hidden_dim": 256},
                             "optim": {"batch_size": 16, "early_stopping_patience": 0}})
    exp = tmp_path / "results" / "resumable"
    url = f"sqlite:///{exp / 'optuna.db'}"
    secret = "e2i-test-secret-" + os.urandom(6).hex()
    s3_args = ["--storage-path", "s3://e2i-tune/experiments"]
    with run_moto_server() as endpoint:
        # snapshots only after trial checkpoints (Tune's periodic one, every >= 10 s, could catch the
        # trial between its start and its first epoch)
        env = {**s3_env(endpoint), "AWS_SECRET_ACCESS_KEY": secret, "TUNE_GLOBAL_CHECKPOINT_S": "3600"}
        create_bucket(endpoint, "e2i-tune")
        proc = _driver(tmp_path, ray_tmp, [str(path), *s3_args, "--no-report"], env)
        finished, orphan = _kill_at_an_orphan(proc, url, "resumable")
        # seed 0's draws: lr 1e-7, 5e-3, 1e-7, ...: trial 0 waits alone at rung 1 until trial 1 ranks it
        # below (PRUNED); trial 1 waits alone at rung 2 (paused: RUNNING in the study) while trial 2 runs
        # and is stopped at rung 1 (the third result there); trial 3 is the orphan
        assert [finished[n].params["optim.lr"] for n in (0, 2)] == [1.0e-7, 1.0e-7] and 1 not in finished
        assert all(finished[n].state == TrialState.PRUNED and finished[n].user_attrs["stopped_by"] == "asha"
                   for n in (0, 2))
        assert orphan == 3 and len(finished) < NUM_SAMPLES

        resumed = _driver(tmp_path, ray_tmp, [str(path), *s3_args, "--resume"], env)
        _wait(resumed, tmp_path)
        fs = pafs.S3FileSystem(endpoint_override=endpoint.removeprefix("http://"), scheme="http",
                               access_key="testing", secret_key=secret, region="us-east-1")
        files = [f for f in fs.get_file_info(pafs.FileSelector("e2i-tune/experiments/resumable", recursive=True))
                 if f.type == pafs.FileType.File]
        names = [f.path for f in files]
        for f in files:  # no secret in anything written to the storage
            with fs.open_input_stream(f.path) as stream:
                assert secret.encode() not in stream.read(), f.path

    # the study: budget reached, nothing RUNNING, finished trials kept, none counted twice
    study = optuna.load_study(study_name="resumable", storage=url)
    after = {t.number: t for t in study.get_trials()}
    states = _states(url, "resumable")
    assert states.get("RUNNING", 0) == 0 and states.get("WAITING", 0) == 0
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == NUM_SAMPLES and states["PRUNED"] >= 1
    # the trial running at the kill: FAIL as an orphan, its parameters re-run by a later trial
    assert [n for n, t in after.items() if t.state == TrialState.FAIL] == [orphan]
    assert after[orphan].user_attrs[FAIL_REASON] == FAIL_REASON_ORPHAN
    requeued = [t for t in after.values() if t.user_attrs.get("e2i:requeued_from") == orphan]
    assert len(requeued) == 1 and requeued[0].number > orphan and requeued[0].params == after[orphan].params
    assert requeued[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    for number, t in finished.items():  # finished trials were not re-run
        assert after[number].state == t.state and after[number].value == t.value
        assert after[number].datetime_complete == t.datetime_complete
    counted = [t for t in after.values() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len({t.user_attrs["tune_trial_id"] for t in counted}) == NUM_SAMPLES
    # what the resumed driver told the user
    log = max(tmp_path.glob("driver-*.log"), key=lambda p: int(p.stem.split("-")[1])).read_text()
    assert re.search(r"^e2i tune: study repaired on resume: \{'failed_orphans': 1, 'finished_elsewhere': \d, 'errored_retried': 0\}$",
                     log, re.MULTILINE), log[-3000:]
    assert re.search(rf"^e2i tune resumable: complete {states['COMPLETE']}, fail 1, pruned {states['PRUNED']} "
                     r"in \d+s; best trial \d+: val/mAP@10 \d\.\d{4} -> .*best_config\.yaml; report: ",
                     log, re.MULTILINE), log[-3000:]

    # Tune's experiment, trials, checkpoints and TensorBoard events are on S3
    assert any(n.endswith("/tuner.pkl") for n in names)
    # results of every trial the resumed driver ran (the killed driver's last uploads may be lost with it)
    with_results = {n.split("/")[-2].split("_")[2] for n in names if n.endswith("/result.json")}  # trial_main_<id>_
    assert {t.user_attrs["tune_trial_id"] for number, t in after.items() if number > orphan} <= with_results
    assert any("/checkpoint_" in n for n in names) and any("events.out.tfevents" in n for n in names)
    info = json.loads((exp / "experiment.json").read_text())
    assert info["tune_experiment"] == "s3://e2i-tune/experiments/resumable"
    assert (exp / "best_config.yaml").is_file() and (exp / "report" / "asha_learning_curves.png").is_file()
    for p in exp.rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p
