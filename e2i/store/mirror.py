"""Mirror a store split to object storage: ``s3://``, ``hf://datasets/<owner>/<repo>[/<prefix>]`` or a local path.

    mirror = Mirror("s3://bucket/stores", "stores/clotho/development")
    report = mirror.sync(*split_files("stores/clotho/development"))   # shards..., then manifest.json
    print(report.summary())   # "mirror s3://bucket/stores/clotho/development: 4 uploaded, 0 failed"

Conventions:

- The remote copy of ``<cache-dir>/<dataset>/<split>/<rel>`` is ``<uri>/<dataset>/<split>/<rel>``
  (``Mirror`` is given the split dir; ``remote_root`` adds the last two path parts), so one mirror URI
  holds every dataset and split of a cache dir, laid out like the cache dir itself.
- Only complete files are uploaded (``*.parquet`` shards that are not hidden temporaries, see
  :func:`split_files`); ``manifest.json`` is uploaded last, and only when every other file of the sync
  made it, so a remote manifest never names a shard that is not there.
- A file is uploaded again only when its size or mtime changed since its last successful upload
  (shards are immutable; the manifest and ``rejected.parquet`` are rewritten at each checkpoint).
- Failures are retried with exponential backoff (``attempts`` tries, waiting ``backoff * 2**k`` s) and
  then reported in :class:`MirrorReport`; the rest of that sync is reported as not attempted (the next
  sync tries them again). Nothing is ever written or deleted in the local store.
- S3: pyarrow's S3 filesystem (:func:`e2i.store.fs.open_fs`): endpoint from ``AWS_ENDPOINT_URL[_S3]``
  (S3-compatible stores such as MinIO, moto), keys from the AWS env variables. An object appears only
  when its upload completes, so no temporary names are needed there. Local targets use tmp + rename.
- Hugging Face: ``huggingface_hub.HfApi`` (``create_commit`` of up to 500 data files at a time, then
  ``upload_file`` for the manifest); the dataset repo is created (private) if missing. The token comes
  from the caller (``--hf-token``, default env ``HF_TOKEN``) and is never written or printed.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs

from e2i.errors import ConfigError
from e2i.store.fs import open_fs
from e2i.store.schema import KINDS, MANIFEST, REJECTED

IMAGES_DIR = "pseudo_images"


@dataclass
class MirrorReport:
    """What one or more syncs did: uploaded / unchanged relative paths and failures (rel -> error)."""

    uri: str
    uploaded: list[str] = field(default_factory=list)
    unchanged: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    syncs: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def merge(self, other: MirrorReport) -> None:
        """Accumulate ``other`` (a later sync): a file that later succeeded is no longer failed."""
        self.uploaded += other.uploaded
        self.unchanged += other.unchanged
        self.syncs += other.syncs
        for rel in other.uploaded:
            self.failed.pop(rel, None)
        self.failed.update(other.failed)

    def summary(self) -> str:
        text = f"mirror {self.uri}: {len(self.uploaded)} uploaded, {len(self.failed)} failed"
        if self.failed:
            rel, err = next(iter(self.failed.items()))
            text += f" (first: {rel}: {err})"
        return text

    def to_dict(self) -> dict:
        return {"uri": self.uri, "uploaded": len(self.uploaded), "failed": dict(self.failed), "syncs": self.syncs}


def split_files(split_dir: str | os.PathLike, *, embeddings: bool = True, images: bool = False
                ) -> tuple[list[str], list[str]]:
    """Complete files of a local split, as ``(data files, files to upload last)`` relative paths.

    Data files: shards ``items/*.parquet`` / ``captions/*.parquet`` (not hidden temporaries) when
    ``embeddings``, ``rejected.parquet``, and ``pseudo_images/**/*.png`` + ``meta.json`` (+ the
    ``embeddings.parquet`` of `e2i images --include-embeddings`) when ``images``. Last: the manifest.
    """
    root = Path(split_dir)
    files: list[str] = []
    if embeddings:
        for kind in KINDS:
            d = root / kind
            if d.is_dir():
                files += sorted(f"{kind}/{p.name}" for p in d.iterdir() if _complete(p, ".parquet"))
        if (root / REJECTED).is_file():
            files.append(REJECTED)
    if images and (root / IMAGES_DIR).is_dir():
        files += sorted(p.relative_to(root).as_posix() for p in (root / IMAGES_DIR).rglob("*")
                        if _complete(p, (".png", ".json", ".parquet")))
    last = [MANIFEST] if (root / MANIFEST).is_file() else []
    return files, last


def _complete(p: Path, suffix: str | tuple[str, ...]) -> bool:
    """A finished file: right suffix, not hidden (tmp files start with '.'), not another tool's '_x'."""
    return p.is_file() and p.name.endswith(suffix) and not p.name.startswith((".", "_"))


