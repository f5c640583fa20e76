"""The driver of `e2i tune SPACE.yaml`: Ray Tune + ASHA + Optuna over heads, losses and hyper-parameters.

    tune_space("tune_spaces/default.yaml", num_samples=16)  # = e2i tune <space> --num-samples 16
    tune_space("tune_spaces/default.yaml", resume=True)     # = e2i tune <space> --resume (after a kill)
    tune_space("tune_spaces/default.yaml", time_budget_s=600)  # = e2i tune <space> --time-budget 10m

How it fits together (numbered as in Ray's train/tune interop example):

1. Search space: :mod:`e2i.tune.space` turns the YAML into an Optuna define-by-run function
   (conditional parameters are suggested only when their block's condition holds).
2. Trials (:mod:`e2i.tune.trial`) train through the same loop as ``e2i train``: a 1-worker trial
   calls :func:`e2i.train.loop.run_training` inside the function trainable (no TorchTrainer start-up
   per trial); a multi-worker trial (``base.scaling.num_workers > 1``) runs a TorchTrainer with
   :func:`e2i.train.driver._train_loop_per_worker` whose reports reach Tune through Ray's
   TuneReportCallback.
3. Data: the driver loads the train/val splits once and ``tune.with_parameters`` puts them into the
   object store once; every trial on a node maps the same float32 buffers (zero-copy numpy).
4. ``OptunaSearch`` (TPE, storage = an ``optuna.storages.RDBStorage``, SQLite by default) proposes,
   ``ASHAScheduler`` (time_attr ``epoch``) stops weak trials at rungs ``grace * rf^k``; both as
   :mod:`e2i.tune.optuna_search` adapts them (a rung promotes its top 1/rf once it holds rf results,
   trials reaching it before wait paused; ASHA-stopped trials are PRUNED, the study is repaired on
   resume).

The objective is ``best/<metric>``: the best validation value of the trial so far (``e2i train``
keeps the best epoch's weights, so a finished trial's value is what retraining its config gives).

This module checks the storage (a new run never mixes into an existing experiment or study), builds
or restores the Tuner, and exports the best COMPLETE trial. On ``--resume`` errored trials stay
errored (FAIL) and are not retried: Tune's restart would give them ids the searcher never proposed.
``num_samples`` is the one of the first run.

Time budget (``--time-budget``): Ray Tune's ``TuneConfig(time_budget_s=...)`` stops every trial once
the wall time is spent; without ``--num-samples`` the trial count is unlimited (``num_samples=-1``),
so trials keep coming until then. Trials the budget cut are told PRUNED (``stopped_by: time_budget``).
Ctrl-C ends the search the same way (Ray's SIGINT handler) and the best so far is exported.

Outputs (``<output_dir>/<space>/``): ``optuna.db``, ``experiment.json``, ``best_config.yaml`` (a
plain train config: ``e2i train`` on it reproduces the best trial), ``report/`` (``e2i report``),
and by default Tune's experiment in ``tune/<space>/`` (TensorBoard events and checkpoints per trial).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import optuna

from e2i.config import save_train_config
from e2i.errors import E2IError
from e2i.tune.asha import RecordingASHA
from e2i.tune.optuna_search import (
    STEP_ATTR,
    E2IOptunaSearch,
    SkipFinishedStopper,
    make_sampler,
    make_storage,
    objective_key,
)
from e2i.tune.space import TuneSpace, load_space
from e2i.tune.trial import make_trainable

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'90s' / '10m' / '1h' / '1.5h' / '600' (seconds) -> seconds (> 0); ValueError otherwise."""
    raw = str(text).strip().lower()
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in _UNITS else (raw, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 10m, 1h or plain seconds)") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{text!r}: the time budget must be > 0")
    return seconds


