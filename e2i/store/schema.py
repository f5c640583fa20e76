"""The store's layout and columns: names, Arrow tables, embedding arrays and shard validation.

Layout of one split (readable by pandas / pyarrow / duckdb without e2i)::

    <root>/<dataset>/<split>/
      manifest.json        written last: schema_version, dataset, split, encoders, dims,
                           shards [{path, kind, rows, bytes, sha256}], counts, created_at, e2i_version
      items/*.parquet      item_id: string (unique), path: string,
                           embedding: fixed_size_list<float32>[Di], + optional metadata columns, e.g.
                           label (class-labelled stores: the class of the item, string or int;
                           e2i evaluate --relevance-from label, e2i.evaluate.labels)
      captions/*.parquet   caption_id: string (unique), item_id: string (-> items), text: string,
                           embedding: fixed_size_list<float32>[Dc]
      rejected.parquet     source, id, reason (rows that could not be embedded)

Positives are decided by ``item_id``, never by row order; an item may have many captions.

Owns: the names above, :func:`make_items_table` / :func:`make_captions_table` (build a shard),
:func:`embedding_array` ((N, D) numpy -> Arrow) and :func:`embedding_matrix` (Arrow -> (n, D) numpy,
no per-row Python), and :func:`normalize_table` (validate + cast a shard before it is written). Pure
pyarrow/numpy: no filesystem.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from e2i.errors import StoreError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REJECTED = "rejected.parquet"
KINDS = ("items", "captions")
LABEL_COLUMN = "label"  # optional items column of class-labelled stores (SplitData.item_meta["label"])
ID_COLUMN = {"items": "item_id", "captions": "caption_id"}
REQUIRED_COLUMNS = {
    "items": ("item_id", "path", "embedding"),
    "captions": ("caption_id", "item_id", "text", "embedding"),
}
STRING_COLUMNS = {"items": ("item_id", "path"), "captions": ("caption_id", "item_id", "text")}
REJECTED_SCHEMA = pa.schema([("source", pa.string()), ("id", pa.string()), ("reason", pa.string())])


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


def embedding_dim_from_type(t: pa.DataType) -> int | None:
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


def check_finite(emb: np.ndarray, ids, where: str) -> None:
    ok = np.isfinite(emb).all(axis=1) if emb.size else np.ones(len(emb), bool)  # (n,)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise StoreError(f"{where}: {_id_at(ids, row)!r}: embedding has NaN/inf or null values")


def _id_at(ids, row: int) -> str:
    v = ids[row]
    return v.as_py() if isinstance(v, pa.Scalar) else v


def as_string(col: pa.ChunkedArray | pa.Array, name: str, where: str) -> pa.ChunkedArray:
    """Cast an id/text column to string (foreign stores write large_string, dictionaries, ints)."""
    if not (pa.types.is_string(col.type)):
        try:
            col = pc.cast(col, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise StoreError(f"{where}: column '{name}' has type {col.type}, expected string") from None
    return col if isinstance(col, pa.ChunkedArray) else pa.chunked_array([col])


def normalize_table(kind: str, table: pa.Table, where: str) -> pa.Table:
    """Validate a shard before writing; cast ids/text to string and embedding to fixed_size_list<float32>."""
    for col in REQUIRED_COLUMNS[kind]:
        if col not in table.column_names:
            raise StoreError(f"{where}: missing column '{col}' (has: {', '.join(table.column_names)})")
    idcol = ID_COLUMN[kind]
    for col in STRING_COLUMNS[kind]:
        table = table.set_column(table.schema.get_field_index(col), col, as_string(table.column(col), col, where))
    ids = table.column(idcol).to_numpy()
    if table.column(idcol).null_count:
        raise StoreError(f"{where}: null {idcol}")
    blocks = [embedding_matrix(c, where, ids) for c in table.column("embedding").chunks if len(c)]
    if not blocks:  # empty shard: keep the declared dim of a fixed_size_list column
        blocks = [np.empty((0, embedding_dim_from_type(table.schema.field("embedding").type) or 0), np.float32)]
    emb = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]  # (n, D)
    check_finite(emb, ids, where)
    dup = pd.Index(ids).duplicated()
    if dup.any():
        raise StoreError(f"{where}: duplicate {idcol} {ids[int(np.flatnonzero(dup)[0])]!r}")
    idx = table.schema.get_field_index("embedding")
    return table.set_column(idx, "embedding", embedding_array(emb))


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise StoreError(f"unknown shard kind {kind!r} (valid: {', '.join(KINDS)})")
