"""Class-labelled stores: relevance from class labels and zero-shot classification accuracy.

A class-labelled store (the older ViT embedding store's ``<model>/<dataset>/<split>`` with class labels,
fine-grained sets such as CUB-200 or FGVC-Aircraft; ``e2i cache`` on an image folder of class
sub-folders; ``e2i store import-legacy`` of a parquet layout with a ``label`` column) has an items
column ``label`` (``SplitData.item_meta["label"]``), and its captions are class-name prompts
("a photo of a {label}"), one or more per item.

- :func:`label_relevance`: caption q is relevant to every item whose label equals the label of q's own
  item (``e2i evaluate --relevance-from label``), as a :class:`~e2i.evaluate.relevance.Relevance`.
- :func:`class_embeddings`: one embedding per class from the captions: CLIP's prompt ensembling, i.e.
  the mean of the L2-normalised caption embeddings of the class, renormalised.
- :func:`zero_shot_accuracy`: each item classified by argmax cosine over the class embeddings.
- :func:`zero_shot_metrics`: both for one split, as ``zero_shot/top1`` ... metric keys.

Labels are compared as values (strings or ints). An item with a missing label (null / NaN) is its own
class: its captions are relevant to it alone, and it is not a zero-shot query. Pure numpy/pandas.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from e2i.errors import StoreError
from e2i.evaluate.relevance import Relevance
from e2i.store.schema import LABEL_COLUMN

TOP_K = (1, 5)


def label_codes(item_labels) -> tuple[np.ndarray, np.ndarray]:
    """(codes (N,) int64, class names (K,)): code k = index in the sorted distinct labels; a missing
    label gets a fresh code of its own (>= K), so it matches no other item."""
    labels = np.asarray(item_labels, dtype=object) if not isinstance(item_labels, np.ndarray) else item_labels
    codes, names = pd.factorize(labels, sort=True, use_na_sentinel=True)  # -1 = missing
    codes = codes.astype(np.int64)
    missing = np.flatnonzero(codes < 0)
    codes[missing] = len(names) + np.arange(len(missing))  # singleton classes
    return codes, np.asarray(names)


def label_relevance(item_labels, cap_item) -> Relevance:
    """Caption q -> every item with the label of its own item (grade None: binary relevance).

    ``item_labels`` (N,) labels of the items, ``cap_item`` (M,) int row of each caption's item.
    Pairs are ordered by (query, item). P = sum over captions of their class size.
    """
    cap_item = np.asarray(cap_item, dtype=np.int64)
    codes, _ = label_codes(item_labels)
    n = len(codes)
    if len(cap_item) and (cap_item.min() < 0 or cap_item.max() >= n):
        raise ValueError(f"cap_item values must be item rows in [0, {n})")
    order = np.argsort(codes, kind="stable")  # items grouped by class, ascending row within a class
    counts = np.bincount(codes, minlength=int(codes.max(initial=-1)) + 1)  # (C,) items per class
    starts = np.cumsum(counts) - counts  # (C,) first position of each class in `order`
    q_class = codes[cap_item]  # (M,) class of each caption
    per_query = counts[q_class]  # (M,) relevant items per caption
    query = np.repeat(np.arange(len(cap_item), dtype=np.int64), per_query)  # (P,)
    first = np.cumsum(per_query) - per_query  # (M,) first pair of each caption
    slot = np.arange(len(query), dtype=np.int64) - first[query]  # (P,) position within the class
    item = order[starts[q_class][query] + slot].astype(np.int64)  # (P,)
    return Relevance(query=query, item=item, grade=None)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def class_embeddings(caption_emb, cap_item, item_labels) -> tuple[np.ndarray, np.ndarray]:
    """(class names (K,), class embeddings (K, D) unit-norm) from the captions of a labelled split.

    A caption's class is its item's label; class k's embedding is the mean of its captions'
    normalised embeddings, renormalised (several prompts per class average into one). Classes are the
    sorted labels that have at least one caption; captions of unlabelled items are ignored.
    """
    cap = _normalise(caption_emb)  # (M, D)
    cap_item = np.asarray(cap_item, dtype=np.int64)
    codes, names = label_codes(item_labels)
    cap_codes = codes[cap_item]  # (M,)
    keep = cap_codes < len(names)  # labelled captions only
    k = len(names)
    sums = np.zeros((k, cap.shape[1]), np.float64)
    np.add.at(sums, cap_codes[keep], cap[keep])  # (K, D) sum of each class's prompt embeddings
    has = np.bincount(cap_codes[keep], minlength=k) > 0
    return names[has], _normalise(sums[has])


def _rank_of_true(scores: np.ndarray, true: np.ndarray) -> np.ndarray:
    """1-based rank of column ``true[i]`` in row i (score desc, ties: lower class index first)."""
    s = scores[np.arange(len(true)), true][:, None]  # (n, 1)
    before = np.arange(scores.shape[1])[None, :] < true[:, None]  # (n, K)
    return 1 + np.count_nonzero(scores > s, axis=1) + np.count_nonzero((scores == s) & before, axis=1)


def zero_shot_accuracy(item_z, class_z, item_labels, class_names, *, chunk_size: int = 4096) -> dict:
    """{"top1", "top5"}: fraction of items whose label is the argmax-cosine class (top-5: among the 5
    best; every class when K < 5). ``item_z`` (N, D), ``class_z`` (K, D) (normalised here),
    ``item_labels`` (N,), ``class_names`` (K,). Items with a missing label are skipped; a label not in
    ``class_names`` is a ValueError."""
    names = pd.Index(np.asarray(class_names, dtype=object))
    if names.has_duplicates:
        raise ValueError(f"duplicate class name {names[names.duplicated()][0]!r}")
    labels = pd.Series(np.asarray(item_labels, dtype=object))
    known = labels.notna().to_numpy()
    true = names.get_indexer(labels[known])  # (n,) class index of each labelled item
    if (true < 0).any():
        raise ValueError(f"item label {labels[known].iloc[int(np.flatnonzero(true < 0)[0])]!r} has no class "
                         "embedding (no caption of that class)")
    items, classes = _normalise(item_z)[known], _normalise(class_z)  # (n, D), (K, D)
    if items.shape[1] != classes.shape[1]:
        raise ValueError(f"item dim {items.shape[1]} != class dim {classes.shape[1]}")
    ranks = [np.zeros(0, np.int64)]
    for lo in range(0, len(items), chunk_size):
        scores = items[lo:lo + chunk_size] @ classes.T  # (chunk, K) cosine similarities
        ranks.append(_rank_of_true(scores, true[lo:lo + chunk_size]))
    rank = np.concatenate(ranks)
    return {f"top{k}": float((rank <= k).mean()) if len(rank) else float("nan") for k in TOP_K}


def zero_shot_metrics(item_z, cap_z, cap_item, item_labels) -> dict:
    """Zero-shot classification of one split in a shared space (e.g. a head's outputs, or a CLIP store's
    raw embeddings): ``{"zero_shot/top1", "zero_shot/top5", "zero_shot/num_classes",
    "zero_shot/num_items"}``, class embeddings from the split's own captions."""
    names, class_z = class_embeddings(cap_z, cap_item, item_labels)
    acc = zero_shot_accuracy(item_z, class_z, item_labels, names)
    n = int(pd.Series(np.asarray(item_labels, dtype=object)).notna().sum())
    return {**{f"zero_shot/{k}": v for k, v in acc.items()}, "zero_shot/num_classes": len(names),
            "zero_shot/num_items": n}


def split_labels(split) -> np.ndarray:
    """``split.item_meta["label"]`` (a :class:`~e2i.store.reader.SplitData` loaded with text); a
    StoreError naming the split when it has no label column."""
    if LABEL_COLUMN not in split.item_meta:
        raise StoreError(f"{split.path}: no '{LABEL_COLUMN}' column in the items (not a class-labelled "
                         f"store; columns: {', '.join(split.item_meta) or 'none'})")
    return split.item_meta[LABEL_COLUMN]
