"""The corpus index read in parallel (``e2i cache --write-on workers`` on many metadata files): one Ray task
per metadata file, the resume anti-join per block in tasks, nothing of the corpus on the driver.

    files (a glob or <split>-*.jsonl shards; listed on the driver: one name per file)
      ─▶ read_part × files          one task per file: the jsonl reader's per-row checks (rejected rows name
                                    file:line), the file's items and captions as two Arrow tables kept in the
                                    object store, its ids hash-bucketed for the duplicate check
      ─▶ find_duplicates × buckets  an id in two files: the later record is rejected ("duplicate id (first at
                                    a.jsonl:3)"), as the one-process reader does; returns the duplicates only
      ─▶ done_ids (one task)        ids of the complete shards listed at the start, kept in the object store
      ─▶ part_blocks × files        fixed row ranges of the file's tables (block_rows(corpus rows, batch size)
                                    rows or more each), minus duplicates and ids in complete shards (the
                                    anti-join); non-empty blocks
      ─▶ the driver: a header per file (counts, rejected rows) and the blocks' refs, as from
         ``e2i.cache.workers.index_blocks`` (the one-task index that single-file corpora use)

Deterministic blocks: a block is a fixed row range of one file (bounds from the file's and the corpus's
row counts and the encoder's batch size, before any filtering), so the same corpus gives the same blocks,
hence the same shard names (``part-w<sha1 of the ids>``), on a re-run, a retried task, or after a crash;
the anti-join only removes rows inside a block, and a block whose shard is complete loses all its
(stored) rows.

Why not ``ray.data.read_json`` or ``Dataset.join(join_type="left_anti")`` (both in Ray 2.60): the first
has no per-row validation naming file:line, the second hash-shuffles rows into partitions, which are not
functions of (file, row range), so shard names would change between runs.

Scaling: the driver holds O(files + blocks) refs and O(rejected rows); a read task holds one file; the
files' tables and blocks sit in the object store (spilled to disk beyond its size) until embedded. The
done-id set is one object that each part_blocks task deserialises (O(ids already stored) per task).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from e2i.cache.embed import KEEP, KIND, block_bounds, block_rows
from e2i.cache.workers import META

MAX_BUCKETS = 16  # duplicate-check tasks; each gets one bucket of every file's ids
SOURCE = "_source"  # file:line of the item's record (items and captions tables; dropped from the blocks)


def bucket_of(item_id: str, buckets: int) -> int:
    """A stable bucket for an id (crc32: the same in every process, unlike ``hash``)."""
    return zlib.crc32(item_id.encode("utf-8", "surrogateescape")) % buckets


def read_part(file: str, part: int, curate: bool, buckets: int) -> tuple:
    """One metadata file -> (header, items table, captions table, bucket 0, ..., bucket ``buckets``-1).

    header: file, part, the reading task and node, modalities, rejected rows, row counts, metadata types.
    items: KIND, item_id, path, META, SOURCE; captions: KIND, caption_id, item_id, text, SOURCE (the item's
    record). Bucket b: (item_id, source) of every record of this file that got an id (accepted or not,
    in file order) with ``bucket_of(id) == b``."""
    import ray

    from e2i.cache.shards import MetaColumns
    from e2i.corpus.fspath import corpus_path
    from e2i.corpus.jsonl import read_jsonl_file
    from e2i.corpus.rows import Corpus

    data, seen = Corpus("", "", []), {}
    read_jsonl_file(corpus_path(file), data, seen, curate)
    ids = [it.item_id for it in data.items]
    meta = MetaColumns(data.items)
    values = pa.table(meta.columns(ids)).to_pylist() if meta.names else [{}] * len(ids)
    items = pa.table({KIND: pa.array(["items"] * len(ids), pa.string()), "item_id": pa.array(ids, pa.string()),
                      "path": pa.array([it.path for it in data.items], pa.string()),
                      META: pa.array([json.dumps(v, default=str) for v in values], pa.string()),
                      SOURCE: pa.array([seen[i] for i in ids], pa.string())})
    caps = [(cid, it.item_id, text, seen[it.item_id]) for it in data.items
            for cid, text in zip(it.caption_ids, it.captions)]
    captions = pa.table({KIND: pa.array(["captions"] * len(caps), pa.string()),
                         **{c: pa.array([r[k] for r in caps], pa.string())
                            for k, c in enumerate(("caption_id", "item_id", "text", SOURCE))}})
    ctx = ray.get_runtime_context()
    header = {"file": file, "part": part, "task": ctx.get_task_id(), "node": ctx.get_node_id(),
              "modalities": sorted({it.modality for it in data.items}), "rejected": data.rejected_rows(),
              "rows": {"items": len(items), "captions": len(captions)},
              "meta_types": {meta.names[k]: meta.types[k] for k in meta.names}}
    by_bucket: list[list[tuple[str, str]]] = [[] for _ in range(buckets)]
    for item_id, source in seen.items():  # insertion order = file order
        by_bucket[bucket_of(item_id, buckets)].append((item_id, source))
    return (header, items, captions,
            *[pa.table({"item_id": pa.array([i for i, _ in b], pa.string()),
                        "source": pa.array([s for _, s in b], pa.string())}) for b in by_bucket])


def find_duplicates(*tables: pa.Table) -> list[dict]:
    """One bucket of every file, in file order -> the later records of ids seen in an earlier file:
    ``{part, source, id, first}`` (``first``: the source of the id's first record)."""
    first: dict[str, str] = {}
    dups = []
    for part, table in enumerate(tables):
        for item_id, source in zip(table["item_id"].to_pylist(), table["source"].to_pylist()):
            if item_id in first:
                dups.append({"part": part, "source": source, "id": item_id, "first": first[item_id]})
            else:
                first[item_id] = source
    return dups


def done_ids(store: str, names: Mapping[str, list[str]]) -> dict[str, set[str]]:
    """{kind: ids in the complete shards ``names[kind]`` of ``store``}: the anti-join's right side, built on
    a worker from the driver's listing at the start of the run. A snapshot: if Ray rebuilds this object
    (lost with its node), it reads the same shards, so the blocks rebuilt from it are the same."""
    from e2i.store.writer import shard_ids

    return {k: shard_ids(store, k, names[k]) for k in KEEP}


def part_blocks(items: pa.Table, captions: pa.Table, drop: list[str], done: Mapping[str, set[str]],
                rows_per_block: Mapping[str, int]):
    """One file's tables -> its blocks (a generator task): yields a header ``{"blocks": {kind: [rows]},
    "rows": {kind: rows after the duplicates}}``, then the items' blocks, then the captions' blocks.

    Blocks are fixed row ranges of the file (``rows // rows_per_block[kind]`` near-equal slices, at least
    one: each has at least that many rows unless the file has fewer), minus the records in ``drop``
    (duplicates of an earlier file; their captions too) and the ids in ``done`` (the anti-join); empty
    blocks are not yielded."""
    import pyarrow.compute as pc

    drop_set = pa.array(drop, pa.string())
    header: dict[str, Any] = {"blocks": {}, "rows": {}}
    out: dict[str, list[pa.Table]] = {}
    for kind, table in (("items", items), ("captions", captions)):
        n = len(table)
        bounds = block_bounds(n, rows_per_block[kind])
        kept = pc.invert(pc.is_in(table[SOURCE], value_set=drop_set))  # (rows,) bool
        header["rows"][kind] = pc.sum(kept).as_py() or 0
        id_col = "item_id" if kind == "items" else "caption_id"
        not_done = pa.array([i not in done[kind] for i in table[id_col].to_pylist()], pa.bool_())
        keep = pc.and_(kept, not_done).to_numpy(zero_copy_only=False)
        blocks = [table.slice(lo, hi - lo).filter(keep[lo:hi]).drop_columns([SOURCE]) for lo, hi in bounds]
        out[kind] = [b for b in blocks if len(b)]
        header["blocks"][kind] = [len(b) for b in out[kind]]
    yield header
    for kind in ("items", "captions"):
        for block in out[kind]:  # noqa: UP028 - `yield from` a list fails in Ray: its wrapper calls .send
            yield block


def meta_schema(types: list[Mapping[str, pa.DataType]]) -> pa.Schema | None:
    """The items' metadata columns over every file (one type per column, as ``MetaColumns`` gives one
    file): a column's type where the files agree, float64 for ints and floats, else string."""
    names = sorted({n for t in types for n in t})
    fields = []
    for name in names:
        seen = {t[name] for t in types if name in t}
        if len(seen) == 1:
            fields.append(pa.field(name, seen.pop()))
        elif seen <= {pa.int64(), pa.float64()}:
            fields.append(pa.field(name, pa.float64()))
        else:
            fields.append(pa.field(name, pa.string()))
    return pa.schema(fields) if fields else None


def parallel_index(corpus: Mapping[str, Any], files: list[str], cache_dir: str, dataset: str | None,
                   batch_sizes: Mapping[str, Mapping[str, int]]) -> tuple[dict, dict[str, list]]:
    """(header, {kind: block refs}) for ``e2i.cache.workers.cache_on_workers``, as its one-task index gives
    them; ``corpus``: {kind, metadata, split, curate}; ``files``: the metadata files (URIs or absolute
    paths); ``cache_dir``: the store root; ``batch_sizes``: {modality: {kind: rows}}. See the module doc."""
    import ray

    from e2i.cache.workers import absolute, split_dir
    from e2i.corpus.fspath import corpus_path
    from e2i.corpus.jsonl import corpus_names

    name, split = corpus_names(corpus["metadata"], [corpus_path(f) for f in files], corpus["split"])
    store = absolute(split_dir(cache_dir, dataset or name, split))
    buckets = min(len(files), MAX_BUCKETS)
    # [1] one read task per file; the driver takes the headers only
    read = ray.remote(num_cpus=1, max_retries=3)(read_part)
    reads = [read.options(num_returns=3 + buckets).remote(f, i, corpus["curate"], buckets)
             for i, f in enumerate(files)]
    heads = ray.get([r[0] for r in reads])
    modalities = sorted({m for h in heads for m in h["modalities"]})
    rejected = [r for h in heads for r in h["rejected"]]
    head: dict[str, Any] = {"name": name, "dataset": dataset or name, "split": split, "store": store,
                            "modalities": modalities, "rejected": rejected, "meta_schema": None,
                            "total": {}, "blocks": {}, "skipped": {},
                            "index": {"files": len(files), "read_tasks": len({h["task"] for h in heads}),
                                      "read_nodes": sorted({h["node"] for h in heads})}}
    if len(modalities) != 1:
        return head, {}
    # [2] ids in two files (bucket by bucket), the done ids: both stay on the workers
    check = ray.remote(num_cpus=1, max_retries=3)(find_duplicates)
    dups = [d for part in ray.get([check.remote(*[r[3 + b] for r in reads]) for b in range(buckets)]) for d in part]
    from e2i.store.writer import shard_names

    listing = {k: shard_names(store, k) for k in KEEP}  # O(shards) names on the driver, not ids
    done = ray.remote(num_cpus=1, max_retries=3)(done_ids).remote(store, listing)
    head["rejected"] = drop_duplicates(heads, dups)
    head["meta_schema"] = meta_schema([h["meta_types"] for h in heads])
    # [3] each file's blocks: fixed row ranges minus duplicates and done ids; items' refs, then captions'
    drops: dict[int, list[str]] = {}
    for d in dups:
        drops.setdefault(d["part"], []).append(d["source"])
    # rows per block: the one-task index's rule over the whole corpus (the encoder's batch size, more when a
    # kind would have over MAX_BLOCKS blocks), from the files' row counts: the same corpus, the same blocks
    per_block = {k: block_rows(sum(h["rows"][k] for h in heads), batch_sizes[modalities[0]][k]) for k in KEEP}
    blocks = ray.remote(num_cpus=1, max_retries=3)(part_blocks)
    gens = [blocks.remote(r[1], r[2], drops.get(i, []), done, per_block) for i, r in enumerate(reads)]
    del reads  # the submitted tasks keep their inputs alive; the driver no longer needs them
    refs: dict[str, list] = {"items": [], "captions": []}
    totals = {"items": 0, "captions": 0}
    for gen in gens:
        part = ray.get(next(gen))
        for kind in ("items", "captions"):
            totals[kind] += part["rows"][kind]
            head["blocks"].setdefault(kind, []).extend(part["blocks"][kind])
            refs[kind] += [next(gen) for _ in part["blocks"][kind]]
    head["total"] = totals
    head["skipped"] = {k: totals[k] - sum(head["blocks"][k]) for k in totals}
    return head, refs


def drop_duplicates(heads: list[dict], dups: list[dict]) -> list[dict]:
    """The files' rejected rows with the cross-file duplicates applied, as the one-process reader reports
    them: a duplicate record's own rows replaced by one "duplicate id (first at <first record>)" row, and
    a file's in-file duplicate of such a record pointing at the first record too."""
    first = {(d["part"], d["source"]): d["first"] for d in dups}
    out = []
    for h in heads:
        for r in h["rejected"]:
            if (h["part"], r["source"]) in first:
                continue
            reason = r["reason"]
            if reason.startswith("duplicate id (first at "):
                earlier = reason[len("duplicate id (first at "):-1]
                reason = f"duplicate id (first at {first.get((h['part'], earlier), earlier)})"
            out.append({**r, "reason": reason})
    out += [{"source": d["source"], "id": d["id"], "reason": f"duplicate id (first at {d['first']})"} for d in dups]
    return out