@dataclasses.dataclass(frozen=True)
class TimeBudget:
    """A wall-clock budget of a search (``e2i tune --time-budget``); ``count_limited`` False means no
    trial-count cap (Tune's ``num_samples=-1``): trials keep coming until the budget is spent."""

    seconds: float | None = None
    count_limited: bool = True

    def num_samples(self, space: TuneSpace) -> int | None:
        return space.search.num_samples if self.count_limited else None

    @staticmethod
    def prune_cut_trials(space: TuneSpace) -> int:
        """Tell the study PRUNED for the trials the budget stopped (Tune's stop-all does not reach the
        searcher, so they would stay RUNNING); they are partial, like ASHA-stopped ones."""
        study = optuna.load_study(study_name=space.study_name, storage=make_storage(space.optuna_url))
        cut = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for t in cut:
            study._storage.set_trial_user_attr(t._trial_id, "stopped_by", "time_budget")
            study.tell(t.number, state=optuna.trial.TrialState.PRUNED)
        return len(cut)


def _tune_storage(space: TuneSpace) -> tuple[str, Any]:
    """(storage_path for Tune, storage_filesystem or None): s3:// goes through e2i.store.open_fs so
    the custom endpoint (AWS_ENDPOINT_URL) applies."""
    path = space.storage_path
    if path.startswith("s3://"):
        from e2i.store import open_fs

        fs, bucket_path = open_fs(path)
        return bucket_path, fs
    return path, None


def _experiment_exists(path: str, fs) -> bool:
    from ray.tune import Tuner

    if fs is not None:  # object storage: an unreachable endpoint is an error, not "no experiment"
        fs.get_file_info(path)
    try:
        return Tuner.can_restore(path, storage_filesystem=fs)
    except Exception:  # noqa: BLE001 - missing bucket/dir
        return False


def _delete_previous(space: TuneSpace, exp_path: str, fs) -> None:
    import pyarrow.fs as pafs

    try:
        optuna.delete_study(study_name=space.study_name, storage=make_storage(space.optuna_url))
    except KeyError:
        pass
    fs = fs or pafs.LocalFileSystem()
    if fs.get_file_info(exp_path).type != pafs.FileType.NotFound:
        fs.delete_dir(exp_path)
    for name in ("best_config.yaml", "report"):
        target = space.experiment_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)


def _check_study_is_new(space: TuneSpace) -> None:
    names = {s.study_name for s in optuna.get_all_study_summaries(make_storage(space.optuna_url))}
    if space.study_name in names:
        raise E2IError(f"{space.source}: Optuna study {space.study_name!r} already exists in "
                       f"{_masked(space.optuna_url)} (pass --resume to continue it or --overwrite to start "
                       "over)")


