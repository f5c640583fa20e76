"""Search: the space grammar (no ray), Optuna + ASHA search on Ray Tune, the report.

    grammar.py        the `space:` section: Param / Condition / Block, parsed with field paths
    space.py          the space file: TuneSpace, its sections, load_space (+ sampled configs checked)
    optuna_search.py  E2IOptunaSearch (PRUNED for ASHA-stopped trials, study repair on resume),
                      SkipFinishedStopper
    asha.py           RecordingASHA: rungs that wait for reduction_factor results (rung_verdict)
    trial.py          one trial: TrialSetup, the function trainable trial_main, multi-worker trials
    search.py         the driver: tune_space / run_search, storage checks, best_config.yaml
    report.py         `e2i report`: leaderboard and plots of an experiment
    cli.py            `e2i tune` (add_arguments / run)

May import: e2i.train, e2i.config, e2i.store, ray, optuna; grammar.py and space.py import neither ray
nor optuna (nor torch), so loading and validating a space stays light. For the same reason this
``__init__`` imports only those two eagerly; the Ray/Optuna names are imported on first access
(``from e2i.tune import tune_space`` imports e2i.tune.search then).
"""

from __future__ import annotations

import importlib
from typing import Any

from e2i.tune.grammar import Block, Condition, Param
from e2i.tune.space import TuneSpace, check_sampled_configs, load_space, space_from_dict

_LAZY = {  # name -> module: these import ray.tune and optuna (report: matplotlib)
    "E2IOptunaSearch": "e2i.tune.optuna_search",
    "RecordingASHA": "e2i.tune.asha",
    "export_best_config": "e2i.tune.search",
    "finish_search": "e2i.tune.search",
    "run_search": "e2i.tune.search",
    "tune_space": "e2i.tune.search",
    "make_report": "e2i.tune.report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Block",
    "Condition",
    "E2IOptunaSearch",
    "Param",
    "RecordingASHA",
    "TuneSpace",
    "check_sampled_configs",
    "export_best_config",
    "finish_search",
    "load_space",
    "make_report",
    "run_search",
    "space_from_dict",
    "tune_space",
]
