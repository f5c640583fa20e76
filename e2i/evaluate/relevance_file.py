"""Relevance files: which items are relevant to which caption queries, beyond each caption's own item.

    e2i evaluate results/siglip --relevance data/CLOTHO_v2.1/dcase2025_task6_metadata_eval.csv

A relevance file is CSV or parquet, one row per (query, relevant item):

==================  ===========================================================================
column              meaning
==================  ===========================================================================
``caption_id``      the query: a ``caption_id`` of the evaluated split, or instead
``query``           the caption text (exact match; a text that occurs several times is the first
                    caption with it, as DCASE's evaluation code does with ``list.index``)
``item_id``         a relevant item: an ``item_id`` of the split (for audio corpora the clip's
                    file name), or instead
``audio_filenames`` DCASE 2025 Task 6's layout: a Python list literal of clip file names per query
                    (``"['a.wav', 'b.wav']"``), one row per query
``relevance``       optional graded relevance (float > 0; rows with relevance <= 0 are dropped,
                    i.e. listed as not relevant); without it every listed pair has grade 1
==================  ===========================================================================

Item names are matched to ``item_id`` first, then to the file name of the item's ``path`` (also
after HTML-unescaping, DCASE's file writes ``&#39;`` for apostrophes). An id that matches nothing is a
one-line CorpusError naming the file, the row (1-based data row; CSV line = row + 1) and the field.
The result is a :class:`e2i.evaluate.relevance.Relevance` of (caption row, item row, grade) triples,
deduplicated (largest grade kept), ordered by (query, item).
"""

from __future__ import annotations

import ast
import html
import os
from pathlib import Path

import numpy as np
import pandas as pd

from e2i.errors import CorpusError
from e2i.evaluate.relevance import Relevance
from e2i.store.reader import SplitData

QUERY_COLUMNS = ("caption_id", "query")
ITEM_COLUMNS = ("item_id", "audio_filenames")


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """The raw relevance table (parquet by suffix, CSV otherwise) with string id columns."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such relevance file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise CorpusError(f"{path}: not a readable relevance table ({str(exc).splitlines()[0]})") from None
    qcol = next((c for c in QUERY_COLUMNS if c in df.columns), None)
    icol = next((c for c in ITEM_COLUMNS if c in df.columns), None)
    if qcol is None or icol is None:
        raise CorpusError(f"{path}: needs a query column ({' or '.join(QUERY_COLUMNS)}) and an item column "
                          f"({' or '.join(ITEM_COLUMNS)}); has: {', '.join(map(str, df.columns))}")
    return df


def _item_lookup(split: SplitData) -> dict[str, int]:
    """name -> item row: file names of the paths (and their HTML-unescaped form), then item ids (win)."""
    lookup: dict[str, int] = {}
    if split.item_paths is not None:
        for row, path in enumerate(split.item_paths):
            name = os.path.basename(str(path))
            lookup.setdefault(name, row)
            lookup.setdefault(html.unescape(name), row)
    lookup.update({str(i): row for row, i in enumerate(split.item_ids)})
    return lookup


def _item_names(value, row: int, field: str, where: str) -> list[str]:
    if field == "item_id":
        return [str(value)]
    if isinstance(value, (list, tuple, np.ndarray)):  # parquet list column
        return [str(v) for v in value]
    try:
        names = ast.literal_eval(str(value))
    except (ValueError, SyntaxError):
        raise CorpusError(f"{where}: row {row}: {field}: not a list literal: {str(value)[:60]!r}") from None
    if not isinstance(names, (list, tuple)):
        raise CorpusError(f"{where}: row {row}: {field}: expected a list of file names, got {type(names).__name__}")
    return [str(v) for v in names]


def load_relevance(path: str | os.PathLike, split: SplitData, *, strict: bool = True) -> Relevance | None:
    """Map a relevance file onto the rows of ``split`` (loaded ``with_text=True``); see module docstring.

    ``strict=False`` skips queries and items that are not in ``split`` (a subset of the annotated split)
    instead of raising, and returns None when nothing is left."""
    where = os.fspath(path)
    df = read_table(path)
    qcol = next(c for c in QUERY_COLUMNS if c in df.columns)
    icol = next(c for c in ITEM_COLUMNS if c in df.columns)
    if qcol == "query" and split.caption_text is None:
        raise ValueError("load_relevance needs the split's caption text: load_split(..., with_text=True)")
    keys = split.caption_ids if qcol == "caption_id" else split.caption_text
    query_row: dict[str, int] = {}
    for row, key in enumerate(keys):
        query_row.setdefault(str(key), row)  # first occurrence of a repeated text
    item_row = _item_lookup(split)
    graded = "relevance" in df.columns
    grades = pd.to_numeric(df["relevance"], errors="coerce").to_numpy(np.float64) if graded else None
    triples: dict[tuple[int, int], float] = {}
    for i, (q, items) in enumerate(zip(df[qcol].tolist(), df[icol].tolist())):
        row = i + 1
        if grades is not None and not np.isfinite(grades[i]):
            raise CorpusError(f"{where}: row {row}: relevance: not a number: {df['relevance'].iloc[i]!r}")
        grade = 1.0 if grades is None else float(grades[i])
        if str(q) not in query_row:
            if not strict:
                continue
            raise CorpusError(f"{where}: row {row}: {qcol}: {str(q)[:80]!r} is not a caption of {split.path}")
        qr = query_row[str(q)]
        for name in _item_names(items, row, icol, where):
            r = item_row.get(name, item_row.get(html.unescape(name)))
            if r is None:
                if not strict:
                    continue
                raise CorpusError(f"{where}: row {row}: {icol}: {name!r} is not an item of {split.path}")
            if grade > 0:
                triples[(qr, r)] = max(grade, triples.get((qr, r), 0.0))
    if not triples:
        if not strict:
            return None
        raise CorpusError(f"{where}: no relevant (query, item) pairs")
    pairs = sorted(triples)
    return Relevance(
        query=np.array([p[0] for p in pairs], np.int64),  # (P,) caption rows
        item=np.array([p[1] for p in pairs], np.int64),  # (P,) item rows
        grade=np.array([triples[p] for p in pairs], np.float32) if graded else None,  # (P,)
    )
