"""Download public corpora with checksums and resume: ``e2i download clotho --root ~/data/CLOTHO_v2.1``.

    e2i download clotho --root data/CLOTHO_v2.1                 # ~7 GB, resumable, md5-checked
    e2i download clotho --root data/CLOTHO_v2.1 --rename-spaces # also rename audio files with spaces

What happens, per file of the dataset's table (:data:`DATASETS`):

Clotho also gets DCASE 2025 Task 6's additional relevance annotations of the evaluation split
(:data:`DCASE2025_RELEVANCE`, from the task's baseline repository, md5-checked like the rest; a failed
fetch only warns); `e2i evaluate --relevance` and `e2i finetune` use them.

1. ``<root>/<name>`` exists and its md5 matches: kept (a re-run costs one hash per file).
2. Otherwise the bytes go to ``<root>/<name>.part``. A ``.part`` left by an interrupted run is resumed with
   an HTTP ``Range: bytes=N-`` request (a server that ignores ranges answers 200 and the file restarts from
   zero). Connection errors are retried (``--retries``), each retry resuming where the last one stopped.
3. The finished ``.part`` is md5-checked. A mismatch raises :class:`ChecksumError` and the file is moved to
   ``<name>.bad`` so it is never used (delete it and re-run). A match renames it to ``<name>``.
4. Archives (``.7z``, ``.zip``, ``.tar[.gz|.bz2|.xz]``, ``.tgz``) are extracted into ``<root>``; a marker
   ``<root>/.<name>.extracted`` makes re-runs skip them. Clotho's ``clotho_audio_<split>.7z`` extract to
   ``<root>/<split>/*.wav``, which :func:`e2i.corpus.read_corpus` finds (``read_corpus("clotho", root,
   split="development")``). 7z needs ``py7zr`` (or a ``7z``/``7za``/``7zr`` binary on PATH).
5. Clotho has audio file names with spaces (and the CSVs name them so). They are reported; with
   ``--rename-spaces`` they are renamed (spaces -> underscores) and the mapping is written to
   ``<root>/renamed_files.csv``. The CSVs are left as downloaded (so they still match their checksums);
   e2i's Clotho reader resolves a CSV name to the file that differs only in spaces/underscores.

The base URL is overridable (``--base-url``, e.g. a mirror or a local test server) and so is the checksum
table (``--checksums MD5SUMS`` in ``md5sum`` format: ``<md5>  <file name>`` per line). The generic parts
(resumable md5-checked download, safe extraction, renaming) are :mod:`e2i.corpus.fetch`; this module holds
the dataset tables, :func:`download_dataset` and the ``e2i download`` stage (``add_arguments``/``run``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from e2i.corpus.fetch import (
    ARCHIVE_SUFFIXES,
    ChecksumError,
    DownloadError,
    download_file,
    extract_archive,
    names_with_spaces,
    rename_spaces,
)
from e2i.errors import E2IError

# The errors and single-file helpers are part of this stage's API (what download_dataset raises/uses).
__all__ = [
    "CLOTHO_V21",
    "DCASE2025_RELEVANCE",
    "DATASETS",
    "ChecksumError",
    "DatasetSpec",
    "DownloadError",
    "RemoteFile",
    "add_arguments",
    "download_dataset",
    "download_file",
    "extract_archive",
    "read_checksums",
    "run",
]


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: its name under the base URL and in the root dir, and its md5 (hex)."""

    name: str
    md5: str
    split: str | None = None  # audio archives/CSVs belong to one split; None = always downloaded
    url: str | None = None  # full URL when the file is not under the dataset's base URL (a --base-url wins)

    @property
    def is_archive(self) -> bool:
        return self.name.lower().endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    base_url: str
    files: tuple[RemoteFile, ...]
    source: str  # where the table comes from (shown in --help)
    # annotations published elsewhere (own URL, same md5/resume machinery); a failed fetch is a warning
    extras: tuple[RemoteFile, ...] = ()


# DCASE 2025 Task 6 additional relevance annotations of the Clotho evaluation split: columns `query`
# (caption text) and `audio_filenames` (list literal of relevant clips), 1,037 queries. Published as
# resources/metadata_eval.csv of CPJKU/dcase2025_task6_baseline, commit 14bd413 (2025-05-09, "add new
# annotations for evaluation set"); the URL pins that commit so the md5 cannot move. Read by
# e2i.evaluate.relevance_file (`e2i evaluate --relevance`) and by `e2i finetune`'s test evaluation.
DCASE2025_RELEVANCE = "dcase2025_task6_metadata_eval.csv"
DCASE2025_RELEVANCE_URL = ("https://raw.githubusercontent.com/CPJKU/dcase2025_task6_baseline/"
                           "14bd413eb214056f90fdbb338842527407fb9985/resources/metadata_eval.csv")

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
    extras=(
        RemoteFile(DCASE2025_RELEVANCE, "15de2d0afb9c11950f15c46a70b335ba", "evaluation", DCASE2025_RELEVANCE_URL),
    ),
)

DATASETS: dict[str, DatasetSpec] = {"clotho": CLOTHO_V21}


# --------------------------------------------------------------------------------------------------
# Checksums


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
        src = f.url if f.url and not base_url else f"{url}/{f.name}"
        status = download_file(
            src, dest, f.md5, retries=retries, timeout=timeout, progress=progress
        )
        summary[status].append(f.name)
        if status == "downloaded":
            summary["bytes_downloaded"] += dest.stat().st_size
    for f in (f for f in spec.extras if splits is None or f.split is None or f.split in splits):
        src = f.url if f.url and not base_url else f"{url}/{f.name}"
        print(f"[extra] {f.name}", flush=True)
        try:
            status = download_file(src, root / f.name, f.md5, retries=retries, timeout=timeout, progress=progress)
        except DownloadError as exc:  # ChecksumError still raises: a wrong file must not be used
            print(f"warning: {exc}; evaluation runs without {f.name}", flush=True)
            continue
        summary[status].append(f.name)
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
        spec = dataclasses.replace(spec, files=read_checksums(args.checksums, spec.files), source=args.checksums)
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