def _masked(url: str) -> str:
    """A storage URL without its password (written to experiment.json and logs)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url


def _build_tuner(space: TuneSpace, trainable, tune_path: str, fs, budget: TimeBudget):
    import ray.tune

    objective = objective_key(space.metric)
    searcher = E2IOptunaSearch(space=space.sample, metric=objective, mode=space.mode,
                               sampler=make_sampler(space), study_name=space.study_name,
                               storage=make_storage(space.optuna_url), num_samples=budget.num_samples(space))
    sched = space.scheduler
    scheduler = None
    if sched.type == "asha":
        scheduler = RecordingASHA(searcher=searcher, time_attr=STEP_ATTR, metric=objective, mode=space.mode,
                                  max_t=sched.max_t, grace_period=sched.grace_period,
                                  reduction_factor=sched.reduction_factor)
    callbacks = [logger for logger in (tensorboard_logger(),) if logger is not None]
    if space.base_config.logging.use_wandb:
        from ray.air.integrations.wandb import WandbLoggerCallback

        log = space.base_config.logging
        callbacks.append(WandbLoggerCallback(project=log.wandb_project, entity=log.wandb_entity,
                                             group=space.name))
    return ray.tune.Tuner(
        trainable,
        tune_config=ray.tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                        # -1: Tune samples until the time budget stops it
                                        num_samples=budget.num_samples(space) or -1,
                                        time_budget_s=budget.seconds,
                                        max_concurrent_trials=space.search.max_concurrent_trials,
                                        # a trial's process (torch, the shared data) serves the next
                                        # trial: saves the ~5-20 s start-up of a new actor per trial
                                        reuse_actors=True),
        run_config=ray.tune.RunConfig(
            name=space.name, storage_path=tune_path, storage_filesystem=fs,
            stop=SkipFinishedStopper(searcher), callbacks=callbacks, verbose=1,
            checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=1),  # the latest: what resume needs
            failure_config=ray.tune.FailureConfig(max_failures=0),
        ),
    )


def tensorboard_logger():
    """Tune's TensorBoard logger (event files per trial), without ``import torch`` on the driver.

    tensorboardX imports torch when it can (only to accept torch tensors, which Tune never passes:
    it logs numbers), and that import was ~2 s of the search's start on 2 cores, before the first
    trial. The driver never needs torch otherwise, so tensorboardX is imported with torch hidden."""
    import sys

    if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # tensorboardX's optional `import torch` raises ImportError
        try:
            import tensorboardX  # noqa: F401
        except ImportError:  # not installed: Tune warns and logs CSV/JSON only, as it would by itself
            return None
        finally:
            del sys.modules["torch"]
    from ray.tune.logger import TBXLoggerCallback

    return TBXLoggerCallback()


def _write_experiment_json(space: TuneSpace, exp_path: str, fs, budget: TimeBudget) -> None:
    info = {
        "space": space.name, "space_file": str(Path(space.source).resolve()), "study_name": space.study_name,
        "optuna_storage": _masked(space.optuna_url),
        "tune_experiment": (f"s3://{exp_path}" if fs is not None else exp_path),
        "metric": space.metric, "objective": objective_key(space.metric), "mode": space.mode,
        "scheduler": vars(space.scheduler), "rungs": space.scheduler.rungs(),
        "num_samples": budget.num_samples(space), "time_budget_s": budget.seconds,
        "params": [p.key for p in space.params],
        "base": space.base,
    }
    space.experiment_dir.mkdir(parents=True, exist_ok=True)
    (space.experiment_dir / "experiment.json").write_text(json.dumps(info, indent=1))


def run_search(space: TuneSpace, *, resume: bool = False, overwrite: bool = False,
               report: bool = True, budget: TimeBudget | None = None) -> dict:
    """Run (or resume) the search of ``space``; returns a summary dict (also printed).

    Ctrl-C (SIGINT) during ``tuner.fit()``: Ray Tune's handler ends the run after a last experiment
    snapshot, ``fit`` returns, and the best COMPLETE trial so far is exported as usual (running trials
    stay RUNNING in the study, so ``--resume`` continues them)."""
    budget = budget or TimeBudget()
    import ray
    import ray.tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # CheckpointConfig(num_to_keep=1) makes Tune snapshot the experiment whenever a trial saved a
    # checkpoint (at ASHA rungs, every N epochs, the last: e2i.tune.trial.trial_checkpoint_due): wanted
    # (small drift on resume), so not worth a warning each time
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    start = time.perf_counter()
    tune_path, fs = _tune_storage(space)
    exp_path = f"{tune_path.rstrip('/')}/{space.name}"
    exists = _experiment_exists(exp_path, fs)
    if resume and not exists:
        raise E2IError(f"{space.source}: nothing to resume at {exp_path} (run without --resume)")
    if overwrite and not resume:
        _delete_previous(space, exp_path, fs)
    elif not resume:
        if exists:
            raise E2IError(f"{space.source}: a tune experiment exists at {exp_path} "
                           "(pass --resume to continue it or --overwrite to start over)")
        _check_study_is_new(space)
    if resume:
        space = _original_budget(space)
    else:
        _write_experiment_json(space, exp_path, fs, budget)
    if not ray.is_initialized():
        ray.init()
    trainable = make_trainable(space, tune_path, fs)
    if resume:
        tuner = ray.tune.Tuner.restore(exp_path, trainable, storage_filesystem=fs, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
    else:
        tuner = _build_tuner(space, trainable, tune_path, fs, budget)
    fit_start = time.perf_counter()
    tuner.fit()
    if budget.seconds is not None and time.perf_counter() - fit_start >= budget.seconds:
        budget.prune_cut_trials(space)  # stopped by the budget, not by Ctrl-C: not resumable anyway
    summary = finish_search(space, wall_s=time.perf_counter() - start)
    if report:
        from e2i.tune.report import make_report

        summary["report"] = str(make_report(space.experiment_dir, quiet=True)["dir"])
    print_summary(summary)
    return summary


def _original_budget(space: TuneSpace) -> TuneSpace:
    """On resume Tune restores num_samples from its own state: align the space with it (and say so)."""
    info_path = space.experiment_dir / "experiment.json"
    if not info_path.is_file():
        return space
    original = json.loads(info_path.read_text()).get("num_samples")
    if original is None or original == space.search.num_samples:
        return space
    print(f"e2i tune: resuming with the experiment's budget of {original} trials "
          f"(num_samples={space.search.num_samples} ignored: Tune restores it)", flush=True)
    return dataclasses.replace(space, search=dataclasses.replace(space.search, num_samples=original))


def finish_search(space: TuneSpace, *, wall_s: float) -> dict:
    """Count trials by state, export best_config.yaml from the best COMPLETE trial."""

    study = optuna.load_study(study_name=space.study_name, storage=make_storage(space.optuna_url))
    trials = study.get_trials(deepcopy=False)
    states = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    summary = {"space": space.name, "experiment_dir": str(space.experiment_dir), "metric": space.metric,
               "mode": space.mode, "trials": states, "wall_s": round(wall_s, 1),
               "optuna_storage": _masked(space.optuna_url)}
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        summary["best_config"] = None
        return summary
    best = study.best_trial
    path = export_best_config(space, best.params, best.number, best.value)
    summary.update(best_trial=best.number, best_value=best.value, best_params=best.params,
                   best_config=str(path))
    return summary


def export_best_config(space: TuneSpace, params: dict, number: int, value: float) -> Path:
    """best_config.yaml: the base config + the trial's params, epochs = max_t, base logging."""
    cfg = space.trial_config(params, name=f"{space.name}-best")
    path = space.experiment_dir / "best_config.yaml"
    save_train_config(cfg, path)
    tuned_on = (f"data.train: {len(cfg.data.train)} stores mixed" if cfg.data.train
                else f"data.train_split={cfg.data.train_split}")
    header = (f"# Best trial {number} of search space {space.name!r} ({space.source}): "
              f"{space.metric} = {value:.4f} on {cfg.data.val_split}\n"
              f"# Train it with: e2i train {path}   (tuned on {tuned_on}"
              f"{f', train_subset={cfg.data.train_subset}' if cfg.data.train_subset else ''};"
              " change data: to train on more)\n")
    path.write_text(header + path.read_text())
    return path


