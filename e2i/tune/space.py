"""Search spaces for `e2i tune`: a small YAML grammar -> typed, validated objects -> an Optuna
define-by-run function.

    space = load_space("tune_spaces/default.yaml", overrides={"base.data.store": "stores/toy"})
    params = space.sample(optuna_trial)       # {"model.type": "attention", "model.num_heads": 4, ...}
    cfg = space.trial_config(params)          # a validated TrainConfig

A space file::

    base_config: configs/siglip.yaml          # optional: a train config file ...
    base: {data: {store: stores/toy}}         # ... and/or a mapping merged on top of it
    data: {train_split: train_subset}         # the tuning data (merged into base.data)
    space:                                    # dotted train-config key -> distribution
      model.type: {choice: [siglip, clip, attention, mlp]}
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      model.hidden_dim: {int: [64, 512], step: 64}
      model.dropout: {quniform: [0.0, 0.3, 0.05]}
      conditional:                            # blocks sampled only when `when` holds
        - when: {model.type: attention}       # value or [values]; several keys = all must hold
          model.num_heads: {choice: [2, 4, 8]}
          model.num_layers: {int: [1, 3]}
    scheduler: {type: asha, max_t: 12, grace_period: 2, reduction_factor: 2}
    search: {sampler: tpe, seed: 0, num_samples: 16, max_concurrent_trials: 2,
             resources_per_trial: {cpu: 1, gpu: 0.5}}
    storage: {optuna: sqlite:///..., storage_path: s3://bucket/prefix, output_dir: results}

Distributions: ``choice: [...]``, ``uniform: [lo, hi]``, ``loguniform: [lo, hi]``, ``int: [lo, hi]``
(+ ``step``/``q``, or ``log: true``), ``quniform: [lo, hi, q]`` (``uniform`` + ``step`` is the same).
A condition may only name a ``choice`` parameter of the enclosing scopes (the root or a parent block);
a key may appear in several blocks only if their conditions exclude each other.

Validation happens once, at load, and errors name the file and the field path
(``tune_spaces/x.yaml: space.optim.lr.loguniform: low > high (0.1 > 0.01)``). Besides each entry,
the sampled configs themselves are checked with ``train_config_from_dict``: every combination of the
discrete values and of the range ends (capped), plus random draws; so ``num_heads`` that does not
divide ``hidden_dim`` fails at load, not in trial 37. No ray or optuna import here.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import random
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from e2i.config import (
    HEAD_TYPES,
    LOSS_TYPES,
    PRECISIONS,
    TrainConfig,
    apply_overrides,
    build_dataclass,
    read_yaml,
    resolve_config_paths,
    train_config_from_dict,
)
from e2i.errors import ConfigError
from e2i.paths import resolve_path, resolve_sqlite_url

KINDS = ("choice", "uniform", "loguniform", "int", "quniform")
NAMED_CHOICES = {"model.type": HEAD_TYPES, "loss.type": LOSS_TYPES, "optim.precision": PRECISIONS}
SEARCHABLE_SECTIONS = ("model", "loss", "optim")  # + the top-level `seed`
FIXED_KEYS = {  # keys a search must not vary, with the reason shown to the user
    "optim.epochs": "trial length is scheduler.max_t",
    "metric": "the objective must be the same for every trial",
}
COMBINATIONS_CHECKED = 2000  # grid of discrete values and range ends validated at load (first N)
RANDOM_DRAWS_CHECKED = 100  # plus this many random draws
SAMPLERS = ("tpe", "random")
SCHEDULERS = ("asha", "fifo")


# --------------------------------------------------------------------------------------------------
# Distributions and conditional blocks


@dataclass(frozen=True)
class Param:
    """One searched config field; ``key`` is also the Optuna parameter name."""

    key: str
    kind: str  # one of KINDS
    choices: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None  # quantisation (int, uniform/quniform)
    log: bool = False  # loguniform, or int with log: true

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial (or anything with the same suggest_* methods) for a value."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def grid(self) -> list:
        """Values checked at load: every choice / small int range, else the ends and the middle."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            step = self.step or 1
            values = list(range(self.low, self.high + 1, step))
            if len(values) <= 16 and not self.log:
                return values
            return sorted({self.low, values[len(values) // 2], values[-1]})
        high = self.high
        if self.step:  # Optuna rounds the top down onto the grid low + k * step
            high = self.low + math.floor((self.high - self.low) / self.step + 1e-9) * self.step
        return [self.low, high]

    def draw(self, rng: random.Random) -> Any:
        """A random value (for load-time checks; the search itself samples through Optuna)."""
        if self.kind == "choice":
            return rng.choice(self.choices)
        if self.kind == "int":
            return rng.choice(range(self.low, self.high + 1, self.step or 1))
        if self.log:
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        value = rng.uniform(self.low, self.high)
        if self.step:
            value = min(self.high, self.low + round((value - self.low) / self.step) * self.step)
        return value


@dataclass(frozen=True)
class Condition:
    """All of ``key in values`` must hold (keys are choice parameters of enclosing scopes)."""

    requires: tuple[tuple[str, tuple], ...]

    def holds(self, values: dict[str, Any]) -> bool:
        return all(key in values and values[key] in allowed for key, allowed in self.requires)

    def excludes(self, other: Condition) -> bool:
        """True when no assignment can satisfy both (same key, disjoint values)."""
        mine = dict(self.requires)
        return any(key in mine and not set(mine[key]) & set(allowed) for key, allowed in other.requires)

    def __str__(self) -> str:
        return ", ".join(f"{k} in {list(v)}" if len(v) > 1 else f"{k}={v[0]}" for k, v in self.requires)


@dataclass(frozen=True)
class Block:
    """A scope of the space: its own params, then nested conditional blocks (in file order)."""

    params: tuple[Param, ...] = ()
    blocks: tuple[Block, ...] = ()
    when: Condition | None = None  # None for the root

    def suggest(self, trial: Any, values: dict[str, Any]) -> None:
        """Define-by-run: suggest own params, then the blocks whose condition holds (in place)."""
        for param in self.params:
            values[param.key] = param.suggest(trial)
        for block in self.blocks:
            if block.when.holds(values):
                block.suggest(trial, values)

    def all_params(self) -> Iterator[Param]:
        yield from self.params
        for block in self.blocks:
            yield from block.all_params()

    def grid(self, values: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every combination of the params' grid values, conditional blocks expanded where active."""
        keys = [p.key for p in self.params]
        for combo in itertools.product(*(p.grid() for p in self.params)):
            yield from _expand_blocks(self.blocks, {**values, **dict(zip(keys, combo))})

    def draw(self, rng: random.Random, values: dict[str, Any]) -> None:
        for param in self.params:
            values[param.key] = param.draw(rng)
        for block in self.blocks:
            if block.when.holds(values):
                block.draw(rng, values)


def _expand_blocks(blocks: tuple[Block, ...], values: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if not blocks:
        yield values
        return
    first, rest = blocks[0], blocks[1:]
    if first.when.holds(values):
        for expanded in first.grid(values):
            yield from _expand_blocks(rest, expanded)
    else:
        yield from _expand_blocks(rest, values)


# --------------------------------------------------------------------------------------------------
# The other sections


@dataclass(frozen=True)
class SchedulerSpec:
    type: str = "asha"  # asha: stop weak trials at rungs; fifo: run every trial to max_t
    max_t: int = 12  # epochs of a full trial (= optim.epochs of every trial)
    grace_period: int = 2  # epochs before the first rung: every trial gets at least this many
    reduction_factor: int = 2  # keep the top 1/rf at each rung (rungs at grace * rf^k epochs)

    def validate(self) -> None:
        if self.type not in SCHEDULERS:
            raise ValueError(f"{self.type!r} is not one of {', '.join(SCHEDULERS)}", "type")
        if self.max_t < 1:
            raise ValueError(f"must be >= 1, got {self.max_t}", "max_t")
        if not 1 <= self.grace_period <= self.max_t:
            raise ValueError(f"must be in [1, max_t={self.max_t}], got {self.grace_period}", "grace_period")
        if self.reduction_factor < 2:
            raise ValueError(f"must be >= 2, got {self.reduction_factor}", "reduction_factor")

    def rungs(self) -> list[int]:
        """Epochs at which ASHA compares trials (below max_t)."""
        if self.type != "asha":
            return []
        out, t = [], self.grace_period
        while t < self.max_t:
            out.append(t)
            t *= self.reduction_factor
        return out


@dataclass(frozen=True)
class ResourcesSpec:
    cpu: float = 1.0  # per trial; 1-worker trials run the loop in the trial itself
    gpu: float = 0.0  # fractional GPUs share a device between concurrent trials (e.g. 0.5)

    def validate(self) -> None:
        for name in ("cpu", "gpu"):
            if getattr(self, name) < 0:
                raise ValueError(f"must be >= 0, got {getattr(self, name)}", name)


@dataclass(frozen=True)
class SearchSpec:
    sampler: str = "tpe"  # tpe (multivariate, group-aware for conditional spaces) | random
    seed: int = 0
    num_samples: int = 16  # trials in total (counting those of earlier runs when resuming)
    max_concurrent_trials: int = 2  # 2 CPUs here; TPE also learns more from sequential results
    n_startup_trials: int = 6  # random trials before TPE starts modelling
    resources_per_trial: ResourcesSpec = field(default_factory=ResourcesSpec)

    def validate(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"{self.sampler!r} is not one of {', '.join(SAMPLERS)}", "sampler")
        for name in ("num_samples", "max_concurrent_trials"):
            if getattr(self, name) < 1:
                raise ValueError(f"must be >= 1, got {getattr(self, name)}", name)
        if self.n_startup_trials < 0:
            raise ValueError(f"must be >= 0, got {self.n_startup_trials}", "n_startup_trials")


@dataclass(frozen=True)
class StorageSpec:
    output_dir: str = "results"  # <output_dir>/<space>/: optuna.db, best_config.yaml, report/
    optuna: str | None = None  # SQLAlchemy URL; default sqlite:///<output_dir>/<space>/optuna.db
    storage_path: str | None = None  # Tune results/checkpoints: local dir or s3://bucket/prefix;
    #                                   default <output_dir>/<space>/tune
    study_name: str | None = None  # default: the space name

    def validate(self) -> None:
        if not self.output_dir:
            raise ValueError("must not be empty", "output_dir")


SECTIONS = {"base_config", "base", "data", "space", "scheduler", "search", "storage"}


@dataclass(frozen=True)
class TuneSpace:
    """A validated search space. ``base`` is the plain train-config dict every trial starts from."""

    name: str
    source: str
    base: dict
    root: Block
    scheduler: SchedulerSpec
    search: SearchSpec
    storage: StorageSpec

    # -- paths ---------------------------------------------------------------------------------
    @property
    def experiment_dir(self) -> Path:
        return Path(self.storage.output_dir) / self.name

    @property
    def optuna_url(self) -> str:
        return self.storage.optuna or f"sqlite:///{(self.experiment_dir / 'optuna.db').resolve()}"

    @property
    def study_name(self) -> str:
        return self.storage.study_name or self.name

    @property
    def storage_path(self) -> str:
        """Root of Tune's experiment (the experiment itself is ``<storage_path>/<name>``)."""
        path = self.storage.storage_path or str(self.experiment_dir / "tune")
        return path if "://" in path else str(Path(path).resolve())

    # -- configs -------------------------------------------------------------------------------
    @property
    def base_config(self) -> TrainConfig:
        return train_config_from_dict(copy.deepcopy(self.base), self.source)

    @property
    def metric(self) -> str:
        return self.base_config.metric

    @property
    def mode(self) -> str:
        return self.base_config.metric_mode

    @property
    def params(self) -> list[Param]:
        return list(self.root.all_params())

    def sample(self, trial: Any) -> dict[str, Any]:
        """The define-by-run function: ``trial`` is an ``optuna.Trial`` (or has its suggest_* API)."""
        values: dict[str, Any] = {}
        self.root.suggest(trial, values)
        return values

    def config_dict(self, params: dict[str, Any], **fixed: Any) -> dict:
        """base + sampled params (dotted keys) + fixed overrides; epochs = scheduler.max_t."""
        data = copy.deepcopy(self.base)
        keys = {p.key for p in self.params}
        apply_overrides(data, {k: v for k, v in params.items() if k in keys})  # drops bookkeeping keys
        apply_overrides(data, {"optim.epochs": self.scheduler.max_t, **fixed})
        return data

    def trial_config(self, params: dict[str, Any], **fixed: Any) -> TrainConfig:
        return train_config_from_dict(self.config_dict(params, **fixed), f"{self.source}: trial config")


# --------------------------------------------------------------------------------------------------
# Parsing


def _fail(source: str, where: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {where}: {message}")


def _field_type(key: str) -> Any:
    """Annotation of a dotted TrainConfig field ('model.num_heads' -> int); KeyError if unknown."""
    cls: Any = TrainConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise KeyError(", ".join(sorted(f.name for f in fields(cls))))
        cls = hints[part]
        is_section = hasattr(cls, "__dataclass_fields__")
        if is_section != (i < len(parts) - 1):
            raise KeyError("a section, not a field" if is_section else "a field, not a section")
    return cls


def _scalar_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _check_key(key: str, source: str, where: str) -> Any:
    if key in FIXED_KEYS:
        raise _fail(source, where, f"cannot be searched ({FIXED_KEYS[key]})")
    section = key.split(".")[0]
    if key != "seed" and section not in SEARCHABLE_SECTIONS:
        sections = ", ".join(f"{s}.*" for s in SEARCHABLE_SECTIONS)
        raise _fail(source, where, f"cannot be searched (searchable: seed, {sections}; data is set in "
                    "`data:`, resources in `search.resources_per_trial`)")
    try:
        return _scalar_type(_field_type(key))
    except KeyError as exc:
        detail = exc.args[0]
        raise _fail(source, where, f"not a train-config field ({detail})" if detail.startswith("a ")
                    else f"unknown key (valid keys here: {detail})") from None


def _number(value: Any, source: str, where: str) -> float | int:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(source, where, f"expected a number, got {value!r}")
    return value


def _parse_choice(key: str, tp: Any, values: Any, source: str, where: str) -> Param:
    if not isinstance(values, list):
        raise _fail(source, where, f"expected a list of values, got {type(values).__name__}")
    if not values:
        raise _fail(source, where, "empty choice list")
    out = []
    for i, value in enumerate(values):
        at = f"{where}[{i}]"
        if isinstance(value, (list, dict)):
            raise _fail(source, at, f"choices must be scalars, got {value!r}")
        if key in NAMED_CHOICES and value not in NAMED_CHOICES[key]:
            raise _fail(source, at, f"{value!r} is not one of {', '.join(NAMED_CHOICES[key])}")
        out.append(_coerce_value(value, tp, source, at))
    if len(set(map(repr, out))) != len(out):
        raise _fail(source, where, f"duplicate values in {values}")
    return Param(key, "choice", choices=tuple(out))


def _coerce_value(value: Any, tp: Any, source: str, where: str) -> Any:
    if value is None:
        return None
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and not isinstance(value, bool):
        return float(_number(value, source, where))
    if tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    expected = getattr(tp, "__name__", tp)
    raise _fail(source, where, f"expected {expected}, got {type(value).__name__} {value!r}")


def _parse_range(key: str, tp: Any, kind: str, spec: dict, source: str, where: str) -> Param:
    bounds = spec[kind]
    at = f"{where}.{kind}"
    need = 3 if kind == "quniform" else 2
    if not isinstance(bounds, list) or len(bounds) != need:
        form = "[low, high, q]" if need == 3 else "[low, high]"
        raise _fail(source, at, f"expected {form}, got {bounds!r}")
    numbers = [_number(v, source, f"{at}[{i}]") for i, v in enumerate(bounds)]
    low, high = numbers[0], numbers[1]
    step = numbers[2] if kind == "quniform" else spec.get("step", spec.get("q"))
    log = kind == "loguniform" or bool(spec.get("log", False))
    if tp not in (int, float):
        raise _fail(source, at, f"{key} is a {getattr(tp, '__name__', tp)} field: use choice: [...]")
    if kind == "int" or tp is int:
        if kind != "int":
            raise _fail(source, at, f"{key} is an int field: use int: [low, high]")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in bounds):
            raise _fail(source, at, f"int bounds must be integers, got {bounds!r}")
    if low > high:
        raise _fail(source, at, f"low > high ({low} > {high})")
    if log and low <= 0:
        raise _fail(source, at, f"log scale needs low > 0, got {low}")
    if step is not None:
        step = _number(step, source, f"{where}.step")
        if kind == "int" and (not isinstance(step, int) or isinstance(step, bool)):
            raise _fail(source, f"{where}.step", f"must be an integer for int ranges, got {step!r}")
        if step <= 0:
            raise _fail(source, f"{where}.step", f"must be > 0, got {step}")
        if log:
            raise _fail(source, f"{where}.step", "cannot quantise a log-scale range")
        if step > high - low and high > low:
            raise _fail(source, f"{where}.step", f"larger than the range ({step} > {high - low})")
    return Param(key, kind, low=low, high=high, step=step, log=log)


def _parse_param(key: str, spec: Any, source: str, where: str) -> Param:
    tp = _check_key(key, source, where)
    if not isinstance(spec, dict):
        raise _fail(source, where,
                    f"expected a mapping like {{choice: [...]}} or {{loguniform: [lo, hi]}}, got {spec!r}")
    kinds = [k for k in spec if k in KINDS]
    extra = sorted(set(spec) - set(KINDS) - {"step", "q", "log"})
    if extra:
        raise _fail(source, f"{where}.{extra[0]}", f"unknown key (valid: {', '.join(KINDS)}, step, q, log)")
    if len(kinds) != 1:
        raise _fail(source, where, f"needs exactly one of {', '.join(KINDS)}, got {kinds or 'none'}")
    kind = kinds[0]
    if kind == "choice":
        if set(spec) != {"choice"}:
            raise _fail(source, where, "choice takes no step/q/log")
        return _parse_choice(key, tp, spec["choice"], source, f"{where}.choice")
    if kind == "quniform" and ("step" in spec or "q" in spec):
        raise _fail(source, where, "quniform takes q as its third value, not step/q")
    if kind != "int" and "log" in spec:
        raise _fail(source, f"{where}.log", "only int ranges take log (use loguniform)")
    if kind == "loguniform" and ("step" in spec or "q" in spec):
        raise _fail(source, f"{where}.step", "cannot quantise a log-scale range")
    return _parse_range(key, tp, kind, spec, source, where)


def _parse_condition(when: Any, scope: dict[str, Param], source: str, where: str) -> Condition:
    if not isinstance(when, dict) or not when:
        raise _fail(source, where, f"expected a mapping like {{model.type: attention}}, got {when!r}")
    requires = []
    for key, value in when.items():
        at = f"{where}.{key}"
        if key not in scope:
            searched = ", ".join(k for k, p in scope.items() if p.kind == "choice") or "none"
            raise _fail(source, at, f"conditions must name a choice parameter searched in an enclosing "
                        f"scope (available: {searched})")
        param = scope[key]
        if param.kind != "choice":
            raise _fail(source, at, f"{key} is a {param.kind} range; conditions need a choice parameter")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v not in param.choices:
                raise _fail(source, at, f"{v!r} is not one of the choices of {key} "
                            f"({', '.join(map(str, param.choices))})")
        requires.append((key, tuple(values)))
    return Condition(tuple(requires))


def _parse_block(mapping: Any, scope: dict[str, Param], source: str, where: str,
                 when: Condition | None = None) -> Block:
    """Parse a scope's entries; ``scope`` holds the params visible to conditions (enclosing scopes)."""
    if not isinstance(mapping, dict):
        raise _fail(source, where, f"expected a mapping, got {type(mapping).__name__}")
    params: list[Param] = []
    for key, spec in mapping.items():
        if key in ("conditional", "when"):
            continue
        at = f"{where}.{key}"
        if key in scope:
            raise _fail(source, at, "searched twice (already in an enclosing scope)")
        params.append(_parse_param(key, spec, source, at))
    inner = {**scope, **{p.key: p for p in params}}
    blocks = []
    entries = mapping.get("conditional", [])
    if not isinstance(entries, list):
        raise _fail(source, f"{where}.conditional", "expected a list of blocks (- when: {...} ...)")
    for i, entry in enumerate(entries):
        at = f"{where}.conditional[{i}]"
        if not isinstance(entry, dict) or "when" not in entry:
            raise _fail(source, at, "each conditional block needs `when: {key: value}` and its entries")
        cond = _parse_condition(entry["when"], inner, source, f"{at}.when")
        blocks.append(_parse_block(entry, inner, source, at, cond))
    _check_overlaps(blocks, source, where)
    return Block(params=tuple(params), blocks=tuple(blocks), when=when)


def _check_overlaps(blocks: list[Block], source: str, where: str) -> None:
    """A key defined in two sibling blocks must live in mutually exclusive blocks."""
    for (i, a), (j, b) in itertools.combinations(enumerate(blocks), 2):
        shared = {p.key for p in a.all_params()} & {p.key for p in b.all_params()}
        if shared and not a.when.excludes(b.when):
            raise _fail(source, f"{where}.conditional[{j}]",
                        f"{min(shared)} is also searched in conditional[{i}] and both blocks can be "
                        f"active ({a.when} / {b.when})")


def _parse_section(cls: type, data: Any, source: str, name: str) -> Any:
    return build_dataclass(cls, data, source, f"{name}.")


def _resolve_base_config(value: Any, path: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise _fail(str(path), "base_config", f"expected a path to a train config, got {value!r}")
    tried = [Path(value)] if Path(value).is_absolute() else [Path(value), path.parent / value,
                                                               path.parent.parent / value]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise _fail(str(path), "base_config", f"no such file (tried {', '.join(map(str, tried))})")


def _resolve_storage(storage: StorageSpec) -> StorageSpec:
    """Local output/storage paths and relative sqlite URLs made absolute against the cwd (e2i.paths):
    Tune runs trials in their trial dirs, so nothing relative may reach it."""
    return dataclasses.replace(
        storage,
        output_dir=resolve_path(storage.output_dir),
        storage_path=resolve_path(storage.storage_path) if storage.storage_path else None,
        optuna=resolve_sqlite_url(storage.optuna) if storage.optuna else None,
    )


def _deep_merge(into: dict, data: dict) -> dict:
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


def space_from_dict(doc: dict, *, name: str, source: str, path: Path | None = None) -> TuneSpace:
    """Build and validate a TuneSpace from the parsed YAML document."""
    unknown = sorted(set(doc) - SECTIONS)
    if unknown:
        raise _fail(source, unknown[0], f"unknown key (valid keys: {', '.join(sorted(SECTIONS))})")
    base: dict = {}
    if "base_config" in doc:
        base = read_yaml(_resolve_base_config(doc["base_config"], path or Path(source)))
    for section in ("base", "data"):
        if doc.get(section) is not None and not isinstance(doc[section], dict):
            raise _fail(source, section, f"expected a mapping, got {type(doc[section]).__name__}")
    _deep_merge(base, doc.get("base") or {})
    _deep_merge(base.setdefault("data", {}), doc.get("data") or {})
    base.setdefault("name", name)
    base_cfg = train_config_from_dict(copy.deepcopy(base), f"{source}: base")  # field errors, with paths
    base = resolve_config_paths(base_cfg, source=f"{source}: base").to_dict()  # absolute, on the driver
    if "space" not in doc or not doc["space"]:
        raise _fail(source, "space", "missing or empty: nothing to search")
    root = _parse_block(doc["space"], {}, source, "space")
    space = TuneSpace(
        name=name, source=source, base=base, root=root,
        scheduler=_parse_section(SchedulerSpec, doc.get("scheduler"), source, "scheduler"),
        search=_parse_section(SearchSpec, doc.get("search"), source, "search"),
        storage=_resolve_storage(_parse_section(StorageSpec, doc.get("storage"), source, "storage")),
    )
    check_sampled_configs(space)
    return space


def check_sampled_configs(space: TuneSpace, *, seed: int = 0) -> int:
    """Validate configs the space can produce: the grid (capped) + random draws. Returns how many
    section assignments were validated.

    Field validation is per section (TrainConfig.validate itself looks at no searchable field), so
    each new assignment of one section's searched keys is validated once, as that section.
    """
    rng = random.Random(seed)
    grid = itertools.islice(space.root.grid({}), COMBINATIONS_CHECKED)
    draws = []
    for _ in range(RANDOM_DRAWS_CHECKED):
        values: dict[str, Any] = {}
        space.root.draw(rng, values)
        draws.append(values)
    hints = typing.get_type_hints(TrainConfig)
    seen: set = set()
    for values in itertools.chain(grid, draws):
        for section in sorted({k.split(".")[0] for k in values}):
            mine = {k: v for k, v in values.items() if k.split(".")[0] == section}
            key = (section, tuple(sorted((k, repr(v)) for k, v in mine.items())))
            if key in seen:
                continue
            seen.add(key)
            data = space.config_dict(mine)
            try:
                if section in SEARCHABLE_SECTIONS:
                    build_dataclass(hints[section], data[section], "<sampled>", f"{section}.")
                else:
                    train_config_from_dict(data, "<sampled>")
            except ConfigError as exc:
                detail = str(exc).removeprefix("<sampled>: ")
                assignment = ", ".join(f"{k}={v}" for k, v in mine.items())
                message = f"sampled config ({assignment}) is invalid: {detail}"
                raise _fail(space.source, "space", message) from None
    return len(seen)


def load_space(path: str | Path, overrides: dict[str, Any] | list[str] | None = None) -> TuneSpace:
    """Load and validate ``tune_spaces/<name>.yaml``; ``overrides`` set dotted keys of the document
    before validation (``{"base.data.store": "stores/x", "scheduler.max_t": 4}``; space entries,
    whose keys contain dots themselves, cannot be overridden this way)."""
    path = Path(path)
    doc = read_yaml(path)
    if overrides:
        apply_overrides(doc, overrides, f"{path} (overrides)")
    return space_from_dict(doc, name=path.stem, source=str(path), path=path)
