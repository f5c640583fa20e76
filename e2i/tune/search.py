"""`e2i tune SPACE.yaml`: Ray Tune + ASHA + Optuna over heads, losses and hyper-parameters.

    e2i tune tune_spaces/default.yaml --num-samples 16
    e2i tune tune_spaces/default.yaml --resume            # after the driver was killed

How it fits together (numbered as in Ray's train/tune interop example):

1. Search space: :mod:`e2i.tune.space` turns the YAML into an Optuna define-by-run function
   (conditional parameters are suggested only when their block's condition holds).
2. Trials train through the same loop as ``e2i train``: a 1-worker trial calls
   :func:`e2i.train.driver.run_training` inside the function trainable (no TorchTrainer start-up per trial);
   a multi-worker trial (``base.scaling.num_workers > 1``) runs a TorchTrainer with
   :func:`e2i.train.driver._train_loop_per_worker` whose reports reach Tune through Ray's TuneReportCallback.
3. Data: the driver loads the train/val splits once and ``tune.with_parameters`` puts them into the
   object store once; every trial on a node maps the same float32 buffers (zero-copy numpy).
4. ``OptunaSearch`` (TPE, storage = an ``optuna.storages.RDBStorage``, SQLite by default) proposes,
   ``ASHAScheduler`` (time_attr ``epoch``) stops weak trials at rungs ``grace * rf^k``.

The objective is ``best/<metric>``: the best validation value of the trial so far (``e2i train``
keeps the best epoch's weights, so a finished trial's value is what retraining its config gives).

**Pruned vs complete (on purpose).** Ray's OptunaSearch tells Optuna COMPLETE with the partial
metric for a trial ASHA stopped, so TPE would compare an 2-epoch value with 12-epoch values as if
they were final. Here a trial stopped by ASHA before ``max_t`` is told **PRUNED**, with its per-epoch
values recorded as intermediate values (the last one included). Optuna's TPE ranks pruned trials
below every complete trial, and among themselves by how far they got, then by their last value —
exactly ASHA's judgement. ``study.best_trial`` only considers COMPLETE trials. Trials that end by
themselves (max_t reached, or the loop's own early stopping) are COMPLETE; errors and non-finite
values are FAIL.

**Resume.** ``--resume`` restores Tune's experiment (``Tuner.restore``) and the same Optuna study:
trials Tune recorded as finished are kept and not re-run; unfinished trials continue from their
last checkpoint under the same Optuna trial. The searcher's state is saved with Tune's experiment
snapshot (after every trial checkpoint, as ``num_to_keep=1`` forces, else every >= 10 s), so the
study can be a little ahead of the snapshot; on restore (:meth:`E2IOptunaSearch.restore`) the study
is repaired so that nothing is counted twice and nothing stays RUNNING:

- an Optuna trial still RUNNING that the snapshot never saw (asked after it) is marked FAIL
  (user attr ``e2i:fail_reason``) and its parameters are enqueued: the next trial re-runs that point;
- a trial the study finished after the snapshot is not told again; Tune resumes its copy from the
  last checkpoint and :class:`SkipFinishedStopper` ends it at its first result;
- ASHA's rungs (Tune does not save scheduler state) are refilled from the intermediate values;
- the budget: the searcher itself stops at ``num_samples`` trials counted in the study (except the
  re-queued orphans), as Tune's own counter is restored from the snapshot and may lag behind.

Errored trials stay errored (FAIL) and are not retried: Tune's restart would give them ids the
searcher never proposed. ``num_samples`` is the one of the first run.

Outputs (``<output_dir>/<space>/``): ``optuna.db``, ``experiment.json``, ``best_config.yaml`` (a
plain train config: ``e2i train`` on it reproduces the best trial), ``report/`` (``e2i report``),
and by default Tune's experiment in ``tune/<space>/`` (TensorBoard events and checkpoints per trial).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pickle
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune import Stopper
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from e2i.config import save_train_config
from e2i.errors import ConfigError, E2IError
from e2i.tune.space import TuneSpace, load_space

TRIAL_KEY = "optuna_trial"  # added to every Tune trial's config: the Optuna trial number
FAIL_REASON = "e2i:fail_reason"
FAIL_REASON_ORPHAN = "tune driver stopped before recording the trial; parameters re-queued"
STEP_ATTR = "epoch"  # ASHA's time attribute and the step of Optuna's intermediate values


def objective_key(metric: str) -> str:
    return f"best/{metric}"


# --------------------------------------------------------------------------------------------------
# Optuna searcher, ASHA scheduler and stopper that cooperate


class E2IOptunaSearch(OptunaSearch):
    """OptunaSearch with PRUNED for ASHA-stopped trials and a study repair on restore (module doc)."""

    def __init__(self, *args, num_samples: int | None = None, **kwargs) -> None:
        self.num_samples = num_samples  # the budget, counted in the study (see budget_used)
        self.stopped_early: set[str] = set()  # Tune trial ids ASHA stopped before max_t
        self.finished_elsewhere: set[str] = set()  # finished in the study, not in Tune's snapshot
        self.scheduler: RecordingASHA | None = None  # set by RecordingASHA; not part of saved state
        super().__init__(*args, **kwargs)

    def budget_used(self) -> int:
        """Trials of the study that count toward num_samples: all asked ones except the FAILs this
        searcher made of orphans on resume (their parameters were re-queued)."""
        return sum(1 for t in self._ot_study.get_trials(deepcopy=False)
                   if t.state != TrialState.WAITING and FAIL_REASON_ORPHAN != t.user_attrs.get(FAIL_REASON))

    def suggest(self, trial_id: str) -> dict | str | None:
        # Tune's own counter is restored from its snapshot and can lag behind the study after a
        # kill (trials asked after the snapshot); the study is the truth, so the budget is checked here.
        if self.num_samples is not None and self.budget_used() >= self.num_samples:
            return Searcher.FINISHED
        config = super().suggest(trial_id)
        if config is not None:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("tune_trial_id", trial_id)
            config[TRIAL_KEY] = ot_trial.number
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or self.metric not in result:
            return
        self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict) -> None:
        """Intermediate value at step = epoch (not training_iteration: stable across resumes)."""
        ot_trial = self._ot_trials[trial_id]
        step = int(result.get(STEP_ATTR, result.get("training_iteration", 0)))
        value = float(result[self.metric])
        if step not in ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values:
            ot_trial.report(value, step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        value = (result or {}).get(self.metric)
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        try:
            if error or not finite:
                reason = "trial errored" if error else f"no finite {self.metric} reported"
                ot_trial.set_user_attr(FAIL_REASON, reason)
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            else:
                # Tune does not pass a result the scheduler said STOP to (a rung, or max_t) on
                # to on_trial_result: record it, so every epoch has its intermediate value
                self._report(trial_id, result)
                if trial_id in self.stopped_early:
                    ot_trial.set_user_attr("stopped_by", "asha")
                    self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
                else:
                    self._ot_study.tell(ot_trial, float(value), state=TrialState.COMPLETE)
        except Exception as exc:  # noqa: BLE001 - e.g. already finished in the study
            warnings.warn(f"optuna trial {ot_trial.number}: {exc}")
        self._completed_trials.add(trial_id)

    def save(self, checkpoint_path: str) -> None:
        state = {k: v for k, v in self.__dict__.items() if k != "scheduler"}
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        scheduler = self.scheduler
        super().restore(checkpoint_path)
        self.scheduler = scheduler
        self.repair_study()
        if self.scheduler is not None:
            self.scheduler.replay(self.intermediate_values())

    def intermediate_values(self) -> dict[str, dict[int, float]]:
        """{Tune trial id: {epoch: objective}} of every trial the searcher knows."""
        storage = self._ot_study._storage
        return {tid: storage.get_trial(t._trial_id).intermediate_values for tid, t in self._ot_trials.items()}

    def repair_study(self) -> dict[str, int]:
        """Make the study agree with the restored snapshot (see the module doc)."""
        storage = self._ot_study._storage
        open_ids = {tid: t for tid, t in self._ot_trials.items() if tid not in self._completed_trials}
        known = {t.number for t in open_ids.values()}
        counts = {"failed_orphans": 0, "finished_elsewhere": 0}
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in known:
                storage.set_trial_user_attr(frozen._trial_id, FAIL_REASON, FAIL_REASON_ORPHAN)
                storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)
                self._ot_study.enqueue_trial(frozen.params, user_attrs={"e2i:requeued_from": frozen.number})
                counts["failed_orphans"] += 1
        for tid, ot_trial in open_ids.items():
            if storage.get_trial(ot_trial._trial_id).state.is_finished():
                self._completed_trials.add(tid)
                self.finished_elsewhere.add(tid)
                counts["finished_elsewhere"] += 1
        if any(counts.values()):
            print(f"e2i tune: study repaired on resume: {counts}", flush=True)
        return counts


class RecordingASHA(ASHAScheduler):
    """ASHA that tells the searcher which trials it stopped at a rung (before max_t), and whose rungs
    are refilled from the study on resume (Tune does not save scheduler state)."""

    def __init__(self, *, searcher: E2IOptunaSearch, **kwargs) -> None:
        super().__init__(**kwargs)
        self.searcher = searcher
        searcher.scheduler = self

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        fresh = not result.get("done")  # Tune re-sends the last result with done=True at the end
        before_max_t = result.get(self._time_attr, self._max_t) < self._max_t
        if decision == TrialScheduler.STOP and fresh and before_max_t:
            self.searcher.stopped_early.add(trial.trial_id)
        return decision

    def replay(self, values: dict[str, dict[int, float]]) -> None:
        """Record each trial's value at every rung milestone it reached (ASHA's `recorded` dicts)."""
        for bracket in self._brackets:
            for milestone, recorded in bracket._rungs:
                for trial_id, by_epoch in values.items():
                    if milestone in by_epoch and math.isfinite(by_epoch[milestone]):
                        recorded.setdefault(trial_id, self._metric_op * by_epoch[milestone])


class SkipFinishedStopper(Stopper):
    """Stops (at its first result) a resumed trial whose Optuna trial had already finished."""

    def __init__(self, searcher: E2IOptunaSearch) -> None:
        self.searcher = searcher

    def __call__(self, trial_id: str, result: dict) -> bool:
        return trial_id in self.searcher.finished_elsewhere

    def stop_all(self) -> bool:
        return False


def make_sampler(space: TuneSpace):
    """TPE: multivariate + group (models conditional sub-spaces jointly), constant_liar (concurrent
    trials do not all pick the same point); or random."""
    search = space.search
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=search.n_startup_trials,
                                          multivariate=True, group=True, constant_liar=True)


def make_storage(url: str):
    """An RDBStorage (what OptunaSearch wants); SQLite files get their directory and a lock timeout."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url)


