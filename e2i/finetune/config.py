"""``FinetuneConfig``: every knob of ``e2i finetune``, loaded from YAML / flags and validated once.

    cfg = load_finetune_config("configs/finetune.yaml", {"batch_size": 4})   # ConfigError on bad keys
    cfg.run_dir                                                              # <output_dir>/<run name>

Local paths are made absolute on the driver (:func:`resolve_finetune_paths`) before the config (as
``cfg.to_dict()``, plain types) travels to the Ray Train workers, which rebuild it with
:func:`finetune_config_from_dict`. No torch, no ray.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from e2i.config import ConfigError, build_dataclass, read_yaml
from e2i.paths import resolve_path

PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed")
TEXT_POOLING = ("cls", "mean")


@dataclass(frozen=True)
class FinetuneConfig:
    """Every knob of ``e2i finetune`` (flags use dashes: ``--max-lr``; YAML keys use underscores)."""

    data_root: str = "data/CLOTHO_v2.1"  # Clotho root (see e2i.corpus.clotho: CSVs + audio dirs)
    train_split: str = "development"
    val_split: str = "validation"
    test_split: str = "evaluation"  # DCASE's development-testing set
    subset: int | None = None  # first N clips of every split (quick runs); None = all
    output_dir: str = "checkpoints"
    run_name: str | None = None  # default: <audio-arch>-<text model name>
    audio_arch: str = "passt_s_swa_p16_128_ap476"  # PaSST-S SWA, AudioSet mAP .476 (baseline's encoder)
    audio_options: dict = field(default_factory=dict)  # PaSST/mel overrides, e.g. pretrained=false, depth=2
    text_model: str = "roberta-large"  # HF hub id or local dir (the DCASE 2024 baseline uses roberta-large)
    text_pooling: str = "cls"  # cls = first token <s> (baseline) | mean = mean over non-padding tokens
    init_weights: str | None = None  # safetensors of a whole module (e.g. a previous best_model.safetensors)
    projection_dim: int = 1024  # shared embedding size (baseline: 1024)
    hidden_dim: int = 1024  # projection MLP width; 0 = a single Linear
    init_temperature: float = 0.05  # baseline's tau; learnable
    max_text_tokens: int = 32  # captions are 8-20 words
    max_audio_seconds: float = 12.0  # crop/pad length; Clotho clips are 15-30 s
    batch_size: int = 6  # pairs per worker and step (the older train_finetune default)
    accumulate_grad_batches: int = (
        6  # effective batch 36 per worker for the gradient (negatives stay 6 x workers)
    )
    epochs: int = 20
    warmup_epochs: float = 1.0  # linear warmup, then cosine decay to 0 (per optimizer step)
    max_lr: float = 3e-6  # peak AdamW lr: small, both encoders are pretrained
    weight_decay: float = 0.0  # baseline: 0
    grad_clip_norm: float = 1.0  # 0 = off
    precision: str = "bf16-mixed"  # falls back to what the device supports (logged)
    num_workers: int = 1  # Ray Train workers (one per GPU), data parallel
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    loader_workers: int = 2  # DataLoader processes per Ray worker (audio decoding)
    limit_train_batches: float = 1.0  # fraction (<= 1.0) or number of batches (> 1) per epoch
    limit_val_batches: float = 1.0
    use_wandb: bool = False  # W&B logging (WANDB_API_KEY from the environment; offline without it)
    wandb_project: str = "e2i"
    wandb_entity: str | None = None
    seed: int = 0
    resume: bool = False  # continue from <output_dir>/<run_name>/checkpoints/last.ckpt
    progress: bool = True  # Lightning progress bar

    def validate(self) -> None:
        for name in (
            "projection_dim",
            "batch_size",
            "accumulate_grad_batches",
            "epochs",
            "max_lr",
            "max_audio_seconds",
            "max_text_tokens",
            "num_workers",
            "init_temperature",
            "limit_train_batches",
            "limit_val_batches",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"must be > 0, got {getattr(self, name)!r}", name)
        for name in (
            "hidden_dim",
            "warmup_epochs",
            "weight_decay",
            "grad_clip_norm",
            "cpus_per_worker",
            "loader_workers",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"must be >= 0, got {getattr(self, name)!r}", name)
        if self.text_pooling not in TEXT_POOLING:
            raise ValueError(f"{self.text_pooling!r} is not one of {', '.join(TEXT_POOLING)}", "text_pooling")
        if self.precision not in PRECISIONS:
            raise ValueError(f"{self.precision!r} is not one of {', '.join(PRECISIONS)}", "precision")
        if self.subset is not None and self.subset <= 0:
            raise ValueError("must be > 0", "subset")
        for key, value in self.audio_options.items():
            if not isinstance(value, (bool, int, float, str)):
                kind = type(value).__name__
                raise ValueError(f"{key}: expected a scalar, got {kind}", "audio_options")  # noqa: TRY004

    @property
    def name(self) -> str:
        return self.run_name or f"{self.audio_arch}-{Path(self.text_model.rstrip('/')).name}"

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir).expanduser().resolve() / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def finetune_config_from_dict(data: dict, source: str = "<dict>") -> FinetuneConfig:
    """Validated config; ``audio_options`` (a mapping of scalars) is checked here, the rest by type."""
    data = dict(data)
    options = data.pop("audio_options", None) or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{source}: audio_options: expected a mapping, got {type(options).__name__}")
    cfg = build_dataclass(FinetuneConfig, data, source)
    cfg = dataclasses.replace(cfg, audio_options=dict(options))
    try:
        cfg.validate()
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc.args[1]}: {exc.args[0]}") from None
    return cfg


def load_finetune_config(path: str | os.PathLike, overrides: dict | None = None) -> FinetuneConfig:
    """``configs/finetune.yaml`` (keys = FinetuneConfig fields) with ``overrides`` applied on top."""
    data = read_yaml(path)
    data.update(overrides or {})
    return resolve_finetune_paths(finetune_config_from_dict(data, str(path)))


def resolve_finetune_paths(cfg: FinetuneConfig) -> FinetuneConfig:
    """Local paths absolute against the caller's cwd, on the driver (Ray Train workers run elsewhere;
    see e2i.paths). ``text_model`` is a hub id unless it names an existing local directory."""
    text_model = resolve_path(cfg.text_model) if os.path.exists(cfg.text_model) else cfg.text_model
    options = dict(cfg.audio_options)
    if isinstance(options.get("weights"), str):
        options["weights"] = resolve_path(options["weights"])
    return dataclasses.replace(
        cfg, audio_options=options, data_root=resolve_path(cfg.data_root), output_dir=resolve_path(cfg.output_dir),
        init_weights=resolve_path(cfg.init_weights) if cfg.init_weights else None, text_model=text_model,
    )

