"""Retrieval metrics of the fine-tuned model, from the embeddings of whole validation / test splits.

Every batch contributes one :func:`embedding_rows` tuple; :func:`split_metrics` joins them (also
across DDP ranks) and computes the metrics of ``e2i evaluate`` (:func:`e2i.evaluate.metrics.
retrieval_metrics`: text -> audio and audio -> text, recall@K and mAP@10, item-level relevance: a
caption's relevant item is its own clip).
"""

from __future__ import annotations

import numpy as np
import torch

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


def split_metrics(parts: list[Rows], *, ci: bool) -> dict:
    """Retrieval metrics from per-batch (item ids, item_z, caption item ids, cap_z); duplicate clips
    (DistributedSampler padding) are counted once and so are their captions."""
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
