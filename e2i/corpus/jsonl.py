"""The ``jsonl`` reader: generic JSON / JSONL metadata (media path + caption(s) per record) -> Corpus.

``.jsonl`` (one record per line) or ``.json`` (a list of records or ``{"data": [...]}`` as in WavCaps).
A directory holds ``<split>.jsonl``/``.json``, ``metadata_<split>.jsonl`` or ``metadata.jsonl``/``.json``.
Many files (the layout of large corpora; :func:`metadata_files`): a glob (``meta/train-*.jsonl``, ``*``/``?``
in the last part), or a directory with ``--split S`` holding ``S/*.jsonl``, ``S-*.jsonl`` or ``S_*.jsonl``;
they are read in name order as one corpus (an id in two files: the later record is a duplicate).
Each record: media path under ``path``/``audio``/``image``/``file``/``file_name`` (relative paths are
resolved against the metadata file's dir; a Hugging Face style ``{"path": ...}`` dict works too),
``caption`` (str) or ``captions`` (list of str), optional ``id`` (default: the path as written) and
``modality`` (default: from the file extension). Other scalar keys go to ``Item.meta``.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from e2i.corpus.curate import Captions
from e2i.corpus.files import BAD_UTF8, check_file, load_json, modality_of, read_text
from e2i.corpus.fspath import corpus_path, is_uri
from e2i.corpus.rows import Corpus, Item, Rejected
from e2i.errors import CorpusError

PATH_KEYS = ("path", "audio", "image", "file", "file_name")
GLOB_CHARS = frozenset("*?[")


def is_glob(path: str | os.PathLike) -> bool:
    """True when the last part of ``path`` is a pattern (``meta/train-*.jsonl``)."""
    return bool(GLOB_CHARS & set(posixpath.basename(os.fspath(path))))


def metadata_files(path: str | os.PathLike, split: str | None) -> list[Any]:
    """The metadata file(s) ``path`` stands for, in name order (Paths, or FsPaths for URIs): a file; a
    glob's matches; a directory's single metadata file (``<split>.jsonl``, ``metadata.jsonl``, ...), else
    with ``split`` its shards ``<split>/*.jsonl``, ``<split>-*.jsonl`` or ``<split>_*.jsonl``."""
    text = os.fspath(path)
    if is_glob(text):
        folder, pattern = text.rsplit("/", 1) if "/" in text else (".", text)
        found = sorted(corpus_path(folder).glob(pattern))
        if not found:
            raise CorpusError(f"{text}: no metadata file matches")
        return found
    root = corpus_path(text)
    if root.is_file():
        return [root]
    singles = ([f"{split}.jsonl", f"{split}.json", f"metadata_{split}.jsonl"] if split else []) + [
        "metadata.jsonl", "metadata.json"]
    for name in singles:
        if (root / name).is_file():
            return [root / name]
    shards = [f"{split}/*.jsonl", f"{split}-*.jsonl", f"{split}_*.jsonl"] if split else []
    for pattern in shards:
        found = sorted(f for f in root.glob(pattern) if f.is_file())
        if found:
            return found
    raise CorpusError(f"{root}: no metadata file (looked for {', '.join(singles + shards)})")


def corpus_names(path: str | os.PathLike, files: list[Any], split: str | None) -> tuple[str, str]:
    """(corpus name, split) of the metadata ``files`` found for ``path``: one file names both by its stem
    (``train.jsonl`` -> train); many files are named by the directory ``path`` names (``data/wavcaps/*.jsonl``
    -> wavcaps) and their split is ``split``, else a glob's literal prefix (``train-*.jsonl`` -> train)."""
    if len(files) == 1:
        return files[0].stem, split or files[0].stem
    text = os.fspath(path).rstrip("/")
    folder = posixpath.dirname(text) if is_glob(text) else text
    name = posixpath.basename(folder) or files[0].parent.name
    prefix = posixpath.basename(text).split("*")[0].split("?")[0].rstrip("-_.") if is_glob(text) else ""
    return name, split or prefix or name


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
    """Generic JSON/JSONL metadata (media path + caption(s) per record), one file or many -> Corpus."""
    files = metadata_files(path, split)
    corpus, seen = Corpus(*corpus_names(path, files, split), []), {}
    for meta_path in files:
        read_jsonl_file(meta_path, corpus, seen, curate)
    return corpus


def read_jsonl_file(meta_path: Any, corpus: Corpus, seen: dict[str, str], curate: bool) -> None:
    """Add the records of one metadata file to ``corpus`` (items, rejected rows, curation). ``seen``
    ({item id: source of its first record}) is updated with every record that got an id, rejected or not:
    a later record with that id is a duplicate."""
    base = meta_path.parent
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
