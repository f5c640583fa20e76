"""Typed train configs: YAML in, frozen dataclasses out, every field validated once at load.

    cfg = load_train_config("configs/siglip.yaml", ["optim.lr=1e-4", "model.output_dim=128"])

Errors name the file and the field path, e.g.
``configs/x.yaml: model.type: 'foo' is not one of siglip, clip, attention, mlp``.
Unknown keys are errors (a typo must not be silently ignored). No ray import here.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from e2i.errors import ConfigError
from e2i.paths import get_dotted, resolve_train_paths, set_dotted, train_path_keys
from e2i.stream_config import StreamingConfig
from e2i.train_parts import TrainPart, check_parts

HEAD_TYPES = ("siglip", "clip", "attention", "mlp")
LOSS_TYPES = ("sigmoid_infonce", "softmax_infonce", "queue_infonce")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")
SCHEDULES = ("cosine", "onecycle", "linear", "constant")  # optim.schedule (see e2i.train.schedule.lr_at)
TRAINERS = ("auto", "ray", "local")  # scaling.trainer (see e2i.train.driver.fit)
WARM_STARTS = ("none", "best", "cca", "pls", "ridge", "procrustes", "cosine")  # model.warm_start (e2i.train.warm_start)
# Validation metrics `metric` may name: "val/" + a key of e2i.evaluate.metrics.retrieval_metrics, or val/loss.
METRIC_MODES = {"loss": "min", "median_rank": "min", "mean_rank": "min"}
_RETRIEVAL = ("recall@1", "recall@5", "recall@10", "mAP@10", "median_rank", "mean_rank")
# val/<m> is text->item (caption queries), val/item_to_text/<m> the other direction (see e2i.train.loop)
VALID_METRICS = ("val/loss", *(f"val/{m}" for m in _RETRIEVAL), *(f"val/item_to_text/{m}" for m in _RETRIEVAL))


def _choice(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{value!r} is not one of {', '.join(allowed)}", name)


def _positive(value: float, name: str, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}", name)


@dataclass(frozen=True)
class DataConfig:
    store: str = "stores/toy"  # dataset dir holding one dir per split (local path or s3://bucket/prefix)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    train_subset: int | None = None  # first N items of train (of each part of a mix); None = all
    # several stores mixed, [{store, split, repeat | weight}] (e2i.train_parts); () = train_split of store
    train: tuple[TrainPart, ...] = ()
    streaming: StreamingConfig = field(default_factory=StreamingConfig)  # e2i.stream_config

    def validate(self) -> None:
        if not self.store:
            raise ValueError("must not be empty", "store")
        if self.train_subset is not None:
            _positive(self.train_subset, "train_subset")
        if self.train:
            check_parts(self.train, self.train_split)


# Default initial temperature per loss when model.init_temperature is null/absent (logit scale = 1/T):
# the sigmoid loss starts at SigLIP's scale 10 (with init_bias -10), softmax losses at CLIP's 0.07.
SOFTMAX_INIT_TEMPERATURE = 0.07
INIT_TEMPERATURE = {"sigmoid_infonce": 0.1, "softmax_infonce": SOFTMAX_INIT_TEMPERATURE,
                    "queue_infonce": SOFTMAX_INIT_TEMPERATURE}


@dataclass(frozen=True)
class ModelConfig:
    type: str = "siglip"  # siglip | clip | attention | mlp (see e2i.model.heads.HEADS)
    output_dim: int = 256  # shared embedding space
    hidden_dim: int = 512  # MLP / attention width
    dropout: float = 0.1  # 0.1 regularises small cached datasets; 0 for huge ones
    num_heads: int = 4  # attention head only; must divide hidden_dim
    num_layers: int = 2  # attention/mlp depth
    num_tokens: int = 8  # attention head: the input embedding is split into this many tokens
    # initial temperature (logit scale = 1/T); None = the loss's default (INIT_TEMPERATURE: 0.1 for sigmoid_infonce
    # as SigLIP, 0.07 for the softmax losses as CLIP), filled in when the TrainConfig is built (shown when loaded)
    init_temperature: float | None = None
    init_bias: float = -10.0  # SigLIP's initial logit bias (paper: -10); sigmoid loss only
    learn_temperature: bool = True  # learn the logit scale (capped at 100 after each step)
    learn_bias: bool = True  # learn the logit bias (sigmoid loss only; independent of learn_temperature)
    warm_start: str = "none"  # a closed-form baseline (best on val, or by name) as epoch 0 of the selection
    warm_start_init: bool = False  # also start training from it (else cold, the baseline is only kept if best)
    warm_start_margin: float = 1.0  # an epoch replaces the baseline only by a val gain > this many std errs

    def validate(self) -> None:
        _choice(self.type, HEAD_TYPES, "type"), _choice(self.warm_start, WARM_STARTS, "warm_start")
        _positive(self.warm_start_margin, "warm_start_margin", allow_zero=True)
        for name in ("output_dim", "hidden_dim", "num_heads", "num_layers", "num_tokens"):
            _positive(getattr(self, name), name)
        if self.init_temperature is not None:
            _positive(self.init_temperature, "init_temperature")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"must be in [0, 1), got {self.dropout!r}", "dropout")
        if self.type == "attention" and self.hidden_dim % self.num_heads:
            raise ValueError(
                f"must divide hidden_dim ({self.num_heads} does not divide {self.hidden_dim})", "num_heads"
            )

    def resolved(self, loss_type: str) -> ModelConfig:
        """This config with ``init_temperature`` filled in from the loss when it is None."""
        if self.init_temperature is not None:
            return self
        temperature = INIT_TEMPERATURE.get(loss_type, SOFTMAX_INIT_TEMPERATURE)
        return dataclasses.replace(self, init_temperature=temperature)


@dataclass(frozen=True)
class LossConfig:
    type: str = "sigmoid_infonce"  # see e2i.model.losses.LOSSES
    queue_size: int = 4096  # queue_infonce only: past embeddings kept as extra negatives

    def validate(self) -> None:
        _choice(self.type, LOSS_TYPES, "type")
        _positive(self.queue_size, "queue_size")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3  # AdamW peak learning rate, reached after warmup
    weight_decay: float = 0.01
    epochs: int = 20
    # An epoch is one pass over the train captions, continued into the next shuffled pass until it
    # has at least this many optimizer steps (0 = plain passes). Training length, validation, early
    # stopping and ASHA rungs then count in units of >= 100 steps whatever the store's size: a few
    # hundred pairs get ~100 steps per epoch (not 2), millions of pairs one pass per epoch.
    min_steps_per_epoch: int = 100
    batch_size: int = 256  # global batch (split across workers); contrastive losses like big batches
    warmup_epochs: float = 1.0  # warmup length in epochs (linear 0 -> lr), then `schedule`
    schedule: str = "cosine"  # after warmup: cosine | linear (decay to 0) | constant | onecycle
    grad_clip: float = 1.0  # max grad norm; 0 = off
    precision: str = "32"  # 32 | bf16-mixed | 16-mixed (mixed only where the device supports it)
    accumulate_grad_batches: int = 1
    early_stopping_patience: int = 5  # epochs without val improvement before stopping; 0 = off

    def validate(self) -> None:
        for name in ("lr", "epochs", "batch_size", "accumulate_grad_batches"):
            _positive(getattr(self, name), name)
        for name in ("weight_decay", "warmup_epochs", "grad_clip", "early_stopping_patience",
                     "min_steps_per_epoch"):
            _positive(getattr(self, name), name, allow_zero=True)
        _choice(self.precision, PRECISIONS, "precision")
        _choice(self.schedule, SCHEDULES, "schedule")


@dataclass(frozen=True)
class ScalingConfig:
    num_workers: int = 1  # Ray Train workers (data parallel)
    use_gpu: bool = False  # request GPUs from Ray; falls back to CPU when torch.cuda is unavailable
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # 0 means 1 when use_gpu
    max_failures: int = 0  # restarts from the last checkpoint after a failure, this many times
    trainer: str = "auto"  # auto: in-process loop for 1 CPU worker, else Ray Train | ray | local

    def validate(self) -> None:
        _choice(self.trainer, TRAINERS, "trainer")
        if self.trainer == "local" and (self.num_workers > 1 or self.use_gpu):
            raise ValueError("'local' runs one CPU worker (set num_workers: 1, use_gpu: false)", "trainer")
        _positive(self.num_workers, "num_workers")
        _positive(self.cpus_per_worker, "cpus_per_worker", allow_zero=True)
        _positive(self.gpus_per_worker, "gpus_per_worker", allow_zero=True)
        _positive(self.max_failures, "max_failures", allow_zero=True)


@dataclass(frozen=True)
class CheckpointConfig:
    # a checkpoint every N epochs (0 = none); the best epoch so far and the last are always written
    every_n_epochs: int = 5

    def validate(self) -> None:
        _positive(self.every_n_epochs, "every_n_epochs", allow_zero=True)


@dataclass(frozen=True)
class LoggingConfig:
    tensorboard: bool = True
    use_wandb: bool = False  # offline mode when WANDB_API_KEY is not set
    wandb_project: str = "e2i"
    wandb_entity: str | None = None
    run_name: str | None = None

    def validate(self) -> None:
        pass


@dataclass(frozen=True)
class TrainConfig:
    name: str = "default"  # outputs go to <output_dir>/<name>/
    seed: int = 0
    output_dir: str = "results"
    metric: str = "val/mAP@10"  # validation metric for best checkpoint / early stopping / tuning
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Local paths as the user wrote them ({"data.store": "stores/toy", ...}); the fields above hold
    # them resolved to absolute paths at load (see e2i.paths), so Ray workers find them.
    paths_as_written: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the per-loss default of model.init_temperature (ModelConfig.resolved), on the frozen instance
        object.__setattr__(self, "model", self.model.resolved(self.loss.type))

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"must be a non-empty name without '/', got {self.name!r}", "name")
        if not self.metric.startswith("val/"):
            raise ValueError(f"must start with 'val/', got {self.metric!r}", "metric")
        _choice(self.metric, VALID_METRICS, "metric")

    @property
    def metric_mode(self) -> str:
        """'max' for recall/mAP, 'min' for loss and ranks."""
        return METRIC_MODES.get(self.metric.split("/")[-1], "max")

    @property
    def run_dir(self) -> str:
        return f"{self.output_dir.rstrip('/')}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, overrides: dict[str, Any] | list[str], source: str = "<overrides>") -> "TrainConfig":
        """A new validated config with dotted-key overrides applied ({'optim.lr': 1e-4} or ['optim.lr=1e-4'])."""
        data = self.to_dict()
        apply_overrides(data, overrides, source)
        return train_config_from_dict(data, source)


# --------------------------------------------------------------------------------------------------
# Generic dict -> dataclass conversion with field-path errors


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check/convert one scalar against its annotation (int, float, str, bool, X | None)."""
    origin = typing.get_origin(tp)
    if origin is dict:  # dict[str, str]: a flat mapping of strings
        if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return dict(value)
        raise ConfigError(f"{path}: expected a mapping of strings, got {type(value).__name__} {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build_dataclass(cls: type, data: Any, source: str, prefix: str = "") -> Any:
    """Build a (nested) frozen dataclass from a dict; errors are 'source: field.path: message'."""
    where = prefix.rstrip(".") or "(top level)"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{source}: {prefix}{unknown[0]}: unknown key (valid keys: {', '.join(sorted(known))})"
        )
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = build_dataclass(tp, data[f.name], source, f"{prefix}{f.name}.")
        elif typing.get_origin(tp) is tuple:  # tuple[Section, ...]: a list of mappings in the YAML
            kwargs[f.name] = _build_list(typing.get_args(tp)[0], data[f.name], source, f"{prefix}{f.name}")
        else:
            try:
                kwargs[f.name] = _coerce(data[f.name], tp, f"{prefix}{f.name}")
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None
    obj = cls(**kwargs)
    try:
        obj.validate()
    except ValueError as exc:
        message, name = exc.args
        raise ConfigError(f"{source}: {prefix}{name}: {message}") from None
    return obj


