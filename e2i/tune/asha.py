"""ASHA whose rungs wait for ``reduction_factor`` results before promoting (:func:`rung_verdict`,
:class:`RecordingASHA`), and tell the searcher (:mod:`e2i.tune.optuna_search`) which trials it stopped
before ``max_t`` (they are PRUNED in Optuna)."""

from __future__ import annotations

import math

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from e2i.tune.optuna_search import E2IOptunaSearch

PROMOTE, WAIT, STOP = "promote", "wait", "stop"  # verdicts of rung_verdict


def rung_verdict(values: dict[str, float], trial_id: str, reduction_factor: float, *, final: bool = False) -> str:
    """ASHA's verdict for ``trial_id`` at a rung holding ``values`` ({trial id: value, higher is better},
    the trial's own included): PROMOTE when it is in the top ``n // rf`` of the rung's ``n`` results
    (ASHA's promotion rule: Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning");
    WAIT while the rung has fewer than ``rf`` results (nothing to rank it against yet); STOP otherwise.
    ``final``: no other result can reach the rung any more, so the top ``max(1, n // rf)`` are promoted
    (a small search still completes its best trials) and the rest stop. Non-finite values rank last.

    Ray's ASHAScheduler promotes when the value is above a percentile of the results *so far*: the
    first trial to reach a rung is always promoted, the second half of the time, so which trials run
    to ``max_t`` depended on the order results arrived in (measured: 98 or 53 of 192 FIFO epochs for
    two sampler seeds of the same search)."""

    def rankable(v: float) -> float:
        return v if math.isfinite(v) else -math.inf

    n, mine = len(values), rankable(values[trial_id])
    rank = 1 + sum(1 for tid, v in values.items() if tid != trial_id and rankable(v) > mine)
    top = int(n // reduction_factor)
    if rank <= (max(1, top) if final else top):
        return PROMOTE
    return WAIT if n < reduction_factor and not final else STOP


class RecordingASHA(ASHAScheduler):
    """ASHA (one bracket, rungs at ``grace * rf^k``) whose rungs promote by :func:`rung_verdict`: a
    trial reaching a rung that has fewer than ``rf`` results is PAUSED there (Tune keeps its rung
    checkpoint; its slot runs the next trial) and is promoted or stopped once the rung has ``rf``
    results, or once no result can reach the rung any more (the search asked its last trial and every
    other live trial is past the rung). It tells the searcher which trials it stopped before max_t,
    and its rungs are refilled from the study on resume (Tune does not save scheduler state; a trial
    that was waiting at a rung is resumed past it)."""

    def __init__(self, *, searcher: E2IOptunaSearch, **kwargs) -> None:
        super().__init__(**kwargs)
        self.searcher = searcher
        searcher.scheduler = self
        self.waiting: dict[str, tuple[Trial, int]] = {}  # paused at a rung: trial id -> (trial, milestone)
        self.promoted: set[str] = set()  # paused trials to resume (chosen first by choose_trial_to_run)
        self._settling = False

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = self._decide(tune_controller, trial, result)
        fresh = not result.get("done")  # Tune re-sends the last result with done=True at the end
        before_max_t = result.get(self._time_attr, self._max_t) < self._max_t
        if decision == TrialScheduler.STOP and fresh and before_max_t:
            self.searcher.stopped_early.add(trial.trial_id)
        return decision

    def _decide(self, tune_controller, trial, result: dict) -> str:
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        self.promoted.discard(trial.trial_id)  # it runs again
        epoch = result[self._time_attr]
        if epoch >= self._max_t:
            return TrialScheduler.STOP
        for milestone, recorded in self._brackets[0]._rungs:  # descending milestones
            if epoch < milestone or trial.trial_id in recorded:
                continue
            recorded[trial.trial_id] = self._metric_op * result[self._metric]
            self.waiting[trial.trial_id] = (trial, milestone)
            self._settle(tune_controller, milestone, current=trial.trial_id)
            self._settle_closed_rungs(tune_controller, current=trial.trial_id)
            if trial.trial_id in self.waiting:
                return TrialScheduler.PAUSE
            if trial.trial_id in self.promoted:
                self.promoted.discard(trial.trial_id)
                return TrialScheduler.CONTINUE
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _settle(self, tune_controller, milestone: int, *, final: bool = False, current: str | None = None) -> None:
        """Decide the trials waiting at ``milestone`` that can be decided (``current`` is the trial whose
        result is being handled: its decision is returned to Tune, not applied here)."""
        recorded = dict(self._brackets[0]._rungs)[milestone]
        self._settling = True  # stop_trial calls back on_trial_remove: no closure check from there
        try:
            for tid, (trial, at) in list(self.waiting.items()):
                if at != milestone or tid not in self.waiting:
                    continue
                verdict = rung_verdict(recorded, tid, self._reduction_factor, final=final)
                if verdict == WAIT:
                    continue
                del self.waiting[tid]
                if verdict == PROMOTE:
                    self.promoted.add(tid)
                else:
                    self.searcher.stopped_early.add(tid)
                    if tid != current:
                        tune_controller.stop_trial(trial)
        finally:
            self._settling = False

    def _settle_closed_rungs(self, tune_controller, current: str | None = None, ended: str | None = None) -> None:
        """Final verdicts at the lowest rung with waiting trials while no result can reach it any more:
        the searcher asked its last trial and every other live trial is at or past the rung."""
        while self.waiting and self.searcher.exhausted():
            milestone = min(at for _, at in self.waiting.values())
            for trial in tune_controller.get_trials():
                live = (trial.status in (Trial.RUNNING, Trial.PENDING) or trial.trial_id in self.promoted)
                others = trial.trial_id not in self.waiting and trial.trial_id != ended
                if live and others and (trial.last_result or {}).get(self._time_attr, 0) < milestone:
                    return  # that trial may still reach the rung
            self._settle(tune_controller, milestone, final=True, current=current)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._forget(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        super().on_trial_remove(tune_controller, trial)
        self._forget(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._trial_info.pop(trial.trial_id, None)
        self._forget(tune_controller, trial)

    def _forget(self, tune_controller, trial) -> None:
        self.waiting.pop(trial.trial_id, None)
        self.promoted.discard(trial.trial_id)
        if not self._settling:
            self._settle_closed_rungs(tune_controller, ended=trial.trial_id)

    def choose_trial_to_run(self, tune_controller):
        """Promoted paused trials first, then new trials (Tune's FIFO order); a paused trial that is
        still waiting for its rung is never resumed here."""
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status == Trial.PAUSED and trial.trial_id in self.promoted:
                return trial
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        return None

    def replay(self, values: dict[str, dict[int, float]]) -> None:
        """Record each trial's value at every rung milestone it reached (ASHA's `recorded` dicts)."""
        for bracket in self._brackets:
            for milestone, recorded in bracket._rungs:
                for trial_id, by_epoch in values.items():
                    if milestone in by_epoch and math.isfinite(by_epoch[milestone]):
                        recorded.setdefault(trial_id, self._metric_op * by_epoch[milestone])
