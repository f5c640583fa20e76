"""The e2i parquet store: layout, writer, zero-copy reader, verification and the `e2i store` command.

Layout of one split (readable by pandas / pyarrow / duckdb without e2i)::

    <root>/<dataset>/<split>/
      manifest.json        written last: schema_version, dataset, split, encoders, dims,
                           shards [{path, kind, rows, bytes, sha256}], counts, created_at, e2i_version
      items/*.parquet      item_id: string (unique), path: string,
                           embedding: fixed_size_list<float32>[Di], + optional metadata columns
      captions/*.parquet   caption_id: string (unique), item_id: string (-> items), text: string,
                           embedding: fixed_size_list<float32>[Dc]
      rejected.parquet     source, id, reason (rows that could not be embedded)

Conventions:

- Positives are decided by ``item_id``, never by row order; an item may have many captions.
- A shard is complete iff a file ``<kind>/<name>.parquet`` exists: shards are written to a hidden
  temporary name (``.<name>.parquet.<random>.tmp``) and renamed, so a killed run never leaves a
  half-written ``*.parquet``. On S3 the object only appears once the upload completes, so shards are
  written under their final name directly. Temporary leftovers are ignored by every reader and removed by
  :class:`StoreWriter`.
- With a manifest, the manifest's shard list is the committed snapshot that :func:`load_split` reads;
  without one (a store written by another tool) every ``*.parquet`` in ``items/`` and ``captions/`` is read.
- ``path`` arguments are local paths or ``s3://bucket/prefix`` (custom endpoint: env
  ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``; keys from the usual AWS env variables).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import posixpath
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from e2i import __version__
from e2i.errors import StoreError, StoreWriteError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REJECTED = "rejected.parquet"
KINDS = ("items", "captions")
ID_COLUMN = {"items": "item_id", "captions": "caption_id"}
REQUIRED_COLUMNS = {
    "items": ("item_id", "path", "embedding"),
    "captions": ("caption_id", "item_id", "text", "embedding"),
}
STRING_COLUMNS = {"items": ("item_id", "path"), "captions": ("caption_id", "item_id", "text")}
REJECTED_SCHEMA = pa.schema([("source", pa.string()), ("id", pa.string()), ("reason", pa.string())])
DEFAULT_ROWS_PER_SHARD = 100_000
_READ_CHUNK = 8 << 20  # bytes per read when hashing a file
_ROW_GROUP_BYTES = 32 << 20  # embedding bytes per parquet row group


# ----------------------------------------------------------------------------------------- filesystems
def open_fs(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or an ``s3://bucket/prefix`` URI.

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
    if "://" in text:
        raise StoreError(f"{text}: unsupported URI scheme (use a local path or s3://bucket/prefix)")
    return pafs.LocalFileSystem(), os.path.abspath(text)


def _join(*parts: str) -> str:
    """Join filesystem paths ('/' for both local POSIX paths and S3 keys)."""
    return posixpath.join(*parts)


def _is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.Directory


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _list_files(fs: pafs.FileSystem, directory: str) -> list[pafs.FileInfo]:
    """Files directly inside ``directory`` (sorted by name); [] if it does not exist."""
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True, recursive=False))
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.base_name)


def _is_shard_name(base: str) -> bool:
    """A complete shard: ``*.parquet`` not hidden (tmp files start with '.', other tools' with '_')."""
    return base.endswith(".parquet") and not base.startswith((".", "_"))


def _is_tmp_name(base: str) -> bool:
    return base.startswith(".") and base.endswith(".tmp")


def _write_atomic(fs: pafs.FileSystem, path: str, data: bytes | pa.Buffer) -> None:
    """Write ``data`` so that ``path`` is either absent/old or complete, never half-written."""
    if not isinstance(fs, pafs.LocalFileSystem):  # S3: an object becomes visible only when complete
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    directory, base = posixpath.split(path)
    tmp = _join(directory, f".{base}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)  # rename(2): atomic on one filesystem
    except BaseException as exc:
        if _exists(fs, tmp):
            fs.delete_file(tmp)
        if isinstance(exc, OSError):  # disk full, read-only: name the file, keep completed shards
            reason = _io_reason(exc)
            raise StoreWriteError(f"{path}: cannot write ({reason}); completed shards are kept, re-run to "
                                  "resume") from exc
        raise


def _io_reason(exc: OSError) -> str:
    """The reason of an OSError, also of pyarrow's ("Error writing bytes ... Detail: [errno 28] ...")."""
    if exc.errno:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc).strip().splitlines()[-1]


def _create_dirs(fs: pafs.FileSystem, path: str) -> None:
    """``mkdir -p``; on a local disk through os.makedirs, whose OSError names the directory that failed."""
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(path, exist_ok=True)
    else:
        fs.create_dir(path, recursive=True)


def _sha256_file(fs: pafs.FileSystem, path: str) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file, read in 8 MiB chunks."""
    digest, size = hashlib.sha256(), 0
    with fs.open_input_stream(path) as f:
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _num_rows(fs: pafs.FileSystem, path: str) -> int:
    """Row count from a parquet footer (reads only the footer)."""
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def _read_json(fs: pafs.FileSystem, path: str, shown: str) -> dict | None:
    if not _exists(fs, path):
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


def _shown(uri: str | os.PathLike, rel: str = "") -> str:
    """How a file is named in messages: the user's URI + the relative path."""
    base = os.fspath(uri).rstrip("/")
    return f"{base}/{rel}" if rel else base


# ----------------------------------------------------------------------------------------- embeddings
def embedding_array(x: np.ndarray) -> pa.FixedSizeListArray:
    """(N, D) array -> Arrow ``fixed_size_list<float32>[D]`` (zero-copy for C-contiguous float32)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, D), got shape {x.shape}")
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def make_items_table(item_ids, paths, emb: np.ndarray, **meta) -> pa.Table:
    """Build an items shard: item_id, path, embedding (N, Di) + metadata columns (name=values)."""
    cols = {"item_id": pa.array(np.asarray(item_ids, dtype=object), pa.string()),
            "path": pa.array(np.asarray(paths, dtype=object), pa.string()),
            "embedding": embedding_array(emb)}
    cols.update({k: pa.array(np.asarray(v)) for k, v in meta.items()})
    return pa.table(cols)


def make_captions_table(caption_ids, item_ids, texts, emb: np.ndarray) -> pa.Table:
    """Build a captions shard: caption_id, item_id, text, embedding (M, Dc)."""
    return pa.table({"caption_id": pa.array(np.asarray(caption_ids, dtype=object), pa.string()),
                     "item_id": pa.array(np.asarray(item_ids, dtype=object), pa.string()),
                     "text": pa.array(np.asarray(texts, dtype=object), pa.string()),
                     "embedding": embedding_array(emb)})


def _embedding_dim_from_type(t: pa.DataType) -> int | None:
    """D of a fixed_size_list column, None for variable lists (known only after reading)."""
    return t.list_size if pa.types.is_fixed_size_list(t) else None


def embedding_matrix(chunk: pa.Array, where: str, ids) -> np.ndarray:
    """One Arrow array of list/fixed_size_list floats -> (n, D) float32 numpy, no per-row Python.

    ``where`` (file name) and ``ids`` (row ids, Arrow or numpy) only serve error messages.

    fixed_size_list: ``flatten()`` (respects slicing offsets) is a zero-copy view of the values buffer;
    list<float>: allowed when every row has the same length (other tools write this from pandas).
    """
    t = chunk.type
    if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)):
        raise StoreError(f"{where}: column 'embedding' has type {t}, expected fixed_size_list<float32>")
    if not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
        raise StoreError(f"{where}: column 'embedding' holds {t.value_type}, expected float32")
    n = len(chunk)
    if chunk.null_count:
        row = int(np.flatnonzero(chunk.is_null().to_numpy(zero_copy_only=False))[0])
        raise StoreError(f"{where}: {_id_at(ids, row)!r}: null embedding")
    if pa.types.is_fixed_size_list(t):
        dim = t.list_size
    else:
        lengths = pc.list_value_length(chunk).to_numpy(zero_copy_only=False)  # (n,)
        dim = int(lengths[0]) if n else 0
        if n and (lengths != dim).any():
            row = int(np.flatnonzero(lengths != dim)[0])
            raise StoreError(f"{where}: {_id_at(ids, row)!r}: embedding has length {lengths[row]}, "
                             f"row 0 has {dim}")
    values = chunk.flatten().to_numpy(zero_copy_only=False)  # nulls inside lists become NaN
    return values.astype(np.float32, copy=False).reshape(n, dim)  # (n, D)


def _check_finite(emb: np.ndarray, ids, where: str) -> None:
    ok = np.isfinite(emb).all(axis=1) if emb.size else np.ones(len(emb), bool)  # (n,)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise StoreError(f"{where}: {_id_at(ids, row)!r}: embedding has NaN/inf or null values")


def _id_at(ids, row: int) -> str:
    v = ids[row]
    return v.as_py() if isinstance(v, pa.Scalar) else v


def _as_string(col: pa.ChunkedArray | pa.Array, name: str, where: str) -> pa.ChunkedArray:
    """Cast an id/text column to string (foreign stores write large_string, dictionaries, ints)."""
    if not (pa.types.is_string(col.type)):
        try:
            col = pc.cast(col, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise StoreError(f"{where}: column '{name}' has type {col.type}, expected string") from None
    return col if isinstance(col, pa.ChunkedArray) else pa.chunked_array([col])


# ----------------------------------------------------------------------------------------- reading
@dataclass
class SplitData:
    """One split in memory. Embedding arrays are C-contiguous float32; ids are object arrays of str.

    ``caption_item[j]`` is the row in ``item_ids``/``item_emb`` of caption j's item: caption j and item
    ``caption_item[j]`` are a positive pair. ``item_paths``/``item_meta`` (extra item columns such as
    ``label``) are loaded with ``with_text=True``.
    """

    path: str
    item_ids: np.ndarray  # (N,) str
    item_emb: np.ndarray  # (N, Di) float32
    caption_ids: np.ndarray  # (M,) str
    caption_item: np.ndarray  # (M,) int64 row index into items
    caption_emb: np.ndarray  # (M, Dc) float32
    caption_text: np.ndarray | None = None  # (M,) str
    manifest: dict | None = None
    item_paths: np.ndarray | None = None  # (N,) str
    item_meta: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (N,)

    def __post_init__(self) -> None:
        n, m = len(self.item_ids), len(self.caption_ids)
        if self.item_emb.shape[0] != n or self.caption_emb.shape[0] != m or len(self.caption_item) != m:
            raise ValueError(f"SplitData: inconsistent lengths items={n} item_emb={self.item_emb.shape} "
                             f"captions={m} caption_emb={self.caption_emb.shape}")

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_captions(self) -> int:
        return len(self.caption_ids)

    @property
    def item_dim(self) -> int:
        return int(self.item_emb.shape[1])

    @property
    def caption_dim(self) -> int:
        return int(self.caption_emb.shape[1])


@dataclass
class _KindData:
    ids: np.ndarray  # (n,) object
    emb: np.ndarray  # (n, D) float32
    columns: dict[str, np.ndarray]  # other requested columns
    files: list[str]  # shown names, one per shard
    offsets: np.ndarray  # (shards + 1,) first row of each shard

    def file_of(self, row: int) -> str:
        return self.files[int(np.searchsorted(self.offsets, row, side="right")) - 1]


def _shard_list(fs, root: str, manifest: dict | None, kind: str, shown_root: str) -> list[tuple[str, int | None]]:
    """[(relative path, rows expected or None)] for one kind, from the manifest or a directory listing."""
    if manifest is not None and isinstance(manifest.get("shards"), list):
        return [(s["path"], s.get("rows")) for s in manifest["shards"] if s.get("kind", kind) == kind
                and str(s.get("path", "")).startswith(kind + "/")]
    if not _is_dir(fs, _join(root, kind)):
        raise StoreError(f"{_shown(shown_root, kind)}: missing directory (not a store split)")
    return [(f"{kind}/{i.base_name}", None) for i in _list_files(fs, _join(root, kind)) if _is_shard_name(i.base_name)]


def _shard_header(fs, root: str, rel: str, shown: str, expected_rows: int | None, kind: str) -> pq.FileMetaData:
    """Footer of one shard (rows, schema), checked for required columns and the manifest's row count."""
    full = _join(root, rel)
    if not _exists(fs, full):
        raise StoreError(f"{shown}: shard listed in manifest.json is missing")
    try:
        with fs.open_input_file(full) as f:
            meta = pq.ParquetFile(f).metadata
    except (OSError, pa.ArrowException) as e:
        raise StoreError(f"{shown}: not a readable parquet file ({str(e).splitlines()[0]})") from None
    names = meta.schema.to_arrow_schema().names
    for col in REQUIRED_COLUMNS[kind]:
        if col not in names:
            raise StoreError(f"{shown}: missing column '{col}' (has: {', '.join(names)})")
    if expected_rows is not None and meta.num_rows != expected_rows:
        raise StoreError(f"{shown}: has {meta.num_rows} rows, manifest.json says {expected_rows}")
    return meta


def _read_shard(fs, full: str, shown: str, columns: list[str]) -> pa.Table:
    try:
        with fs.open_input_file(full) as f:
            return pq.read_table(f, columns=columns, use_threads=True)
    except (OSError, pa.ArrowException) as e:
        raise StoreError(f"{shown}: cannot read ({str(e).splitlines()[0]})") from None


def _read_kind(fs, root: str, shown_root: str, kind: str, shards, extra_cols: Iterable[str] | None) -> _KindData:
    """Read all shards of one kind into one preallocated (N, D) float32 array (one memcpy per shard).

    Pass 1 reads only footers (row counts -> N, required columns); pass 2 reads each shard's columns,
    views its embedding values as (n, D), checks dim + finiteness and copies into rows of the output.
    ``extra_cols``: columns besides id+embedding to return as numpy (None = all other columns).
    """
    idcol = ID_COLUMN[kind]
    files = [_shown(shown_root, rel) for rel, _ in shards]
    heads = [_shard_header(fs, root, rel, shown, rows, kind) for (rel, rows), shown in zip(shards, files)]
    offsets = np.cumsum([0] + [h.num_rows for h in heads])  # (shards + 1,)
    emb: np.ndarray | None = None  # (N, D), allocated once D is known
    dim_file = ""
    ids_parts, extras = [], []
    for (rel, _), head, shown, start in zip(shards, heads, files, offsets):
        names = head.schema.to_arrow_schema().names
        wanted = [c for c in names if c not in (idcol, "embedding")] if extra_cols is None \
            else [c for c in extra_cols if c in names and c not in (idcol, "embedding")]
        table = _read_shard(fs, _join(root, rel), shown, [idcol, "embedding", *wanted])
        ids = _as_string(table.column(idcol), idcol, shown)
        if ids.null_count:
            row = int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
            raise StoreError(f"{shown}: row {row}: null {idcol}")
        ids_np = ids.to_numpy()
        row = int(start)
        for chunk in table.column("embedding").chunks:
            block = embedding_matrix(chunk, shown, ids_np[row - start:])  # (n, D) view of the values buffer
            if emb is None:
                emb, dim_file = np.empty((int(offsets[-1]), block.shape[1]), np.float32), shown
            if block.shape[1] != emb.shape[1]:
                raise StoreError(f"{shown}: {ids_np[row - start]!r}: embedding dim {block.shape[1]} != "
                                 f"{emb.shape[1]} in {dim_file}")
            _check_finite(block, ids_np[row - start:], shown)
            emb[row:row + len(block)] = block
            row += len(block)
        ids_parts.append(ids_np)
        extras.append(table.drop_columns([idcol, "embedding"]))
    if emb is None:  # no rows at all: take D from the schema when it is fixed
        dims = [_embedding_dim_from_type(h.schema.to_arrow_schema().field("embedding").type) for h in heads]
        emb = np.empty((0, next((d for d in dims if d), 0)), np.float32)
    columns: dict[str, np.ndarray] = {}
    if extras:
        merged = pa.concat_tables(extras, promote_options="permissive")
        for c in merged.column_names:
            col = _as_string(merged.column(c), c, files[0]) if c in STRING_COLUMNS[kind] else merged.column(c)
            columns[c] = col.to_numpy()
    ids_all = np.concatenate(ids_parts) if ids_parts else np.empty(0, object)
    data = _KindData(ids_all, emb, columns, files, offsets)
    _check_unique(data, idcol)
    return data


def _check_unique(data: _KindData, idcol: str) -> None:
    dup = pd.Index(data.ids).duplicated()  # (n,) bool, vectorised hash table
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise StoreError(f"{data.file_of(row)}: duplicate {idcol} {data.ids[row]!r}")


def load_split(path: str | os.PathLike, *, with_text: bool = True) -> SplitData:
    """Load and validate one split directory (local or s3://) into contiguous arrays.

    No per-row Python: each shard's fixed_size_list values buffer is viewed as (n, D) and copied once
    into a preallocated (N, D) float32 array; captions are mapped to item rows with a hash lookup.
    ``with_text=False`` skips caption text, item paths and metadata columns (training needs none).
    Raises StoreError naming the file and the first offending id for: missing/truncated shards,
    missing columns, ragged or mismatched dims, NaN/inf, duplicate ids, captions of unknown items.
    """
    fs, root = open_fs(path)
    shown_root = os.fspath(path)
    if not _is_dir(fs, root):
        raise StoreError(f"{shown_root}: no such store split directory")
    manifest = _read_json(fs, _join(root, MANIFEST), _shown(shown_root, MANIFEST))
    if manifest is not None and int(manifest.get("schema_version", 1)) > SCHEMA_VERSION:
        raise StoreError(f"{_shown(shown_root, MANIFEST)}: schema_version {manifest['schema_version']} is "
                         f"newer than this e2i supports ({SCHEMA_VERSION})")
    item_shards = _shard_list(fs, root, manifest, "items", shown_root)
    if not item_shards:
        raise StoreError(f"{_shown(shown_root, 'items')}: no parquet shards")
    caption_shards = _shard_list(fs, root, manifest, "captions", shown_root)
    items = _read_kind(fs, root, shown_root, "items", item_shards, None if with_text else ())
    cap_cols = ("item_id", "text") if with_text else ("item_id",)
    caps = _read_kind(fs, root, shown_root, "captions", caption_shards, cap_cols)
    cap_item_ids = caps.columns.get("item_id", np.empty(0, object))
    caption_item = pd.Index(items.ids).get_indexer(cap_item_ids).astype(np.int64)  # (M,), -1 = unknown
    if (caption_item < 0).any():
        row = int(np.flatnonzero(caption_item < 0)[0])
        raise StoreError(f"{caps.file_of(row)}: caption {caps.ids[row]!r} points at missing item "
                         f"{cap_item_ids[row]!r}")
    if manifest is not None:
        _check_manifest_dims(manifest, items.emb.shape[1], caps.emb.shape[1], shown_root)
    meta = {k: v for k, v in items.columns.items() if k != "path"}
    text = caps.columns.get("text") if with_text else None
    if text is not None:
        text = np.where(pd.isna(text), "", text).astype(object)
    return SplitData(path=shown_root, item_ids=items.ids, item_emb=items.emb, caption_ids=caps.ids,
                     caption_item=caption_item, caption_emb=caps.emb, caption_text=text,
                     manifest=manifest, item_paths=items.columns.get("path"), item_meta=meta)


def _check_manifest_dims(manifest: dict, di: int, dc: int, shown_root: str) -> None:
    dims = manifest.get("dims") or {}
    for kind, got in (("items", di), ("captions", dc)):
        want = dims.get(kind)
        if want is not None and got and int(want) != got:
            raise StoreError(f"{_shown(shown_root, MANIFEST)}: dims.{kind} is {want} but shards have {got}")


# ----------------------------------------------------------------------------------------- writing
def _declared_dim(encoders: dict, kind: str) -> int | None:
    """Dim declared for a kind: encoders are keyed by modality (text -> captions, others -> items)."""
    entries = [v for k, v in encoders.items() if (k == "text") == (kind == "captions") and isinstance(v, dict)]
    dims = [int(v["dim"]) for v in entries if v.get("dim") is not None]
    return dims[0] if len(dims) == 1 else None


def _normalize_table(kind: str, table: pa.Table, where: str) -> pa.Table:
    """Validate a shard before writing; cast ids/text to string and embedding to fixed_size_list<float32>."""
    for col in REQUIRED_COLUMNS[kind]:
        if col not in table.column_names:
            raise StoreError(f"{where}: missing column '{col}' (has: {', '.join(table.column_names)})")
    idcol = ID_COLUMN[kind]
    for col in STRING_COLUMNS[kind]:
        table = table.set_column(table.schema.get_field_index(col), col, _as_string(table.column(col), col, where))
    ids = table.column(idcol).to_numpy()
    if table.column(idcol).null_count:
        raise StoreError(f"{where}: null {idcol}")
    blocks = [embedding_matrix(c, where, ids) for c in table.column("embedding").chunks if len(c)]
    if not blocks:  # empty shard: keep the declared dim of a fixed_size_list column
        blocks = [np.empty((0, _embedding_dim_from_type(table.schema.field("embedding").type) or 0), np.float32)]
    emb = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]  # (n, D)
    _check_finite(emb, ids, where)
    dup = pd.Index(ids).duplicated()
    if dup.any():
        raise StoreError(f"{where}: duplicate {idcol} {ids[int(np.flatnonzero(dup)[0])]!r}")
    idx = table.schema.get_field_index("embedding")
    return table.set_column(idx, "embedding", embedding_array(emb))


