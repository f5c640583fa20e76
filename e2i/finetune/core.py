"""End-to-end fine-tuning of PaSST + RoBERTa on Clotho (Lightning on Ray Train): ``e2i finetune``.

    e2i finetune --data-root ~/data/CLOTHO_v2.1 --num-workers 4 --use-gpu        # 4 GPUs, DDP
    e2i finetune --config configs/finetune.yaml --resume                            # continue last.ckpt

Mirrors the DCASE 2024 Task 8 language-based audio retrieval baseline (Primus et al., CP-JKU):

* audio: PaSST-S (``passt_s_swa_p16_128_ap476``, AudioSet-pretrained) on 32 kHz mono log-mel
  spectrograms. PaSST's positional embeddings cover 10 s, so a clip of ``--max-audio-seconds`` is cut
  into 10 s windows (the last one aligned to the clip's end, so windows overlap instead of padding) whose
  embeddings (mean of the CLS and distillation tokens, 768-d) are averaged;
* text: RoBERTa (``roberta-large``, as in the baseline) -> the first token's (``<s>``) last hidden state
  (``--text-pooling mean`` averages the token states instead);
* two projection heads (``Linear-ReLU-Linear``, ``--hidden-dim`` -> ``--projection-dim``) and a learnable
  temperature (init 0.05); embeddings are L2-normalised;
* loss: multi-positive symmetric InfoNCE (``e2i.model.losses.LOSSES["softmax_infonce"]``): pairs whose audio
  is the same item are positives; with several workers the embeddings are all-gathered, so the negatives
  are the global batch (``--batch-size`` per worker x workers);
* AdamW (``--max-lr``, ``--weight-decay``), linear warmup for ``--warmup-epochs`` then cosine decay to 0,
  per optimizer step; gradient clipping ``--grad-clip-norm``; ``--accumulate-grad-batches``.

Data: Clotho splits ``development`` (train), ``validation`` (model selection) and ``evaluation`` (test,
the DCASE "development-testing" set), read with :func:`e2i.corpus.sources.read_corpus`. One training sample per
(clip, caption) pair; audio decoded, resampled to 32 kHz mono and randomly cropped/zero-padded to
``--max-audio-seconds``; validation/evaluation use one sample per clip with all its captions and a
deterministic crop (the first ``--max-audio-seconds``). Captions are tokenised with the text model's
tokenizer (``--max-text-tokens``).

Outputs in ``<output-dir>/<run-name>/``::

    checkpoints/last.ckpt            full Lightning state (optimizer, scheduler, loops): --resume uses it
    checkpoints/best-val-loss.ckpt   weights at the lowest val/loss
    checkpoints/best-val-map.ckpt    weights at the highest val/mAP@10 (exported and evaluated)
    best_model.safetensors           the best-val-map weights, no pickle (reload: load_finetuned(run_dir))
    text_model/                      the tokenizer + text model config (reload needs no hub access)
    finetune_config.json             the resolved FinetuneConfig
    evaluation_metrics.json          metrics on the evaluation split (same as ``e2i evaluate``)
    tensorboard/                     losses, val metrics, learning-rate curve (LearningRateMonitor)

Lightning ``.ckpt`` files are pickles: e2i only loads them from its own run directory and with
``torch.load(weights_only=True)`` (plain tensors and containers, no code). Weights you bring yourself
(``--init-weights``) must be safetensors (or a ``.pt`` state_dict, read with ``weights_only=True``).
Precision: ``bf16-mixed`` on GPUs with bf16, ``16-mixed`` on older GPUs, ``32-true`` on CPU (logged).

Ray: the driver (:func:`fit`) builds a ``TorchTrainer`` whose workers run :func:`train_worker`
(``RayDDPStrategy`` + ``RayLightningEnvironment`` + ``prepare_trainer``; Ray Train V2, the default in
Ray 2.60). Rank 0 writes checkpoints and results into the run directory, so on a multi-node cluster
``--output-dir`` must be storage every node sees (NFS), as Ray's own ``storage_path`` must be.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from e2i.config import ConfigError, build_dataclass, read_yaml
from e2i.errors import CheckpointError, CorpusError

log = logging.getLogger("e2i.finetune.core")

SAMPLE_RATE = 32000  # PaSST's input rate
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed")
TEXT_POOLING = ("cls", "mean")
CKPT_LOSS, CKPT_MAP, CKPT_LAST = "best-val-loss", "best-val-map", "last"
EXPORT_FILE, CONFIG_FILE, METRICS_FILE = (
    "best_model.safetensors",
    "finetune_config.json",
    "evaluation_metrics.json",
)


# --------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class FinetuneConfig:
    """Every knob of ``e2i finetune`` (flags use dashes: ``--max-lr``; YAML keys use underscores)."""

    data_root: str = "data/CLOTHO_v2.1"  # Clotho root (see e2i.corpus.sources: CSVs + audio dirs)
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
    from e2i.paths import resolve_path

    text_model = resolve_path(cfg.text_model) if os.path.exists(cfg.text_model) else cfg.text_model
    options = dict(cfg.audio_options)
    if isinstance(options.get("weights"), str):
        options["weights"] = resolve_path(options["weights"])
    return dataclasses.replace(
        cfg, audio_options=options, data_root=resolve_path(cfg.data_root), output_dir=resolve_path(cfg.output_dir),
        init_weights=resolve_path(cfg.init_weights) if cfg.init_weights else None, text_model=text_model,
    )


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str | None]:
    """(precision Lightning should use, note for the log or None) for ``device``."""
    requested = "32-true" if requested == "32" else requested
    if requested == "32-true":
        return requested, None
    if device.type != "cuda":
        return "32-true", f"precision {requested} needs a GPU here; running 32-true on {device.type}"
    if requested == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        return "16-mixed", "this GPU has no bf16; running 16-mixed (fp16 autocast + loss scaling)"
    return requested, None


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear 0 -> 1 over ``warmup_steps``, then cosine 1 -> 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------------------------------------
# Data


def crop_or_pad(wave: np.ndarray, length: int, *, random: bool) -> np.ndarray:
    """(T,) -> (length,): a random (training) or the first (evaluation) window; zero-padded at the end."""
    if len(wave) > length:
        start = int(torch.randint(0, len(wave) - length + 1, ()).item()) if random else 0
        return wave[start : start + length]
    return np.pad(wave, (0, length - len(wave)))


class ClipDataset(torch.utils.data.Dataset):
    """Samples ``{"audio": (S,) float32, "captions": list[str], "item": int}``.

    ``pairs=True``: one sample per (clip, caption) (training); otherwise one per clip with all its
    captions (validation/evaluation). ``item`` is the clip's row in ``items``.
    """

    def __init__(self, items: list, *, max_seconds: float, train: bool, pairs: bool) -> None:
        self.items, self.length, self.train = items, round(max_seconds * SAMPLE_RATE), train
        self.index = (
            [(i, k) for i, it in enumerate(items) for k in range(len(it.captions))]
            if pairs
            else [(i, None) for i in range(len(items))]
        )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: int) -> dict:
        from e2i.encoders.base import InputError, load_audio

        i, k = self.index[idx]
        item = self.items[i]
        try:
            wave = load_audio(item.path, sample_rate=SAMPLE_RATE)  # (T,) mono float32 at 32 kHz
        except InputError as exc:
            raise CorpusError(f"{item.path}: {exc}") from None
        captions = item.captions if k is None else [item.captions[k]]
        return {"audio": crop_or_pad(wave, self.length, random=self.train), "captions": captions, "item": i}


class Collate:
    """Stack audio (B, S); tokenise all captions (M = sum of captions); ``cap_item`` (M,) = batch row."""

    def __init__(self, tokenizer, max_tokens: int) -> None:
        self.tokenizer, self.max_tokens = tokenizer, max_tokens

    def __call__(self, samples: list[dict]) -> dict:
        texts = [c for s in samples for c in s["captions"]]
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        return {
            "audio": torch.from_numpy(np.stack([s["audio"] for s in samples])),  # (B, S)
            "input_ids": tokens["input_ids"],  # (M, L)
            "attention_mask": tokens["attention_mask"],  # (M, L)
            "cap_item": torch.tensor([b for b, s in enumerate(samples) for _ in s["captions"]]),  # (M,)
            "item": torch.tensor([s["item"] for s in samples]),  # (B,) row in the split's items
        }


def read_split(root: str, split: str, subset: int | None = None) -> list:
    """Clotho items of ``split`` (first ``subset``); readable headers only (others are logged and skipped)."""
    import soundfile as sf

    from e2i.corpus.sources import read_corpus

    corpus = read_corpus("clotho", root, split=split)
    items = corpus.items[:subset] if subset else corpus.items
    good = []
    for it in items:
        try:
            sf.info(it.path)
            good.append(it)
        except Exception as exc:  # noqa: BLE001 - any header problem skips the clip
            log.warning(
                "skipping %s: %s", it.path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            )
    if corpus.rejected or len(good) < len(items):
        log.warning(
            "%s/%s: %d rejected rows, %d unreadable clips skipped",
            root,
            split,
            len(corpus.rejected),
            len(items) - len(good),
        )
    if not good:
        raise CorpusError(f"{root}: split {split!r} has no usable clips")
    return good


def make_loader(
    items: list,
    cfg: FinetuneConfig,
    tokenizer,
    *,
    train: bool,
    batch_size: int | None = None,
    shuffle: bool | None = None,
) -> torch.utils.data.DataLoader:
    dataset = ClipDataset(items, max_seconds=cfg.max_audio_seconds, train=train, pairs=train)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size or cfg.batch_size,
        shuffle=train if shuffle is None else shuffle,
        num_workers=cfg.loader_workers,
        collate_fn=Collate(tokenizer, cfg.max_text_tokens),
        drop_last=False,
        persistent_workers=cfg.loader_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


# --------------------------------------------------------------------------------------------------
# Encoders


# Training-only PaSST options and their defaults (DCASE baseline: structured patchout 15 time / 2 frequency
# patch rows, no SpecAugment masks). Everything else goes to e2i.encoders' "passt" (arch, pretrained,
# weights, embed_dim, depth, num_heads, segment_seconds), which builds the network.
TRAIN_AUDIO_OPTIONS = {"s_patchout_t": 15, "s_patchout_f": 2, "freqm": 0, "timem": 0}
NET_AUDIO_OPTIONS = ("pretrained", "weights", "embed_dim", "depth", "num_heads", "segment_seconds")


class AudioTower(nn.Module):
    """Waveform (B, S) at 32 kHz -> (B, E) PaSST embedding (mean of the CLS and distillation tokens).

    PaSST sees at most one window (10 s for the default arch). A longer input is cut into
    W = ceil(S / window) windows, the last aligned to the input's end (windows overlap instead of
    padding with silence); the window embeddings are averaged.
    """

    def __init__(self, arch: str, options: dict, *, load_pretrained: bool = True) -> None:
        super().__init__()
        import contextlib
        import io

        from hear21passt.models import passt as passt_mod
        from hear21passt.models.preprocess import AugmentMelSTFT

        from e2i.encoders import get_encoder
        from e2i.encoders.passt import HOP, _load_state, _quiet_passt_warnings

        unknown = sorted(set(options) - set(TRAIN_AUDIO_OPTIONS) - set(NET_AUDIO_OPTIONS))
        if unknown:
            valid = ", ".join(sorted({*TRAIN_AUDIO_OPTIONS, *NET_AUDIO_OPTIONS}))
            raise ConfigError(f"audio_options: unknown key {unknown[0]!r} (valid: {valid})")
        train = {k: options.get(k, v) for k, v in TRAIN_AUDIO_OPTIONS.items()}
        net_options = {k: options[k] for k in NET_AUDIO_OPTIONS if k in options}
        if not load_pretrained:  # weights come from a checkpoint right after: skip downloads/reads
            net_options.update(pretrained=False, weights=None)
        spec = get_encoder("passt", arch=arch, **net_options)  # validates the options
        _quiet_passt_warnings()
        with contextlib.redirect_stdout(io.StringIO()):  # get_model prints the whole network
            self.net = spec._build_net(passt_mod)
        if spec.opts.weights:
            _load_state(self.net, spec.opts.weights)
        passt_mod.first_RUN = False  # forward() prints shapes on its first call otherwise
        self.net.s_patchout_t, self.net.s_patchout_f = int(train["s_patchout_t"]), int(train["s_patchout_f"])
        self.mel = AugmentMelSTFT(
            n_mels=128,
            sr=SAMPLE_RATE,
            win_length=800,
            hopsize=HOP,
            n_fft=1024,
            freqm=int(train["freqm"]),
            timem=int(train["timem"]),
            fmin=0.0,
            fmax=SAMPLE_RATE // 2 - 1000,
            fmin_aug_range=10,
            fmax_aug_range=2000,
        )
        # The AudioSet classifier heads are unused: freeze them (DDP wants a grad for every trainable param).
        for head in (self.net.head, self.net.head_dist):
            if head is not None:
                head.requires_grad_(False)
        self.window = int((spec.opts.segment_seconds or spec.opts.window_seconds) * SAMPLE_RATE)
        self.dim = self.net.embed_dim

    def windows(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, W, window) with W = ceil(S / window); the last window ends at S."""
        S = wave.shape[1]
        if S <= self.window:
            return wave[:, None]  # PaSST crops its time position embedding to shorter inputs
        n = math.ceil(S / self.window)
        starts = torch.linspace(0, S - self.window, n).round().long().tolist()
        return torch.stack([wave[:, s : s + self.window] for s in starts], dim=1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        w = self.windows(wave.float())  # (B, W, T)
        B, W, _ = w.shape
        with torch.autocast(device_type=wave.device.type, enabled=False):  # stft/log-mel in fp32
            mel = self.mel(w.reshape(B * W, -1))  # (B*W, 128, frames)
        _, features = self.net(mel[:, None])  # (B*W, E)
        return features.reshape(B, W, -1).mean(dim=1)  # (B, E)


def load_text_model(name: str, *, load_pretrained: bool = True) -> tuple[nn.Module, Any]:
    """(HF encoder without pooler, tokenizer) from a hub id or a local dir (HF_TOKEN from the environment)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    if load_pretrained:
        model = AutoModel.from_pretrained(name)
    else:
        model = AutoModel.from_config(AutoConfig.from_pretrained(name))
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # unused: we take the first token's hidden state
    return model, tokenizer


# --------------------------------------------------------------------------------------------------
# Lightning module


def _lightning():
    import lightning.pytorch as pl

    return pl


class RetrievalModule(_lightning().LightningModule):
    """PaSST + text encoder + projection heads + temperature, trained with multi-positive InfoNCE.

    ``config`` is ``FinetuneConfig.to_dict()`` (stored as hyper-parameters: plain types only, so the
    checkpoint loads with ``weights_only=True``). ``load_pretrained=False`` builds the same shapes with
    random weights (used when weights come from a checkpoint right after).
    """

    def __init__(self, config: dict, load_pretrained: bool = True) -> None:
        super().__init__()
        from e2i.model.heads import MLPHead

        self.save_hyperparameters({"config": config})
        self.cfg = finetune_config_from_dict(config)
        self.audio = AudioTower(self.cfg.audio_arch, self.cfg.audio_options, load_pretrained=load_pretrained)
        self.text, self.tokenizer = load_text_model(self.cfg.text_model, load_pretrained=load_pretrained)
        layers = 1 if self.cfg.hidden_dim else 0
        self.audio_proj = MLPHead(
            self.audio.dim,
            output_dim=self.cfg.projection_dim,
            hidden_dim=self.cfg.hidden_dim,
            num_layers=layers,
        )
        self.text_proj = MLPHead(
            self.text.config.hidden_size,
            output_dim=self.cfg.projection_dim,
            hidden_dim=self.cfg.hidden_dim,
            num_layers=layers,
        )
        # log inverse temperature: logits = exp(log_scale) * cos; init 1 / tau
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / self.cfg.init_temperature)))
        self.loss_fn: nn.Module | None = None
        self._val: list[tuple[np.ndarray, ...]] = []
        if self.cfg.init_weights:
            self.load_weights(self.cfg.init_weights)

    # -- encoding
    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)  # CLIP's clamp keeps training stable

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.audio_proj(self.audio(audio)), dim=-1)  # (B, D)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (M, L, H)
        if self.cfg.text_pooling == "cls":
            pooled = hidden[:, 0]  # (M, H): first token <s>
        else:
            mask = attention_mask[..., None].to(hidden.dtype)  # (M, L, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)  # (M, H): mean of real tokens
        return nn.functional.normalize(self.text_proj(pooled), dim=-1)  # (M, D)

    def embed_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_audio(batch["audio"]), self.encode_text(
            batch["input_ids"], batch["attention_mask"]
        )

    def batch_loss(self, batch: dict, item_z: torch.Tensor, cap_z: torch.Tensor) -> torch.Tensor:
        """Loss over caption rows: row m pairs caption m with its clip; equal item ids are positives."""
        rows = batch["cap_item"]  # (M,) batch row of each caption's clip
        loss_fn = self.loss_fn or self._make_loss(0, 1)
        return loss_fn(item_z[rows].float(), cap_z.float(), batch["item"][rows], self.logit_scale())

    def _make_loss(self, rank: int, world_size: int) -> nn.Module:
        from e2i.config import LossConfig
        from e2i.model.losses import build_loss

        return build_loss(
            LossConfig(type="softmax_infonce"), dim=self.cfg.projection_dim, rank=rank, world_size=world_size
        )

    def load_weights(self, path: str | os.PathLike) -> None:
        from e2i.train.checkpoint import load_weights

        state = load_weights(path)  # safetensors, or a .pt state_dict with weights_only=True
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: weights do not fit this model ({len(missing)} missing, "
                f"{len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]})"
            )

    # -- Lightning hooks
    def setup(self, stage: str) -> None:
        self.loss_fn = self._make_loss(self.global_rank, self.trainer.world_size)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.batch_loss(batch, *self.embed_batch(batch))
        self.log(
            "train/loss",
            loss,
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            sync_dist=True,
            batch_size=len(batch["item"]),
        )
        self.log("train/temperature", 1.0 / self.logit_scale().detach(), on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        item_z, cap_z = self.embed_batch(batch)
        loss = self.batch_loss(batch, item_z, cap_z)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(batch["item"]))
        items = batch["item"]
        self._val.append(
            (
                items.cpu().numpy(),
                item_z.float().cpu().numpy(),
                items[batch["cap_item"]].cpu().numpy(),
                cap_z.float().cpu().numpy(),
            )
        )

    def on_validation_epoch_end(self) -> None:
        parts, self._val = self._val, []
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, parts)  # every rank gets every rank's rows
            parts = [p for rank_parts in gathered for p in rank_parts]
        if not parts or self.trainer.sanity_checking:
            return
        metrics = split_metrics(parts, ci=False)
        for key in (
            "text_to_item/mAP@10",
            "text_to_item/recall@1",
            "text_to_item/recall@5",
            "text_to_item/recall@10",
            "item_to_text/mAP@10",
            "item_to_text/recall@1",
        ):
            name = "val/" + key.replace("text_to_item/", "")  # val/mAP@10 = text->audio (the DCASE metric)
            self.log(name, float(metrics[key]))  # same value on every rank: no sync needed

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.cfg.max_lr, weight_decay=self.cfg.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))  # optimizer steps of the whole run
        warmup = round(self.cfg.warmup_epochs * total / self.cfg.epochs)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "lr"}}


def split_metrics(parts: list[tuple[np.ndarray, ...]], *, ci: bool) -> dict:
    """Retrieval metrics from per-batch (item ids, item_z, caption item ids, cap_z); duplicate clips
    (DistributedSampler padding) are counted once and so are their captions."""
    from e2i.evaluate.metrics import retrieval_metrics

    ids = np.concatenate([p[0] for p in parts])
    unique, first = np.unique(ids, return_index=True)  # clip ids, sorted, first occurrence
    item_emb = np.concatenate([p[1] for p in parts])[first]  # (N, D)
    rows = {int(i): r for r, i in enumerate(unique)}
    seen: set[int] = set()
    cap_item, cap_emb = [], []
    for p in parts:  # keep the captions of each clip's first occurrence only
        for item in np.unique(p[0]):
            if int(item) in seen:
                continue
            seen.add(int(item))
            mask = p[2] == item
            cap_item.extend([rows[int(item)]] * int(mask.sum()))
            cap_emb.append(p[3][mask])
    return retrieval_metrics(item_emb, np.concatenate(cap_emb), np.array(cap_item, dtype=np.int64), ci=ci)


@torch.no_grad()
def evaluate_module(module: RetrievalModule, items: list, cfg: FinetuneConfig, *, ci: bool = True) -> dict:
    """Embed every clip (deterministic crop) and caption of ``items``: the metrics of ``e2i evaluate``."""
    module.eval()
    loader = make_loader(items, cfg, module.tokenizer, train=False, shuffle=False)
    use_bf16 = (
        module.device.type == "cuda" and cfg.precision == "bf16-mixed" and torch.cuda.is_bf16_supported()
    )
    parts = []
    for batch in loader:
        batch = {k: v.to(module.device) for k, v in batch.items()}
        with torch.autocast(module.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            item_z, cap_z = module.embed_batch(batch)
        items_ = batch["item"]
        parts.append(
            (
                items_.cpu().numpy(),
                item_z.float().cpu().numpy(),
                items_[batch["cap_item"]].cpu().numpy(),
                cap_z.float().cpu().numpy(),
            )
        )
    return split_metrics(parts, ci=ci)


# --------------------------------------------------------------------------------------------------
# Export / reload


def export_model(module: RetrievalModule, run_dir: Path) -> Path:
    """best_model.safetensors + finetune_config.json + text_model/ (tokenizer and config) in ``run_dir``."""
    from e2i.train.checkpoint import save_weights

    save_weights(module.state_dict(), run_dir / EXPORT_FILE)
    module.tokenizer.save_pretrained(run_dir / "text_model")
    module.text.config.save_pretrained(run_dir / "text_model")
    (run_dir / CONFIG_FILE).write_text(json.dumps(module.cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
    return run_dir / EXPORT_FILE


def load_finetuned(run_dir: str | os.PathLike, device: str = "cpu") -> RetrievalModule:
    """Rebuild a module from an exported run dir: no pickle, no hub access (text config is local)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / EXPORT_FILE).is_file():
        raise CheckpointError(f"{run_dir}: no {CONFIG_FILE} + {EXPORT_FILE} (was the run finished?)")
    config = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    config.update(text_model=str(run_dir / "text_model"), init_weights=None)
    module = RetrievalModule(config, load_pretrained=False)
    module.load_weights(run_dir / EXPORT_FILE)
    return module.to(device).eval()


