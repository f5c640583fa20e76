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
      model.type: {choice: [siglip, attention]}
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}  # (+ int, quniform, conditional: e2i.tune.grammar)
    scheduler: {type: asha, max_t: 12, grace_period: 2, reduction_factor: 2}
    search: {sampler: tpe, seed: 0, num_samples: 16, max_concurrent_trials: 2,
             resources_per_trial: {cpu: 1, gpu: 0.5}}
    storage: {optuna: sqlite:///..., storage_path: s3://bucket/prefix, output_dir: results}

The distributions and conditional blocks of ``space:`` are :mod:`e2i.tune.grammar`; this module owns
the document (its sections as dataclasses, the base config, :class:`TuneSpace`) and :func:`load_space`.

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
import random
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2i.config import (
    TrainConfig,
    apply_overrides,
    build_dataclass,
    read_yaml,
    resolve_config_paths,
    train_config_from_dict,
)
from e2i.errors import ConfigError
from e2i.paths import resolve_path, resolve_sqlite_url
from e2i.tune.grammar import SEARCHABLE_SECTIONS, Block, Param, fail, parse_block

COMBINATIONS_CHECKED = 2000  # grid of discrete values and range ends validated at load (first N)
RANDOM_DRAWS_CHECKED = 100  # plus this many random draws
SAMPLERS = ("tpe", "random", "grid")
SCHEDULERS = ("asha", "fifo")


# --------------------------------------------------------------------------------------------------
# The other sections and the space itself


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
    sampler: str = "tpe"  # tpe (multivariate, group-aware for conditional spaces) | random | grid (every
    #                       combination of discrete params once, in random order; see optuna_search)
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
# Loading


def _parse_section(cls: type, data: Any, source: str, name: str) -> Any:
    return build_dataclass(cls, data, source, f"{name}.")


def _resolve_base_config(value: Any, path: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise fail(str(path), "base_config", f"expected a path to a train config, got {value!r}")
    tried = [Path(value)] if Path(value).is_absolute() else [Path(value), path.parent / value,
                                                               path.parent.parent / value]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise fail(str(path), "base_config", f"no such file (tried {', '.join(map(str, tried))})")


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
        raise fail(source, unknown[0], f"unknown key (valid keys: {', '.join(sorted(SECTIONS))})")
    base: dict = {}
    if "base_config" in doc:
        base = read_yaml(_resolve_base_config(doc["base_config"], path or Path(source)))
    for section in ("base", "data"):
        if doc.get(section) is not None and not isinstance(doc[section], dict):
            raise fail(source, section, f"expected a mapping, got {type(doc[section]).__name__}")
    _deep_merge(base, doc.get("base") or {})
    _deep_merge(base.setdefault("data", {}), doc.get("data") or {})
    base.setdefault("name", name)
    base_cfg = train_config_from_dict(copy.deepcopy(base), f"{source}: base")  # field errors, with paths
    base = resolve_config_paths(base_cfg, source=f"{source}: base").to_dict()  # absolute, on the driver
    if "space" not in doc or not doc["space"]:
        raise fail(source, "space", "missing or empty: nothing to search")
    root = parse_block(doc["space"], {}, source, "space")
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
            try:
                data = space.config_dict(mine)  # data.train[i]: the base must list part i
                if section in SEARCHABLE_SECTIONS:
                    build_dataclass(hints[section], data[section], "<sampled>", f"{section}.")
                else:
                    train_config_from_dict(data, "<sampled>")
            except ConfigError as exc:
                detail = str(exc).removeprefix("<sampled>: ").removeprefix("<overrides>: ")
                assignment = ", ".join(f"{k}={v}" for k, v in mine.items())
                message = f"sampled config ({assignment}) is invalid: {detail}"
                raise fail(space.source, "space", message) from None
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