def _parquet_bytes(table: pa.Table) -> pa.Buffer:
    """Serialise a shard: dictionary/snappy for strings, plain uncompressed floats (they do not
    compress, and plain pages decode at memory speed)."""
    sink = pa.BufferOutputStream()
    others = [c for c in table.column_names if c != "embedding"]
    compression = {c: "snappy" for c in others} | {"embedding": "none"}
    dim = max(table.schema.field("embedding").type.list_size, 1)
    rows_per_group = max(1024, _ROW_GROUP_BYTES // (4 * dim))  # several row groups -> parallel decode
    pq.write_table(table, sink, compression=compression, use_dictionary=others, row_group_size=rows_per_group)
    return sink.getvalue()


class StoreWriter:
    """Write one split: shards (atomic, sha256), rejected rows, and finally the manifest.

    Resumable: ``completed_shards(kind)`` / ``existing_ids(kind)`` tell a re-run what is already done;
    ``finalize()`` lists every complete shard on storage (including earlier runs' and other processes'),
    re-checks cross-shard consistency and writes ``manifest.json`` last. Shards not written by this
    instance are hashed at finalize. ``clean_tmp=True`` removes temporary leftovers of killed runs on
    open; pass False when several writers work in the same split concurrently. Re-opening a split whose
    manifest names different ``encoders`` raises (embeddings of two encoders never mix).

    Typical resumable loop (shard names must map to the same rows on every run, or skip by ids)::

        w = StoreWriter("stores/toy/all", dataset="toy", split="all", encoders=encoders)
        done = w.completed_shards("items")
        for k, rows in enumerate(batches):
            if f"part-{k:05d}" not in done:
                w.write_shard("items", make_items_table(ids, paths, emb), f"part-{k:05d}")
        w.write_rejected(rejected)           # [{source, id, reason}] or objects with those fields
        manifest = w.finalize(extra={"corpus": "clotho"})
    """

    def __init__(self, path: str | os.PathLike, *, dataset: str, split: str, encoders: dict | None = None,
                 clean_tmp: bool = True) -> None:
        self.uri = os.fspath(path)
        self.fs, self.root = open_fs(path)
        self.dataset, self.split, self.encoders = dataset, split, dict(encoders or {})
        self._info: dict[str, dict] = {}  # rel path -> shard info written by this instance
        self._ids: dict[str, dict[str, set[str]]] = {k: {} for k in KINDS}  # kind -> rel -> ids
        for kind in KINDS:
            _create_dirs(self.fs, _join(self.root, kind))
        old = _read_json(self.fs, _join(self.root, MANIFEST), _shown(self.uri, MANIFEST))
        if old is not None and old.get("encoders") and self.encoders and \
                json.dumps(old["encoders"], sort_keys=True) != json.dumps(self.encoders, sort_keys=True):
            raise StoreError(f"{_shown(self.uri, MANIFEST)}: existing split was written with encoders "
                             f"{json.dumps(old['encoders'], sort_keys=True)}; refusing to mix (delete it first)")
        if clean_tmp:
            self.clean_tmp()

    # -- state of storage
    def clean_tmp(self) -> int:
        """Delete temporary files left by killed runs; returns how many were removed."""
        removed = 0
        for kind in (*KINDS, ""):
            directory = _join(self.root, kind) if kind else self.root
            for info in _list_files(self.fs, directory):
                if _is_tmp_name(info.base_name):
                    self.fs.delete_file(info.path)
                    removed += 1
        return removed

    def completed_shards(self, kind: str) -> dict[str, dict]:
        """{shard name (no .parquet): {path, kind, rows, bytes, sha256}} of complete shards on storage."""
        _check_kind(kind)
        out = {}
        for f in _list_files(self.fs, _join(self.root, kind)):
            if _is_shard_name(f.base_name):
                info = self._shard_info(kind, f)
                if info is not None:
                    out[f.base_name[: -len(".parquet")]] = info
        return out

    def _shard_info(self, kind: str, f: pafs.FileInfo) -> dict | None:
        rel = f"{kind}/{f.base_name}"
        known = self._info.get(rel)
        if known is not None and known["bytes"] == f.size:
            return known
        try:
            rows = _num_rows(self.fs, f.path)
        except (OSError, pa.ArrowException):
            warnings.warn(f"{_shown(self.uri, rel)}: unreadable shard ignored (it will be rewritten)")
            return None
        sha, size = _sha256_file(self.fs, f.path)
        self._info[rel] = {"path": rel, "kind": kind, "rows": rows, "bytes": size, "sha256": sha}
        return self._info[rel]

    def existing_ids(self, kind: str) -> set[str]:
        """Ids (item_id / caption_id) in all complete shards of ``kind``."""
        return set().union(*self._ids_by_shard(kind).values())

    def _ids_by_shard(self, kind: str) -> dict[str, set[str]]:
        cache = self._ids[kind]
        done = {info["path"] for info in self.completed_shards(kind).values()}
        for rel in list(cache):
            if rel not in done:
                del cache[rel]
        for rel in sorted(done - set(cache)):
            col = pq.read_table(_join(self.root, rel), filesystem=self.fs, columns=[ID_COLUMN[kind]]).column(0)
            cache[rel] = set(_as_string(col, ID_COLUMN[kind], _shown(self.uri, rel)).to_pylist())
        return cache

    def _existing_dim(self, kind: str) -> tuple[int | None, str]:
        for info in self.completed_shards(kind).values():
            schema = pq.read_schema(_join(self.root, info["path"]), filesystem=self.fs)
            return _embedding_dim_from_type(schema.field("embedding").type), info["path"]
        return None, ""

    # -- writing
    def write_shard(self, kind: str, table: pa.Table, name: str) -> dict:
        """Validate and atomically write ``<kind>/<name>.parquet``; returns its shard info.

        Rewriting an existing name replaces that shard. Ids must be unique across all shards of the kind.
        """
        _check_kind(kind)
        name = name.removesuffix(".parquet")
        if not name or "/" in name or name.startswith((".", "_")):
            raise StoreError(f"bad shard name {name!r} (no '/', must not start with '.' or '_')")
        rel = f"{kind}/{name}.parquet"
        where = _shown(self.uri, rel)
        table = _normalize_table(kind, table, where)
        dim = table.schema.field("embedding").type.list_size
        declared = _declared_dim(self.encoders, kind)
        have, have_file = self._existing_dim(kind)
        for want, source in ((declared, "encoders"), (have, have_file)):
            if want is not None and len(table) and dim != want and source != rel:
                raise StoreError(f"{where}: embedding dim {dim} != {want} ({source})")
        ids = table.column(ID_COLUMN[kind]).to_pylist()
        for other_rel, other_ids in self._ids_by_shard(kind).items():
            if other_rel != rel and not other_ids.isdisjoint(ids):
                clash = next(i for i in ids if i in other_ids)
                raise StoreError(f"{where}: {ID_COLUMN[kind]} {clash!r} already in {other_rel}")
        data = _parquet_bytes(table)
        _write_atomic(self.fs, _join(self.root, rel), data)
        info = {"path": rel, "kind": kind, "rows": len(table), "bytes": data.size,
                "sha256": hashlib.sha256(memoryview(data)).hexdigest()}
        self._info[rel] = info
        self._ids[kind][rel] = set(ids)
        return info

    def write_rejected(self, rows: Iterable[Any]) -> int:
        """Merge rejected rows (dicts or objects with source/id/reason) into rejected.parquet.

        A row with the same (source, id) as an earlier one replaces it, so re-runs do not duplicate.
        Returns the number of rejected rows now stored.
        """
        new = pd.DataFrame([_rejected_dict(r) for r in rows], columns=REJECTED_SCHEMA.names)
        path = _join(self.root, REJECTED)
        if _exists(self.fs, path):
            old = pq.read_table(path, filesystem=self.fs).to_pandas()
            new = pd.concat([old, new], ignore_index=True)
        new = new.astype(str).drop_duplicates(subset=["source", "id"], keep="last")
        table = pa.Table.from_pandas(new, schema=REJECTED_SCHEMA, preserve_index=False)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        _write_atomic(self.fs, path, sink.getvalue())
        return len(new)

    def finalize(self, extra: dict | None = None) -> dict:
        """Check all complete shards together and write manifest.json last; returns the manifest."""
        shards = {k: sorted(self.completed_shards(k).values(), key=lambda s: s["path"]) for k in KINDS}
        if not shards["items"]:
            raise StoreError(f"{_shown(self.uri, 'items')}: no shards written; nothing to finalize")
        dims = {k: self._consistent_dim(k, shards[k]) for k in KINDS}
        self._check_cross_shard()
        all_shards = shards["items"] + shards["captions"]
        counts = {k: sum(s["rows"] for s in shards[k]) for k in KINDS}
        counts["rejected"] = 0
        rej = _join(self.root, REJECTED)
        if _exists(self.fs, rej):  # listed as a shard of kind "rejected" so verify re-checks it too
            sha, size = _sha256_file(self.fs, rej)
            counts["rejected"] = _num_rows(self.fs, rej)
            all_shards.append({"path": REJECTED, "kind": "rejected", "rows": counts["rejected"],
                               "bytes": size, "sha256": sha})
        manifest = {
            "schema_version": SCHEMA_VERSION, "dataset": self.dataset, "split": self.split,
            "encoders": self.encoders, "dims": dims, "shards": all_shards, "counts": counts,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "e2i_version": __version__,
        }
        for key, value in (extra or {}).items():
            if key in manifest:
                raise ValueError(f"finalize(extra=...): key {key!r} is reserved")
            manifest[key] = value
        _write_atomic(self.fs, _join(self.root, MANIFEST), json.dumps(manifest, indent=2).encode())
        self.clean_tmp()
        return manifest

    def _consistent_dim(self, kind: str, shards: list[dict]) -> int | None:
        dim, first = None, ""
        for s in shards:
            schema = pq.read_schema(_join(self.root, s["path"]), filesystem=self.fs)
            d = _embedding_dim_from_type(schema.field("embedding").type)
            if dim is not None and d != dim:
                raise StoreError(f"{_shown(self.uri, s['path'])}: embedding dim {d} != {dim} in {first}")
            dim, first = d, first or s["path"]
        return dim

    def _check_cross_shard(self) -> None:
        """Ids unique across shards; every caption's item_id is a known item."""
        for kind in KINDS:
            seen: dict[str, str] = {}
            for rel, ids in sorted(self._ids_by_shard(kind).items()):
                clash = next((i for i in ids if i in seen), None)
                if clash is not None:
                    raise StoreError(f"{_shown(self.uri, rel)}: duplicate {ID_COLUMN[kind]} {clash!r} "
                                     f"(also in {seen[clash]})")
                seen.update(dict.fromkeys(ids, rel))
        item_ids = pa.array(list(self.existing_ids("items")), pa.string())
        for info in self.completed_shards("captions").values():
            t = pq.read_table(_join(self.root, info["path"]), filesystem=self.fs, columns=["caption_id", "item_id"])
            known = pc.is_in(t.column("item_id"), value_set=item_ids).to_numpy(zero_copy_only=False)
            if not known.all():
                row = int(np.flatnonzero(~known)[0])
                raise StoreError(f"{_shown(self.uri, info['path'])}: caption {t.column(0)[row].as_py()!r} "
                                 f"points at missing item {t.column(1)[row].as_py()!r}")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise StoreError(f"unknown shard kind {kind!r} (valid: {', '.join(KINDS)})")


def _rejected_dict(row: Any) -> dict:
    if isinstance(row, dict):
        return {k: str(row.get(k, "")) for k in REJECTED_SCHEMA.names}
    return {k: str(getattr(row, k, "")) for k in REJECTED_SCHEMA.names}


# ----------------------------------------------------------------------------------------- subsets
def subset_split(src: SplitData, item_indices) -> SplitData:
    """The items at ``item_indices`` (ints or a boolean mask; in that order) with all their captions.

    Captions keep their relative order and are re-pointed at the new item rows. The manifest is
    carried (encoders etc.) without shards/counts, with ``parent`` = the source path.
    """
    idx = np.asarray(item_indices)
    idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= src.num_items):
        raise IndexError(f"item index out of range 0..{src.num_items - 1}")
    if len(np.unique(idx)) != len(idx):
        raise ValueError("item_indices contains duplicates")
    remap = np.full(src.num_items, -1, np.int64)
    remap[idx] = np.arange(len(idx))  # old item row -> new item row
    new_item = remap[src.caption_item]  # (M,)
    keep = new_item >= 0
    manifest = None
    if src.manifest is not None:
        manifest = {k: v for k, v in src.manifest.items() if k not in ("shards", "counts", "created_at")}
        manifest["parent"] = src.path
    return SplitData(
        path=src.path, item_ids=src.item_ids[idx], item_emb=np.ascontiguousarray(src.item_emb[idx]),
        caption_ids=src.caption_ids[keep], caption_item=new_item[keep],
        caption_emb=np.ascontiguousarray(src.caption_emb[keep]),
        caption_text=None if src.caption_text is None else src.caption_text[keep], manifest=manifest,
        item_paths=None if src.item_paths is None else src.item_paths[idx],
        item_meta={k: v[idx] for k, v in src.item_meta.items()},
    )


