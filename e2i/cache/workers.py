"""`e2i cache --write-on workers`: the corpus index read on a worker, shards written by the embedding
actors straight to the store, the driver left with shard statistics only.

    index task (a worker): read_corpus -> anti-join against the ids of complete shards -> blocks
                           (a header first: dataset, split, modality; then items' blocks, captions' blocks)
      ─▶ ray.data.from_arrow_refs(blocks)       the index never reaches the driver's heap
      ─▶ map_batches(preprocess_batch)           CPU tasks: fetch (s3://...) + decode / tokenise
      ─▶ map_batches(EmbedWrite, ActorPoolStrategy)  embed one block, write it as one shard
      ─▶ one statistics row per shard ─▶ the driver: counts, rejected rows, manifest (last)

Items first, then captions (two datasets, one after the other, fed by one index task): the captions'
decode tasks are given the items this run rejected and mark their captions "item rejected", so every
stored caption points at a stored item without the driver holding any caption. The price is a second
pool start-up (seconds).

Deterministic names, exactly-once shards: a shard is ``part-w<16 hex>``, the sha1 of its kind and of the
ids of its input block (rejected rows included). Blocks come from the index task in a fixed order and are
never split or merged on the way (``keep_blocks``), so a block Ray Data retries after losing a node or an
actor is written again under the same name (atomically: tmp + rename locally, one PUT on S3), and a re-run
after any failure first drops the ids of complete shards (the anti-join), then writes only the rest.
The first complete write of a name wins: a retry that finds its shard there reports that file (hash,
node) instead of writing it again, so the manifest always describes the bytes in the store. Each shard
records the node that wrote it (parquet metadata ``e2i.node`` and the manifest's ``node``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from e2i.cache.embed import (
    ERROR,
    ID,
    ITEM_REJECTED,
    KEEP,
    KIND,
    EmbedBatch,
    block_bounds,
    block_rows,
    embed_dataset,
    execution_limits,
)
from e2i.cache.shards import shard_encoder_tag
from e2i.errors import ConfigError

NODE_KEY = b"e2i.node"  # parquet schema metadata: the node that wrote the shard
META = "_meta"  # items column: the item's metadata columns as JSON (typed again by the writer)


def shard_name(kind: str, ids: Any) -> str:
    """``part-w`` + the first 16 hex digits of sha1(kind, ids): the same block always gets the same name."""
    digest = hashlib.sha1(kind.encode())
    for i in ids:
        digest.update(b"\0" + str(i).encode("utf-8", "surrogateescape"))
    return f"part-w{digest.hexdigest()[:16]}"


def index_blocks(corpus: Mapping[str, Any], cache_dir: str, dataset: str | None,
                 batch_sizes: Mapping[str, Mapping[str, int]]):
    """The index task (a Ray generator task on a worker), one read of the corpus for the whole run: yields a
    header dict (dataset, split, store, item modalities, the reader's rejected rows, counts, the items'
    metadata schema, blocks per kind), then the items' Arrow blocks, then the captions' blocks: the rows
    not yet in a complete shard of ``<cache_dir>/<dataset>/<split>`` (the resume anti-join), in blocks of
    ``batch_sizes[modality][kind]`` rows or more (:func:`e2i.cache.embed.block_rows`)."""
    from e2i.cache.shards import MetaColumns
    from e2i.corpus import read_corpus

    data = read_corpus(corpus["kind"], corpus["metadata"], split=corpus["split"], curate=corpus["curate"])
    name = dataset or data.name
    out = split_dir(cache_dir, name, data.split)
    store = absolute(out)
    modalities = sorted({it.modality for it in data.items})
    head: dict[str, Any] = {"name": data.name, "dataset": name, "split": data.split, "store": store,
                            "modalities": modalities, "rejected": data.rejected_rows(), "meta_schema": None,
                            "total": {"items": len(data.items), "captions": data.num_captions}, "blocks": {}}
    if len(modalities) != 1:
        yield head
        return
    from e2i.store.writer import shard_ids

    done = {k: shard_ids(store, k) for k in ("items", "captions")}  # ids of complete shards (the anti-join)
    todo = [it for it in data.items if it.item_id not in done["items"]]
    meta = MetaColumns(data.items)
    cols = {"item_id": pa.array([it.item_id for it in todo], pa.string()),
            "path": pa.array([it.path for it in todo], pa.string())}
    extra = pa.table(meta.columns(np.array([it.item_id for it in todo], dtype=object))) if meta.names else None
    head["meta_schema"] = extra.schema if extra is not None else None
    cols[META] = pa.array([json.dumps(r, default=str) for r in extra.to_pylist()] if extra is not None
                          else [""] * len(todo), pa.string())
    tables = {"items": pa.table({KIND: pa.array(["items"] * len(todo), pa.string()), **cols})}
    caps = [r for r in data.caption_rows() if r["caption_id"] not in done["captions"]]
    tables["captions"] = pa.table({KIND: pa.array(["captions"] * len(caps), pa.string()),
                                   **{c: pa.array([r[c] for r in caps], pa.string()) for c in KEEP["captions"]}})
    bounds = {}
    for kind, table in tables.items():
        n = len(table)
        bounds[kind] = block_bounds(n, block_rows(n, batch_sizes[modalities[0]][kind]))  # as input_blocks
        head["blocks"][kind] = [hi - lo for lo, hi in bounds[kind]]
        head.setdefault("skipped", {})[kind] = head["total"][kind] - n
    yield head
    for kind, table in tables.items():
        for lo, hi in bounds[kind]:
            yield table.slice(lo, hi - lo)


class EmbedWrite(EmbedBatch):
    """:class:`EmbedBatch` that writes each embedded block as one shard of the store at ``store`` and
    returns one statistics row (shard info, node, rejected rows as JSON, where it ran) instead of the
    embeddings."""

    def __init__(self, encoders: Mapping[str, Any], batch_sizes: Mapping[str, int] | None = None, *,
                 store: str, meta_schema: pa.Schema | None = None) -> None:
        import ray

        from e2i.store.fs import open_fs

        super().__init__(encoders, batch_sizes)
        self.store, self.meta_schema = store, meta_schema
        self.fs, self.root = open_fs(store)
        self.node = ray.get_runtime_context().get_node_id()
        self.tags = {k: shard_encoder_tag(enc.manifest_entry()).encode() for k, enc in self.encoders.items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from e2i.store import embedding_array
        from e2i.store.writer import write_shard_file

        kind = str(batch[KIND][0])
        name = shard_name(kind, batch[ID[kind]])
        meta = batch.get(META)
        out = super().__call__(batch)
        ok = out[ERROR] == ""
        enc = self.encoders[kind]
        rejected = [{"source": "captions" if out[ERROR][i] == ITEM_REJECTED else f"{enc.modality}:{enc.name}",
                     "id": str(out[ID[kind]][i]), "reason": str(out[ERROR][i])} for i in np.flatnonzero(~ok)]
        info, node = {"path": "", "kind": kind, "rows": 0, "bytes": 0, "sha256": ""}, self.node
        done = self._existing(kind, name) if ok.any() else None
        if done is not None:  # a retry of a block already written: keep that file, report it as it is
            info, node = done
        elif ok.any():
            arrays = {c: pa.array([str(v) for v in out[c][ok]], pa.string()) for c in KEEP[kind]}
            arrays["embedding"] = embedding_array(out["embedding"][ok])
            if kind == "items" and self.meta_schema is not None and meta is not None:
                values = [json.loads(m) for m in meta[ok]]
                for field in self.meta_schema:  # a file's ints stored as strings when another has text
                    col = [v.get(field.name) for v in values]
                    if pa.types.is_string(field.type):
                        col = [None if x is None else str(x) for x in col]
                    arrays[field.name] = pa.array(col, field.type)
            table = pa.table(arrays).replace_schema_metadata({b"e2i.encoder": self.tags[kind], NODE_KEY: self.node})
            info = write_shard_file(self.fs, self.root, kind, table, name, where=f"{self.store}/{kind}/{name}.parquet")
        return {"kind": np.array([kind], dtype=object), "info": np.array([json.dumps({**info, "node": node})],
                                                                       dtype=object),
                "rejected": np.array([json.dumps(rejected)], dtype=object),
                "dim": np.array([out["embedding"].shape[1] if out["embedding"].ndim == 2 else 0], dtype=np.int64),
                "placement": np.array([json.dumps([int(out["_pid"][0]), str(out["_gpu_ids"][0]),
                                                   str(out["_device"][0])])], dtype=object),
                "prep_pids": np.array([json.dumps(sorted(set(out["_prep_pid"].tolist())))], dtype=object)}


    def _existing(self, kind: str, name: str) -> tuple[dict, str] | None:
        """(shard info, writer node) of ``<kind>/<name>.parquet`` if a complete file is already there: Ray
        Data re-runs a block whose output was lost with its node, after the first attempt may have written
        it. The first complete write wins (the bytes of two attempts may differ: node id, float
        reductions), and the manifest gets the hash and node of the file that is there."""
        import pyarrow.parquet as pq

        from e2i.store.fs import exists, join, num_rows, sha256_file

        rel = f"{kind}/{name}.parquet"
        path = join(self.root, rel)
        if not exists(self.fs, path):
            return None
        sha, size = sha256_file(self.fs, path)
        meta = pq.read_schema(path, filesystem=self.fs).metadata or {}
        return ({"path": rel, "kind": kind, "rows": num_rows(self.fs, path), "bytes": size, "sha256": sha},
                meta.get(NODE_KEY, b"").decode())


def run_phase(run: Any, kind: str, blocks: list, head: Mapping[str, Any], skip_items: list[str],
              res_for: Any) -> None:
    """Embed and write the ``blocks`` (Arrow block refs of ``kind`` from :func:`index_blocks`) through
    preprocess -> :class:`EmbedWrite`; fills ``run.stats[kind]``, ``run.shards`` and ``run.rejected``.
    ``skip_items``: items rejected earlier in this run, whose captions are rejected ("item rejected")."""
    import ray.data

    t0 = time.perf_counter()
    stats = run.stats[kind]
    stats.total, stats.skipped = head["total"][kind], head["skipped"][kind]
    if blocks:
        res = res_for(len(blocks))
        stats.pool = run.pool_summary(res)
        # one block per actor call (GPU actors too): the shard is the block, its name the block's ids
        ds = embed_dataset(ray.data.from_arrow_refs(blocks), {kind: run.encoders[kind]}, batch_sizes=run.batch_sizes,
                           resources=res, limits=execution_limits(res, run.cpus_per_gpu), step=None, udf=EmbedWrite,
                           keep_blocks=True, skip_items=skip_items,
                           udf_kwargs={"store": head["store"], "meta_schema": head["meta_schema"]})
        seen: set[str] = set()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["kind"])):
                shard = json.loads(batch["info"][i])
                bad = json.loads(batch["rejected"][i])
                run.rejected += bad
                stats.rejected += len(bad)
                if shard["path"] and shard["path"] not in seen:  # (a block's output is delivered once)
                    seen.add(shard["path"])
                    run.shards.append(shard)
                    stats.embedded += shard["rows"]
                    stats.dim = int(batch["dim"][i])
                stats.placement.add(tuple(json.loads(batch["placement"][i])))
                stats.preprocess_pids.update(json.loads(batch["prep_pids"][i]))
    stats.seconds = time.perf_counter() - t0


WRITE_ON = ("auto", "driver", "workers")


def choose_write_on(write_on: str, cache_dir: Any, *, mirror: str | None = None, with_images: bool = False,
                    ray_init: Callable[[], Any] | None = None) -> dict:
    """Who writes the shards: {"path": "driver" | "workers", "reason": ...}.

    ``auto``: the workers when the store is on object storage (``s3://...``, every node reaches it) and
    the Ray cluster has more than one node; the driver otherwise (one machine: nothing to gain, and the
    driver path is the faster one for small runs; a local store on a multi-node cluster may not be shared
    by the nodes: ``--write-on workers`` says it is). Starts Ray only when the answer depends on it."""

    if write_on not in WRITE_ON:
        raise ConfigError(f"--write-on: {write_on!r} is not one of {', '.join(WRITE_ON)}")
    remote = is_remote(cache_dir)
    if remote and (mirror or with_images):
        raise ConfigError(f"--cache-dir {os.fspath(cache_dir)}: --mirror and --with-images need a local store "
                          "(the store is already on object storage)")
    if write_on != "auto":
        if write_on == "workers" and (mirror or with_images):
            raise ConfigError("--write-on workers: --mirror and --with-images run with driver writes only")
        return {"path": write_on, "reason": "--write-on"}
    if not remote or mirror or with_images:
        return {"path": "driver", "reason": "local store" if not remote else "--mirror/--with-images"}
    import ray

    if not ray.is_initialized():
        (ray_init or ray.init)()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if nodes > 1:
        return {"path": "workers", "reason": f"object-storage store, {nodes} nodes"}
    return {"path": "driver", "reason": "object-storage store, 1 node"}


def split_dir(cache_dir: Any, dataset: str, split: str) -> Any:
    """``<cache_dir>/<dataset>/<split>``: a Path, or a URI string for object storage."""

    if is_remote(cache_dir):
        return f"{os.fspath(cache_dir).rstrip('/')}/{dataset}/{split}"
    return Path(cache_dir) / dataset / split


def cache_on_workers(metadata: Any, kind: str, where: dict, *, split: str | None, cache_dir: Any,
                     dataset: str | None, batch_size: int | None, names: Mapping[str, str],
                     encoder_options: Mapping[str, dict], curate_captions: bool, num_actors: int | None,
                     use_gpu: bool, cpu_only: bool, cpus_per_gpu: float | None, quiet: bool,
                     t_start: float) -> dict:
    """`e2i cache` with worker-side writes (see the module doc); returns the same summary as the driver
    path (``e2i.cache.summary.run_summary``) with ``write_on`` and the writers' ``nodes``. Ray starts here
    if it is not running."""
    import ray

    from e2i.cache.embed import batch_size_by_name, pool_resources
    from e2i.cache.pipeline import CacheRun, _build_encoders, check_resume_compatible
    from e2i.cache.summary import print_summary, run_summary
    from e2i.errors import CorpusError
    from e2i.store import StoreWriter
    from e2i.store.fs import create_dirs, open_fs

    if not is_remote(cache_dir):  # a read-only or impossible output fails before Ray starts
        fs, root = open_fs(cache_dir)
        create_dirs(fs, root)
    if not ray.is_initialized():
        ray.init()
    meta_uri = absolute(metadata)
    corpus = {"kind": kind, "metadata": meta_uri, "split": split, "curate": curate_captions}
    store_root = absolute(cache_dir)
    # blocks are sized by the encoders' batch sizes; the items' modality is known after the read
    sizes = {m: {"items": batch_size_by_name(names[m], batch_size), "captions": batch_size_by_name(names["text"],
                                                                                                   batch_size)}
             for m in ("audio", "image")}
    head, refs = read_index(corpus, store_root, dataset, sizes)
    if not head["modalities"]:
        raise CorpusError(f"{metadata}: no usable items ({len(head['rejected'])} rejected rows)")
    if len(head["modalities"]) > 1:
        raise CorpusError(f"{metadata}: items mix modalities ({', '.join(head['modalities'])}); one store "
                          "split holds one")
    encs = _build_encoders(names, head["modalities"][0], encoder_options)
    writer = StoreWriter(head["store"], dataset=head["dataset"], split=head["split"])
    for k in ("items", "captions"):
        check_resume_compatible(writer, k, encs[k].manifest_entry())
    extra = {"corpus": kind, "metadata": str(metadata), "curate_captions": curate_captions, "write_on": "workers"}
    run = CacheRun(writer, encs, batch_size=batch_size, shard_size=1, num_actors=num_actors, extra=extra,
                   use_gpu=use_gpu, cpu_only=cpu_only, cpus_per_gpu=cpus_per_gpu)
    extra["batch_size"] = run.batch_sizes
    run.rejected += head["rejected"]

    def res_for(blocks: int) -> dict:
        return pool_resources(run.cluster, num_actors=num_actors, use_gpu=use_gpu, cpu_only=cpu_only,
                              num_batches=blocks)

    seen = len(run.rejected)
    run_phase(run, "items", refs["items"], head, [], res_for)
    # the items the pipeline rejected (the reader's have no captions in the index, and a reader's "duplicate
    # id" row carries the id of an item that is stored)
    rejected_items = sorted({r["id"] for r in run.rejected[seen:]})
    run_phase(run, "captions", refs["captions"], head, rejected_items, res_for)
    manifest = run.finalize(complete=True)
    if manifest is None:
        raise CorpusError(f"{metadata}: every item was rejected (see {head['store']}/rejected.parquet)")
    out = head["store"] if is_remote(head["store"]) else Path(head["store"])
    summary = run_summary(out, head["dataset"], _CorpusCounts(head["split"], head["rejected"]), kind, run, manifest,
                          t_start, None)
    summary["write_on"] = where
    summary["nodes"] = sorted({s["node"] for s in run.shards})
    summary["index"] = head["index"]
    if not quiet:
        print_summary(summary)
    return summary


def read_index(corpus: Mapping[str, Any], store_root: str, dataset: str | None,
               sizes: Mapping[str, Mapping[str, int]]) -> tuple[dict, dict[str, list]]:
    """(header, {kind: block refs}) of the corpus: one read task per metadata file when the jsonl metadata
    is many files (``e2i.cache.index``), else the one-task index (:func:`index_blocks`: a Clotho CSV, a COCO
    JSON, one JSONL file, an image folder)."""
    import ray

    if corpus["kind"] == "jsonl":
        from e2i.corpus.jsonl import metadata_files

        files = metadata_files(corpus["metadata"], corpus["split"])
        if len(files) > 1:
            from e2i.cache.index import parallel_index

            return parallel_index(corpus, [str(f) for f in files], store_root, dataset, sizes)
    gen = ray.remote(num_cpus=1, max_retries=3)(index_blocks).remote(corpus, store_root, dataset, sizes)
    head = ray.get(next(gen))
    head["index"] = {"files": 1, "read_tasks": 1}
    return head, {k: [next(gen) for _ in head["blocks"].get(k, [])] for k in ("items", "captions")}


class _CorpusCounts:
    """What ``run_summary`` reads of a corpus: its split and the reader's rejected rows."""

    def __init__(self, split: str, rejected: list) -> None:
        self.split, self.rejected = split, rejected


def is_remote(path: Any) -> bool:
    from e2i.corpus.fspath import is_uri

    return is_uri(os.fspath(path))


def absolute(path: Any) -> str:
    """A URI as it is, a local path made absolute (tasks on other workers run in other directories)."""
    return os.fspath(path) if is_remote(path) else os.path.abspath(os.fspath(path))