def remote_root(uri: str, split_dir: str | os.PathLike) -> str:
    """``<uri>/<dataset>/<split>`` for a split dir ``.../<dataset>/<split>``."""
    parts = Path(split_dir).resolve().parts
    return posixpath.join(uri.rstrip("/"), parts[-2], parts[-1])


def add_mirror_arguments(parser: argparse.ArgumentParser, *, what: str = "the split", rows: str = "embedded"
                         ) -> None:
    """The mirror flags of `e2i cache` and `e2i images`; read back with :func:`mirror_from_args`."""
    a = parser.add_argument
    a("--mirror", help=f"copy {what} to s3://bucket/prefix, hf://datasets/owner/repo[/prefix] or a local dir")
    a("--upload-every", type=int,
      help=f"with a mirror: upload every N {rows} rows too (default: only at the end)")
    a("--hf-dataset",
      help="mirror to this Hugging Face dataset repo (owner/name); same as --mirror hf://datasets/...")
    a("--hf-prefix", help="path inside the --hf-dataset repo (default: repo root)")
    a("--hf-token", help="Hugging Face token (default: env HF_TOKEN); never written anywhere")


def mirror_from_args(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(mirror URI or None, Hub token or None) of the :func:`add_mirror_arguments` flags."""
    if args.hf_dataset and args.mirror:
        raise ConfigError("give either --mirror or --hf-dataset, not both")
    uri = hf_uri(args.hf_dataset, args.hf_prefix) if args.hf_dataset else args.mirror
    if args.upload_every and not uri:
        raise ConfigError("--upload-every needs --mirror or --hf-dataset")
    if args.upload_every is not None and args.upload_every < 1:
        raise ConfigError(f"--upload-every: must be >= 1, got {args.upload_every}")
    return uri, args.hf_token or os.environ.get("HF_TOKEN")


def hf_uri(repo: str, prefix: str | None = None) -> str:
    """The ``--hf-dataset owner/repo --hf-prefix p`` spelling as a mirror URI."""
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(f"--hf-dataset: expected 'owner/name', got {repo!r}")
    return "hf://datasets/" + posixpath.join(repo, (prefix or "").strip("/")).rstrip("/")


# ----------------------------------------------------------------------------------------- targets
class _Target:
    """Where files go. ``put_many`` uploads a batch (one attempt); raises on failure."""

    def put_many(self, pairs: list[tuple[Path, str]]) -> None:
        for local, rel in pairs:
            self.put(local, rel)

    def put(self, local: Path, rel: str) -> None:
        raise NotImplementedError

    files_per_call = 1  # files per put_many call (a call is all-or-nothing and retried as a whole)


class _ArrowTarget(_Target):
    """Local directory or S3 via pyarrow.fs (local: tmp + rename so readers never see half a file)."""

    def __init__(self, uri: str) -> None:
        self.fs, self.root = open_fs(uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def put(self, local: Path, rel: str) -> None:
        dest = posixpath.join(self.root, rel)
        self.fs.create_dir(posixpath.dirname(dest), recursive=True)
        if self.local:
            tmp = posixpath.join(posixpath.dirname(dest), f".{posixpath.basename(dest)}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                shutil.copyfile(local, tmp)
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            return
        with open(local, "rb") as src, self.fs.open_output_stream(dest) as out:
            shutil.copyfileobj(src, out, length=8 << 20)


class _HFTarget(_Target):
    """A Hugging Face dataset repo: ``hf://datasets/<owner>/<repo>[/<prefix>]``."""

    files_per_call = 500  # one commit per 500 files: large commits are slow and fragile on the Hub

    def __init__(self, uri: str, token: str | None) -> None:
        from huggingface_hub import HfApi

        rest = uri[len("hf://"):]
        if not rest.startswith("datasets/") or rest.count("/") < 2:
            raise ConfigError(f"{uri}: expected hf://datasets/<owner>/<repo>[/<prefix>]")
        parts = rest.split("/")
        self.repo_id, self.prefix = f"{parts[1]}/{parts[2]}", "/".join(p for p in parts[3:] if p)
        self.api = HfApi(token=token)
        self._repo_ready = False

    def _ensure_repo(self) -> None:
        if not self._repo_ready:
            self.api.create_repo(self.repo_id, repo_type="dataset", private=True, exist_ok=True)
            self._repo_ready = True

    def put_many(self, pairs: list[tuple[Path, str]]) -> None:
        from huggingface_hub import CommitOperationAdd

        if len(pairs) == 1:
            self.put(*pairs[0])
            return
        self._ensure_repo()
        ops = [CommitOperationAdd(path_in_repo=posixpath.join(self.prefix, rel), path_or_fileobj=str(local))
               for local, rel in pairs]
        self.api.create_commit(self.repo_id, ops, repo_type="dataset",
                               commit_message=f"e2i: upload {len(ops)} file(s)")

    def put(self, local: Path, rel: str) -> None:
        self._ensure_repo()
        self.api.upload_file(path_or_fileobj=str(local), path_in_repo=posixpath.join(self.prefix, rel),
                             repo_id=self.repo_id, repo_type="dataset", commit_message=f"e2i: upload {rel}")


def _open_target(uri: str, token: str | None) -> _Target:
    if uri.startswith("hf://"):
        return _HFTarget(uri, token)
    if "://" in uri and not uri.startswith(("s3://", "file://")):
        raise ConfigError(f"--mirror {uri}: unsupported scheme (use s3://, hf://datasets/... or a local path)")
    return _ArrowTarget(uri)


# ----------------------------------------------------------------------------------------- mirror
class Mirror:
    """Incremental uploader of one local split dir to ``remote_root(uri, split_dir)``.

    ``attempts`` tries per file (per commit of up to 500 files for hf://) with waits ``backoff * 2**k``
    seconds between them. ``source``: read the files from this local dir instead of ``split_dir`` (which
    then only names the remote dir; `e2i images --images-dir`). What was uploaded is remembered per instance: a new run uploads its files again.
    """

    def __init__(self, uri: str, split_dir: str | os.PathLike, *, token: str | None = None,
                 attempts: int = 4, backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep,
                 source: str | os.PathLike | None = None) -> None:
        self.split_dir = Path(split_dir if source is None else source)  # where the files are read from
        self.uri = remote_root(uri, split_dir)
        self.attempts, self.backoff, self._sleep = max(1, attempts), backoff, sleep
        self._target = _open_target(self.uri, token)
        self._done: dict[str, tuple[int, int]] = {}  # rel -> (size, mtime_ns) at its last successful upload

    def sync(self, files: Iterable[str], last: Iterable[str] = ()) -> MirrorReport:
        """Upload changed ``files`` (relative to the split dir), then ``last`` if all of them succeeded."""
        report = MirrorReport(self.uri, syncs=1)
        self._upload([f for f in files if self._changed(f, report)], report)
        if not report.failed:
            self._upload([f for f in last if self._changed(f, report)], report)
        return report

    def _changed(self, rel: str, report: MirrorReport) -> bool:
        try:
            stamp = self._stamp(rel)
        except OSError as exc:
            report.failed[rel] = f"{type(exc).__name__}: {exc}"
            return False
        if self._done.get(rel) == stamp:
            report.unchanged += 1
            return False
        return True

    def _upload(self, rels: list[str], report: MirrorReport) -> None:
        if not rels:
            return
        # Stamp before reading so a file rewritten during the upload counts as changed next time.
        stamps = {rel: self._stamp(rel) for rel in rels}
        step = self._target.files_per_call
        groups = [rels[i:i + step] for i in range(0, len(rels), step)]
        for k, group in enumerate(groups):
            err = self._retry(lambda g=group: self._target.put_many([(self.split_dir / r, r) for r in g]))
            if err is not None:  # target unreachable or refusing: do not hammer it file by file
                for rel in [r for g in groups[k:] for r in g]:
                    report.failed[rel] = err if rel in group else f"not attempted after: {err}"
                return
            for rel in group:
                self._done[rel] = stamps[rel]
                report.uploaded.append(rel)

    def _stamp(self, rel: str) -> tuple[int, int]:
        st = (self.split_dir / rel).stat()
        return st.st_size, st.st_mtime_ns

    def _retry(self, fn: Callable[[], None]) -> str | None:
        """Run ``fn`` up to ``attempts`` times; None on success, else the last error (one line)."""
        err = ""
        for k in range(self.attempts):
            try:
                fn()
                return None
            except Exception as exc:  # noqa: BLE001 - any upload error is retried, then reported
                err = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                if k + 1 < self.attempts:
                    self._sleep(self.backoff * 2**k)
        return err