def remove_split(path: str | os.PathLike) -> None:
    """Delete the store files of one split (manifest, items/, captions/, rejected.parquet) if present."""
    fs, root = open_fs(path)
    for name in (MANIFEST, REJECTED):
        if _exists(fs, _join(root, name)):
            fs.delete_file(_join(root, name))
    for kind in KINDS:
        if _is_dir(fs, _join(root, kind)):
            fs.delete_dir(_join(root, kind))


def split_exists(path: str | os.PathLike) -> bool:
    """True if ``path`` holds a manifest or any items/captions shards."""
    fs, root = open_fs(path)
    return _exists(fs, _join(root, MANIFEST)) or any(
        _is_shard_name(f.base_name) for k in KINDS for f in _list_files(fs, _join(root, k)))


def write_split(data: SplitData, path: str | os.PathLike, dataset: str, split: str, *,
                overwrite: bool = True, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                encoders: dict | None = None, extra: dict | None = None) -> dict:
    """Write ``data`` as a complete split (replacing an existing one if ``overwrite``); returns the manifest.

    Encoders default to ``data.manifest["encoders"]``; ``extra`` goes into the manifest.
    """
    if split_exists(path):
        if not overwrite:
            raise StoreError(f"{os.fspath(path)}: split already exists (use --overwrite to replace it)")
        remove_split(path)
    encoders = encoders if encoders is not None else (data.manifest or {}).get("encoders", {})
    writer = StoreWriter(path, dataset=dataset, split=split, encoders=encoders)
    paths = data.item_paths if data.item_paths is not None else np.full(data.num_items, "", object)
    text = data.caption_text if data.caption_text is not None else np.full(data.num_captions, "", object)
    cap_item_ids = data.item_ids[data.caption_item]
    for k, a in enumerate(range(0, max(data.num_items, 1), rows_per_shard)):
        s = slice(a, a + rows_per_shard)
        meta = {c: v[s] for c, v in data.item_meta.items()}
        writer.write_shard("items", make_items_table(data.item_ids[s], paths[s], data.item_emb[s], **meta),
                           f"part-{k:05d}")
    for k, a in enumerate(range(0, max(data.num_captions, 1), rows_per_shard)):
        s = slice(a, a + rows_per_shard)
        table = make_captions_table(data.caption_ids[s], cap_item_ids[s], text[s], data.caption_emb[s])
        writer.write_shard("captions", table, f"part-{k:05d}")
    parent = {"parent": data.path} if data.path and os.fspath(data.path) != os.fspath(path) else {}
    return writer.finalize(extra={**parent, **(extra or {})})