def print_summary(summary: dict) -> None:
    states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(summary["trials"].items()))
    line = f"e2i tune {summary['space']}: {states} in {summary['wall_s']:.0f}s"
    if summary.get("best_config"):
        line += (f"; best trial {summary['best_trial']}: {summary['metric']} {summary['best_value']:.4f}"
                 f" -> {summary['best_config']}")
    else:
        line += "; no trial completed (no best_config.yaml)"
    if summary.get("report"):
        line += f"; report: {summary['report']}"
    print(line, flush=True)


def tune_space(path: str | os.PathLike, *, num_samples: int | None = None, output_dir: str | None = None,
               storage_path: str | None = None, storage: str | None = None,
               overrides: dict[str, Any] | list[str] | None = None, max_t: int | None = None,
               max_concurrent_trials: int | None = None, resume: bool = False, overwrite: bool = False,
               report: bool = True, time_budget_s: float | None = None) -> dict:
    """Load ``path`` with the given overrides (dotted keys of the space document) and run the search.

    ``time_budget_s``: stop the search after this many seconds (Ray Tune's ``time_budget_s``); trials
    keep being sampled until then, unless ``num_samples`` is also given (then whichever comes first).
    """
    extra: dict[str, Any] = {}
    if isinstance(overrides, list):
        from e2i.config import parse_override

        extra.update(dict(parse_override(o, f"{path} (--set)") for o in overrides))
    elif overrides:
        extra.update(overrides)
    flags = {"search.num_samples": num_samples, "storage.output_dir": output_dir,
             "storage.storage_path": storage_path, "storage.optuna": storage, "scheduler.max_t": max_t,
             "search.max_concurrent_trials": max_concurrent_trials}
    for key, value in flags.items():
        if value is not None:
            extra[key] = value
    if max_t is not None and "scheduler.grace_period" not in extra:
        extra["scheduler.grace_period"] = min(max_t, load_space(path).scheduler.grace_period)
    space = load_space(path, extra)
    budget = TimeBudget(seconds=time_budget_s, count_limited=num_samples is not None or time_budget_s is None)
    return run_search(space, resume=resume, overwrite=overwrite, report=report, budget=budget)
