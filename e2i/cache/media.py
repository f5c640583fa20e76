"""Media on object storage, read where it is decoded: the decode tasks of `e2i cache` fetch the rows'
``s3://`` (or other pyarrow URI) files themselves, on the worker that runs them; the driver never sees a
media byte.

The encoders decode local files (soundfile, PIL), so :func:`staged` copies a block's remote files into a
temporary directory of the worker (one GET each, deleted when the block is decoded) and hands the encoder
those paths; the ``path`` column keeps the URIs. A file that cannot be fetched rejects its row only
(``<modality> file not found: <uri>`` / ``cannot read <uri>: <reason>``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np

from e2i.encoders.base import ERROR

_FILESYSTEMS: dict[str, object] = {}  # URI scheme + bucket -> pyarrow filesystem, per worker process


def _open(uri: str):
    from e2i.store.fs import open_fs

    key = uri.split("://", 1)[0] + "://" + uri.split("://", 1)[1].split("/", 1)[0]
    fs, path = open_fs(uri)
    return _FILESYSTEMS.setdefault(key, fs), path


@contextlib.contextmanager
def staged(batch: dict[str, np.ndarray], modality: str) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """``(batch with local paths, fetch errors)`` for a block whose ``path`` column holds URIs; a batch
    without remote paths (or without a ``path`` column) is yielded as it is. Fetch errors are "" for
    the rows that were fetched; failed rows get an empty path (the encoder rejects it)."""
    paths = batch.get("path")
    errors = np.full(len(paths) if paths is not None else 0, "", dtype=object)
    if paths is None or not any("://" in str(p) for p in paths):
        yield batch, errors
        return
    tmp = tempfile.mkdtemp(prefix="e2i-media-")
    local = []
    try:
        for i, uri in enumerate(str(p) for p in paths):
            if "://" not in uri:
                local.append(uri)
                continue
            target = os.path.join(tmp, f"{i:06d}{os.path.splitext(uri)[1]}")
            try:
                fs, path = _open(uri)
                with fs.open_input_stream(path) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 8 << 20)
                local.append(target)
            except FileNotFoundError:
                errors[i] = f"{modality} file not found: {uri}"
                local.append("")
            except OSError as exc:
                errors[i] = f"cannot read {uri}: {str(exc).strip().splitlines()[0]}"
                local.append("")
        yield {**batch, "path": np.array(local, dtype=object)}, errors
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def preprocess_remote(encoder, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``encoder.preprocess`` of a block whose media may be remote: fetched here, decoded, the URIs put
    back in ``path``, fetch failures as the rows' ``error``."""
    with staged(batch, encoder.modality) as (local, fetch_errors):
        out = encoder.preprocess(local)
    if "path" in batch:
        out["path"] = batch["path"]
    if fetch_errors.any():
        errors = np.array([str(e) for e in out[ERROR]], dtype=object)
        errors[fetch_errors != ""] = fetch_errors[fetch_errors != ""]
        out[ERROR] = errors
    return out
