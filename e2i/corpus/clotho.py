"""The ``clotho`` reader: Clotho v2.1 captions CSV + audio folder -> :class:`~e2i.corpus.rows.Corpus`.

``clotho_captions_<split>.csv`` (columns ``file_name, caption_1..caption_5``) in the corpus dir or in
``<dir>/clotho_csv_files/`` (DCASE baseline layout); audio in the first existing of
``clotho_audio_files/<split>/`` (DCASE baseline / aac-datasets), ``<split>/`` (what the Zenodo
``clotho_audio_<split>.7z`` archives extract to) or ``clotho_audio_<split>/``, looked up next to the CSV
and next to ``clotho_csv_files/``. ``path`` may also be the CSV itself. File names with spaces are used as
they are; if a name is not on disk, a file whose name differs only in Unicode normal form, case, spaces
or underscores is used when it is the only such file.

A ``toy_attributes_<split>.csv`` beside the CSV (written by :func:`e2i.corpus.toy.make_toy_corpus`) is
merged into ``Item.meta`` and names the corpus ``toy``.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

from e2i.corpus.curate import Captions
from e2i.corpus.files import BAD_UTF8, FileFinder, check_file, printable, read_text
from e2i.corpus.fspath import corpus_path
from e2i.corpus.rows import Corpus, Item, Rejected
from e2i.errors import CorpusError

CLOTHO_COLUMNS = ("file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5")


def _find_clotho_csv(path: Path, split: str | None) -> tuple[Path, str]:
    if path.is_file():
        m = re.fullmatch(r"clotho_captions_(.+)\.csv", path.name)
        return path, split or (m[1] if m else path.stem)
    folders = [path, path / "clotho_csv_files"]
    if split is not None:
        for folder in folders:
            if (folder / f"clotho_captions_{split}.csv").is_file():
                return folder / f"clotho_captions_{split}.csv", split
        raise CorpusError(f"{path}: no clotho_captions_{split}.csv here or in clotho_csv_files/")
    found = sorted(p for folder in folders for p in folder.glob("clotho_captions_*.csv"))
    if len(found) != 1:
        names = ", ".join(p.name[len("clotho_captions_") : -4] for p in found) or "none found"
        raise CorpusError(f"{path}: pass a split (clotho_captions_<split>.csv: {names})")
    return found[0], found[0].name[len("clotho_captions_") : -4]


def _find_clotho_audio(csv_path: Path, split: str) -> Path:
    roots = [csv_path.parent] + (
        [csv_path.parent.parent] if csv_path.parent.name == "clotho_csv_files" else []
    )
    tried = [
        r / sub for r in roots for sub in (f"clotho_audio_files/{split}", split, f"clotho_audio_{split}")
    ]
    for folder in tried:
        if folder.is_dir():
            return folder
    raise CorpusError(f"{csv_path}: no audio folder for split {split!r} (tried {', '.join(map(str, tried))})")


def _csv_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str], str]]]:
    """Header and ``(line, fields, problem)`` per non-blank record (line = where the record starts)."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise CorpusError(f"{path}: empty file (no header row)") from None
    except csv.Error as err:
        raise CorpusError(f"{path}: unreadable header ({err})") from err

    def rows() -> Iterator[tuple[int, list[str], str]]:
        prev = reader.line_num
        while True:
            try:
                row, problem = next(reader), ""
            except StopIteration:
                return
            except csv.Error as err:  # e.g. a NUL byte: report the record, go on after it
                row, problem = [], f"unreadable row ({err})"
            if row or problem:
                yield prev + 1, row, problem
            prev = reader.line_num

    return header, rows()


def _load_toy_attributes(csv_path: Path, split: str) -> dict[str, dict] | None:
    side = csv_path.parent / f"toy_attributes_{split}.csv"
    if not side.is_file():
        return None
    header, rows = _csv_rows(side)
    return {
        row[0]: {k: _number(v) for k, v in zip(header[1:], row[1:])}
        for _, row, _ in rows
        if len(row) == len(header)
    }


def _number(text: str) -> str | int | float:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_clotho(path: str | os.PathLike, *, split: str | None = None, curate: bool = False) -> Corpus:
    """Clotho v2.1 captions CSV + audio folder -> Corpus (see module docstring for layouts)."""
    csv_path, split = _find_clotho_csv(corpus_path(path), split)
    audio_dir = _find_clotho_audio(csv_path, split)
    header, rows = _csv_rows(csv_path)
    missing = [c for c in CLOTHO_COLUMNS if c not in header]
    if missing:
        raise CorpusError(f"{csv_path}: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
    col = {name: header.index(name) for name in CLOTHO_COLUMNS}
    toy = _load_toy_attributes(csv_path, split)
    corpus = Corpus("toy" if toy is not None else "clotho", split, [])
    finder, seen = FileFinder(audio_dir), {}
    for line, row, problem in rows:
        source = f"{csv_path.name}:{line}"
        name = row[col["file_name"]] if len(row) > col["file_name"] else ""
        reason = problem or _clotho_row_problem(row, header, col, seen)
        if reason:
            corpus.rejected.append(Rejected(source, printable(name), reason))
            continue
        seen[name] = line
        caps = Captions(name, source, corpus, curate)
        for k in range(1, 6):
            caps.add(k, row[col[f"caption_{k}"]], f"caption_{k}")
        audio = finder.find(name)
        reason = check_file(audio if audio else audio_dir / name, "audio")
        if reason:
            corpus.rejected.append(Rejected(source, name, reason))
        elif caps.finish():
            meta = dict(toy.get(name, {})) if toy else {}
            corpus.items.append(Item(name, str(audio.absolute()), caps.texts, "audio", meta, caps.ids))
    return corpus


def _clotho_row_problem(row: list[str], header: list[str], col: dict[str, int], seen: dict[str, int]) -> str:
    if len(row) != len(header):
        return f"unreadable row: expected {len(header)} columns, got {len(row)}"
    bad = [h for h, v in zip(header, row) if BAD_UTF8.search(v) and h in col]
    if bad:
        return f"not valid UTF-8 text in {', '.join(bad)}"
    name = row[col["file_name"]]
    if not name.strip():
        return "empty file_name"
    if name in seen:
        return f"duplicate file_name (first at line {seen[name]})"
    return ""