# ----------------------------------------------------------------------------------------- verify / info
def find_splits(path: str | os.PathLike) -> list[str]:
    """Split dirs under ``path``: path itself, its children, or grandchildren (root/dataset/split)."""
    fs, root = open_fs(path)
    base = os.fspath(path).rstrip("/")

    def is_split(p: str) -> bool:
        return _exists(fs, _join(p, MANIFEST)) or _is_dir(fs, _join(p, "items"))

    if is_split(root):
        return [base]
    found = []
    for child in _subdirs(fs, root):
        if is_split(_join(root, child)):
            found.append(f"{base}/{child}")
        else:
            found += [f"{base}/{child}/{g}" for g in _subdirs(fs, _join(root, child)) if is_split(_join(root, child, g))]
    return found


def _subdirs(fs, path: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and not i.base_name.startswith("."))


def verify_store(path: str | os.PathLike) -> list[str]:
    """Re-check every split under ``path``: sha256/size/rows of each shard against the manifest,
    unlisted shards, and the full content validation of :func:`load_split`. Returns problems ([] = OK)."""
    splits = find_splits(path)
    if not splits:
        return [f"{os.fspath(path)}: no store split found (expected manifest.json or items/)"]
    problems: list[str] = []
    for split in splits:
        problems += _verify_split(split)
    return problems


