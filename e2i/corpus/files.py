"""File helpers shared by the corpus readers: decoding text files so that bad bytes reject one row (not
the file), JSON loading with line numbers, media-file checks, modality from the extension, and
:class:`FileFinder` (a file name that differs only in Unicode form, case, spaces or underscores).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Any

from e2i.errors import CorpusError

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aiff", ".aif"}
)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
BAD_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape turns undecodable bytes into


def rel_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (posix), or as it is when it is not under ``root``."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def printable(text: str) -> str:
    """Undecodable bytes (surrogateescape) shown as U+FFFD so ids/messages stay printable."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def read_text(path: Path) -> str:
    """Whole file as text; bad UTF-8 bytes kept as lone surrogates so rows can be rejected one by one."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorpusError(f"{path}: cannot read ({err.strerror})") from err
    return data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


def load_json(path: Path) -> Any:
    """Parsed JSON of ``path``; bad UTF-8 or bad JSON is a :class:`CorpusError` naming the line."""
    text = read_text(path)
    if BAD_UTF8.search(text):
        line = text[: BAD_UTF8.search(text).start()].count("\n") + 1
        raise CorpusError(f"{path}: not valid UTF-8 (line {line})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CorpusError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err


class FileFinder:
    """Finds ``name`` in ``folder``; falls back to a unique match ignoring Unicode form, case, spaces
    and underscores (archives extracted on other systems, or names 'fixed' by hand)."""

    def __init__(self, folder: Path):  # or an e2i.corpus.fspath.FsPath
        self.folder = folder
        self._index: dict[str, list[str]] | None = None

    @staticmethod
    def _key(name: str) -> str:
        return unicodedata.normalize("NFC", name).casefold().replace(" ", "").replace("_", "")

    def find(self, name: str) -> Path | None:
        exact = self.folder / name
        if exact.is_file():
            return exact
        if self._index is None:
            self._index = {}
            for entry in self.folder.iterdir() if self.folder.is_dir() else []:
                self._index.setdefault(self._key(entry.name), []).append(entry.name)
        hits = self._index.get(self._key(name), [])
        return self.folder / hits[0] if len(hits) == 1 and (self.folder / hits[0]).is_file() else None


def check_file(path: Path | None, label: str) -> str:
    """'' if ``path`` is a non-empty file, else the rejection reason."""
    if path is None or not path.is_file():
        return f"{label} file not found: {path}"
    if path.stat().st_size == 0:
        return f"{label} file is empty: {path}"
    return ""


def modality_of(path: str) -> str | None:
    """The modality of a media file from its extension: "audio", "image" or None (neither)."""
    ext = os.path.splitext(path)[1].lower()
    return "audio" if ext in AUDIO_EXTENSIONS else "image" if ext in IMAGE_EXTENSIONS else None
