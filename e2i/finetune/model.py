"""The fine-tuned model: PaSST audio tower + HF text tower + projection heads, as a LightningModule.

Mirrors the DCASE 2024 Task 8 language-based audio retrieval baseline (Primus et al., CP-JKU):

* audio: PaSST-S (``passt_s_swa_p16_128_ap476``, AudioSet-pretrained) on 32 kHz mono log-mel
  spectrograms (:func:`e2i.encoders.passt.build_passt`, the encoder's own front-end). PaSST's positional
  embeddings cover 10 s, so a clip of ``--max-audio-seconds`` is cut into 10 s windows (the last one
  aligned to the clip's end, so windows overlap instead of padding) whose embeddings (mean of the CLS
  and distillation tokens, 768-d) are averaged;
* text: RoBERTa (``roberta-large``, as in the baseline) -> the first token's (``<s>``) last hidden state
  (``--text-pooling mean`` averages the token states instead);
* two projection heads (``Linear-ReLU-Linear``, ``--hidden-dim`` -> ``--projection-dim``) and a learnable
  temperature (init 0.05); embeddings are L2-normalised;
* loss: multi-positive symmetric InfoNCE (``e2i.model.losses.LOSSES["softmax_infonce"]``): pairs whose audio
  is the same item are positives; with several workers the embeddings are all-gathered, so the negatives
  are the global batch (``--batch-size`` per worker x workers);
* AdamW (``--max-lr``, ``--weight-decay``), linear warmup for ``--warmup-epochs`` then cosine decay to 0
  (:func:`warmup_cosine`), per optimizer step; gradient clipping and accumulation are the Trainer's.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from e2i.config import ConfigError, LossConfig
from e2i.encoders import get_encoder
from e2i.encoders.passt import SAMPLE_RATE, build_passt
from e2i.errors import CheckpointError
from e2i.finetune.config import finetune_config_from_dict
from e2i.finetune.metrics import Rows, embedding_rows, split_metrics
from e2i.model.heads import MLPHead
from e2i.model.losses import build_loss
from e2i.train.checkpoint import load_weights as read_weights

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
        unknown = sorted(set(options) - set(TRAIN_AUDIO_OPTIONS) - set(NET_AUDIO_OPTIONS))
        if unknown:
            valid = ", ".join(sorted({*TRAIN_AUDIO_OPTIONS, *NET_AUDIO_OPTIONS}))
            raise ConfigError(f"audio_options: unknown key {unknown[0]!r} (valid: {valid})")
        train = {k: options.get(k, v) for k, v in TRAIN_AUDIO_OPTIONS.items()}
        net_options = {k: options[k] for k in NET_AUDIO_OPTIONS if k in options}
        if not load_pretrained:  # weights come from a checkpoint right after: skip downloads/reads
            net_options.update(pretrained=False, weights=None)
        spec = get_encoder("passt", arch=arch, **net_options)  # validates the options
        mel, self.net = build_passt(spec.opts, freqm=int(train["freqm"]), timem=int(train["timem"]))
        self.mel = mel  # (after the net: the submodule order of the checkpoints stays as it was)
        self.net.s_patchout_t, self.net.s_patchout_f = int(train["s_patchout_t"]), int(train["s_patchout_f"])
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


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear 0 -> 1 over ``warmup_steps``, then cosine 1 -> 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class RetrievalModule(pl.LightningModule):
    """PaSST + text encoder + projection heads + temperature, trained with multi-positive InfoNCE.

    ``config`` is ``FinetuneConfig.to_dict()`` (stored as hyper-parameters: plain types only, so the
    checkpoint loads with ``weights_only=True``). ``load_pretrained=False`` builds the same shapes with
    random weights (used when weights come from a checkpoint right after).
    """

    def __init__(self, config: dict, load_pretrained: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg = finetune_config_from_dict(config)
        self.audio = AudioTower(self.cfg.audio_arch, self.cfg.audio_options, load_pretrained=load_pretrained)
        self.text, self.tokenizer = load_text_model(self.cfg.text_model, load_pretrained=load_pretrained)
        # Linear-ReLU-Linear (hidden_dim) or one Linear (hidden_dim 0): (B, E) / (M, H) -> (B | M, D)
        head = functools.partial(
            MLPHead, output_dim=self.cfg.projection_dim, hidden_dim=self.cfg.hidden_dim,
            num_layers=1 if self.cfg.hidden_dim else 0,
        )
        self.audio_proj = head(self.audio.dim)
        self.text_proj = head(self.text.config.hidden_size)
        # log inverse temperature: logits = exp(log_scale) * cos; init 1 / tau
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / self.cfg.init_temperature)))
        self.loss_fn: nn.Module | None = None
        self._val: list[Rows] = []
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
        return build_loss(
            LossConfig(type="softmax_infonce"), dim=self.cfg.projection_dim, rank=rank, world_size=world_size
        )

    def load_weights(self, path: str | os.PathLike) -> None:
        state = read_weights(path)  # safetensors, or a .pt state_dict with weights_only=True
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
        self._val.append(embedding_rows(batch, item_z, cap_z))

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
