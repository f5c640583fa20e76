"""The ``jsonl`` reader: generic JSON / JSONL metadata (media path + caption(s) per record) -> Corpus.

``.jsonl`` (one record per line) or ``.json`` (a list of records or ``{"data": [...]}`` as in WavCaps).
A directory holds ``<split>.jsonl``/``.json``, ``metadata_<split>.jsonl`` or ``metadata.jsonl``/``.json``.
Each record: media path under ``path``/``audio``/``image``/``file``/``file_name`` (relative paths are
resolved against the metadata file's dir; a Hugging Face style ``{"path": ...}`` dict works too),
``caption`` (str) or ``captions`` (list of str), optional ``id`` (default: the path as written) and
``modality`` (default: from the file extension). Other scalar keys go to ``Item.meta``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from e2i.corpus.curate import Captions
from e2i.corpus.files import BAD_UTF8, check_file, load_json, modality_of, read_text
from e2i.corpus.fspath import corpus_path, is_uri
from e2i.corpus.rows import Corpus, Item, Rejected
from e2i.errors import CorpusError

PATH_KEYS = ("path", "audio", "image", "file", "file_name")


def _find_metadata(path: Path, split: str | None) -> Path:
    if path.is_file():
        return path
    names = ([f"{split}.jsonl", f"{split}.json", f"metadata_{split}.jsonl"] if split else []) + [
        "metadata.jsonl",
        "metadata.json",
    ]
    for name in names:
        if (path / name).is_file():
            return path / name
    raise CorpusError(f"{path}: no metadata file (looked for {', '.join(names)})")


def _records(path: Path) -> Iterator[tuple[str, Any, str]]:
    """``(source, record, problem)`` per record of a .json or .jsonl file."""
    if path.suffix.lower() == ".json":
        data = load_json(path)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise CorpusError(f'{path}: expected a list of records or {{"data": [...]}}')
        for i, rec in enumerate(data):
            yield f"{path.name}:[{i}]", rec, ""
        return
    for line_no, line in enumerate(read_text(path).splitlines(), start=1):
        source = f"{path.name}:{line_no}"
        if not line.strip():
            continue
        if BAD_UTF8.search(line):
            yield source, None, "not valid UTF-8 text"
            continue
        try:
            yield source, json.loads(line), ""
        except json.JSONDecodeError as err:
            yield source, None, f"not valid JSON ({err.msg})"


def _record_path(rec: dict) -> str | None:
    for key in PATH_KEYS:
        value = rec.get(key)
        if isinstance(value, dict):  # Hugging Face style {"path": ..., "bytes": ...}
            value = value.get("path")
        if isinstance(value, str) and value.strip():
            return value
    return None


def read_jsonl(path: str | os.PathLike, *, split: str | None = None, curate: bool = False) -> Corpus:
    """Generic JSON/JSONL metadata (media path + caption(s) per record) -> Corpus."""
    meta_path = _find_metadata(corpus_path(path), split)
    base = meta_path.parent
    corpus, seen = Corpus(meta_path.stem, split or meta_path.stem, []), {}
    for source, rec, problem in _records(meta_path):
        if not problem and not isinstance(rec, dict):
            problem = "record is not a JSON object"
        raw = _record_path(rec) if not problem else None
        if not problem and raw is None:
            problem = f"no media path (keys tried: {', '.join(PATH_KEYS)})"
        item_id = str(rec.get("id", raw)) if isinstance(rec, dict) and raw else ""
        modality = (rec.get("modality") or modality_of(raw)) if raw else None
        if not problem and modality not in ("audio", "image"):
            problem = f"cannot tell modality of {raw!r} (extension not audio/image, no 'modality' key)"
        elif not problem and item_id in seen:
            problem = f"duplicate id (first at {seen[item_id]})"
        if problem:
            corpus.rejected.append(Rejected(source, item_id, problem))
            continue
        seen[item_id] = source
        media = corpus_path(raw) if is_uri(raw) else Path(os.path.expanduser(raw))
        media = media if media.is_absolute() else base / media  # base: a Path or an FsPath
        texts = (
            rec["captions"]
            if isinstance(rec.get("captions"), list)
            else ([rec["caption"]] if "caption" in rec else [])
        )
        caps = Captions(item_id, source, corpus, curate)
        for k, text in enumerate(texts, start=1):
            caps.add(k, text, f"caption {k}")
        reason = check_file(media, modality)
        if reason:
            corpus.rejected.append(Rejected(source, item_id, reason))
        elif caps.finish():
            meta = {
                k: v
                for k, v in rec.items()
                if k not in {"id", "caption", "captions", "modality", *PATH_KEYS}
                and isinstance(v, (str, int, float, bool))
            }
            corpus.items.append(Item(item_id, str(media.absolute()), caps.texts, modality, meta, caps.ids))
    return corpus
