"""Shards of `e2i cache` and the bookkeeping of resume: what is already stored, what is left to embed.

- :class:`ShardBuffer` collects the good rows the driver receives and writes shards of exactly
  ``--shard-size`` rows (``part-NNNNN``, numbered after the existing ones) through ``StoreWriter``;
- :class:`MetaColumns` turns item metadata into items columns with one Arrow type per key;
- resume: a shard is complete iff its file exists (tmp + rename in StoreWriter), so the rows still to
  embed are the ids not in complete shards (:func:`item_rows`, :func:`caption_rows`), and
  :func:`check_resume_compatible` refuses to mix shards of another encoder into a split.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pyarrow as pa

from e2i.cache.embed import KEEP
from e2i.cache.summary import PhaseStats
from e2i.errors import StoreError
from e2i.store.fs import is_shard_name


class ShardBuffer:
    """Collects good rows of one kind and writes shards of exactly ``size`` rows (the last may be short).

    Shards are named ``part-NNNNN`` continuing after the highest existing number, so a resumed run
    never overwrites an earlier run's shard.
    """

    def __init__(self, writer: Any, kind: str, size: int, meta: MetaColumns | None = None,
                 encoder_entry: dict | None = None) -> None:
        self.writer, self.kind, self.size, self.meta = writer, kind, size, meta
        # Each shard names the encoder that made it (schema metadata), so a resume can refuse to mix.
        self.tag = {b"e2i.encoder": shard_encoder_tag(encoder_entry).encode()} if encoder_entry else None
        self.parts: list[dict[str, np.ndarray]] = []
        self.buffered = 0
        nums = [int(m.group(1)) for name in writer.completed_shards(kind) if (m := re.fullmatch(r"part-(\d+)", name))]
        self.next_index = max(nums, default=-1) + 1
        self.written = 0

    def add(self, cols: dict[str, np.ndarray]) -> list[dict]:
        """Buffer ``cols`` (store columns + embedding); returns infos of the shards this wrote."""
        if len(cols["embedding"]):
            self.parts.append(cols)
            self.buffered += len(cols["embedding"])
        infos = []
        while self.buffered >= self.size:
            infos.append(self._write(self.size))
        return infos

    def flush(self) -> list[dict]:
        return [self._write(self.buffered)] if self.buffered else []

    def _write(self, n: int) -> dict:
        merged = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        head = {k: v[:n] for k, v in merged.items()}
        rest = {k: v[n:] for k, v in merged.items()}
        self.parts = [rest] if len(rest["embedding"]) else []
        self.buffered -= n
        info = self.writer.write_shard(self.kind, self._table(head), f"part-{self.next_index:05d}")
        self.next_index += 1
        self.written += n
        return info

    def _table(self, cols: dict[str, np.ndarray]) -> pa.Table:
        from e2i.store import embedding_array

        arrays = {k: pa.array(list(cols[k]), pa.string()) for k in KEEP[self.kind]}
        arrays["embedding"] = embedding_array(cols["embedding"])  # (n, D) -> fixed_size_list<float32>[D]
        if self.meta is not None:
            arrays.update(self.meta.columns(cols["item_id"]))
        return pa.table(arrays).replace_schema_metadata(self.tag)


class MetaColumns:
    """Item metadata (``Item.meta``) as extra items columns with one type for the whole corpus, so every
    shard has the same schema. Keys that clash with store columns get a ``meta_`` prefix; a key whose
    values do not share one Arrow type is stored as strings."""

    def __init__(self, items: list) -> None:
        keys = sorted({k for it in items for k in it.meta})
        self.by_id = {it.item_id: it.meta for it in items}
        self.names, self.types = {}, {}
        for key in keys:
            name = f"meta_{key}" if key in ("item_id", "path", "embedding") else key
            values = [it.meta.get(key) for it in items]
            try:
                self.types[key] = pa.array(values).type
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                self.types[key] = pa.string()
            if pa.types.is_null(self.types[key]):
                self.types[key] = pa.string()
            self.names[key] = name

    def columns(self, item_ids: np.ndarray) -> dict[str, pa.Array]:
        out = {}
        for key, name in self.names.items():
            values = [self.by_id.get(i, {}).get(key) for i in item_ids]
            if pa.types.is_string(self.types[key]):
                values = [None if v is None else str(v) for v in values]
            out[name] = pa.array(values, self.types[key])
        return out


# ----------------------------------------------------------------------------------------- resume
def shard_encoder_tag(entry: dict) -> str:
    """What a shard records about its encoder (schema metadata ``e2i.encoder``): name + options."""
    return json.dumps({"name": entry["name"], "options": entry.get("options", {})}, sort_keys=True, default=str)


def check_resume_compatible(writer: Any, kind: str, entry: dict) -> None:
    """Refuse to add shards made by another encoder (or other options) to a split: compares ``entry``
    with the ``e2i.encoder`` schema metadata of an existing shard and with an existing manifest."""
    import pyarrow.parquet as pq

    from e2i.store.fs import join, list_files, read_json, shown_path

    want = shard_encoder_tag(entry)
    for f in [f for f in list_files(writer.fs, join(writer.root, kind)) if is_shard_name(f.base_name)][:1]:
        meta = pq.read_schema(f.path, filesystem=writer.fs).metadata or {}
        have = meta.get(b"e2i.encoder", b"").decode()
        if have and have != want:
            raise StoreError(f"{writer.uri}/{kind}/{f.base_name}: written with encoder {have}, this run uses "
                             f"{want}; use another --cache-dir/--dataset or delete the split")
    manifest = shown_path(writer.uri, "manifest.json")
    old = ((read_json(writer.fs, join(writer.root, "manifest.json"), manifest) or {}).get("encoders")
           or {}).get(entry["modality"])
    if old and shard_encoder_tag(old) != want:
        raise StoreError(f"{manifest}: split was written with encoder {shard_encoder_tag(old)}, this run "
                         f"uses {want}; use another --cache-dir/--dataset or delete the split")


def item_rows(data: Any, writer: Any, stats: PhaseStats) -> list[dict]:
    """Items still to embed (not in a complete shard); counts the corpus and the skipped in ``stats``."""
    done = writer.existing_ids("items")
    stats.total = len(data.items)
    rows = [{"item_id": it.item_id, "path": it.path} for it in data.items if it.item_id not in done]
    stats.skipped = stats.total - len(rows)
    return rows


def caption_rows(data: Any, writer: Any, stats: PhaseStats, rejected: list[dict],
                 coming: set[str] | frozenset = frozenset()) -> list[dict]:
    """Captions still to embed; captions of items neither in the store nor ``coming`` (being embedded by
    this run) are rejected instead."""
    items, done = writer.existing_ids("items") | set(coming), writer.existing_ids("captions")
    rows = []
    for r in data.caption_rows():
        stats.total += 1
        if r["caption_id"] in done:
            stats.skipped += 1
        elif r["item_id"] not in items:
            rejected.append({"source": "captions", "id": r["caption_id"], "reason": "item rejected"})
            stats.rejected += 1
        else:
            rows.append(r)
    return rows


def existing_dim(writer: Any, kind: str) -> int | None:
    """Embedding dim of the split's existing shards of ``kind`` (None if there are none)."""
    import pyarrow.parquet as pq

    from e2i.store.fs import join, list_files

    for f in list_files(writer.fs, join(writer.root, kind)):
        if is_shard_name(f.base_name):
            return pq.read_schema(f.path, filesystem=writer.fs).field("embedding").type.list_size
    return None