# --------------------------------------------------------------------------------------------------
# The trial


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs besides its sampled params (picklable; shipped once via the object store)."""

    space: TuneSpace
    storage_path: str  # Tune storage root (local path, or bucket/prefix when storage_fs is set)
    storage_fs: Any = None  # pyarrow FileSystem for remote storage

    def config(self, params: dict, trial_dir: str):
        """The trial's TrainConfig: base + params, epochs = max_t, logging done by Tune."""
        number = params.get(TRIAL_KEY, 0)
        res = self.space.search.resources_per_trial
        return self.space.trial_config(params, **{
            "name": f"{self.space.name}-trial{number:04d}", "output_dir": trial_dir,
            "scaling.use_gpu": res.gpu > 0, "scaling.cpus_per_worker": res.cpu,
            "scaling.gpus_per_worker": res.gpu,
            # Tune writes TensorBoard/CSV/JSON per trial; W&B via WandbLoggerCallback when enabled
            "logging.tensorboard": False, "logging.use_wandb": False,
        })


class _Objective:
    """Adds ``best/<metric>`` (best value so far, resumed from the checkpoint's progress)."""

    def __init__(self, metric: str, mode: str, best: float | None = None) -> None:
        self.metric, self.sign, self.best = metric, (1.0 if mode == "max" else -1.0), best

    def __call__(self, metrics: dict) -> dict:
        value = metrics.get(self.metric)
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        if finite and (self.best is None or self.sign * value > self.sign * self.best):
            self.best = float(value)
        return {**metrics, objective_key(self.metric): self.best if self.best is not None else float("nan")}


