"""Bring your sweep files: W&B sweep YAMLs and Optuna-style YAMLs -> an e2i search space document.

    e2i tune --from-wandb-sweep sweep.yaml --print-space          # the e2i space, as YAML
    e2i tune --from-wandb-sweep sweep.yaml --set base.data.store=stores/toy   # convert and run it
    e2i tune --from-optuna-yaml optuna_configs/head.yaml --output tune_spaces/head.yaml

Parameter names -> e2i config keys (:func:`config_key`): a dotted name is used as written
(``optim.lr``); a W&B nested ``parameters:`` block joins its names with dots; an alias of
:data:`ALIASES` (``lr``/``learning_rate`` -> ``optim.lr``, ``head`` -> ``model.type``, ...); else a
field name that exists in exactly one of the sections model/loss/optim (``dropout`` -> ``model.dropout``).
``epochs`` is the trial length: a constant sets ``scheduler.max_t``, it cannot be searched.

W&B (``method``, ``metric``, ``parameters``, ``early_terminate``, ``run_cap``; ``program``, ``command``,
``name``, ``description``, ``project``, ``entity`` are ignored: e2i trains itself):
``value`` -> a constant in ``base``; ``values`` / ``categorical`` -> ``choice``; ``uniform`` -> ``uniform``;
``int_uniform`` -> ``int`` (inclusive); ``q_uniform`` (q default 1) -> ``quniform`` (int field: ``int`` +
``step``; W&B rounds to multiples of q, e2i to ``min + k q``: the same when min is a multiple of q);
``log_uniform_values`` -> ``loguniform`` (int field: ``int`` + ``log``); ``log_uniform`` (bounds are
natural logs) -> ``loguniform: [exp(min), exp(max)]``. ``method: bayes | random`` -> sampler ``tpe |
random``; ``grid`` -> ``grid`` (Optuna's GridSampler: every combination once) with ``num_samples`` = grid
size. ``run_cap`` -> ``search.num_samples``; ``metric: {name, goal}`` -> ``base.metric``
(the goal must agree with e2i's mode of that metric). ``early_terminate: {type: hyperband}`` -> ASHA:
``grace_period`` = ``min_iter`` (or W&B's smallest band ``max_iter / eta^s``), ``reduction_factor`` =
``eta`` (default 3), ``max_t`` = ``max_iter`` (or the ``epochs`` constant, else 12).

The Optuna-style YAML format is :mod:`e2i.tune.sweeps_optuna`.

Every other key is a one-line ConfigError naming the file and the key. The result is validated like
any space file (:func:`e2i.tune.space.space_from_dict`). No ray or optuna import here.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from pathlib import Path
from typing import Any

import yaml

from e2i.config import VALID_METRICS, TrainConfig, apply_overrides, read_yaml
from e2i.errors import ConfigError
from e2i.tune.grammar import SEARCHABLE_SECTIONS
from e2i.tune.grammar import _number as number  # numeric strings too: YAML reads 1e-4 as a string
from e2i.tune.space import SchedulerSpec, space_from_dict

ALIASES = {  # common names in sweep files -> e2i config keys
    "lr": "optim.lr", "learning_rate": "optim.lr", "wd": "optim.weight_decay",
    "head": "model.type", "model": "model.type", "model_type": "model.type", "head_type": "model.type",
    "loss": "loss.type", "loss_type": "loss.type", "temperature": "model.init_temperature",
    "embed_dim": "model.output_dim", "embedding_dim": "model.output_dim", "proj_dim": "model.output_dim",
    "layers": "model.num_layers", "heads": "model.num_heads", "warmup": "optim.warmup_epochs",
    "clip_grad": "optim.grad_clip", "gradient_clip_val": "optim.grad_clip",
}
EPOCHS = ("epochs", "optim.epochs", "max_epochs", "num_epochs")
WANDB_KEYS = {"method", "metric", "parameters", "early_terminate", "run_cap"}
WANDB_IGNORED = {"program", "command", "name", "description", "project", "entity"}
WANDB_PARAM_KEYS = {"value", "values", "distribution", "min", "max", "q", "parameters"}
WANDB_DISTRIBUTIONS = ("categorical", "constant", "uniform", "int_uniform", "q_uniform",
                       "log_uniform_values", "log_uniform")


# --------------------------------------------------------------------------------------------------
# Names and values


def _unique_fields() -> dict[str, str]:
    """Field name -> dotted key for names found in exactly one searchable section."""
    hints = typing.get_type_hints(TrainConfig)
    seen: dict[str, list[str]] = {}
    for section in SEARCHABLE_SECTIONS:
        for f in dataclasses.fields(hints[section]):
            seen.setdefault(f.name, []).append(f"{section}.{f.name}")
    return {name: keys[0] for name, keys in seen.items() if len(keys) == 1}


def config_key(name: str, source: str, where: str) -> str:
    """A sweep parameter name -> its dotted e2i config key (see the module doc); ConfigError if none."""
    if name in EPOCHS:
        return "optim.epochs"
    if "." in name or name == "seed":
        return name  # checked by the space grammar / the base config
    key = ALIASES.get(name) or _unique_fields().get(name)
    if key is None:
        raise ConfigError(f"{source}: {where}: no e2i config key for {name!r} (use a dotted name such as "
                          f"optim.lr, or one of: {', '.join(sorted(ALIASES))})")
    return key


def _is_int_field(key: str) -> bool:
    cls: Any = TrainConfig
    for part in key.split("."):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return False
        cls = hints[part]
    return cls is int


def reject_unknown(mapping: dict, allowed: set, source: str, where: str) -> None:
    extra = [k for k in mapping if k not in allowed]
    if extra:
        at = f"{where}.{extra[0]}" if where else str(extra[0])
        raise ConfigError(f"{source}: {at}: unsupported key (supported: {', '.join(sorted(allowed))})")


def sweep_metric(name: Any, goal: str | None, source: str, where: str) -> str:
    """A metric name of the sweep -> an e2i validation metric; the goal must agree with its mode."""
    name = str(name)
    candidates = [name, f"val/{name}", name.replace("val_", "val/", 1)]
    metric = next((c for c in candidates if c in VALID_METRICS), None)
    if metric is None:
        raise ConfigError(f"{source}: {where}: {name!r} is not an e2i validation metric "
                          f"(valid: {', '.join(VALID_METRICS)})")
    mode = TrainConfig(metric=metric).metric_mode
    if goal is not None and {"maximize": "max", "minimize": "min"}.get(goal) != mode:
        raise ConfigError(f"{source}: {where}: goal {goal!r} disagrees with {metric}, which e2i "
                          f"{'maximises' if mode == 'max' else 'minimises'}")
    return metric


def space_document(name: str, base: dict, space: dict, scheduler: dict, search: dict) -> dict:
    doc = {"base": base, "space": space, "scheduler": scheduler, "search": search}
    base.setdefault("optim", {}).setdefault("early_stopping_patience", 0)  # ASHA does the stopping
    return {"name": name, **doc}


def set_constant(base: dict, scheduler: dict, key: str, value: Any, source: str, where: str) -> None:
    """A constant: epochs -> scheduler.max_t, anything else -> the base config."""
    if key == "optim.epochs":
        scheduler["max_t"] = int(number(value, source, where))
    else:
        apply_overrides(base, {key: value}, source)


def asha_scheduler(grace: Any, rf: Any, max_t: Any, source: str, where: str) -> dict:
    rf_num = number(rf, source, f"{where}.eta")
    if rf_num != int(rf_num) or rf_num < 2:
        raise ConfigError(f"{source}: {where}: reduction factor must be an integer >= 2, got {rf!r}")
    out = {"type": "asha", "grace_period": max(1, int(number(grace, source, where))),
           "reduction_factor": int(rf_num)}
    if max_t is not None:
        out["max_t"] = int(number(max_t, source, where))
    return out


# --------------------------------------------------------------------------------------------------
# W&B sweeps


def _wandb_param(key: str, spec: Any, source: str, where: str) -> tuple[str, Any]:
    """One W&B parameter -> ("fixed", value) or ("space", e2i distribution mapping)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping (value/values/distribution), got {spec!r}")
    dist = spec.get("distribution")
    if dist is not None and dist not in WANDB_DISTRIBUTIONS:
        raise ConfigError(f"{source}: {where}.distribution: {dist!r} is not supported "
                          f"(supported: {', '.join(WANDB_DISTRIBUTIONS)})")
    reject_unknown(spec, WANDB_PARAM_KEYS - {"parameters"}, source, where)
    if dist is None:  # W&B's inference: values -> categorical, value -> constant, int bounds -> int_uniform
        if "values" in spec:
            dist = "categorical"
        elif "value" in spec:
            dist = "constant"
        elif "min" in spec and "max" in spec:
            ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
            dist = "int_uniform" if ints else "uniform"
        else:
            raise ConfigError(f"{source}: {where}: needs value, values, or min/max")
    if dist == "constant":
        if "value" not in spec:
            raise ConfigError(f"{source}: {where}: constant needs value")
        return "fixed", spec["value"]
    if dist == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: {where}.values: expected a non-empty list, got {values!r}")
        return ("fixed", values[0]) if len(values) == 1 else ("space", {"choice": list(values)})
    for bound in ("min", "max"):
        if bound not in spec:
            raise ConfigError(f"{source}: {where}: {dist} needs min and max")
    lo, hi = number(spec["min"], source, f"{where}.min"), number(spec["max"], source, f"{where}.max")
    if dist == "log_uniform":  # bounds are natural logs of the values
        lo, hi = math.exp(lo), math.exp(hi)
    integer = _is_int_field(key)
    if dist == "int_uniform" or (integer and dist == "uniform"):
        return "space", {"int": [int(lo), int(hi)]}
    if dist == "q_uniform":
        q = number(spec.get("q", 1), source, f"{where}.q")
        if integer:
            return "space", {"int": [int(lo), int(hi)], "step": int(q)}
        return "space", {"quniform": [float(lo), float(hi), float(q)]}
    if dist in ("log_uniform_values", "log_uniform"):
        return "space", ({"int": [int(lo), int(hi)], "log": True} if integer else {"loguniform": [lo, hi]})
    return "space", {"uniform": [float(lo), float(hi)]}