def _verify_split(uri: str) -> list[str]:
    fs, root = open_fs(uri)
    problems = []
    try:
        manifest = _read_json(fs, _join(root, MANIFEST), _shown(uri, MANIFEST))
    except StoreError as e:
        return [str(e)]
    if manifest is not None:
        listed = set()
        for s in manifest.get("shards", []):
            rel, shown = s.get("path", ""), _shown(uri, s.get("path", ""))
            listed.add(rel)
            if not _exists(fs, _join(root, rel)):
                problems.append(f"{shown}: listed in manifest.json but missing")
                continue
            sha, size = _sha256_file(fs, _join(root, rel))
            if sha != s.get("sha256"):
                problems.append(f"{shown}: sha256 mismatch (file {sha[:12]}..., manifest "
                                f"{str(s.get('sha256'))[:12]}...; {size} bytes, manifest {s.get('bytes')})")
        for kind in KINDS:
            for f in _list_files(fs, _join(root, kind)):
                if _is_shard_name(f.base_name) and f"{kind}/{f.base_name}" not in listed:
                    problems.append(f"{_shown(uri, kind + '/' + f.base_name)}: not listed in manifest.json "
                                    "(unfinished run? finalize it or delete the file)")
    try:
        data = load_split(uri)
        if manifest is not None:
            counts = manifest.get("counts", {})
            for kind, n in (("items", data.num_items), ("captions", data.num_captions)):
                if counts.get(kind) is not None and int(counts[kind]) != n:
                    problems.append(f"{_shown(uri, MANIFEST)}: counts.{kind} is {counts[kind]}, shards hold {n}")
    except StoreError as e:
        problems.append(str(e))
    return problems


