"""Reading the store: :class:`SplitData` (one split in memory) and the zero-copy :func:`load_split`.

Owns: loading and validating a split (:func:`load_split`), item-level subsets (:func:`subset_split`),
and finding splits on storage (:func:`find_splits`, :func:`split_exists`).

Conventions:

- With a manifest, the manifest's shard list is the committed snapshot that :func:`load_split` reads;
  without one (a store written by another tool) every complete ``*.parquet`` in ``items/`` and
  ``captions/`` is read (hidden temporaries are ignored, see :mod:`e2i.store.fs`).
- Every problem is a StoreError naming the file and the first offending id.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from e2i.errors import StoreError
from e2i.store.fs import (
    exists,
    is_dir,
    is_shard_name,
    join,
    list_files,
    open_fs,
    read_json,
    shown_path,
)
from e2i.store.pages import Background, embedding_rows, read_in_order
from e2i.store.schema import (
    ID_COLUMN,
    KINDS,
    MANIFEST,
    REQUIRED_COLUMNS,
    SCHEMA_VERSION,
    STRING_COLUMNS,
    as_string,
    embedding_dim_from_type,
)

FILL_THREADS = 2  # threads filling one kind's embeddings, shard k on thread k % 2 (file reads release the GIL)


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


# ----------------------------------------------------------------------------------------- loading
@dataclass
class _KindData:
    ids: np.ndarray  # (n,) object
    emb: np.ndarray  # (n, D) float32
    columns: dict[str, pa.ChunkedArray]  # other requested columns (Arrow)
    files: list[str]  # shown names, one per shard
    offsets: np.ndarray  # (shards + 1,) first row of each shard

    def file_of(self, row: int) -> str:
        return self.files[int(np.searchsorted(self.offsets, row, side="right")) - 1]


def shard_list(fs, root: str, manifest: dict | None, kind: str, shown_root: str) -> list[tuple[str, int | None]]:
    """[(relative path, rows expected or None)] for one kind, from the manifest or a directory listing."""
    if manifest is not None and isinstance(manifest.get("shards"), list):
        return [(s["path"], s.get("rows")) for s in manifest["shards"] if s.get("kind", kind) == kind
                and str(s.get("path", "")).startswith(kind + "/")]
    if not is_dir(fs, join(root, kind)):
        raise StoreError(f"{shown_path(shown_root, kind)}: missing directory (not a store split)")
    return [(f"{kind}/{i.base_name}", None) for i in list_files(fs, join(root, kind)) if is_shard_name(i.base_name)]


def shard_header(fs, root: str, rel: str, shown: str, expected_rows: int | None, kind: str) -> pq.FileMetaData:
    """Footer of one shard (rows, schema), checked for required columns and the manifest's row count."""
    full = join(root, rel)
    if not exists(fs, full):
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


def _read_columns(fs, full: str, shown: str, columns: list[str], dictionary: tuple[str, ...] = ()) -> pa.Table:
    try:
        with fs.open_input_file(full) as f:
            return pq.ParquetFile(f, read_dictionary=[c for c in dictionary if c in columns] or None).read(
                columns=columns, use_threads=True)
    except (OSError, pa.ArrowException) as e:
        raise StoreError(f"{shown}: cannot read ({str(e).splitlines()[0]})") from None


def _fixed_dim(heads: list[pq.FileMetaData]) -> int | None:
    """D when every shard declares the same fixed_size_list<float> embedding (rows can be filled in any
    order); None when a shard has variable lists or the dims differ (read in order, name the culprit)."""
    dims = {embedding_dim_from_type(h.schema.to_arrow_schema().field("embedding").type) for h in heads}
    return dims.pop() if len(dims) == 1 and None not in dims else None


