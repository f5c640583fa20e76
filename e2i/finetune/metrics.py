"""Retrieval metrics of the fine-tuned model, from the embeddings of whole validation / test splits.

Every batch contributes one :func:`embedding_rows` tuple; :func:`split_metrics` joins them (also
across DDP ranks) and computes the metrics of ``e2i evaluate`` (:func:`e2i.evaluate.metrics.
retrieval_metrics`: text -> audio and audio -> text, recall@K and mAP@10, item-level relevance: a
caption's relevant item is its own clip). When the DCASE 2025 Task 6 relevance annotations are in the
Clotho root (``e2i download clotho`` fetches them: :data:`e2i.corpus.download.DCASE2025_RELEVANCE`) and the
split is ``evaluation``, :func:`relevance_file_for` finds them and :func:`split_metrics` adds the
multi-relevance text -> audio metrics (mAP@16 ...; rows naming clips outside the evaluated items, e.g.
with ``--subset``, are skipped).
"""

from __future__ import annotations

import numpy as np
import torch

import os
from pathlib import Path

from e2i.evaluate.metrics import retrieval_metrics

Rows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def embedding_rows(batch: dict, item_z: torch.Tensor, cap_z: torch.Tensor) -> Rows:
    """(item ids (B,), item_z (B, D), caption item ids (M,), cap_z (M, D)) of one batch, as numpy."""
    items = batch["item"]
    return (
        items.cpu().numpy(),
        item_z.float().cpu().numpy(),
        items[batch["cap_item"]].cpu().numpy(),
        cap_z.float().cpu().numpy(),
    )


def relevance_file_for(data_root: str | os.PathLike, split: str) -> Path | None:
    """The DCASE 2025 relevance annotations under ``data_root`` for the ``evaluation`` split, if present."""
    from e2i.corpus.download import DCASE2025_RELEVANCE

    path = Path(data_root) / DCASE2025_RELEVANCE
    return path if split == "evaluation" and path.is_file() else None


def _relevance(path, items: list, clip_rows: np.ndarray, cap_item: np.ndarray, item_emb, cap_emb):
    """The relevance file mapped onto the metric rows: clip row r = ``items[clip_rows[r]]``, captions in
    item order (the k-th caption row of a clip is its k-th caption)."""
    from e2i.evaluate.relevance_file import load_relevance
    from e2i.store.reader import SplitData

    k = np.zeros(len(cap_item), np.int64)  # (M,) caption number within its clip
    for r in np.unique(cap_item):
        k[cap_item == r] = np.arange(int((cap_item == r).sum()))
    clips = [items[int(i)] for i in clip_rows]
    split = SplitData(
        path="finetune test split", item_ids=np.array([c.item_id for c in clips], object), item_emb=item_emb,
        caption_ids=np.array([f"{clips[r].item_id}#{j + 1}" for r, j in zip(cap_item, k)], object),
        caption_item=cap_item, caption_emb=cap_emb,
        caption_text=np.array([clips[r].captions[j] for r, j in zip(cap_item, k)], object),
        item_paths=np.array([c.path for c in clips], object))
    return load_relevance(path, split, strict=False)


def split_metrics(parts: list[Rows], *, ci: bool, items: list | None = None,
                  relevance: str | os.PathLike | None = None) -> dict:
    """Retrieval metrics from per-batch (item ids, item_z, caption item ids, cap_z); duplicate clips
    (DistributedSampler padding) are counted once and so are their captions. With ``items`` (the
    dataset's Item list, indexed by the batch ``item`` ids) and a ``relevance`` file, adds the
    multi-relevance metrics (:mod:`e2i.evaluate.relevance_file`)."""
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
    cap_emb_all, cap_item_all = np.concatenate(cap_emb), np.array(cap_item, dtype=np.int64)
    extra = {}
    if relevance is not None and items is not None:
        rel = _relevance(relevance, items, unique, cap_item_all, item_emb, cap_emb_all)
        extra = {"relevance": rel} if rel is not None else {}
    return retrieval_metrics(item_emb, cap_emb_all, cap_item_all, ci=ci, **extra)
