"""Corpus readers by kind: raw paired data on disk -> :class:`~e2i.corpus.rows.Corpus` (items with
captions), no embeddings yet.

    corpus = read_corpus("clotho", "data/Clotho.v2.1", split="development", curate=True)
    print(corpus.summary())   # clotho/development: 3839 items, 19195 captions, 0 rejected, 12 curated

``READERS`` (kind -> reader; each module's docstring gives the layouts it accepts):

- ``clotho``: Clotho v2.1 captions CSV + audio folder (:mod:`e2i.corpus.clotho`).
- ``coco``: COCO captions JSON + image folder (:mod:`e2i.corpus.coco`).
- ``jsonl``: generic JSON/JSONL metadata, one record per item (:mod:`e2i.corpus.jsonl`).
- ``imagefolder``: ``<root>[/<split>]/<class>/<image>``, caption from the class name
  (:mod:`e2i.corpus.imagefolder`).

Every reader has the signature ``reader(path, *, split=None, curate=False, **options)``. Per-row problems
become :class:`~e2i.corpus.rows.Rejected` rows (``source`` = ``file:line`` or ``file:key[i]``) and the
read goes on; a file that cannot be read at all, or lacks required columns/keys, raises
:class:`~e2i.errors.CorpusError`. Curation (``curate=True``, :mod:`e2i.corpus.curate`) is listed in
``Corpus.curation``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from e2i.corpus.clotho import read_clotho
from e2i.corpus.coco import read_coco
from e2i.corpus.fspath import corpus_path
from e2i.corpus.imagefolder import read_imagefolder
from e2i.corpus.jsonl import is_glob, read_jsonl
from e2i.corpus.rows import Corpus
from e2i.errors import CorpusError

READERS: dict[str, Callable[..., Corpus]] = {
    "clotho": read_clotho,
    "coco": read_coco,
    "jsonl": read_jsonl,
    "imagefolder": read_imagefolder,
}


def read_corpus(
    kind: str, path: str | os.PathLike, *, split: str | None = None, curate: bool = False, **options: Any
) -> Corpus:
    """Read a corpus with ``READERS[kind]``; ``options`` go to the reader (e.g. imagefolder ``template``)."""
    if kind not in READERS:
        raise CorpusError(f"unknown corpus kind {kind!r}; valid: {', '.join(READERS)}")
    if not is_glob(path) and not corpus_path(path).exists():  # a glob's reader says when nothing matches
        raise CorpusError(f"{path}: no such file or directory")
    reader = READERS[kind]
    try:
        inspect.signature(reader).bind(path, split=split, curate=curate, **options)
    except TypeError as err:
        raise CorpusError(f"corpus kind {kind!r}: {err}") from err
    return reader(path, split=split, curate=curate, **options)
