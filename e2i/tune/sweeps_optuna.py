"""Optuna-style search YAMLs (the older projection-head tool's ``optuna_configs/*.yaml``) -> an e2i
space document; used by ``e2i tune --from-optuna-yaml FILE`` (:mod:`e2i.tune.sweeps`).

No Optuna YAML is published with that tool, so this is the format accepted, after common Optuna
conventions (``trial.suggest_float/int/categorical`` arguments, ``create_study`` options)::

    study_name: head_search        # optional; default: the file name
    direction: maximize            # checked against the metric's mode
    metric: val/mAP@10             # optional (e2i's default metric)
    n_trials: 20                   # -> search.num_samples
    sampler: tpe                   # tpe | random | TPESampler | RandomSampler | {type, seed,
                                   #   n_startup_trials}
    pruner: {type: hyperband, min_resource: 1, max_resource: 12, reduction_factor: 3}
    #   or successive_halving (min_resource, reduction_factor, min_early_stopping_rate) | nop
    params:                        # float: low, high, log | step; int: low, high, log | step
      lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      hidden_dim: {type: int, low: 128, high: 512, step: 128}
      head: {type: categorical, choices: [siglip, clip]}
    fixed: {epochs: 12, batch_size: 128}   # constants

Parameter names map to e2i config keys as in :func:`e2i.tune.sweeps.config_key`. ``hyperband`` and
``successive_halving`` become ASHA (``grace_period`` = ``min_resource * reduction_factor^rate``,
``max_t`` = ``max_resource`` or the ``epochs`` constant); ``nop`` runs every trial to ``max_t``. Every
other key is a one-line ConfigError naming the file and the key. No ray or optuna import here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from e2i.config import TrainConfig, read_yaml
from e2i.errors import ConfigError
from e2i.tune.sweeps import (
    asha_scheduler,
    config_key,
    number,
    reject_unknown,
    set_constant,
    space_document,
    sweep_metric,
    with_max_t,
)

OPTUNA_KEYS = {"study_name", "direction", "metric", "n_trials", "sampler", "pruner", "params", "fixed"}
OPTUNA_SAMPLERS = {"tpe": "tpe", "tpesampler": "tpe", "random": "random", "randomsampler": "random"}
OPTUNA_PRUNERS = {"hyperband": "hyperband", "hyperbandpruner": "hyperband", "successive_halving": "sha",
                  "successivehalvingpruner": "sha", "nop": "nop", "noppruner": "nop", "none": "nop"}




def _optuna_param(key: str, spec: Any, source: str, where: str) -> dict:
    if not isinstance(spec, dict):
        raise ConfigError(f"{source}: {where}: expected {{type: float|int|categorical, ...}}, got {spec!r}")
    kind = spec.get("type")
    if kind == "categorical":
        reject_unknown(spec, {"type", "choices"}, source, where)
        if not isinstance(spec.get("choices"), list) or not spec["choices"]:
            raise ConfigError(f"{source}: {where}.choices: expected a non-empty list")
        return {"choice": list(spec["choices"])}
    if kind not in ("float", "int"):
        raise ConfigError(f"{source}: {where}.type: {kind!r} is not one of float, int, categorical")
    reject_unknown(spec, {"type", "low", "high", "log", "step"}, source, where)
    for bound in ("low", "high"):
        if bound not in spec:
            raise ConfigError(f"{source}: {where}: {kind} needs low and high")
    lo, hi = number(spec["low"], source, f"{where}.low"), number(spec["high"], source, f"{where}.high")
    log, step = bool(spec.get("log", False)), spec.get("step")
    if kind == "int":
        out: dict = {"int": [int(lo), int(hi)]}
        if log:
            out["log"] = True
        if step is not None:
            out["step"] = int(number(step, source, f"{where}.step"))
        return out
    if log:
        if step is not None:
            raise ConfigError(f"{source}: {where}.step: Optuna cannot quantise a log-scale float")
        return {"loguniform": [float(lo), float(hi)]}
    if step is not None:
        return {"quniform": [float(lo), float(hi), float(number(step, source, f"{where}.step"))]}
    return {"uniform": [float(lo), float(hi)]}


def _optuna_sampler(spec: Any, source: str) -> dict:
    spec = {"type": spec} if isinstance(spec, str) else spec
    if not isinstance(spec, dict):
        raise ConfigError(f"{source}: sampler: expected a name or {{type, seed, n_startup_trials}}")
    reject_unknown(spec, {"type", "seed", "n_startup_trials"}, source, "sampler")
    sampler = OPTUNA_SAMPLERS.get(str(spec.get("type", "tpe")).lower())
    if sampler is None:
        raise ConfigError(f"{source}: sampler.type: {spec.get('type')!r} is not supported (tpe, random)")
    out: dict = {"sampler": sampler}
    for key in ("seed", "n_startup_trials"):
        if key in spec:
            out[key] = int(number(spec[key], source, f"sampler.{key}"))
    return out


def _optuna_pruner(spec: Any, epochs: int | None, source: str) -> dict:
    spec = {"type": spec} if isinstance(spec, str) else spec
    if not isinstance(spec, dict):
        raise ConfigError(f"{source}: pruner: expected a name or {{type, ...}}")
    kind = OPTUNA_PRUNERS.get(str(spec.get("type")).lower())
    if kind is None:
        raise ConfigError(f"{source}: pruner.type: {spec.get('type')!r} is not supported "
                          "(hyperband, successive_halving, nop)")
    if kind == "nop":
        reject_unknown(spec, {"type"}, source, "pruner")
        return {"type": "fifo"}
    if kind == "hyperband":
        reject_unknown(spec, {"type", "min_resource", "max_resource", "reduction_factor"}, source, "pruner")
        max_t = spec.get("max_resource", epochs)
        rf = spec.get("reduction_factor", 3)
        return asha_scheduler(spec.get("min_resource", 1), rf, max_t, source, "pruner")
    reject_unknown(spec, {"type", "min_resource", "reduction_factor", "min_early_stopping_rate"}, source,
                   "pruner")
    rf = spec.get("reduction_factor", 4)
    rate = int(number(spec.get("min_early_stopping_rate", 0), source, "pruner.min_early_stopping_rate"))
    low = number(spec.get("min_resource", 1), source, "pruner.min_resource")
    grace = low * number(rf, source, "pruner.reduction_factor") ** rate  # first rung of SHA
    return asha_scheduler(grace, rf, epochs, source, "pruner")


def optuna_to_space(path: str | Path) -> dict:
    """Read an Optuna-style YAML (format in the module doc) -> an e2i space document."""
    source = str(path)
    doc = read_yaml(path)
    reject_unknown(doc, OPTUNA_KEYS, source, "")
    base: dict = {}
    scheduler: dict = {"type": "fifo"}
    fixed = doc.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{source}: fixed: expected a mapping of constants")
    for name, value in fixed.items():
        at = f"fixed.{name}"
        set_constant(base, scheduler, config_key(name, source, at), value, source, at)
    params = doc.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{source}: params: expected a non-empty mapping of parameters")
    space = {}
    for name, spec in params.items():
        key = config_key(name, source, f"params.{name}")
        if key == "optim.epochs":
            raise ConfigError(f"{source}: params.{name}: epochs cannot be searched (put it under fixed:)")
        space[key] = _optuna_param(key, spec, source, f"params.{name}")
    if "metric" in doc or "direction" in doc:
        direction = doc.get("direction")
        if direction not in (None, "maximize", "minimize"):
            raise ConfigError(f"{source}: direction: {direction!r} is not one of maximize, minimize")
        base["metric"] = sweep_metric(doc.get("metric", TrainConfig().metric), direction, source,
                                 "direction" if "metric" not in doc else "metric")
    search = _optuna_sampler(doc.get("sampler", "tpe"), source)
    if "n_trials" in doc:
        search["num_samples"] = int(number(doc["n_trials"], source, "n_trials"))
    if doc.get("pruner") is not None:
        scheduler.update(_optuna_pruner(doc["pruner"], scheduler.get("max_t"), source))
    name = str(doc.get("study_name") or Path(path).stem)
    return space_document(name, base, space, with_max_t(scheduler), search)
