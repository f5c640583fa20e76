"""Download public corpora with checksums and resume: ``e2i download clotho --root ~/data/CLOTHO_v2.1``.

    e2i download clotho --root data/CLOTHO_v2.1                 # ~7 GB, resumable, md5-checked
    e2i download clotho --root data/CLOTHO_v2.1 --rename-spaces # also rename audio files with spaces

What happens, per file of the dataset's table (:data:`DATASETS`):

1. ``<root>/<name>`` exists and its md5 matches: kept (a re-run costs one hash per file).
2. Otherwise the bytes go to ``<root>/<name>.part``. A ``.part`` left by an interrupted run is resumed with
   an HTTP ``Range: bytes=N-`` request (a server that ignores ranges answers 200 and the file restarts from
   zero). Connection errors are retried (``--retries``), each retry resuming where the last one stopped.
3. The finished ``.part`` is md5-checked. A mismatch raises :class:`ChecksumError` and the file is moved to
   ``<name>.bad`` so it is never used (delete it and re-run). A match renames it to ``<name>``.
4. Archives (``.7z``, ``.zip``, ``.tar[.gz|.bz2|.xz]``, ``.tgz``) are extracted into ``<root>``; a marker
   ``<root>/.<name>.extracted`` makes re-runs skip them. Clotho's ``clotho_audio_<split>.7z`` extract to
   ``<root>/<split>/*.wav``, which :func:`e2i.corpus.sources.read_corpus` finds (``read_corpus("clotho", root,
   split="development")``). 7z needs ``py7zr`` (or a ``7z``/``7za``/``7zr`` binary on PATH).
5. Clotho has audio file names with spaces (and the CSVs name them so). They are reported; with
   ``--rename-spaces`` they are renamed (spaces -> underscores) and the mapping is written to
   ``<root>/renamed_files.csv``. The CSVs are left as downloaded (so they still match their checksums);
   e2i's Clotho reader resolves a CSV name to the file that differs only in spaces/underscores.

The base URL is overridable (``--base-url``, e.g. a mirror or a local test server) and so is the checksum
table (``--checksums MD5SUMS`` in ``md5sum`` format: ``<md5>  <file name>`` per line).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import http.client
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from e2i.errors import E2IError

CHUNK = 1 << 20  # bytes per read/write and per progress update
ARCHIVE_SUFFIXES = (".7z", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class DownloadError(E2IError):
    """A file could not be fetched (HTTP error, connection lost after all retries)."""


class ChecksumError(E2IError):
    """A downloaded file does not match its published checksum (it is moved to ``<name>.bad``)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: its name under the base URL and in the root dir, and its md5 (hex)."""

    name: str
    md5: str
    split: str | None = None  # audio archives/CSVs belong to one split; None = always downloaded

    @property
    def is_archive(self) -> bool:
        return self.name.lower().endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    base_url: str
    files: tuple[RemoteFile, ...]
    source: str  # where the table comes from (shown in --help)


# Clotho v2.1 (Drossos et al., ICASSP 2020), Zenodo record 4783391, CC BY 4.0 (audio: Freesound licences).
# md5 as published on the Zenodo record (the same table is used by aac-datasets and mirdata).
CLOTHO_V21 = DatasetSpec(
    name="clotho",
    base_url="https://zenodo.org/records/4783391/files",
    source="Zenodo record 4783391 (Clotho v2.1)",
    files=(
        RemoteFile("clotho_audio_development.7z", "c8b05bc7acdb13895bb3c6a29608667e", "development"),
        RemoteFile("clotho_audio_validation.7z", "7dba730be08bada48bd15dc4e668df59", "validation"),
        RemoteFile("clotho_audio_evaluation.7z", "4569624ccadf96223f19cb59fe4f849f", "evaluation"),
        RemoteFile("clotho_captions_development.csv", "d4090b39ce9f2491908eebf4d5b09bae", "development"),
        RemoteFile("clotho_captions_validation.csv", "5879e023032b22a2c930aaa0528bead4", "validation"),
        RemoteFile("clotho_captions_evaluation.csv", "1b16b9e57cf7bdb7f13a13802aeb57e2", "evaluation"),
        RemoteFile("clotho_metadata_development.csv", "170d20935ecfdf161ce1bb154118cda5", "development"),
        RemoteFile("clotho_metadata_validation.csv", "2e010427c56b1ce6008b0f03f41048ce", "validation"),
        RemoteFile("clotho_metadata_evaluation.csv", "13946f054d4e1bf48079813aac61bf77", "evaluation"),
    ),
)

DATASETS: dict[str, DatasetSpec] = {"clotho": CLOTHO_V21}


# --------------------------------------------------------------------------------------------------
# Checksums


def md5_file(path: Path, chunk: int = CHUNK) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_checksums(path: str | os.PathLike, default: Sequence[RemoteFile] = ()) -> tuple[RemoteFile, ...]:
    """Read an ``md5sum``-style table (``<md5>  <name>`` per line, ``#`` comments) into :class:`RemoteFile` s.

    Splits are kept from ``default`` for names it knows; other names get the split named in
    ``clotho_*_<split>.*`` or none.
    """
    known = {f.name: f.split for f in default}
    files = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 32:
            raise E2IError(f"{path}:{lineno}: expected '<md5>  <file name>', got {line!r}")
        md5, name = parts[0].lower(), parts[1].lstrip("*").strip()
        files.append(RemoteFile(name, md5, known.get(name, _split_of(name))))
    if not files:
        raise E2IError(f"{path}: no checksums found")
    return tuple(files)


def _split_of(name: str) -> str | None:
    stem = name.split(".")[0]
    for split in ("development", "validation", "evaluation"):
        if stem.endswith("_" + split):
            return split
    return None


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


# --------------------------------------------------------------------------------------------------
# The whole dataset


def download_dataset(
    spec: DatasetSpec,
    root: str | os.PathLike,
    *,
    splits: Sequence[str] | None = None,
    base_url: str | None = None,
    extract: bool = True,
    delete_archives: bool = False,
    rename: bool = False,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
) -> dict:
    """Download (resumable, md5-checked), extract and check file names; returns a summary dict.

    Summary keys: ``downloaded``, ``present``, ``extracted``, ``bytes_downloaded``, ``spaces`` (paths
    with spaces found after extraction), ``renamed`` ((old, new) pairs).
    """
    root = Path(root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    url = (base_url or spec.base_url).rstrip("/")
    files = [f for f in spec.files if splits is None or f.split is None or f.split in splits]
    summary: dict = {"downloaded": [], "present": [], "extracted": [], "bytes_downloaded": 0}
    for i, f in enumerate(files, 1):
        dest = root / f.name
        print(f"[{i}/{len(files)}] {f.name}", flush=True)
        status = download_file(
            f"{url}/{f.name}", dest, f.md5, retries=retries, timeout=timeout, progress=progress
        )
        summary[status].append(f.name)
        if status == "downloaded":
            summary["bytes_downloaded"] += dest.stat().st_size
    if extract:
        for f in files:
            if f.is_archive and (root / f.name).exists():
                summary["extracted"].extend(_extract_once(root, f, delete_archives))
    audio_dirs = sorted({f.split for f in files if f.split} | {"clotho_audio_files"})
    spaces = names_with_spaces(root, audio_dirs)
    summary["spaces"] = [str(p.relative_to(root)) for p in spaces]
    summary["renamed"] = rename_spaces(root, spaces) if rename else []
    return summary


def _extract_once(root: Path, f: RemoteFile, delete_archive: bool) -> list[str]:
    marker = root / f".{f.name}.extracted"
    archive = root / f.name
    if marker.exists():
        return []
    print(f"extracting {f.name} ...", flush=True)
    n = extract_archive(archive, root)
    marker.write_text(f"{f.md5}  {f.name}\n{n} entries\n", encoding="utf-8")
    if delete_archive:
        archive.unlink()
    return [f.name]


# --------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dataset", choices=sorted(DATASETS), help="dataset to download (clotho = Clotho v2.1)"
    )
    parser.add_argument("--root", required=True, help="directory to download and extract into")
    parser.add_argument(
        "--splits",
        nargs="+",
        default=None,
        metavar="SPLIT",
        help="only these splits (clotho: development validation evaluation); default all",
    )
    parser.add_argument(
        "--base-url",
        default=None,
        help="download from this URL prefix instead of the dataset's (mirror or test server)",
    )
    parser.add_argument(
        "--checksums",
        default=None,
        metavar="FILE",
        help="md5sum-format table replacing the built-in one ('<md5>  <file name>' per line)",
    )
    parser.add_argument("--no-extract", action="store_true", help="download and check only, do not extract")
    parser.add_argument("--delete-archives", action="store_true", help="delete archives after extraction")
    parser.add_argument(
        "--rename-spaces",
        action="store_true",
        help="rename extracted files with spaces in their names (spaces -> underscores)",
    )
    parser.add_argument(
        "--retries", type=int, default=3, help="retries per file on connection errors (resumed)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    spec = DATASETS[args.dataset]
    if args.checksums:
        spec = DatasetSpec(
            spec.name, spec.base_url, read_checksums(args.checksums, spec.files), args.checksums
        )
    s = download_dataset(
        spec,
        args.root,
        splits=args.splits,
        base_url=args.base_url,
        extract=not args.no_extract,
        delete_archives=args.delete_archives,
        rename=args.rename_spaces,
        retries=args.retries,
        timeout=args.timeout,
        progress=not args.no_progress,
    )
    spaces = len(s["spaces"])
    names = (
        f"{spaces} file names with spaces renamed (renamed_files.csv)"
        if s["renamed"]
        else f"{spaces} file names with spaces kept (e2i's reader handles them; --rename-spaces renames)"
    )
    print(
        f"{spec.name}: {len(s['downloaded'])} downloaded ({s['bytes_downloaded'] / 2**20:.1f} MiB), "
        f"{len(s['present'])} already present, {len(s['extracted'])} archives extracted, {names} "
        f"-> {Path(args.root).expanduser().resolve()}"
    )
    return 0
