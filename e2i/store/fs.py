"""Filesystem access of the store: local paths and ``s3://`` through one pyarrow filesystem.

Owns: :func:`open_fs` (a path or URI -> ``(filesystem, path)``), listing, atomic writes, sha256 of a
file, parquet row counts from footers, JSON reading, how files are named in messages and the reason of
an I/O error. Knows nothing of the store's columns (see :mod:`e2i.store.schema`).

Conventions:

- ``path`` arguments are local paths or ``s3://bucket/prefix`` (custom endpoint: env
  ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``; keys from the usual AWS env variables).
- A file is complete iff it exists under its final name: local files are written to a hidden temporary
  name (``.<name>.<random>.tmp``) and renamed, so a killed run never leaves a half-written file. On S3
  the object only appears once the upload completes, so files are written under their final name
  directly. Temporary leftovers (:func:`is_tmp_name`) are ignored by every reader and removed by the
  writer; :func:`is_shard_name` tells a complete shard.
- Paths inside a filesystem are joined with '/' (:func:`join`), for local POSIX paths and S3 keys alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from e2i.errors import StoreError, StoreWriteError

_READ_CHUNK = 8 << 20  # bytes per read when hashing a file


def open_fs(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for a local path, an ``s3://bucket/prefix`` URI or any other URI
    ``pyarrow.fs.FileSystem.from_uri`` knows (``gs://``, ``hdfs://``).

    S3: the endpoint comes from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (e.g.
    ``http://127.0.0.1:9000``; an ``http`` endpoint switches the scheme to http), the region from
    ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (default us-east-1), credentials from the AWS env variables.
    """
    text = os.fspath(uri)
    if text.startswith("s3://"):
        parsed = urlparse(text)
        kwargs: dict[str, Any] = {
            "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        }
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            ep = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs.update(endpoint_override=ep.netloc, scheme=ep.scheme or "https")
        path = (parsed.netloc + "/" + parsed.path.lstrip("/")).rstrip("/")
        return pafs.S3FileSystem(**kwargs), path
    if text.startswith("file://"):
        text = urlparse(text).path
    if "://" in text:  # gs://, hdfs://, ... : whatever pyarrow knows
        try:
            return pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            raise StoreError(f"{text}: unsupported URI ({str(exc).strip().splitlines()[0]}; use a local path, "
                             "s3://bucket/prefix or a URI pyarrow.fs knows)") from None
    return pafs.LocalFileSystem(), os.path.abspath(text)


def join(*parts: str) -> str:
    """Join filesystem paths ('/' for both local POSIX paths and S3 keys)."""
    return posixpath.join(*parts)


def is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.Directory


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(fs: pafs.FileSystem, directory: str) -> list[pafs.FileInfo]:
    """Files directly inside ``directory`` (sorted by name); [] if it does not exist."""
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True, recursive=False))
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.base_name)


def is_shard_name(base: str) -> bool:
    """A complete shard: ``*.parquet`` not hidden (tmp files start with '.', other tools' with '_')."""
    return base.endswith(".parquet") and not base.startswith((".", "_"))


def is_tmp_name(base: str) -> bool:
    return base.startswith(".") and base.endswith(".tmp")


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes | pa.Buffer) -> None:
    """Write ``data`` so that ``path`` is either absent/old or complete, never half-written."""
    if not isinstance(fs, pafs.LocalFileSystem):  # S3: an object becomes visible only when complete
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    directory, base = posixpath.split(path)
    tmp = join(directory, f".{base}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)  # rename(2): atomic on one filesystem
    except BaseException as exc:
        if exists(fs, tmp):
            fs.delete_file(tmp)
        if isinstance(exc, OSError):  # disk full, read-only: name the file, keep completed shards
            reason = io_reason(exc)
            raise StoreWriteError(f"{path}: cannot write ({reason}); completed shards are kept, re-run to "
                                  "resume") from exc
        raise


def io_reason(exc: OSError) -> str:
    """The reason of an OSError, also of pyarrow's ("Error writing bytes ... Detail: [errno 28] ...")."""
    if exc.errno:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc).strip().splitlines()[-1]


def create_dirs(fs: pafs.FileSystem, path: str) -> None:
    """``mkdir -p``; on a local disk through os.makedirs, whose OSError names the directory that failed."""
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(path, exist_ok=True)
    else:
        fs.create_dir(path, recursive=True)


def sha256_file(fs: pafs.FileSystem, path: str) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file, read in 8 MiB chunks."""
    digest, size = hashlib.sha256(), 0
    with fs.open_input_stream(path) as f:
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def num_rows(fs: pafs.FileSystem, path: str) -> int:
    """Row count from a parquet footer (reads only the footer)."""
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def read_json(fs: pafs.FileSystem, path: str, shown: str) -> dict | None:
    if not exists(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        raw = f.read()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{shown}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise StoreError(f"{shown}: expected a JSON object")
    return data


def shown_path(uri: str | os.PathLike, rel: str = "") -> str:
    """How a file is named in messages: the user's URI + the relative path."""
    base = os.fspath(uri).rstrip("/")
    return f"{base}/{rel}" if rel else base