def _read_kind(fs, root: str, shown_root: str, kind: str, shards, extra_cols: Iterable[str] | None,
               dictionary: tuple[str, ...] = (), pending: list | None = None, embeddings: bool = True) -> _KindData:
    """Read all shards of one kind: embeddings into one preallocated (N, D) float32 array, other columns
    as Arrow (``columns``; ``dictionary`` columns dictionary-encoded as stored).

    Pass 1 reads only footers (row counts -> N, required columns, D). With one fixed D, FILL_THREADS
    background threads fill the embedding rows (shard k on thread k % FILL_THREADS; file reads and the
    finiteness sums release the GIL, so two copies from the page cache run at once) while this thread
    reads and checks the ids; otherwise shards are read in order and the first one fixes D.
    ``extra_cols``: columns besides id+embedding to return (None = all other columns). ``pending``: the
    background fill is appended there for the caller to ``join()`` (the next kind's ids are read
    meanwhile); without it, this call waits for it. ``embeddings=False``: ids and columns only, the
    embeddings left unread as an (N, 0) array (:mod:`e2i.evaluate.chunked` reads them by row group).
    """
    idcol = ID_COLUMN[kind]
    files = [shown_path(shown_root, rel) for rel, _ in shards]
    heads = [shard_header(fs, root, rel, shown, rows, kind) for (rel, rows), shown in zip(shards, files)]
    offsets = np.cumsum([0] + [h.num_rows for h in heads])  # (shards + 1,)
    fulls = [join(root, rel) for rel, _ in shards]

    def ids_of(k: int):
        return lambda: as_string(_read_columns(fs, fulls[k], files[k], [idcol]).column(0), idcol, files[k]).to_numpy()

    dim = _fixed_dim(heads) if embeddings else 0
    emb = np.empty((int(offsets[-1]), dim or 0), np.float32)  # (N, D); (N, 0) without embeddings
    filler = None
    if embeddings and dim is not None and len(emb):
        parts = min(FILL_THREADS, len(heads))

        def fill(part: int) -> None:  # shards part, part + parts, ...
            for k in range(part, len(heads), parts):
                embedding_rows(fs, fulls[k], files[k], heads[k], emb[offsets[k]:offsets[k + 1]], ids_of(k))

        filler = Background(*[lambda part=part: fill(part) for part in range(parts)])
    ids_parts, extras = [], []
    done = False
    try:
        for k, head in enumerate(heads):
            names = head.schema.to_arrow_schema().names
            wanted = [c for c in names if c not in (idcol, "embedding")] if extra_cols is None \
                else [c for c in extra_cols if c in names and c not in (idcol, "embedding")]
            table = _read_columns(fs, fulls[k], files[k], [idcol, *wanted], dictionary)
            ids = as_string(table.column(idcol), idcol, files[k])
            if ids.null_count:
                row = int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
                raise StoreError(f"{files[k]}: row {row}: null {idcol}")
            ids_parts.append(ids.to_numpy())
            extras.append(table.drop_columns([idcol]))
        done = True
    finally:
        if filler is not None and (pending is None or not done):
            filler.join()
        elif filler is not None:
            pending.append(filler)
    if embeddings and dim is None and len(emb):
        emb = read_in_order(fs, fulls, files, heads, offsets, ids_parts)
    elif embeddings and not len(emb):  # no rows at all: take D from the schema when it is fixed
        dims = [embedding_dim_from_type(h.schema.to_arrow_schema().field("embedding").type) for h in heads]
        emb = np.empty((0, next((d for d in dims if d), 0)), np.float32)
    columns: dict[str, pa.ChunkedArray] = {}
    if extras:
        merged = pa.concat_tables(extras, promote_options="permissive")
        columns = {c: merged.column(c) for c in merged.column_names}
    ids_all = np.concatenate(ids_parts) if ids_parts else np.empty(0, object)
    data = _KindData(ids_all, emb, columns, files, offsets)
    _check_unique(data, idcol)
    return data


def _check_unique(data: _KindData, idcol: str) -> None:
    dup = pd.Index(data.ids, dtype=object).duplicated()  # (n,) bool, vectorised hash table
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise StoreError(f"{data.file_of(row)}: duplicate {idcol} {data.ids[row]!r}")


