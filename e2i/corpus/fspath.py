"""Corpora anywhere: :class:`FsPath`, the slice of ``pathlib.Path`` the corpus readers use, over a pyarrow
filesystem (``s3://bucket/key``, or any URI ``pyarrow.fs.FileSystem.from_uri`` knows: ``gs://``,
``hdfs://``, ``file://``), and :func:`corpus_path` (a local path stays a ``pathlib.Path``).

    root = corpus_path("s3://bucket/clotho")        # FsPath; custom endpoint: AWS_ENDPOINT_URL
    csv = root / "clotho_captions_development.csv"
    csv.is_file(), csv.read_bytes(), str(csv)      # True, b"file_name,...", "s3://bucket/clotho/..."

``str()`` of an FsPath is its URI: that is what the readers put in ``Item.path``, and what the Ray Data
decode tasks fetch on the workers (``e2i.cache.media``); the driver reads only metadata files.

Object stores have no directories: a "directory" is a key prefix. Each directory is listed once per root
(one LIST per 1000 keys) and ``is_file``/``stat``/``exists`` of its entries answer from that listing, so a
reader checking every media file of a split costs a listing, not a HEAD request per file.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2i.errors import CorpusError


def is_uri(path: Any) -> bool:
    """True for ``scheme://...`` strings (not for local paths, ``pathlib.Path`` or ``file://``)."""
    return isinstance(path, (str, FsPath)) and "://" in str(path) and not str(path).startswith("file://")


def corpus_path(path: str | os.PathLike) -> Path | FsPath:
    """``path`` as the readers use it: an :class:`FsPath` for a URI, else a ``pathlib.Path``."""
    if isinstance(path, FsPath):
        return path
    text = os.fspath(path)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if is_uri(text):
        from e2i.store.fs import open_fs  # the store's filesystem rules (endpoint, region, keys)

        try:
            fs, root = open_fs(text)
        except Exception as exc:  # noqa: BLE001 - bad URI / unknown scheme: one line naming it
            raise CorpusError(f"{text}: cannot open ({str(exc).strip().splitlines()[0]})") from None
        scheme = text.split("://", 1)[0]
        return FsPath(fs, root.rstrip("/"), f"{scheme}://", {})
    return Path(text)


@dataclass(frozen=True)
class _Stat:
    st_size: int


class FsPath:
    """A file or directory on a pyarrow filesystem, with the ``pathlib`` methods the readers call.

    ``listings`` is shared by every FsPath derived from one root: {directory: {name: (is_file, size)}}.
    """

    def __init__(self, fs: Any, path: str, prefix: str, listings: dict) -> None:
        self.fs, self.path, self.prefix, self.listings = fs, path, prefix, listings

    # -- names
    def __str__(self) -> str:
        return self.prefix + self.path

    def __repr__(self) -> str:
        return f"FsPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FsPath) and str(self) == str(other)

    def __lt__(self, other: FsPath) -> bool:
        return str(self) < str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, name: str | os.PathLike) -> FsPath:
        text = os.fspath(name) if not isinstance(name, FsPath) else name.path
        joined = posixpath.normpath(posixpath.join(self.path, text))
        return FsPath(self.fs, joined, self.prefix, self.listings)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> FsPath:
        return FsPath(self.fs, posixpath.dirname(self.path), self.prefix, self.listings)

    def absolute(self) -> FsPath:
        return self

    def is_absolute(self) -> bool:
        return True

    def relative_to(self, other: FsPath) -> Path:
        rel = posixpath.relpath(self.path, other.path)
        if rel.startswith(".."):
            raise ValueError(f"{self} is not under {other}")
        return Path(rel)

    # -- state (answered from the parent's listing)
    def _listing(self) -> dict[str, tuple[bool, int]]:
        """{name: (is_file, size)} of the entries directly under this directory ({} if there is none)."""
        if self.path not in self.listings:
            import pyarrow.fs as pafs

            try:
                infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
            except OSError as exc:
                raise CorpusError(f"{self}: cannot list ({str(exc).strip().splitlines()[0]})") from None
            self.listings[self.path] = {i.base_name: (i.type == pafs.FileType.File, i.size or 0) for i in infos}
        return self.listings[self.path]

    def _entry(self) -> tuple[bool, int] | None:
        return self.parent._listing().get(self.name)

    def is_file(self) -> bool:
        entry = self._entry()
        return entry is not None and entry[0]

    def is_dir(self) -> bool:
        entry = self._entry()
        return (entry is not None and not entry[0]) or bool(self.path and self._listing())

    def exists(self) -> bool:
        return self._entry() is not None or self.is_dir()

    def stat(self) -> _Stat:
        entry = self._entry()
        if entry is None:
            raise FileNotFoundError(str(self))
        return _Stat(entry[1])

    def iterdir(self) -> list[FsPath]:
        return [self / name for name in sorted(self._listing())]

    def glob(self, pattern: str) -> list[FsPath]:
        """Entries matching ``pattern`` (``*``/``?`` in the last part; earlier parts are plain names)."""
        folder, _, last = pattern.rpartition("/")
        base = self / folder if folder else self
        return [base / n for n in sorted(base._listing()) if fnmatch.fnmatchcase(n, last)]

    def rglob(self, pattern: str) -> list[FsPath]:
        out = []
        for child in self.iterdir():
            if child.is_file() and fnmatch.fnmatchcase(child.name, pattern):
                out.append(child)
            elif child.is_dir():
                out += child.rglob(pattern)
        return out

    def read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        except FileNotFoundError:
            raise CorpusError(f"{self}: no such file") from None
        except OSError as exc:
            raise CorpusError(f"{self}: cannot read ({str(exc).strip().splitlines()[0]})") from None
