"""A split read in pieces instead of whole: its size from the manifest, and its caption shards' row
groups read one at a time (what :mod:`e2i.train.stream` streams with Ray Data).

- :func:`split_size`: rows and embedding dims of each kind, from ``manifest.json`` (footers when a
  split has no manifest), without reading any data: the estimate that decides memory vs streaming.
- :func:`row_groups`: ``[{uri, group, rows}]`` of every row group of the manifest's caption shards
  (the committed snapshot, as :func:`e2i.store.load_split` reads it; ~32 MiB each as e2i writes them).
- :class:`RowGroupReader`: reads listed row groups (``columns``) as one Arrow table; a plain picklable
  callable, so Ray Data runs it as a task function. Unpickled in a process (Ray Data's executor or
  its read tasks), it keeps Ray Data's per-execution INFO lines ("execution finished in ...", one
  per pass) off the console there; they stay in Ray Data's log file.

Pure pyarrow (no ray, no torch), so a Ray Data task that reads does not import torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from e2i.errors import StoreError
from e2i.store.fs import is_dir, join, open_fs, read_json, shown_path
from e2i.store.reader import shard_header, shard_list
from e2i.store.schema import MANIFEST, embedding_dim_from_type


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


def quiet_ray_data_logs() -> None:
    """Ray Data's per-execution INFO lines (two at the start, one at the end of every pass) and its
    "progress bars disabled" warning go to its log file only, in this process."""
    logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


class RowGroupReader:
    """``reader(batch)``: the row groups listed in ``batch`` (columns ``uri``, ``group``) as one table."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = list(columns)

    def __call__(self, batch: pa.Table) -> pa.Table:
        parts = []
        for uri, group in zip(batch.column("uri").to_pylist(), batch.column("group").to_pylist()):
            fs, full = open_fs(uri)
            try:
                with fs.open_input_file(full) as f:
                    parts.append(pq.ParquetFile(f).read_row_group(group, columns=self.columns))
            except (OSError, pa.ArrowException) as e:
                raise StoreError(f"{uri}: cannot read row group {group} ({str(e).splitlines()[0]})") from None
        return pa.concat_tables(parts)

    def __setstate__(self, state: dict) -> None:  # unpickled in a Ray process: keep its console quiet
        self.__dict__.update(state)
        quiet_ray_data_logs()