def split_summary(uri: str) -> dict:
    """Counts and dims of one split from parquet footers and the manifest (no embedding read)."""
    fs, root = open_fs(uri)
    manifest = _read_json(fs, _join(root, MANIFEST), _shown(uri, MANIFEST))
    row: dict[str, Any] = {"split": uri, "manifest": manifest is not None}
    for kind in KINDS:
        shards = _shard_list(fs, root, manifest, kind, uri)
        rows, dim = 0, None
        for rel, _ in shards:
            head = _shard_header(fs, root, rel, _shown(uri, rel), None, kind)
            rows += head.num_rows
            dim = dim or _embedding_dim_from_type(head.schema.to_arrow_schema().field("embedding").type)
        row[kind], row[f"{kind}_dim"], row[f"{kind}_shards"] = rows, dim, len(shards)
    row["rejected"] = (manifest or {}).get("counts", {}).get("rejected", 0)
    row["encoders"] = ", ".join(f"{m}={e.get('name', '?')}" for m, e in ((manifest or {}).get("encoders") or {}).items()
                                if isinstance(e, dict))
    return row


# ----------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`e2i store verify|info|import-legacy`."""
    sub = parser.add_subparsers(dest="store_command", required=True, metavar="COMMAND")
    helps = {
        "verify": "re-check sha256 of every shard against manifest.json and validate contents (exit 1 on problems)",
        "info": "print items/captions counts and embedding dims of every split as a table",
        "import-legacy": "convert a legacy embedding cache (.pt pairs, COCO .pt + metadata.json, "
                         "<model>/<dataset>/<split> parquet) into a store split",
    }
    cmds = {name: sub.add_parser(name, help=text, description=text) for name, text in helps.items()}
    for name in ("verify", "info"):
        cmds[name].add_argument("dir", help="a split dir, a dataset dir (holding splits) or a store root; "
                                            "local or s3://bucket/prefix")
    from e2i.store import legacy  # legacy imports torch lazily, only when a .pt file is read

    legacy.add_arguments(cmds["import-legacy"])