def _build_list(cls: type, data: Any, source: str, path: str) -> tuple:
    if data is None:
        return ()
    if not isinstance(data, list | tuple):
        raise ConfigError(f"{source}: {path}: expected a list of mappings, got {type(data).__name__}")
    return tuple(build_dataclass(cls, entry, source, f"{path}[{i}].") for i, entry in enumerate(data))


def parse_override(text: str, source: str = "<overrides>") -> tuple[str, Any]:
    """'optim.lr=1e-4' -> ('optim.lr', 0.0001); the value is parsed as YAML (numbers, bools, null)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{source}: {text!r}: override must look like key.sub=value")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict, overrides: dict[str, Any] | list[str], source: str = "<overrides>") -> dict:
    """Set dotted keys in a nested dict in place (unknown keys are caught later by validation);
    ``data.train[1].repeat`` indexes a list (e2i.paths.set_dotted)."""
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    for key, value in items:
        try:
            set_dotted(data, key, value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: {key}: {exc}") from None
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def train_config_from_dict(data: dict, source: str = "<dict>") -> TrainConfig:
    return build_dataclass(TrainConfig, data, source)


def load_train_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> TrainConfig:
    """Load and validate a train config; `name` defaults to the file's stem.

    Local paths (``data.store``, ``output_dir``) are resolved against the caller's working directory
    here, on the driver (see e2i.paths); ``paths_as_written`` keeps what the user wrote."""
    data = read_yaml(path)
    data.setdefault("name", Path(path).stem)
    overridden: tuple[str, ...] = ()
    if overrides:
        before = copy.deepcopy(data)
        apply_overrides(data, overrides, f"{path} (--set)")
        keys = dict.fromkeys(train_path_keys(before) + train_path_keys(data))
        overridden = tuple(k for k in keys if get_dotted(data, k) != get_dotted(before, k))
    cfg = train_config_from_dict(data, str(path))
    return resolve_config_paths(cfg, overridden, str(path))


def resolve_config_paths(cfg: TrainConfig, overridden: tuple[str, ...] = (), source: str = "<config>") -> TrainConfig:
    """The same config with its local paths absolute (against the cwd) and ``paths_as_written`` set."""
    return train_config_from_dict(resolve_train_paths(cfg.to_dict(), overridden), source)


def save_train_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