def _flatten_wandb(params: Any, source: str, where: str, prefix: str = "") -> list[tuple[str, str, Any]]:
    """[(dotted W&B name, field path, spec)]: nested ``parameters:`` blocks join names with dots."""
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{source}: {where}: expected a non-empty mapping of parameters")
    out = []
    for name, spec in params.items():
        at = f"{where}.{name}"
        if isinstance(spec, dict) and "parameters" in spec:
            reject_unknown(spec, {"parameters"}, source, at)
            out += _flatten_wandb(spec["parameters"], source, f"{at}.parameters", f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", at, spec))
    return out


def wandb_to_space(path: str | Path) -> dict:
    """Read a W&B sweep YAML -> an e2i space document (a dict; see the module doc)."""
    source = str(path)
    sweep = read_yaml(path)
    reject_unknown(sweep, WANDB_KEYS | WANDB_IGNORED, source, "")
    method = sweep.get("method")
    if method not in ("bayes", "random", "grid"):
        raise ConfigError(f"{source}: method: {method!r} is not one of bayes, random, grid")
    base: dict = {}
    space: dict = {}
    scheduler: dict = {"type": "fifo"}
    search: dict = {"sampler": {"bayes": "tpe", "random": "random", "grid": "grid"}[method]}
    grid_size = 1
    for name, where, spec in _flatten_wandb(sweep.get("parameters"), source, "parameters"):
        key = config_key(name, source, where)
        kind, value = _wandb_param(key, spec, source, where)
        if kind == "fixed":
            set_constant(base, scheduler, key, value, source, where)
            continue
        if key == "optim.epochs":
            raise ConfigError(f"{source}: {where}: epochs cannot be searched (it is the trial length, "
                              "scheduler.max_t; give it one value)")
        if method == "grid":
            grid_size *= _grid_points(value, source, where)
        space[key] = value
    if "metric" in sweep:
        metric = sweep["metric"]
        if not isinstance(metric, dict) or "name" not in metric:
            raise ConfigError(f"{source}: metric: expected {{name: ..., goal: ...}}, got {metric!r}")
        reject_unknown(metric, {"name", "goal"}, source, "metric")
        base["metric"] = sweep_metric(metric["name"], metric.get("goal", "minimize"), source, "metric")
    if "early_terminate" in sweep:
        scheduler.update(_hyperband(sweep["early_terminate"], scheduler.get("max_t"), source))
    if "run_cap" in sweep:
        search["num_samples"] = int(number(sweep["run_cap"], source, "run_cap"))
    elif method == "grid":
        search["num_samples"] = grid_size
    return space_document(Path(path).stem, base, space, with_max_t(scheduler), search)


def _grid_points(dist: dict, source: str, where: str) -> int:
    """Grid values of a discrete distribution (W&B grids need value(s), int_uniform or q_uniform)."""
    if "choice" in dist:
        return len(dist["choice"])
    if "int" in dist and not dist.get("log"):
        return len(range(dist["int"][0], dist["int"][1] + 1, dist.get("step", 1)))
    if "quniform" in dist:
        lo, hi, q = dist["quniform"]
        return math.floor((hi - lo) / q + 1e-9) + 1
    raise ConfigError(f"{source}: {where}: method grid needs discrete parameters "
                      "(values, int_uniform, q_uniform)")


def _hyperband(et: Any, epochs: int | None, source: str) -> dict:
    if not isinstance(et, dict):
        raise ConfigError(f"{source}: early_terminate: expected a mapping, got {et!r}")
    reject_unknown(et, {"type", "min_iter", "max_iter", "s", "eta"}, source, "early_terminate")
    if et.get("type") != "hyperband":
        raise ConfigError(f"{source}: early_terminate.type: {et.get('type')!r} is not supported (hyperband)")
    eta = number(et.get("eta", 3), source, "early_terminate.eta")
    max_t = et.get("max_iter", epochs)
    if "min_iter" in et:
        grace = et["min_iter"]
    elif "max_iter" in et and "s" in et:  # W&B's smallest band: max_iter / eta^s
        top = number(et["max_iter"], source, "early_terminate.max_iter")
        grace = top / eta ** number(et["s"], source, "early_terminate.s")
    else:
        raise ConfigError(f"{source}: early_terminate: hyperband needs min_iter, or max_iter with s")
    return asha_scheduler(grace, eta, max_t, source, "early_terminate")


def with_max_t(scheduler: dict) -> dict:
    """max_t defaults to e2i's (12) but at least one rung above the grace period."""
    if "max_t" not in scheduler:
        default = SchedulerSpec().max_t
        grace = scheduler.get("grace_period", 1)
        scheduler["max_t"] = max(default, grace * scheduler.get("reduction_factor", 2))
    return scheduler


# --------------------------------------------------------------------------------------------------
# The command line


def convert(path: str | Path, kind: str) -> dict:
    """``kind`` "wandb" or "optuna" -> the space document, validated as a space file would be."""
    from e2i.tune.sweeps_optuna import optuna_to_space

    doc = wandb_to_space(path) if kind == "wandb" else optuna_to_space(path)
    check = {k: copy.deepcopy(v) for k, v in doc.items() if k != "name"}
    space_from_dict(check, name=doc["name"], source=f"{path} (converted)")
    return doc


def to_yaml(doc: dict, origin: str) -> str:
    """The space as a YAML file like tune_spaces/*.yaml (one line per searched key)."""
    lines = [f"# e2i search space converted from {origin} (e2i.tune.sweeps)",
             "#   e2i tune <this file>    (set the store: --set base.data.store=stores/x)"]
    for section in ("base", "space", "scheduler", "search"):
        lines.append(f"{section}:")
        for key, value in doc[section].items():
            flow = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...")
            lines.append(f"  {key}: {flow.strip()}")
    return "\n".join(lines) + "\n"


def write_converted(args: Any) -> tuple[Path | None, str]:
    """`e2i tune --from-wandb-sweep/--from-optuna-yaml`: convert, print or write; returns (space file to
    run or None, the YAML). Without ``--output`` the file goes to ``<output_dir>/converted/<name>.yaml``."""
    origin = args.from_wandb_sweep or args.from_optuna_yaml
    doc = convert(origin, "wandb" if args.from_wandb_sweep else "optuna")
    text = to_yaml(doc, origin)
    if args.print_space and not args.output:
        return None, text
    default = Path(args.output_dir or "results") / "converted" / f"{doc['name']}.yaml"
    out = Path(args.output) if args.output else default
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return (None if args.print_space else out), text


def space_to_run(args: Any) -> str | None:
    """The space file `e2i tune` runs: ``args.space``, or the converted ``--from-*`` file (None after
    ``--print-space``: the YAML was printed)."""
    sources = [f for f in (args.space, args.from_wandb_sweep, args.from_optuna_yaml) if f]
    if len(sources) != 1:
        raise ConfigError("e2i tune: give exactly one of SPACE.yaml, --from-wandb-sweep, --from-optuna-yaml"
                          f" (got {', '.join(sources) or 'none'})")
    if args.space:
        if args.print_space or args.output:
            raise ConfigError("e2i tune: --print-space/--output go with --from-wandb-sweep or "
                              "--from-optuna-yaml")
        return args.space
    path, text = write_converted(args)
    if args.print_space:
        print(text, end="")
    return None if path is None else str(path)