def run(args: argparse.Namespace) -> int:
    if args.store_command == "verify":
        return _run_verify(args.dir)
    if args.store_command == "info":
        return _run_info(args.dir)
    from e2i.store import legacy

    return legacy.run(args)


def _run_verify(path: str) -> int:
    splits = find_splits(path)
    problems = verify_store(path)
    for p in problems:
        print(f"PROBLEM {p}")
    status = "OK" if not problems else f"{len(problems)} problem(s)"
    print(f"e2i store verify: {len(splits)} split(s) under {path}: {status}")
    return 0 if not problems else 1


def _run_info(path: str) -> int:
    from rich.console import Console
    from rich.table import Table

    splits = find_splits(path)
    if not splits:
        raise StoreError(f"{path}: no store split found (expected manifest.json or items/)")
    table = Table(title=f"e2i store: {path}")
    for col in ("split", "items", "item dim", "captions", "caption dim", "rejected", "encoders", "manifest"):
        table.add_column(col, justify="right" if col not in ("split", "encoders") else "left")
    base = path.rstrip("/")
    for s in splits:
        r = split_summary(s)
        table.add_row(s[len(base) + 1:] or posixpath.basename(base), str(r["items"]), str(r["items_dim"]), str(r["captions"]), str(r["captions_dim"]),
                      str(r["rejected"]), r["encoders"], "yes" if r["manifest"] else "no")
    console = Console()
    Console(width=max(console.width, 140) if not console.is_terminal else None).print(table)
    print(f"e2i store info: {len(splits)} split(s) under {path}")
    return 0