def load_own_checkpoint(path: Path, run_dir: Path) -> dict:
    """A Lightning checkpoint of this run (none outside ``run_dir``), loaded with weights_only=True."""
    path, run_dir = Path(path).resolve(), Path(run_dir).resolve()
    if run_dir not in path.parents:
        raise CheckpointError(
            f"{path}: not inside the run directory {run_dir}; e2i only loads its own .ckpt files"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable or refused by weights_only
        raise CheckpointError(f"{path}: cannot load checkpoint ({str(exc).splitlines()[0]})") from None


class ClothoDataModule(_lightning().LightningDataModule):
    """Train (clip, caption) pairs and validation clips of a Clotho root; Lightning adds the
    DistributedSampler under DDP (each worker sees 1/world_size of the data)."""

    def __init__(self, cfg: FinetuneConfig, tokenizer) -> None:
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.train_items: list = []
        self.val_items: list = []

    def setup(self, stage: str) -> None:
        if not self.train_items:
            self.train_items = read_split(self.cfg.data_root, self.cfg.train_split, self.cfg.subset)
            self.val_items = read_split(self.cfg.data_root, self.cfg.val_split, self.cfg.subset)

    def train_dataloader(self):
        return make_loader(self.train_items, self.cfg, self.tokenizer, train=True)

    def val_dataloader(self):
        return make_loader(self.val_items, self.cfg, self.tokenizer, train=False)


# --------------------------------------------------------------------------------------------------
# Ray Train glue (runs in every worker)


def _limit(value: float) -> float | int:
    return int(value) if value > 1 else float(value)  # Lightning: int = batches, float = fraction


def worker_device() -> torch.device:
    """This worker's torch device: the GPU Ray assigned when torch sees CUDA, else the CPU. Ray may hold
    a GPU for a worker whose torch has no CUDA (a CPU build on a GPU node, logical GPUs of a test
    cluster); ``ray.train.torch.get_device()`` would still answer ``cuda:0`` there."""
    import ray.train.torch

    return ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _ddp_strategy(ray_ddp_strategy: type, device: torch.device):
    """``RayDDPStrategy`` on ``device`` (its own ``root_device`` is ``ray.train.torch.get_device()``,
    ``cuda:0`` even where torch has no CUDA, and Lightning's CPU accelerator refuses that)."""

    class Strategy(ray_ddp_strategy):
        @property
        def root_device(self) -> torch.device:
            return device

    return Strategy(find_unused_parameters=False)


def torch_config():
    """Ray's ``TorchConfig`` whose process-group backend is checked on the placed workers: TorchTrainer
    picks nccl whenever GPUs are requested, which fails on CPU torch ("ProcessGroupNCCL is only supported
    with GPUs"); here nccl is kept only when every worker's torch sees CUDA, else gloo is used. (Probing
    from the driver would need a GPU task of its own, which on an autoscaling cluster launches a node
    just for the probe.) Subclassing the backend is how Ray's own TorchftConfig customises it."""
    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _TorchBackend

    class _Backend(_TorchBackend):
        def on_start(self, worker_group, backend_config):
            if backend_config.backend == "nccl" and not all(worker_group.execute(_cuda_available)):
                backend_config = dataclasses.replace(backend_config, backend="gloo")
            super().on_start(worker_group, backend_config)

    class _Config(TorchConfig):
        @property
        def backend_cls(self):
            return _Backend

    return _Config()


class RayMetricsReport(_lightning().Callback):
    """Reports the epoch's metrics to Ray Train (all workers; Ray keeps rank 0's). Checkpoints stay in the
    run dir (ModelCheckpoint), so nothing heavy is copied to Ray's storage every epoch."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        import ray.train

        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        metrics.update(epoch=trainer.current_epoch, step=trainer.global_step)
        ray.train.report(metrics)


def _callbacks(cfg: FinetuneConfig, ckpt_dir: Path) -> list:
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    # last.ckpt holds the full state (optimizer, scheduler, loops) for --resume; the best ones hold weights.
    last = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True, enable_version_counter=False)
    by_loss = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename=CKPT_LOSS,
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        save_weights_only=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    by_map = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename=CKPT_MAP,
        monitor="val/mAP@10",
        mode="max",
        save_top_k=1,
        save_weights_only=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    return [by_map, by_loss, last, LearningRateMonitor(logging_interval="step"), RayMetricsReport()]


def _loggers(cfg: FinetuneConfig, run_dir: Path) -> list:
    from lightning.pytorch.loggers import TensorBoardLogger

    loggers = [TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")]
    if cfg.use_wandb:
        from lightning.pytorch.loggers import WandbLogger

        if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
            os.environ["WANDB_MODE"] = "offline"  # no key: log locally, `wandb sync` later
        loggers.append(
            WandbLogger(
                project=cfg.wandb_project,
                entity=cfg.wandb_entity,
                name=cfg.name,
                save_dir=str(run_dir),
                config=cfg.to_dict(),
            )
        )
    return loggers


def train_worker(config: dict) -> None:
    """``train_loop_per_worker``: build the module, fit with RayDDPStrategy, then (rank 0) export the
    best-mAP weights and evaluate them on the test split."""
    import ray.train
    from lightning.pytorch import Trainer, seed_everything
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer

    cfg = finetune_config_from_dict(config)
    run_dir = cfg.run_dir
    ckpt_dir = run_dir / "checkpoints"
    seed_everything(cfg.seed, workers=True)
    device = worker_device()
    precision, note = resolve_precision(cfg.precision, device)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    if rank == 0:
        gpus = ",".join(str(g) for g in ray.get_gpu_ids()) or "none"
        group = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
        print(f"e2i finetune: {context.get_world_size()} worker(s) on {device.type} "
              f"(Ray GPU ids of rank 0: {gpus}; process group: {group})", flush=True)
        if note:
            print(f"e2i finetune: {note}", flush=True)
    module = RetrievalModule(cfg.to_dict())
    data = ClothoDataModule(cfg, module.tokenizer)
    callbacks = _callbacks(cfg, ckpt_dir)
    trainer = Trainer(
        max_epochs=cfg.epochs,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices="auto",
        strategy=_ddp_strategy(RayDDPStrategy, device),
        plugins=[RayLightningEnvironment()],
        precision=precision,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.grad_clip_norm or None,
        callbacks=callbacks,
        logger=_loggers(cfg, run_dir),
        limit_train_batches=_limit(cfg.limit_train_batches),
        limit_val_batches=_limit(cfg.limit_val_batches),
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_progress_bar=cfg.progress,
        default_root_dir=str(run_dir),
    )
    trainer = prepare_trainer(trainer)
    resume = None
    if cfg.resume:
        resume = str(ckpt_dir / f"{CKPT_LAST}.ckpt")
        load_own_checkpoint(
            Path(resume), run_dir
        )  # refuses foreign paths / pickled code before Lightning loads it
    trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    progress = {"epoch": trainer.current_epoch, "step": trainer.global_step}
    if trainer.global_rank == 0:
        by_map, last = callbacks[0], callbacks[2]
        _export_and_evaluate(module, cfg, run_dir, by_map.best_model_path or last.last_model_path, progress)
    ray.train.report(progress)  # a barrier: every worker reports once more, after rank 0 has evaluated


def _export_and_evaluate(
    module: RetrievalModule, cfg: FinetuneConfig, run_dir: Path, best: str, progress: dict
) -> None:
    state = load_own_checkpoint(Path(best), run_dir)["state_dict"]
    module.load_state_dict(state)
    export_model(module, run_dir)
    items = read_split(cfg.data_root, cfg.test_split, cfg.subset)
    metrics = evaluate_module(module, items, cfg, ci=True)
    report = {
        "split": cfg.test_split,
        "checkpoint": str(Path(best).relative_to(run_dir)),
        "num_items": len(items),
        "num_captions": int(sum(len(it.captions) for it in items)),
        "trained": progress,
        "metrics": metrics,
    }  # trained: epochs and optimizer steps done in total
    (run_dir / METRICS_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# Driver


def _check_run_dir(cfg: FinetuneConfig) -> None:
    last = cfg.run_dir / "checkpoints" / f"{CKPT_LAST}.ckpt"
    if cfg.resume and not last.is_file():
        raise CheckpointError(f"{last}: nothing to resume (no last.ckpt in this run directory)")
    if not cfg.resume and last.exists():
        raise ConfigError(
            f"{cfg.run_dir}: run exists; pass --resume to continue it or choose another --run-name"
        )
    if cfg.init_weights and not Path(cfg.init_weights).is_file():
        raise CheckpointError(f"{cfg.init_weights}: no such weights file")


def fit(cfg: FinetuneConfig) -> dict:
    """Run the fine-tuning on Ray Train (connects to / starts Ray) and return the evaluation report."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    _check_run_dir(cfg)
    for split in (cfg.train_split, cfg.val_split, cfg.test_split):  # fail fast, before any worker starts
        from e2i.corpus.sources import read_corpus

        if not read_corpus("clotho", cfg.data_root, split=split).items:
            raise CorpusError(f"{cfg.data_root}: split {split!r} has no clips")
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS (e.g. inside `ray job submit`) or a local instance
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=cfg.to_dict(),
        torch_config=torch_config(),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources,
            # GPU runs: all workers on one multi-GPU node (NVLink/PCIe all-reduce), e.g. cluster.yaml's gpu_4x
            placement_strategy="STRICT_PACK" if cfg.use_gpu else "PACK",
        ),
        run_config=RunConfig(name="ray", storage_path=str(cfg.run_dir)),
    )
    stale = cfg.run_dir / METRICS_FILE
    stale.unlink(missing_ok=True)  # a resumed run rewrites it
    trainer.fit()  # raises ray.train.TrainingFailedError (with the worker's traceback) on failure
    return json.loads(stale.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# CLI

_FLAG_HELP = {
    "data_root": "Clotho root (clotho_captions_<split>.csv + audio dirs; `e2i download clotho` makes one)",
    "train_split": "split to train on",
    "val_split": "split for model selection (val/loss, val/mAP@10)",
    "test_split": "split evaluated after training",
    "subset": "use the first N clips of every split",
    "output_dir": "runs go to OUTPUT_DIR/RUN_NAME/",
    "run_name": "run directory name (default: <arch>-<text model>)",
    "audio_arch": "PaSST architecture (hear21passt get_model arch)",
    "text_model": "HF hub id or local dir of the text encoder (baseline: roberta-large)",
    "text_pooling": "caption embedding: cls = first token (baseline) | mean = mean over tokens",
    "init_weights": "start from these module weights (.safetensors; .pt read with weights_only=True)",
    "projection_dim": "shared embedding size",
    "hidden_dim": "projection MLP width (0 = one Linear)",
    "init_temperature": "initial softmax temperature (learnable)",
    "max_text_tokens": "caption token limit",
    "max_audio_seconds": "audio crop/pad length (random crop in training, first seconds in evaluation)",
    "batch_size": "clip-caption pairs per worker and step",
    "accumulate_grad_batches": "gradient accumulation",
    "epochs": "training epochs",
    "warmup_epochs": "linear warmup length, then cosine decay to 0",
    "max_lr": "peak AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "grad_clip_norm": "gradient norm clip (0 = off)",
    "precision": "32-true | bf16-mixed | 16-mixed (falls back to what the device supports)",
    "num_workers": "Ray Train workers (data parallel; one per GPU)",
    "use_gpu": "one GPU per worker",
    "cpus_per_worker": "CPUs reserved per worker",
    "loader_workers": "DataLoader processes per worker",
    "limit_train_batches": "fraction (<= 1) or number (> 1) of train batches per epoch",
    "limit_val_batches": "fraction (<= 1) or number (> 1) of validation batches",
    "use_wandb": "log to Weights & Biases (WANDB_API_KEY from the environment; offline without it)",
    "wandb_project": "W&B project",
    "wandb_entity": "W&B entity (team/user)",
    "seed": "random seed",
    "resume": "continue OUTPUT_DIR/RUN_NAME/checkpoints/last.ckpt",
    "progress": "show the progress bar",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per FinetuneConfig field (dashes); defaults shown but applied in :func:`config_from_args`
    so that ``--config FILE`` values sit between the built-in defaults and explicit flags."""
    parser.add_argument(
        "--config", default=None, help="YAML with FinetuneConfig keys (e.g. configs/finetune.yaml)"
    )
    parser.add_argument(
        "--audio-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="PaSST option, repeatable: pretrained=false, weights=FILE (.safetensors), embed_dim, "
        "depth, num_heads (tiny test models), segment_seconds, s_patchout_t (15), "
        "s_patchout_f (2), freqm (0), timem (0)",
    )
    defaults = FinetuneConfig()
    for f in fields(FinetuneConfig):
        if f.name == "audio_options":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        text = f"{_FLAG_HELP[f.name]} (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = {"limit_train_batches": float, "limit_val_batches": float}.get(f.name)
            kind = kind or (int if f.name in ("subset",) else type(default) if default is not None else str)
            parser.add_argument(flag, type=kind, default=None, help=text)


def _parse_option(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--audio-option {text!r}: expected KEY=VALUE")
    return key.strip(), yaml.safe_load(raw)


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    data: dict = read_yaml(args.config) if args.config else {}
    for f in fields(FinetuneConfig):
        value = getattr(args, f.name, None)
        if value is not None and f.name != "audio_options":
            data[f.name] = value
    options = dict(data.get("audio_options") or {})
    options.update(_parse_option(o) for o in args.audio_option)
    data["audio_options"] = options
    return resolve_finetune_paths(finetune_config_from_dict(data, args.config or "<command line>"))


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    report = fit(cfg)
    m = report["metrics"]
    print(
        f"e2i finetune: {cfg.name}: {report['split']} ({report['num_items']} clips, {report['num_captions']} "
        f"captions): text->audio mAP@10 {m['text_to_item/mAP@10']:.3f}, "
        f"R@1 {m['text_to_item/recall@1']:.3f}, "
        f"R@10 {m['text_to_item/recall@10']:.3f} -> {cfg.run_dir / METRICS_FILE}"
    )
    return 0
