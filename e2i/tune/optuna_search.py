"""The Optuna side of `e2i tune`: a searcher, an ASHA scheduler and a stopper that cooperate, so that
the study tells the truth about every trial, also after the driver was killed and resumed.

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
- a trial that errored (FAIL, ``trial errored``: e.g. object storage was unreachable) gets its
  parameters enqueued again: ``--resume`` is the retry of a search an outage interrupted;
- a trial the study finished after the snapshot is not told again; Tune resumes its copy from the
  last checkpoint and :class:`SkipFinishedStopper` ends it at its first result;
- ASHA's rungs (Tune does not save scheduler state) are refilled from the intermediate values;
- the budget: the searcher itself stops at ``num_samples`` trials counted in the study (except the
  FAILs whose parameters were re-queued), as Tune's own counter is restored from the snapshot and may lag behind.
"""

from __future__ import annotations

import math
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState
from ray.tune import Stopper
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from e2i.errors import ConfigError
from e2i.tune.space import TuneSpace

if TYPE_CHECKING:
    from e2i.tune.asha import RecordingASHA

TRIAL_KEY = "optuna_trial"  # added to every Tune trial's config: the Optuna trial number
FAIL_REASON = "e2i:fail_reason"
FAIL_REASON_ORPHAN = "tune driver stopped before recording the trial; parameters re-queued"
FAIL_REASON_ERRORED = "trial errored"
REQUEUED_FROM = "e2i:requeued_from"  # user attr of a trial re-running the point of FAILed trial N
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
        self.scheduler: RecordingASHA | None = None  # set by e2i.tune.asha.RecordingASHA; not part of saved state
        self.max_concurrent: int | None = None  # Tune's max_concurrent_trials (set_max_concurrency)
        super().__init__(*args, **kwargs)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Tune's ConcurrencyLimiter hands the limit to the searcher (True): here a trial waiting at an
        ASHA rung (paused, see :func:`rung_verdict`) does not hold one of the ``max_concurrent`` slots."""
        self.max_concurrent = max_concurrent
        return True

    def running(self) -> set[str]:
        """Trials asked and not finished, except those paused at a rung waiting for its results."""
        waiting = set(self.scheduler.waiting) if self.scheduler is not None else set()
        return {tid for tid in self._ot_trials if tid not in self._completed_trials} - waiting

    def exhausted(self) -> bool:
        """No trial will be asked any more (num_samples reached; never with a time budget alone)."""
        return self.num_samples is not None and self.budget_used() >= self.num_samples

    def budget_used(self) -> int:
        """Trials of the study that count toward num_samples: all asked ones except the FAILs whose
        parameters were re-queued on resume (orphans, errored trials)."""
        trials = self._ot_study.get_trials(deepcopy=False)
        requeued = _requeued_numbers(trials)
        return sum(1 for t in trials if t.state != TrialState.WAITING and t.number not in requeued
                   and t.user_attrs.get(FAIL_REASON) != FAIL_REASON_ORPHAN)

    def suggest(self, trial_id: str) -> dict | str | None:
        # Tune's own counter is restored from its snapshot and can lag behind the study after a
        # kill (trials asked after the snapshot); the study is the truth, so the budget is checked here.
        if self.exhausted():
            return Searcher.FINISHED
        if self.max_concurrent and len(self.running()) >= self.max_concurrent:
            return None  # every slot is taken: Tune asks again later
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
        if result is None and not error and trial_id in self.stopped_early:
            result = self._last_reported(ot_trial)  # stopped while paused at a rung: Tune passes no result
        value = (result or {}).get(self.metric)
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        try:
            if error or not finite:
                reason = FAIL_REASON_ERRORED if error else f"no finite {self.metric} reported"
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

    def _last_reported(self, ot_trial) -> dict | None:
        values = ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values
        return {self.metric: values[max(values)], STEP_ATTR: max(values)} if values else None

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
        counts = {"failed_orphans": 0, "finished_elsewhere": 0, "errored_retried": 0}
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in known:
                storage.set_trial_user_attr(frozen._trial_id, FAIL_REASON, FAIL_REASON_ORPHAN)
                storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)
                self._ot_study.enqueue_trial(frozen.params, user_attrs={REQUEUED_FROM: frozen.number})
                counts["failed_orphans"] += 1
        # a trial that errored (e.g. object storage unreachable) is run again: --resume is the retry
        # (once per errored trial: a finished trial cannot be changed, so the re-run is marked instead)
        trials = self._ot_study.get_trials(deepcopy=False)
        requeued = _requeued_numbers(trials)
        for frozen in trials:
            errored = frozen.state == TrialState.FAIL and frozen.user_attrs.get(FAIL_REASON) == FAIL_REASON_ERRORED
            if errored and frozen.number not in requeued:
                self._ot_study.enqueue_trial(frozen.params, user_attrs={REQUEUED_FROM: frozen.number})
                counts["errored_retried"] += 1
        for tid, ot_trial in open_ids.items():
            if storage.get_trial(ot_trial._trial_id).state.is_finished():
                self._completed_trials.add(tid)
                self.finished_elsewhere.add(tid)
                counts["finished_elsewhere"] += 1
        if any(counts.values()):
            print(f"e2i tune: study repaired on resume: {counts}", flush=True)
        return counts


def _requeued_numbers(trials) -> set[int]:
    """Numbers of the FAILed trials whose parameters some later trial re-runs (``REQUEUED_FROM``)."""
    return {t.user_attrs[REQUEUED_FROM] for t in trials if REQUEUED_FROM in t.user_attrs}


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
    if search.sampler == "grid":
        return optuna.samplers.GridSampler(grid_values(space), seed=search.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=search.n_startup_trials,
                                          multivariate=True, group=True, constant_liar=True)


def grid_values(space: TuneSpace) -> dict[str, list]:
    """{param: every value} for ``sampler: grid``: choices, int ranges (``step``), stepped floats.
    Optuna's GridSampler then runs each combination once (W&B's ``method: grid``)."""
    import numpy as np

    grid = {}
    for p in space.params:
        if p.kind == "choice":
            grid[p.key] = list(p.choices)
        elif p.kind == "int" and not p.log:
            grid[p.key] = list(range(p.low, p.high + 1, p.step or 1))
        elif p.step and not p.log:  # low, low + step, ..., <= high (as Optuna rounds stepped floats)
            n = int(np.floor((p.high - p.low) / p.step + 1e-9))
            grid[p.key] = [float(p.low + k * p.step) for k in range(n + 1)]
        else:
            raise ConfigError(f"{space.source}: search.sampler: grid needs discrete parameters; "
                              f"space.{p.key} is {p.kind}{' (log)' if p.log else ''} without a step")
    return grid


def make_storage(url: str):
    """An RDBStorage (what OptunaSearch wants); SQLite files get their directory and a lock timeout."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url)
