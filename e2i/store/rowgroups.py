"""A split read in pieces instead of whole: its size from the manifest, and its caption shards' row
groups read one at a time (what :mod:`e2i.train.stream` streams with Ray Data).

- :func:`split_size`: rows and embedding dims of each kind, from ``manifest.json`` (footers when a
  split has no manifest), without reading any data: the estimate that decides memory vs streaming.
- :func:`row_groups`: ``[{uri, group, rows}]`` of every row group of the manifest's caption shards
  (the committed snapshot, as :func:`e2i.store.load_split` reads it; ~32 MiB each as e2i writes them).
- :func:`embedding_blocks`: one kind's embeddings in :func:`e2i.store.load_split`'s row order as
  consecutive blocks of a fixed number of rows, read one row group at a time (the fast page copy of
  :mod:`e2i.store.pages`), so memory holds one row group and one block, never the split: what the
  chunked evaluation (:mod:`e2i.evaluate.chunked`) projects block by block.
- :class:`RowGroupReader`: reads listed row groups (``columns``) as one Arrow table; a plain picklable
  callable, so Ray Data runs it as a task function. Unpickled in a process (Ray Data's executor or
  its read tasks), it keeps Ray Data's per-execution INFO lines ("execution finished in ...", one
  per pass) off the console there; they stay in Ray Data's log file.

Pure pyarrow + numpy (no ray, no torch), so a Ray Data task that reads does not import torch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from e2i.errors import StoreError
from e2i.store.fs import is_dir, join, open_fs, read_json, shown_path
from e2i.store.pages import embedding_rows
from e2i.store.reader import _read_columns, shard_header, shard_list
from e2i.store.schema import ID_COLUMN, MANIFEST, as_string, embedding_dim_from_type


@dataclass(frozen=True)
class SplitSize:
    items: int  # rows
    captions: int
    item_dim: int
    caption_dim: int

    @property
    def items_bytes(self) -> int:
        return self.items * self.item_dim * 4

    @property
    def captions_bytes(self) -> int:
        return self.captions * self.caption_dim * 4


def _manifest(path: str):
    fs, root = open_fs(path)
    if not is_dir(fs, root):
        raise StoreError(f"{path}: no such store split directory")
    return fs, root, read_json(fs, join(root, MANIFEST), shown_path(path, MANIFEST))


def split_size(path: str) -> SplitSize:
    """Rows and dims of a split: from manifest.json, else from the shards' parquet footers."""
    fs, root, manifest = _manifest(path)
    counts, dims = (manifest or {}).get("counts"), (manifest or {}).get("dims")
    if isinstance(counts, dict) and isinstance(dims, dict) and all(
            isinstance(dims.get(k), int) and isinstance(counts.get(k), int) for k in ("items", "captions")):
        return SplitSize(counts["items"], counts["captions"], dims["items"], dims["captions"])
    rows, found_dims = {}, {}
    for kind in ("items", "captions"):
        heads = [shard_header(fs, root, rel, shown_path(path, rel), n, kind)
                 for rel, n in shard_list(fs, root, manifest, kind, path)]
        rows[kind] = sum(h.num_rows for h in heads)
        found = {embedding_dim_from_type(h.schema.to_arrow_schema().field("embedding").type) for h in heads}
        found_dims[kind] = max((d for d in found if d), default=0)
    return SplitSize(rows["items"], rows["captions"], found_dims["items"], found_dims["captions"])


def row_groups(path: str, kind: str = "captions") -> list[dict]:
    """[{uri, group, rows}] of every row group of the split's ``kind`` shards (the manifest's list)."""
    fs, root, manifest = _manifest(path)
    base = path.rstrip("/")
    out = []
    for rel, n in shard_list(fs, root, manifest, kind, path):
        head = shard_header(fs, root, rel, shown_path(path, rel), n, kind)
        out += [{"uri": f"{base}/{rel}", "group": g, "rows": head.row_group(g).num_rows}
                for g in range(head.num_row_groups)]
    return out