def trial_main(config: dict, setup: TrialSetup, data=None) -> None:
    """Function trainable: one Tune trial = one training run of the trial's config."""
    import ray.tune

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # object store
    trial_dir = ray.tune.get_context().get_trial_dir()
    cfg = setup.config(config, trial_dir)
    if cfg.scaling.num_workers > 1:
        return _run_torch_trainer(cfg, setup, trial_dir)
    from e2i.train.checkpoint import read_progress
    from e2i.train.driver import run_training

    checkpoint = ray.tune.get_checkpoint()
    objective = _Objective(cfg.metric, cfg.metric_mode)

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        ckpt = ray.tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.tune.report(objective(metrics), checkpoint=ckpt)

    if checkpoint is None:
        run_training(cfg, report=report, data=data)
        return
    with checkpoint.as_directory() as resume_dir:
        objective.best = read_progress(resume_dir).get("best_metric")
        run_training(cfg, report=report, resume_from=resume_dir, data=data)


def _run_torch_trainer(cfg, setup: TrialSetup, trial_dir: str) -> None:
    """Multi-worker trial: a TorchTrainer running e2i.train.driver's worker loop; its rank-0 reports are
    forwarded to this Tune trial (with the objective added) by a TuneReportCallback."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from e2i.train.driver import _gpu_request, _train_loop_per_worker

    objective = _Objective(cfg.metric, cfg.metric_mode)

    class _Forward(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            super().after_report(run_context, [objective(metrics[0])], checkpoint)

    use_gpu, gpus, _ = _gpu_request(cfg)
    resources = {"CPU": cfg.scaling.cpus_per_worker} | ({"GPU": gpus} if use_gpu else {})
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "run_dir": trial_dir},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            # a stable place per trial, inside the experiment: a restarted trial finds Ray Train's
            # snapshot there and resumes from its latest checkpoint
            name=f"{Path(trial_dir).name}-train", storage_path=f"{setup.storage_path}/{setup.space.name}",
            storage_filesystem=setup.storage_fs, callbacks=[_Forward()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    trainer.fit()


# --------------------------------------------------------------------------------------------------
# The driver


def _tune_storage(space: TuneSpace) -> tuple[str, Any]:
    """(storage_path for Tune, storage_filesystem or None): s3:// goes through e2i.store.core.open_fs so
    the custom endpoint (AWS_ENDPOINT_URL) applies."""
    path = space.storage_path
    if path.startswith("s3://"):
        from e2i.store.core import open_fs

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


def _build_tuner(space: TuneSpace, trainable, tune_path: str, fs):
    import ray.tune

    objective = objective_key(space.metric)
    searcher = E2IOptunaSearch(space=space.sample, metric=objective, mode=space.mode,
                               sampler=make_sampler(space), study_name=space.study_name,
                               storage=make_storage(space.optuna_url), num_samples=space.search.num_samples)
    sched = space.scheduler
    scheduler = None
    if sched.type == "asha":
        scheduler = RecordingASHA(searcher=searcher, time_attr=STEP_ATTR, metric=objective, mode=space.mode,
                                  max_t=sched.max_t, grace_period=sched.grace_period,
                                  reduction_factor=sched.reduction_factor)
    callbacks = []
    if space.base_config.logging.use_wandb:
        from ray.air.integrations.wandb import WandbLoggerCallback

        log = space.base_config.logging
        callbacks.append(WandbLoggerCallback(project=log.wandb_project, entity=log.wandb_entity,
                                             group=space.name))
    return ray.tune.Tuner(
        trainable,
        tune_config=ray.tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                        num_samples=space.search.num_samples,
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


def _trainable(space: TuneSpace, tune_path: str, fs):
    """The function trainable with its resources and the shared data (put into the object store once)."""
    import ray.tune

    from e2i.train.loop import load_data

    setup = TrialSetup(space=space, storage_path=tune_path, storage_fs=fs)
    res = space.search.resources_per_trial
    if space.base_config.scaling.num_workers > 1:  # the TorchTrainer's workers hold the resources
        return ray.tune.with_resources(ray.tune.with_parameters(trial_main, setup=setup), {"cpu": 0.01})
    train, val = load_data(space.base_config)
    print(f"e2i tune: train {train.num_items} items / {train.num_captions} captions, val {val.num_items} "
          f"items; shared by all trials through the object store", flush=True)
    fn = ray.tune.with_parameters(trial_main, setup=setup, data=(train, val))
    return ray.tune.with_resources(fn, {"cpu": res.cpu, "gpu": res.gpu})


def _write_experiment_json(space: TuneSpace, exp_path: str, fs) -> None:
    info = {
        "space": space.name, "space_file": str(Path(space.source).resolve()), "study_name": space.study_name,
        "optuna_storage": _masked(space.optuna_url),
        "tune_experiment": (f"s3://{exp_path}" if fs is not None else exp_path),
        "metric": space.metric, "objective": objective_key(space.metric), "mode": space.mode,
        "scheduler": vars(space.scheduler), "rungs": space.scheduler.rungs(),
        "num_samples": space.search.num_samples, "params": [p.key for p in space.params],
        "base": space.base,
    }
    space.experiment_dir.mkdir(parents=True, exist_ok=True)
    (space.experiment_dir / "experiment.json").write_text(json.dumps(info, indent=1))


def run_search(space: TuneSpace, *, resume: bool = False, overwrite: bool = False,
               report: bool = True) -> dict:
    """Run (or resume) the search of ``space``; returns a summary dict (also printed)."""
    import ray
    import ray.tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # CheckpointConfig(num_to_keep=1) makes Tune snapshot the experiment whenever a trial saved a
    # checkpoint (each epoch): wanted (small drift on resume), so not worth a warning each time
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
        _write_experiment_json(space, exp_path, fs)
    if not ray.is_initialized():
        ray.init()
    trainable = _trainable(space, tune_path, fs)
    if resume:
        tuner = ray.tune.Tuner.restore(exp_path, trainable, storage_filesystem=fs, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
    else:
        tuner = _build_tuner(space, trainable, tune_path, fs)
    tuner.fit()
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
    header = (f"# Best trial {number} of search space {space.name!r} ({space.source}): "
              f"{space.metric} = {value:.4f} on {cfg.data.val_split}\n"
              f"# Train it with: e2i train {path}   (tuned on data.train_split={cfg.data.train_split}"
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
               report: bool = True) -> dict:
    """Load ``path`` with the given overrides (dotted keys of the space document) and run the search."""
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
    return run_search(space, resume=resume, overwrite=overwrite, report=report)


# --------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("space", help="search space YAML (e.g. tune_spaces/default.yaml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the experiment and its Optuna study after an interruption")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete an existing experiment and study of this space first")
    parser.add_argument("--num-samples", type=int, help="number of trials (search.num_samples)")
    parser.add_argument("--max-concurrent-trials", type=int, help="trials running at once")
    parser.add_argument("--max-t", type=int, help="epochs of a full trial (scheduler.max_t)")
    parser.add_argument("--output-dir", help="root of <output_dir>/<space>/ (storage.output_dir)")
    parser.add_argument("--storage-path", help="Tune results/checkpoints: local dir or s3://bucket/prefix")
    parser.add_argument("--storage",
                        help="Optuna storage URL (default sqlite:///<output_dir>/<space>/optuna.db)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the space file, e.g. --set base.data.store=stores/x "
                             "(repeatable)")
    parser.add_argument("--no-report", action="store_true", help="skip the leaderboard and plots at the end")


def run(args: argparse.Namespace) -> int:
    summary = tune_space(args.space, num_samples=args.num_samples, output_dir=args.output_dir,
                         storage_path=args.storage_path, storage=args.storage, overrides=args.overrides,
                         max_t=args.max_t, max_concurrent_trials=args.max_concurrent_trials,
                         resume=args.resume, overwrite=args.overwrite, report=not args.no_report)
    if not summary.get("best_config"):
        raise ConfigError(f"{args.space}: no trial completed; see the Tune logs under "
                          f"{summary['experiment_dir']}")
    return 0


if __name__ == "__main__":
    from e2i.cli import main

    sys.exit(main(["tune", *sys.argv[1:]]))