def load_split(path: str | os.PathLike, *, with_text: bool = True, embeddings: bool = True) -> SplitData:
    """Load and validate one split directory (local or s3://) into contiguous arrays.

    No per-row Python: each shard's fixed_size_list values buffer is viewed as (n, D) and copied once
    into a preallocated (N, D) float32 array; captions are mapped to item rows with a hash lookup.
    ``with_text=False`` skips caption text, item paths and metadata columns (training needs none).
    ``embeddings=False`` reads everything else (ids, caption -> item rows, the same checks except the
    embeddings' own): ``item_emb`` (N, 0) and ``caption_emb`` (M, 0).
    Raises StoreError naming the file and the first offending id for: missing/truncated shards,
    missing columns, ragged or mismatched dims, NaN/inf, duplicate ids, captions of unknown items.
    """
    fs, root = open_fs(path)
    shown_root = os.fspath(path)
    if not is_dir(fs, root):
        raise StoreError(f"{shown_root}: no such store split directory")
    manifest = read_json(fs, join(root, MANIFEST), shown_path(shown_root, MANIFEST))
    if manifest is not None and int(manifest.get("schema_version", 1)) > SCHEMA_VERSION:
        raise StoreError(f"{shown_path(shown_root, MANIFEST)}: schema_version {manifest['schema_version']} is "
                         f"newer than this e2i supports ({SCHEMA_VERSION})")
    item_shards = shard_list(fs, root, manifest, "items", shown_root)
    if not item_shards:
        raise StoreError(f"{shown_path(shown_root, 'items')}: no parquet shards")
    caption_shards = shard_list(fs, root, manifest, "captions", shown_root)
    pending: list[Background] = []  # embedding fills running while ids are read and checked
    try:
        items = _read_kind(fs, root, shown_root, "items", item_shards, None if with_text else (), pending=pending,
                           embeddings=embeddings)
        cap_cols = ("item_id", "text") if with_text else ("item_id",)
        caps = _read_kind(fs, root, shown_root, "captions", caption_shards, cap_cols, dictionary=("item_id",),
                          pending=pending, embeddings=embeddings)
        caption_item = _item_rows(pd.Index(items.ids, dtype=object), caps.columns.get("item_id"))  # (M,)
    finally:
        for fill in pending:
            fill.join()
    cap_items = caps.columns.get("item_id", pa.chunked_array([], pa.string()))
    if (caption_item < 0).any():
        row = int(np.flatnonzero(caption_item < 0)[0])
        raise StoreError(f"{caps.file_of(row)}: caption {caps.ids[row]!r} points at missing item "
                         f"{_as_numpy(cap_items, 'item_id', 'captions', caps.files[0])[row]!r}")
    if manifest is not None:
        _check_manifest_dims(manifest, items.emb.shape[1], caps.emb.shape[1], shown_root)
    cols = {k: _as_numpy(v, k, "items", items.files[0]) for k, v in items.columns.items()}
    meta = {k: v for k, v in cols.items() if k != "path"}
    text = _as_numpy(caps.columns["text"], "text", "captions", caps.files[0]) if "text" in caps.columns else None
    if text is not None:
        text = np.where(pd.isna(text), "", text).astype(object)
    return SplitData(path=shown_root, item_ids=items.ids, item_emb=items.emb, caption_ids=caps.ids,
                     caption_item=caption_item, caption_emb=caps.emb, caption_text=text,
                     manifest=manifest, item_paths=cols.get("path"), item_meta=meta)


def _as_numpy(col: pa.ChunkedArray, name: str, kind: str, where: str) -> np.ndarray:
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return (as_string(col, name, where) if name in STRING_COLUMNS[kind] else col).to_numpy()


def _item_rows(items: pd.Index, col: pa.ChunkedArray | None) -> np.ndarray:
    """Row in ``items`` of every caption's item_id (-1 = unknown), (M,) int64.

    A dictionary-encoded chunk (as e2i writes it: ~1 entry per item, not per caption) is looked up
    through its dictionary, so the hash lookups and Python strings are per item, not per caption.
    """
    parts = []
    for chunk in (col.chunks if col is not None else []):
        if pa.types.is_dictionary(chunk.type):
            values = as_string(chunk.dictionary, "item_id", "").to_numpy()
            rows = np.append(items.get_indexer(values), -1)  # null index -> the trailing -1
            idx = chunk.indices.fill_null(len(values)).to_numpy(zero_copy_only=False)
            parts.append(rows[idx])
        else:
            parts.append(items.get_indexer(as_string(chunk, "item_id", "").to_numpy()))
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def _check_manifest_dims(manifest: dict, di: int, dc: int, shown_root: str) -> None:
    dims = manifest.get("dims") or {}
    for kind, got in (("items", di), ("captions", dc)):
        want = dims.get(kind)
        if want is not None and got and int(want) != got:
            raise StoreError(f"{shown_path(shown_root, MANIFEST)}: dims.{kind} is {want} but shards have {got}")


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


# ----------------------------------------------------------------------------------------- finding splits
def split_exists(path: str | os.PathLike) -> bool:
    """True if ``path`` holds a manifest or any items/captions shards."""
    fs, root = open_fs(path)
    return exists(fs, join(root, MANIFEST)) or any(
        is_shard_name(f.base_name) for k in KINDS for f in list_files(fs, join(root, k)))


def find_splits(path: str | os.PathLike) -> list[str]:
    """Split dirs under ``path``: path itself, its children, or grandchildren (root/dataset/split)."""
    fs, root = open_fs(path)
    base = os.fspath(path).rstrip("/")

    def is_split(p: str) -> bool:
        return exists(fs, join(p, MANIFEST)) or is_dir(fs, join(p, "items"))

    if is_split(root):
        return [base]
    found = []
    for child in _subdirs(fs, root):
        if is_split(join(root, child)):
            found.append(f"{base}/{child}")
        else:
            found += [f"{base}/{child}/{g}" for g in _subdirs(fs, join(root, child)) if is_split(join(root, child, g))]
    return found


def _subdirs(fs, path: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and not i.base_name.startswith("."))