def embedding_blocks(path: str, kind: str, dim: int, rows: int) -> Iterator[np.ndarray]:
    """The ``kind`` embeddings of a split, in ``load_split``'s row order (the manifest's shards, each
    shard's row groups in order), as consecutive blocks of ``rows`` rows, the last one shorter.

    Each block is a (<= rows, dim) float32 view of ONE reused buffer, valid until the next block is
    asked for: project it and drop it. Memory: that (rows, dim) block plus one row group (also
    reused), whatever the split's size. Checked as ``load_split`` checks them (finite, dim ``dim``; a
    bad row is named by its id); an error names the shard.
    """
    fs, root, manifest = _manifest(path)
    block = np.empty((rows, dim), np.float32)  # (rows, D) what is yielded, filled from row groups
    group_buf = np.empty(0, np.float32)  # flat storage of the current row group, grown to the largest
    filled = 0
    for rel, expected in shard_list(fs, root, manifest, kind, path):
        shown, full = shown_path(path, rel), join(root, rel)
        head = shard_header(fs, root, rel, shown, expected, kind)
        first = 0  # the current row group's first row in the shard
        for g in range(head.num_row_groups):
            n = head.row_group(g).num_rows
            if group_buf.size < n * dim:
                group_buf = np.empty(n * dim, np.float32)
            group = group_buf[:n * dim].reshape(n, dim)  # (n, D) C-contiguous
            embedding_rows(fs, full, shown, head, group, _ids_from(fs, full, shown, kind, first), range(g, g + 1))
            done = 0
            while done < n:  # copy into the block, hand it out whenever it is full
                take = min(rows - filled, n - done)
                block[filled:filled + take] = group[done:done + take]
                filled, done = filled + take, done + take
                if filled == rows:
                    yield block
                    filled = 0
            first += n
    if filled:
        yield block[:filled]


def _ids_from(fs, full: str, shown: str, kind: str, first: int, group: int | None = None):
    """``ids_of()`` for :func:`e2i.store.pages.embedding_rows`: the shard's (or its row group ``group``'s)
    ids from row ``first`` on, read only when an error message needs one."""
    col = ID_COLUMN[kind]

    def ids():
        if group is None:
            table = _read_columns(fs, full, shown, [col])
        else:
            with fs.open_input_file(full) as f:
                table = pq.ParquetFile(f).read_row_group(group, columns=[col])
        return as_string(table.column(0), col, shown).to_numpy()[first:]
    return ids


def quiet_ray_data_logs() -> None:
    """Ray Data's per-execution INFO lines (two at the start, one at the end of every pass) and its
    "progress bars disabled" warning go to its log file only, in this process."""
    logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


class RowGroupReader:
    """``reader(batch)``: the row groups listed in ``batch`` (columns ``uri``, ``group``) as one table;
    ``reader.read(uri, group)``: one row group.

    The embedding column comes through the fast page copy (:func:`e2i.store.pages.embedding_rows`,
    checked finite; pyarrow decodes it when the pages are not plain float32) into one (n, D) array that
    the table's fixed_size_list column wraps without a copy; the other columns are read by pyarrow.
    pyarrow's own decoding of the list column costs ~4x more CPU (a level per float).
    """

    def __init__(self, columns: list[str], kind: str = "captions") -> None:
        self.columns, self.kind = list(columns), kind

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.concat_tables([self.read(uri, group) for uri, group in
                                 zip(batch.column("uri").to_pylist(), batch.column("group").to_pylist())])

    def read(self, uri: str, group: int) -> pa.Table:
        fs, full = open_fs(uri)
        others = [c for c in self.columns if c != "embedding"]
        try:
            with fs.open_input_file(full) as f:
                pf = pq.ParquetFile(f)
                dim = embedding_dim_from_type(pf.schema_arrow.field("embedding").type) \
                    if "embedding" in self.columns else None  # None: no embedding, or variable lists (pyarrow)
                table = pf.read_row_group(group, columns=self.columns if dim is None else others)
        except (OSError, pa.ArrowException, KeyError) as e:
            raise StoreError(f"{uri}: cannot read row group {group} ({str(e).splitlines()[0]})") from None
        if dim is None:
            return table
        out = np.empty((pf.metadata.row_group(group).num_rows, dim), np.float32)  # (n, D)
        embedding_rows(fs, full, uri, pf.metadata, out, _ids_from(fs, full, uri, self.kind, 0, group),
                       range(group, group + 1))
        emb = pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1)), dim)  # wraps `out`, no copy
        return table.append_column("embedding", emb).select(self.columns)

    def __setstate__(self, state: dict) -> None:  # unpickled in a Ray process: keep its console quiet
        self.__dict__.update(state)
        quiet_ray_data_logs()
