"""Fine-tuning data: Clotho splits -> (audio, captions) batches for the Lightning module.

Clotho splits ``development`` (train), ``validation`` (model selection) and ``evaluation`` (test, the
DCASE "development-testing" set) are read with :func:`e2i.corpus.read_corpus`. Training: one
sample per (clip, caption) pair, audio decoded, resampled to 32 kHz mono and randomly cropped /
zero-padded to ``--max-audio-seconds``. Validation / evaluation: one sample per clip with all its
captions and a deterministic crop (the first ``--max-audio-seconds``). Captions are tokenised with the
text model's tokenizer (``--max-text-tokens``) in :class:`Collate`.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import numpy as np
import soundfile as sf
import torch

from e2i.corpus import read_corpus
from e2i.encoders.base import InputError, load_audio
from e2i.encoders.passt import SAMPLE_RATE
from e2i.errors import CorpusError
from e2i.finetune.config import FinetuneConfig

log = logging.getLogger("e2i.finetune.data")


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


class ClothoDataModule(pl.LightningDataModule):
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
