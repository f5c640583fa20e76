"""Writing the store: :class:`StoreWriter` (resumable, atomic shards, manifest last), :func:`write_split`
(a :class:`~e2i.store.reader.SplitData` as a whole split) and :func:`remove_split`.

Conventions:

- A shard is complete iff ``<kind>/<name>.parquet`` exists: shards are written atomically
  (:func:`e2i.store.fs.write_atomic`), so a killed run never leaves a half-written ``*.parquet``;
  :class:`StoreWriter` removes the temporary leftovers of killed runs.
- ``manifest.json`` is written last, after every complete shard was re-checked together (dims, ids
  unique across shards, every caption's item known): a manifest never names a shard that is not there.
- Embeddings are stored plain and uncompressed (floats do not compress; plain pages decode at memory
  speed), ids/text dictionary-encoded with snappy.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from e2i import __version__
from e2i.errors import StoreError
from e2i.store.fs import (
    create_dirs,
    exists,
    is_dir,
    is_shard_name,
    is_tmp_name,
    join,
    list_files,
    num_rows,
    open_fs,
    read_json,
    sha256_file,
    shown_path,
    write_atomic,
)
from e2i.store.reader import SplitData, split_exists
from e2i.store.schema import (
    ID_COLUMN,
    KINDS,
    MANIFEST,
    REJECTED,
    REJECTED_SCHEMA,
    SCHEMA_VERSION,
    as_string,
    check_kind,
    embedding_dim_from_type,
    make_captions_table,
    make_items_table,
    normalize_table,
)

DEFAULT_ROWS_PER_SHARD = 100_000
_ROW_GROUP_BYTES = 32 << 20  # embedding bytes per parquet row group
_PAGE_BYTES = 8 << 20  # parquet data page size


def _declared_dim(encoders: dict, kind: str) -> int | None:
    """Dim declared for a kind: encoders are keyed by modality (text -> captions, others -> items)."""
    entries = [v for k, v in encoders.items() if (k == "text") == (kind == "captions") and isinstance(v, dict)]
    dims = [int(v["dim"]) for v in entries if v.get("dim") is not None]
    return dims[0] if len(dims) == 1 else None


def _rejected_dict(row: Any) -> dict:
    if isinstance(row, dict):
        return {k: str(row.get(k, "")) for k in REJECTED_SCHEMA.names}
    return {k: str(getattr(row, k, "")) for k in REJECTED_SCHEMA.names}


def _parquet_bytes(table: pa.Table) -> pa.Buffer:
    """Serialise a shard: dictionary/snappy for strings, plain uncompressed floats (they do not
    compress, and plain pages decode at memory speed)."""
    sink = pa.BufferOutputStream()
    others = [c for c in table.column_names if c != "embedding"]
    compression = {c: "snappy" for c in others} | {"embedding": "none"}
    dim = max(table.schema.field("embedding").type.list_size, 1)
    rows_per_group = max(1024, _ROW_GROUP_BYTES // (4 * dim))  # several row groups -> parallel decode
    # 8 MiB pages and no float statistics: fewer page headers for e2i.store.pages to walk
    pq.write_table(table, sink, compression=compression, use_dictionary=others, row_group_size=rows_per_group,
                   data_page_size=_PAGE_BYTES, write_statistics=others)
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
        # kind -> id -> rel: the inverse of _ids, so a new shard's ids are checked in O(its rows)
        # (checking against every earlier shard's set is O(rows x shards): quadratic in the corpus)
        self._owner: dict[str, dict[str, str]] = {k: {} for k in KINDS}
        for kind in KINDS:
            create_dirs(self.fs, join(self.root, kind))
        old = read_json(self.fs, join(self.root, MANIFEST), shown_path(self.uri, MANIFEST))
        if old is not None and old.get("encoders") and self.encoders and \
                json.dumps(old["encoders"], sort_keys=True) != json.dumps(self.encoders, sort_keys=True):
            raise StoreError(f"{shown_path(self.uri, MANIFEST)}: existing split was written with encoders "
                             f"{json.dumps(old['encoders'], sort_keys=True)}; refusing to mix (delete it first)")
        if clean_tmp:
            self.clean_tmp()

    # -- state of storage
    def clean_tmp(self) -> int:
        """Delete temporary files left by killed runs; returns how many were removed."""
        removed = 0
        for kind in (*KINDS, ""):
            directory = join(self.root, kind) if kind else self.root
            for info in list_files(self.fs, directory):
                if is_tmp_name(info.base_name):
                    self.fs.delete_file(info.path)
                    removed += 1
        return removed

    def completed_shards(self, kind: str) -> dict[str, dict]:
        """{shard name (no .parquet): {path, kind, rows, bytes, sha256}} of complete shards on storage."""
        check_kind(kind)
        out = {}
        for f in list_files(self.fs, join(self.root, kind)):
            if is_shard_name(f.base_name):
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
            rows = num_rows(self.fs, f.path)
        except (OSError, pa.ArrowException):
            warnings.warn(f"{shown_path(self.uri, rel)}: unreadable shard ignored (it will be rewritten)")
            return None
        sha, size = sha256_file(self.fs, f.path)
        self._info[rel] = {"path": rel, "kind": kind, "rows": rows, "bytes": size, "sha256": sha}
        return self._info[rel]

    def existing_ids(self, kind: str) -> set[str]:
        """Ids (item_id / caption_id) in all complete shards of ``kind``."""
        return set().union(*self._ids_by_shard(kind).values())

    def _ids_by_shard(self, kind: str) -> dict[str, set[str]]:
        cache, owner = self._ids[kind], self._owner[kind]
        done = {info["path"] for info in self.completed_shards(kind).values()}
        gone = [rel for rel in cache if rel not in done]
        for rel in gone:
            del cache[rel]
        if gone:  # a shard removed under us (rare): rebuild the inverse
            owner.clear()
            for rel, ids in cache.items():
                owner.update(dict.fromkeys(ids, rel))
        for rel in sorted(done - set(cache)):
            col = pq.read_table(join(self.root, rel), filesystem=self.fs, columns=[ID_COLUMN[kind]]).column(0)
            cache[rel] = set(as_string(col, ID_COLUMN[kind], shown_path(self.uri, rel)).to_pylist())
            owner.update(dict.fromkeys(cache[rel], rel))
        return cache

    def _existing_dim(self, kind: str) -> tuple[int | None, str]:
        for info in self.completed_shards(kind).values():
            schema = pq.read_schema(join(self.root, info["path"]), filesystem=self.fs)
            return embedding_dim_from_type(schema.field("embedding").type), info["path"]
        return None, ""

    # -- writing
    def write_shard(self, kind: str, table: pa.Table, name: str) -> dict:
        """Validate and atomically write ``<kind>/<name>.parquet``; returns its shard info.

        Rewriting an existing name replaces that shard. Ids must be unique across all shards of the kind.
        """
        check_kind(kind)
        name = name.removesuffix(".parquet")
        if not name or "/" in name or name.startswith((".", "_")):
            raise StoreError(f"bad shard name {name!r} (no '/', must not start with '.' or '_')")
        rel = f"{kind}/{name}.parquet"
        where = shown_path(self.uri, rel)
        table = normalize_table(kind, table, where)
        dim = table.schema.field("embedding").type.list_size
        declared = _declared_dim(self.encoders, kind)
        have, have_file = self._existing_dim(kind)
        for want, source in ((declared, "encoders"), (have, have_file)):
            if want is not None and len(table) and dim != want and source != rel:
                raise StoreError(f"{where}: embedding dim {dim} != {want} ({source})")
        ids = table.column(ID_COLUMN[kind]).to_pylist()
        self._ids_by_shard(kind)
        owner = self._owner[kind]
        for i in ids:
            other_rel = owner.get(i)
            if other_rel is not None and other_rel != rel:
                raise StoreError(f"{where}: {ID_COLUMN[kind]} {i!r} already in {other_rel}")
        info = write_shard_file(self.fs, self.root, kind, table, name)
        self._info[rel] = info
        if rel in self._ids[kind]:  # a rewritten shard: drop the inverse entries of its old ids
            for old in self._ids[kind][rel] - set(ids):
                self._owner[kind].pop(old, None)
        self._ids[kind][rel] = set(ids)
        self._owner[kind].update(dict.fromkeys(ids, rel))
        return info

    def add_known(self, infos: Iterable[dict]) -> None:
        """Shard infos ({path, kind, rows, bytes, sha256, ...}) written by other processes (e.g. Ray
        workers, :func:`write_shard_file`): ``finalize`` takes them as they are (extra keys such as the
        writer's ``node`` go into the manifest) instead of hashing the files again; a file whose size
        differs from its info is hashed."""
        for info in infos:
            self._info[info["path"]] = dict(info)

    def write_rejected(self, rows: Iterable[Any]) -> int:
        """Merge rejected rows (dicts or objects with source/id/reason) into rejected.parquet.

        A row with the same (source, id) as an earlier one replaces it, so re-runs do not duplicate.
        Returns the number of rejected rows now stored.
        """
        new = pd.DataFrame([_rejected_dict(r) for r in rows], columns=REJECTED_SCHEMA.names)
        path = join(self.root, REJECTED)
        if exists(self.fs, path):
            old = pq.read_table(path, filesystem=self.fs).to_pandas()
            new = pd.concat([old, new], ignore_index=True)
        new = new.astype(str).drop_duplicates(subset=["source", "id"], keep="last")
        table = pa.Table.from_pandas(new, schema=REJECTED_SCHEMA, preserve_index=False)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        write_atomic(self.fs, path, sink.getvalue())
        return len(new)

    def finalize(self, extra: dict | None = None, *, check_ids: bool = True) -> dict:
        """Check all complete shards together and write manifest.json last; returns the manifest.

        ``check_ids=False`` skips the cross-shard id check (it reads every id onto this process): for
        writers whose shards are disjoint by construction (``e2i cache --write-on workers``);
        ``e2i store verify`` still checks them."""
        shards = {k: sorted(self.completed_shards(k).values(), key=lambda s: s["path"]) for k in KINDS}
        if not shards["items"]:
            raise StoreError(f"{shown_path(self.uri, 'items')}: no shards written; nothing to finalize")
        dims = {k: self._consistent_dim(k, shards[k]) for k in KINDS}
        if check_ids:
            self._check_cross_shard()
        all_shards = shards["items"] + shards["captions"]
        counts = {k: sum(s["rows"] for s in shards[k]) for k in KINDS}
        counts["rejected"] = 0
        rej = join(self.root, REJECTED)
        if exists(self.fs, rej):  # listed as a shard of kind "rejected" so verify re-checks it too
            sha, size = sha256_file(self.fs, rej)
            counts["rejected"] = num_rows(self.fs, rej)
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
        write_atomic(self.fs, join(self.root, MANIFEST), json.dumps(manifest, indent=2).encode())
        self.clean_tmp()
        return manifest

    def _consistent_dim(self, kind: str, shards: list[dict]) -> int | None:
        dim, first = None, ""
        for s in shards:
            schema = pq.read_schema(join(self.root, s["path"]), filesystem=self.fs)
            d = embedding_dim_from_type(schema.field("embedding").type)
            if dim is not None and d != dim:
                raise StoreError(f"{shown_path(self.uri, s['path'])}: embedding dim {d} != {dim} in {first}")
            dim, first = d, first or s["path"]
        return dim

    def _check_cross_shard(self) -> None:
        """Ids unique across shards; every caption's item_id is a known item."""
        for kind in KINDS:
            seen: dict[str, str] = {}
            for rel, ids in sorted(self._ids_by_shard(kind).items()):
                clash = next((i for i in ids if i in seen), None)
                if clash is not None:
                    raise StoreError(f"{shown_path(self.uri, rel)}: duplicate {ID_COLUMN[kind]} {clash!r} "
                                     f"(also in {seen[clash]})")
                seen.update(dict.fromkeys(ids, rel))
        item_ids = pa.array(list(self.existing_ids("items")), pa.string())
        for info in self.completed_shards("captions").values():
            t = pq.read_table(join(self.root, info["path"]), filesystem=self.fs, columns=["caption_id", "item_id"])
            known = pc.is_in(t.column("item_id"), value_set=item_ids).to_numpy(zero_copy_only=False)
            if not known.all():
                row = int(np.flatnonzero(~known)[0])
                raise StoreError(f"{shown_path(self.uri, info['path'])}: caption {t.column(0)[row].as_py()!r} "
                                 f"points at missing item {t.column(1)[row].as_py()!r}")


def write_shard_file(fs: pafs.FileSystem, root: str, kind: str, table: pa.Table, name: str,
                     where: str | None = None) -> dict:
    """Normalise ``table`` and write it atomically as ``<root>/<kind>/<name>.parquet`` (tmp + rename
    locally, one PUT on object storage); returns its shard info {path, kind, rows, bytes, sha256}. No
    check against other shards: :class:`StoreWriter` does those; Ray workers call this directly."""
    rel = f"{kind}/{name}.parquet"
    table = normalize_table(kind, table, where or rel)
    data = _parquet_bytes(table)
    write_atomic(fs, join(root, rel), data)
    return {"path": rel, "kind": kind, "rows": len(table), "bytes": data.size,
            "sha256": hashlib.sha256(memoryview(data)).hexdigest()}


def shard_names(path: str | os.PathLike, kind: str) -> list[str]:
    """File names of the complete shards of ``kind`` of the split at ``path`` (one listing), sorted."""
    fs, root = open_fs(path)
    return sorted(f.base_name for f in list_files(fs, join(root, kind)) if is_shard_name(f.base_name))


def shard_ids(path: str | os.PathLike, kind: str, names: Iterable[str] | None = None) -> set[str]:
    """Ids (item_id / caption_id) in the complete shards of ``kind`` of the split at ``path`` (or in the
    shards ``names`` of it, a snapshot: complete shards never change): the id column of each shard only,
    nothing hashed, nothing created or removed."""
    fs, root = open_fs(path)
    ids: set[str] = set()
    for name in shard_names(path, kind) if names is None else names:
        col = pq.read_table(join(root, kind, name), filesystem=fs, columns=[ID_COLUMN[kind]]).column(0)
        ids.update(as_string(col, ID_COLUMN[kind], shown_path(os.fspath(path), f"{kind}/{name}")).to_pylist())
    return ids


# ----------------------------------------------------------------------------------------- whole splits
def remove_split(path: str | os.PathLike) -> None:
    """Delete the store files of one split (manifest, items/, captions/, rejected.parquet) if present."""
    fs, root = open_fs(path)
    for name in (MANIFEST, REJECTED):
        if exists(fs, join(root, name)):
            fs.delete_file(join(root, name))
    for kind in KINDS:
        if is_dir(fs, join(root, kind)):
            fs.delete_dir(join(root, kind))


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
