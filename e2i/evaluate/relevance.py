"""Several relevant items per text query (DCASE 2025 Task 6 style relevance annotations).

A :class:`Relevance` lists (caption row, item row[, grade]) pairs. With it, the text -> item metrics
of :func:`e2i.evaluate.metrics.retrieval_metrics` rank, for each listed caption, every item against
its *set* of relevant items instead of its own item alone. Conventions follow the DCASE 2025 Task 6
baseline (CPJKU ``dcase2025_task6_baseline``, ``d25_t6/retrieval_module.py``,
``AudioRetrievalModel.on_validation_epoch_end``: the ``metadata_eval.csv`` block and its
``average_precision_at_k``):

* The annotations *replace* the caption's own item as ground truth: the baseline builds its "new
  ground truth" from the file's ``audio_filenames`` alone, and the DCASE 2025 results page reports
  that only ~43-47 % of the original matching audios stay linked to their queries. So the own item
  is relevant only if listed; :meth:`Relevance.with_own_items` adds it for data where the
  annotations are extra positives.
* Only listed captions are queries (the baseline evaluates the rows of the file).
* A pair is relevant when it has no grade or a grade > 0 (grade 0 = annotated as not relevant).

Pure numpy: no ray, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from e2i.errors import E2IError


class RelevanceError(E2IError, ValueError):
    """Relevance pairs are malformed (one line naming the pair row and field)."""


def _int_array(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise RelevanceError(f"relevance: {name} must be 1-D, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise RelevanceError(f"relevance: {name} must be integer rows, got dtype {a.dtype}")
    return a.astype(np.int64)


@dataclass(frozen=True, eq=False)
class Relevance:
    """Relevance pairs: ``query`` (P,) int64 caption rows, ``item`` (P,) int64 item rows,
    ``grade`` (P,) float32 graded relevance (>= 0; used for nDCG) or None (all pairs relevant)."""

    query: np.ndarray
    item: np.ndarray
    grade: np.ndarray | None = None

    def __post_init__(self) -> None:
        query, item = _int_array(self.query, "query"), _int_array(self.item, "item")
        if len(query) != len(item):
            raise RelevanceError(f"relevance: query has {len(query)} rows but item has {len(item)}")
        if len(query) == 0:
            raise RelevanceError("relevance: no pairs")
        for name, a in (("query", query), ("item", item)):
            if a.min() < 0:
                raise RelevanceError(f"relevance: pair {int(np.argmax(a < 0))}: {name} row {a.min()} is negative")
        grade = None
        if self.grade is not None:
            grade = np.asarray(self.grade, dtype=np.float32)
            if grade.shape != query.shape:
                raise RelevanceError(f"relevance: grade must be ({len(query)},), got {grade.shape}")
            wrong = ~np.isfinite(grade) | (grade < 0)
            if wrong.any():
                k = int(np.argmax(wrong))
                raise RelevanceError(f"relevance: pair {k}: grade {grade[k]} is not a finite number >= 0")
        key = query * (int(item.max()) + 1) + item
        order = np.argsort(key, kind="stable")
        repeat = order[1:][key[order][1:] == key[order][:-1]]  # later rows of a repeated pair
        if len(repeat):
            k = int(repeat.min())
            raise RelevanceError(f"relevance: pair {k}: (query {query[k]}, item {item[k]}) is listed twice")
        object.__setattr__(self, "query", query)
        object.__setattr__(self, "item", item)
        object.__setattr__(self, "grade", grade)

    def check(self, num_captions: int, num_items: int) -> None:
        """Raise if a row is outside the evaluated captions/items."""
        for name, a, n in (("query", self.query, num_captions), ("item", self.item, num_items)):
            if a.max() >= n:
                k = int(np.argmax(a >= n))
                raise RelevanceError(f"relevance: pair {k}: {name} row {a[k]} is out of range [0, {n})")

    def relevant(self) -> np.ndarray:
        """(P,) bool: pairs that count as relevant (grade > 0, or every pair without grades)."""
        return np.ones(len(self.query), bool) if self.grade is None else self.grade > 0

    def table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Queries with >= 1 relevant item: (queries (Q,) ascending caption rows, items (Q, R) their
        relevant item rows ascending, -1 padded, gains (Q, R) float64: grade, or 1, 0 at padding)."""
        keep = self.relevant()
        q, it = self.query[keep], self.item[keep]
        g = np.ones(len(q)) if self.grade is None else self.grade[keep].astype(np.float64)
        order = np.lexsort((it, q))  # by query, then item ascending
        q, it, g = q[order], it[order], g[order]
        queries, start, counts = np.unique(q, return_index=True, return_counts=True)
        slot = np.arange(len(q)) - np.repeat(start, counts)  # position within the query
        items = np.full((len(queries), max(int(counts.max(initial=0)), 1)), -1, np.int64)
        gains = np.zeros(items.shape)
        row = np.repeat(np.arange(len(queries)), counts)
        items[row, slot], gains[row, slot] = it, g
        return queries, items, gains

    def with_own_items(self, cap_item) -> Relevance:
        """The same pairs plus (q, cap_item[q]) for every listed query q (grade: the query's highest)."""
        cap_item = np.asarray(cap_item, dtype=np.int64)
        queries = np.unique(self.query)
        own = cap_item[queries]
        have = set(zip(self.query.tolist(), self.item.tolist()))
        add = np.array([(q, i) not in have for q, i in zip(queries.tolist(), own.tolist())], bool)
        grade = None
        if self.grade is not None:
            top = np.zeros(int(self.query.max()) + 1, np.float32)
            np.maximum.at(top, self.query, self.grade)
            grade = np.concatenate([self.grade, np.maximum(top[queries[add]], 1.0)])
        return Relevance(np.concatenate([self.query, queries[add]]), np.concatenate([self.item, own[add]]), grade)


def build_relevance(
    query_keys: Sequence,
    item_keys: Sequence,
    grades: Sequence[float] | None = None,
    *,
    caption_index: Mapping,
    item_index: Mapping,
    source: str = "relevance",
) -> Relevance:
    """Map the rows of a relevance file (caption id or query text, item id[, grade]) to a Relevance.

    ``caption_index``/``item_index`` map a key to its caption/item row (for query text, the caller
    decides which caption a repeated text means; the DCASE baseline takes the first). An unknown key
    is a one-line error naming ``source`` and the file row.
    """
    if len(query_keys) != len(item_keys) or (grades is not None and len(grades) != len(query_keys)):
        raise RelevanceError(f"{source}: columns have different lengths")
    rows_q, rows_i = np.empty(len(query_keys), np.int64), np.empty(len(item_keys), np.int64)
    for k, (qk, ik) in enumerate(zip(query_keys, item_keys)):
        if qk not in caption_index:
            raise RelevanceError(f"{source}: row {k}: caption {qk!r} is not in the evaluated split")
        if ik not in item_index:
            raise RelevanceError(f"{source}: row {k}: item {ik!r} is not in the evaluated split")
        rows_q[k], rows_i[k] = caption_index[qk], item_index[ik]
    try:
        return Relevance(rows_q, rows_i, None if grades is None else np.asarray(grades, np.float32))
    except RelevanceError as e:
        raise RelevanceError(f"{source}: {e}".replace(": relevance:", ":")) from None
