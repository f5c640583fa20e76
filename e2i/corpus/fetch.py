"""Generic download helpers: md5-checked, resumable HTTP download (``Range``), archive extraction that
never writes outside its target, and renaming of file names with spaces. No dataset knowledge here: the
dataset tables and the ``e2i download`` stage are in :mod:`e2i.corpus.download`.

    download_file(url, Path("data/x.7z"), md5)   # "present" | "downloaded"; resumes data/x.7z.part
    extract_archive(Path("data/x.7z"), Path("data"))
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

from e2i.errors import E2IError

CHUNK = 1 << 20  # bytes per read/write and per progress update
ARCHIVE_SUFFIXES = (".7z", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class DownloadError(E2IError):
    """A file could not be fetched (HTTP error, connection lost after all retries)."""


class ChecksumError(E2IError):
    """A downloaded file does not match its published checksum (it is moved to ``<name>.bad``)."""


# --------------------------------------------------------------------------------------------------
# Checksums


def md5_file(path: Path, chunk: int = CHUNK) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Download with resume


def _progress(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        leave=False,
    )


def _fetch_once(url: str, part: Path, *, timeout: float, progress: bool) -> None:
    """One HTTP request appending to ``part`` from its current size (``Range``); raises on errors."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "e2i-download"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # range beyond the end: the .part is already complete
            return
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the range: start again from zero
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with (
            open(part, "ab" if offset else "wb") as out,
            _progress(total, offset, part.name[:-5], progress) as bar,
        ):
            while block := response.read(CHUNK):
                out.write(block)
                bar.update(len(block))
        if total is not None and part.stat().st_size < total:
            raise ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")


def download_file(
    url: str, dest: Path, md5: str | None, *, retries: int = 3, timeout: float = 60.0, progress: bool = True
) -> str:
    """Fetch ``url`` to ``dest`` via ``dest.part`` (resumed), check ``md5``; returns what was done.

    Returns ``"present"`` (dest already there with the right md5) or ``"downloaded"``. Raises
    :class:`ChecksumError` (file moved to ``dest.bad``) or :class:`DownloadError`.
    """
    dest = Path(dest)
    if dest.exists() and (md5 is None or md5_file(dest) == md5):
        return "present"
    part = dest.with_name(dest.name + ".part")
    if dest.exists():  # wrong bytes under the final name (e.g. an older version): do not trust them
        dest.replace(dest.with_name(dest.name + ".bad"))
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout=timeout, progress=progress)
            break
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, IncompleteRead
            if attempt == retries:
                size = part.stat().st_size if part.exists() else 0
                raise DownloadError(f"{url}: {exc} ({size} bytes kept in {part}; re-run to resume)") from exc
            time.sleep(min(2.0**attempt, 30.0))
    got = md5_file(part)
    if md5 is not None and got != md5:
        bad = dest.with_name(dest.name + ".bad")
        part.replace(bad)
        raise ChecksumError(
            f"{dest.name}: md5 {got} != expected {md5}; moved to {bad} (delete it and re-run)"
        )
    part.replace(dest)
    return "downloaded"


# --------------------------------------------------------------------------------------------------
# Extraction


def _inside(root: Path, member: str) -> bool:
    target = (root / member).resolve()
    return target == root or root in target.parents


def _extract_7z(archive: Path, dest: Path) -> int:
    try:
        import py7zr
    except ImportError:
        tool = next((t for t in ("7z", "7za", "7zr") if shutil.which(t)), None)
        if tool is None:
            raise E2IError(
                f"{archive.name}: extracting .7z needs the py7zr package or a 7z/7za binary "
                "(pip install py7zr, or apt-get install p7zip-full)"
            ) from None
        subprocess.run([tool, "x", "-y", f"-o{dest}", str(archive)], check=True, stdout=subprocess.DEVNULL)
        return -1  # unknown
    with py7zr.SevenZipFile(archive, mode="r") as z:
        bad = [n for n in z.getnames() if not _inside(dest, n)]
        if bad:
            raise E2IError(f"{archive.name}: member {bad[0]!r} would be written outside {dest}")
        z.extractall(path=dest)
        return len(z.getnames())


def extract_archive(archive: Path, dest: Path) -> int:
    """Extract ``archive`` into ``dest`` (members must stay inside ``dest``); returns the number of members
    (-1 when an external 7z binary did the work)."""
    dest = Path(dest).resolve()
    name = archive.name.lower()
    if name.endswith(".7z"):
        return _extract_7z(archive, dest)
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
            bad = [n for n in names if not _inside(dest, n)]
            if bad:
                raise E2IError(f"{archive.name}: member {bad[0]!r} would be written outside {dest}")
            z.extractall(dest)
            return len(names)
    if name.endswith(ARCHIVE_SUFFIXES):
        with tarfile.open(archive) as t:
            members = t.getmembers()
            t.extractall(dest, filter="data")  # 'data' filter: no absolute paths, links or devices
            return len(members)
    raise E2IError(f"{archive.name}: not an archive e2i can extract ({', '.join(ARCHIVE_SUFFIXES)})")


# --------------------------------------------------------------------------------------------------
# File names with spaces


def names_with_spaces(root: Path, dirs: Sequence[str]) -> list[Path]:
    found = []
    for d in dirs:
        base = root / d
        if base.is_dir():
            found.extend(sorted(p for p in base.rglob("*") if p.is_file() and " " in p.name))
    return found


def rename_spaces(root: Path, paths: Sequence[Path]) -> list[tuple[str, str]]:
    """Rename ``a b.wav`` -> ``a_b.wav`` (never overwriting); append the mapping to ``renamed_files.csv``."""
    done = []
    for path in paths:
        new = path.with_name(path.name.replace(" ", "_"))
        if new.exists():
            raise E2IError(f"{path}: cannot rename, {new.name} already exists")
        path.rename(new)
        done.append((str(path.relative_to(root)), str(new.relative_to(root))))
    if done:
        mapping = root / "renamed_files.csv"
        new_file = not mapping.exists()
        with open(mapping, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(["old_path", "new_path"])
            writer.writerows(done)
    return done
