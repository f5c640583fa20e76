"""`e2i cache`: a corpus -> encoder embeddings in the parquet store, streamed through Ray Data actor pools.

    e2i cache --metadata data/toy --audio-encoder logmel-stats --text-encoder ngram-hash --cache-dir stores

Data flow: items and captions in one stream, items' blocks first (one actor pool starts once per run)::

    read_corpus ─▶ rows not yet in a complete shard (resume)        item_id, path | caption_id, item_id, text
      ─▶ ray.data.from_arrow(blocks of one kind each)
      ─▶ map_batches(encoder.preprocess)            CPU tasks: decode / resample / tokenise, `error` column
      ─▶ map_batches(EmbedBatch, ActorPoolStrategy) actors: load each encoder once, embed one block
      ─▶ iter_batches on the driver ─▶ StoreWriter.write_shard every --shard-size rows of a kind
    ─▶ rejected.parquet ─▶ manifest.json (last) ─▶ pseudo-images ─▶ mirror (every --upload-every rows, at the end)

Modules: this one is the driver (:func:`cache_corpus`, :class:`CacheRun`: phases, checkpoints);
``e2i.cache.embed`` the Ray Data stages and the pool's resources, ``e2i.cache.shards`` shard writing and
the resume bookkeeping, ``e2i.cache.summary`` the returned summary and its table, ``e2i.cache.cli`` the
flags of `e2i cache`, ``e2i.cache.images`` the pseudo-images (``--with-images``).

Past one machine, ``--write-on workers`` (``e2i.cache.workers``) reads the index on a worker and lets the
actors write the shards; this module's driver-writes path stays the default on one node and for small runs.

Why the driver writes the shards (and not a Datasink): rows reach the driver at the encoder's rate, and
writing a shard (ids + a float32 matrix, one parquet file) takes milliseconds against the seconds the pool
needs to embed it, so a single writer never limits throughput. Seeing every row on the driver gives
shards of exactly ``--shard-size`` rows (the unit of resume), routes bad rows to ``rejected.parquet``,
counts, and triggers uploads, all in one place. Memory stays bounded regardless of corpus size: Ray Data's
streaming executor back-pressures preprocessing and the actors when the driver consumes slower, and the
driver holds at most one shard (``--shard-size`` x D float32) plus one batch. Only the corpus index (ids,
paths, caption texts) is held in memory as a whole; audio, images and embeddings stream.

Resume: a shard is complete iff its file exists (tmp + rename in StoreWriter); a re-run embeds only the
ids not in complete shards, numbers its shards after the existing ones, and ``finalize`` writes the
manifest last, over every complete shard. A killed run therefore leaves complete shards and no manifest
(or an older checkpoint manifest with ``cache.complete: false``); re-running finishes exactly the rest.

Bad rows never stop the run: the preprocess ``error`` column (unreadable/empty audio, corrupt image,
too-long text) and non-finite embeddings go to ``rejected.parquet`` (``source`` = ``<modality>:<encoder>``),
with the corpus reader's rejected rows; captions of a rejected item are rejected with reason
"item rejected" (held on the driver until their item is out of the pipeline), so every stored caption
points at a stored item.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from e2i.cache.embed import (
    ERROR,
    ID,
    KEEP,
    KIND,
    batch_size_for,
    embed_stream,
    execution_limits,
    num_blocks,
    pool_resources,
)
from e2i.cache.images import export_split
from e2i.cache.shards import (
    MetaColumns,
    ShardBuffer,
    caption_rows,
    check_resume_compatible,
    existing_dim,
    item_rows,
)
from e2i.cache.summary import PhaseStats, print_summary, resources_summary, run_summary
from e2i.cache.workers import choose_write_on, split_dir
from e2i.errors import ConfigError, CorpusError

DEFAULTS = {"audio": "passt", "text": "hf-text", "image": "hf-image"}
LIGHT = {"audio": "logmel-stats", "text": "ngram-hash", "image": "image-stats"}


def infer_corpus_kind(path: str | os.PathLike) -> str:
    """Guess the reader for ``--metadata``: Clotho CSV/dir, COCO root, JSON/JSONL metadata, image folder."""
    from e2i.corpus.fspath import corpus_path
    from e2i.corpus.jsonl import is_glob

    if is_glob(path):  # many metadata files (meta/train-*.jsonl): only the jsonl reader takes a glob
        return "jsonl"
    p = corpus_path(path)  # a local Path, or an FsPath for s3://... (listed, nothing downloaded)
    if p.is_file():
        if p.suffix.lower() == ".csv":
            return "clotho"
        if p.suffix.lower() in (".json", ".jsonl"):
            return "jsonl"
        raise CorpusError(f"{p}: cannot infer the corpus kind from a {p.suffix or 'suffix-less'} file; pass --corpus")
    if not p.is_dir():
        raise CorpusError(f"{p}: no such file or directory")
    if any(p.glob("clotho_captions_*.csv")) or any(p.glob("clotho_csv_files/clotho_captions_*.csv")):
        return "clotho"
    if any(p.glob("annotations/captions_*.json")):
        return "coco"
    if any(p.glob("*.jsonl")) or any(p.glob("*.json")):
        return "jsonl"
    return "imagefolder"


class CacheRun:
    """One ``cache_corpus`` call after setup: phases, rejected rows, checkpoints (manifest + mirror).

    A checkpoint writes pending rejected rows, a manifest over the shards so far (``cache.complete``
    false until the end) and syncs the mirror; it runs every ``upload_every`` rows with a mirror, and
    once at the end.
    """

    def __init__(self, writer: Any, encoders: dict[str, Any], *, batch_size: int | None, shard_size: int,
                 num_actors: int | None, extra: dict, mirror: Any = None, upload_every: int | None = None,
                 mirror_embeddings: bool = True, use_gpu: bool = False, cpu_only: bool = False,
                 cpus_per_gpu: float | None = None) -> None:
        import ray

        self.writer, self.encoders, self.extra = writer, encoders, extra
        self.batch_sizes = {k: batch_size_for(enc, batch_size) for k, enc in encoders.items()}  # per phase
        self.shard_size, self.num_actors = shard_size, num_actors
        self.use_gpu, self.cpu_only, self.cpus_per_gpu = use_gpu, cpu_only, cpus_per_gpu
        self.cluster = ray.cluster_resources()
        self.stats = {k: PhaseStats(k) for k in ("items", "captions")}
        self.rejected: list[dict] = []  # pipeline rejects not yet in rejected.parquet
        self.mirror, self.upload_every, self.mirror_embeddings = mirror, upload_every, mirror_embeddings
        self.mirror_report = None
        self._since_upload = 0
        self._unresolved: set[str] = set()  # items of this run not yet out of the pipeline
        self._bad_items: set[str] = set()  # items of this run rejected on the way
        self.shards: list[dict] = []  # worker-side writes: statistics of the shards the workers wrote

    def pool_summary(self, res: dict) -> dict:
        return resources_summary(res, self.cpus_per_gpu)

    def embed(self, work: dict[str, list[dict]], meta: MetaColumns | None = None) -> None:
        """Embed ``work`` ({"items": rows, "captions": rows}) in one stream and write the shards.

        Captions reach the driver mostly after their items (their blocks are queued behind the items'),
        but a caption of an item this run is still embedding is held until that item is out of the
        pipeline: stored if the item was stored, rejected ("item rejected") if it was not, so every
        stored caption points at a stored item. Held rows are only those that overtook their item in
        flight. Phase seconds: items from the start to their last batch, captions from then to the end.
        """
        t0 = time.perf_counter()
        work = {k: rows for k, rows in work.items() if rows}
        if not work:
            return
        blocks = sum(num_blocks(len(rows), self.batch_sizes[k]) for k, rows in work.items())
        res = pool_resources(self.cluster, num_actors=self.num_actors, use_gpu=self.use_gpu,
                             cpu_only=self.cpu_only, num_batches=blocks)
        buffers = {k: ShardBuffer(self.writer, k, self.shard_size, meta if k == "items" else None,
                                  self.encoders[k].manifest_entry()) for k in work}
        pool = resources_summary(res, self.cpus_per_gpu)  # the same pool serves both kinds
        for k in work:
            self.stats[k].pool = dict(pool)
        self._unresolved = {str(r["item_id"]) for r in work.get("items", [])}
        self._bad_items = set()
        held: list[dict[str, np.ndarray]] = []  # caption rows waiting for their item
        t_items = t0
        limits = execution_limits(res, self.cpus_per_gpu)  # GPU pools: N GPUs, N x cpus_per_gpu CPUs
        for batch in embed_stream(work, self.encoders, batch_sizes=self.batch_sizes, resources=res, limits=limits):
            kind = str(batch[KIND][0])
            good = self._good_rows(kind, batch)
            if kind == "items":
                self._unresolved.difference_update(batch["item_id"].tolist())
                self._bad_items.update(batch["item_id"][batch[ERROR] != ""].tolist())
                self._write(buffers["items"], good)
                t_items = time.perf_counter()
                held = self._release(held, buffers.get("captions"))
            else:
                held = self._release(held + [good], buffers["captions"])
                self.stats["captions"].held = max(self.stats["captions"].held, sum(len(c["item_id"]) for c in held))
        self._release(held, buffers.get("captions"))
        for k, buffer in buffers.items():
            for info in buffer.flush():
                self._on_shard(info)
            self.stats[k].embedded = buffer.written
        if "items" in work:
            self.stats["items"].seconds = t_items - t0
        if "captions" in work:
            self.stats["captions"].seconds = time.perf_counter() - (t_items if "items" in work else t0)

    def _good_rows(self, kind: str, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rejected rows of ``batch`` to ``self.rejected``, placement to the stats; the good rows' columns."""
        stats, encoder = self.stats[kind], self.encoders[kind]
        ok = np.array([e == "" for e in batch[ERROR]], dtype=bool)  # (B,)
        source = f"{encoder.modality}:{encoder.name}"
        self.rejected += [{"source": source, "id": str(batch[ID[kind]][i]), "reason": str(batch[ERROR][i])}
                          for i in np.flatnonzero(~ok)]
        stats.rejected += int((~ok).sum())
        stats.placement.update(zip(batch["_pid"].tolist(), batch["_gpu_ids"].tolist(), batch["_device"].tolist()))
        stats.preprocess_pids.update(batch["_prep_pid"].tolist())
        stats.dim = int(batch["embedding"].shape[1])
        return {k: batch[k][ok] for k in (*KEEP[kind], "embedding")}

    def _release(self, held: list[dict[str, np.ndarray]], buffer: ShardBuffer | None) -> list[dict[str, np.ndarray]]:
        """Write the held caption rows whose item is out of the pipeline (reject those of rejected
        items); return the rows still waiting."""
        waiting = []
        for cols in held:
            item = cols["item_id"]
            wait = np.array([i in self._unresolved for i in item.tolist()], dtype=bool)
            bad = np.array([i in self._bad_items for i in item.tolist()], dtype=bool) & ~wait
            for cid in cols["caption_id"][bad].tolist():
                self.rejected.append({"source": "captions", "id": str(cid), "reason": "item rejected"})
            self.stats["captions"].rejected += int(bad.sum())
            if wait.any():
                waiting.append({k: v[wait] for k, v in cols.items()})
            self._write(buffer, {k: v[~wait & ~bad] for k, v in cols.items()})
        return waiting

    def _write(self, buffer: ShardBuffer, cols: dict[str, np.ndarray]) -> None:
        for info in buffer.add(cols):
            self._on_shard(info)

    def _on_shard(self, info: dict) -> None:
        self._since_upload += info["rows"]
        if self.mirror is not None and self.upload_every and self._since_upload >= self.upload_every:
            self.finalize(complete=False)
            self.sync(images=False)

    def encoder_entries(self) -> dict:
        """Manifest ``encoders``: {modality: {name, modality, dim, options}} (dim from the output if the
        encoder only knows it after load, or from earlier shards when this run embedded nothing)."""
        out = {}
        for kind, enc in self.encoders.items():
            e = enc.manifest_entry()
            e["dim"] = e.get("dim") or self.stats[kind].dim or existing_dim(self.writer, kind)
            out[e["modality"]] = e
        return out

    def finalize(self, complete: bool) -> dict | None:
        """Write pending rejected rows, then the manifest (last) if any item shard exists. With worker-side
        writes the manifest is assembled from the workers' shard statistics (no shard read again here)."""
        if self.rejected:
            self.writer.write_rejected(self.rejected)
            self.rejected.clear()
        self.writer.add_known(self.shards)
        if not self.writer.completed_shards("items"):
            return None
        self.writer.encoders = self.encoder_entries()
        return self.writer.finalize(extra={"cache": {**self.extra, "complete": complete}},
                                    check_ids=self.extra.get("write_on") != "workers")

    def sync(self, images: bool) -> None:
        from e2i.store.mirror import split_files

        self._since_upload = 0
        if self.mirror is None:
            return
        report = self.mirror.sync(*split_files(self.mirror.split_dir, embeddings=self.mirror_embeddings,
                                               images=images))
        if self.mirror_report is None:
            self.mirror_report = report
        else:
            self.mirror_report.merge(report)


def cache_corpus(metadata: str | os.PathLike, *, corpus: str | None = None, split: str | None = None,
                 cache_dir: str | os.PathLike = "stores", dataset: str | None = None, batch_size: int | None = None,
                 audio_encoder: str = DEFAULTS["audio"], text_encoder: str = DEFAULTS["text"],
                 image_encoder: str = DEFAULTS["image"], encoder_options: Mapping[str, dict] | None = None,
                 curate_captions: bool = False, num_actors: int | None = None, shard_size: int = 10_000,
                 with_images: bool = False, image_options: Mapping[str, Any] | None = None,
                 mirror: str | None = None, upload_every: int | None = None, include_embeddings: bool = False,
                 hf_token: str | None = None, mirror_attempts: int = 4, mirror_backoff: float = 1.0,
                 quiet: bool = False, use_gpu: bool = False, cpu_only: bool = False,
                 cpus_per_gpu: float | None = None, write_on: str = "auto",
                 ray_init: Callable[[], Any] | None = None) -> dict:
    """Embed a corpus into ``<cache_dir>/<dataset>/<split>/`` and return the run summary (see module doc).

    ``cpu_only``: CPU actors even on a cluster with GPUs. ``cpus_per_gpu``: with GPU actors, the run uses at
    most this many CPUs per actor (default ``e2i.cache.embed.CPUS_PER_GPU``), also in autoscaling requests. ``batch_size``: rows per encoder call in both phases; None = per encoder (``e2i.cache.embed.BATCH_SIZES``:
    large batches for the cheap light encoders, 32 for models). ``encoder_options`` maps a modality ("audio", "image", "text") to ``get_encoder`` options. Resumes an
    interrupted run of the same split; prints the summary table unless ``quiet``. If Ray is not running,
    ``ray_init`` (default ``ray.init``) starts it once the output directory exists: an output that cannot
    be written (read-only, under a file) fails before Ray starts.
    """
    import ray

    from e2i.corpus import read_corpus
    from e2i.store import StoreWriter

    _check_positive(batch_size=batch_size, shard_size=shard_size, upload_every=upload_every)
    if cpus_per_gpu is not None and cpus_per_gpu < 1:  # before the corpus is read or Ray starts
        raise ConfigError(f"--cpus-per-gpu: must be >= 1, got {cpus_per_gpu:g}")
    # [1] read the corpus, build the encoders, open the split (refusing shards of another encoder)
    t_start = time.perf_counter()
    kind = corpus or infer_corpus_kind(metadata)
    where = choose_write_on(write_on, cache_dir, mirror=mirror, with_images=with_images, ray_init=ray_init)
    if where["path"] == "workers":
        from e2i.cache.workers import cache_on_workers

        return cache_on_workers(
            metadata, kind, where, split=split, cache_dir=cache_dir, dataset=dataset, batch_size=batch_size,
            names={"audio": audio_encoder, "image": image_encoder, "text": text_encoder},
            encoder_options=encoder_options or {}, curate_captions=curate_captions, num_actors=num_actors,
            use_gpu=use_gpu, cpu_only=cpu_only, cpus_per_gpu=cpus_per_gpu, quiet=quiet, t_start=t_start)
    data = read_corpus(kind, metadata, split=split, curate=curate_captions)
    names = {"audio": audio_encoder, "image": image_encoder, "text": text_encoder}
    encs = _build_encoders(names, _items_modality(data, metadata), encoder_options or {})
    dataset = dataset or data.name
    out = split_dir(cache_dir, dataset, data.split)
    writer = StoreWriter(out, dataset=dataset, split=data.split)  # encoders are set once dims are known
    for k in ("items", "captions"):
        check_resume_compatible(writer, k, encs[k].manifest_entry())
    # [2] start Ray (the output is known to be writable by now); the reader's rejected rows; the mirror
    if not ray.is_initialized():
        (ray_init or ray.init)()
    if data.rejected:
        writer.write_rejected(data.rejected_rows())
    mirror_obj = _open_mirror(mirror, out, hf_token, mirror_attempts, mirror_backoff)
    extra = {"corpus": kind, "metadata": str(metadata), "curate_captions": curate_captions, "write_on": "driver"}
    run = CacheRun(writer, encs, batch_size=batch_size, shard_size=shard_size, num_actors=num_actors,
                   extra=extra, mirror=mirror_obj, upload_every=upload_every,
                   mirror_embeddings=not with_images or include_embeddings, use_gpu=use_gpu,
                   cpu_only=cpu_only, cpus_per_gpu=cpus_per_gpu)
    extra["batch_size"] = run.batch_sizes  # {"items": n, "captions": m}, recorded in the manifest
    # [3] items and captions in one stream (items first; captions of items rejected on the way are rejected)
    items = item_rows(data, writer, run.stats["items"])
    captions = caption_rows(data, writer, run.stats["captions"], run.rejected, coming={r["item_id"] for r in items})
    run.embed({"items": items, "captions": captions}, MetaColumns(data.items))
    # [4] the manifest last, then the pseudo-images and the final mirror sync
    manifest = run.finalize(complete=True)
    if manifest is None:
        raise CorpusError(f"{metadata}: every item was rejected (see {out}/rejected.parquet)")
    images = _export_images(out, image_options) if with_images else None
    run.sync(images=with_images)
    summary = run_summary(out, dataset, data, kind, run, manifest, t_start, images)
    summary["write_on"] = where
    if not quiet:
        print_summary(summary)
    return summary


def _build_encoders(names: Mapping[str, str], modality: str, options: Mapping[str, dict]) -> dict[str, Any]:
    """{"items": encoder of the items' modality, "captions": text encoder}; checks the modalities."""
    from e2i.encoders import get_encoder

    encs = {"items": get_encoder(names[modality], **dict(options.get(modality, {}))),
            "captions": get_encoder(names["text"], **dict(options.get("text", {})))}
    for k, m in (("items", modality), ("captions", "text")):
        if encs[k].modality != m:
            raise ConfigError(f"encoder '{encs[k].name}' embeds {encs[k].modality}, but the {k} are {m}")
    return encs


def _check_positive(**values: int | None) -> None:
    for name, v in values.items():
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {v}")


def _items_modality(data: Any, metadata: Any) -> str:
    kinds = sorted({it.modality for it in data.items})
    if not kinds:
        raise CorpusError(f"{metadata}: no usable items ({len(data.rejected)} rejected rows)")
    if len(kinds) > 1:
        raise CorpusError(f"{metadata}: items mix modalities ({', '.join(kinds)}); one store split holds one")
    return kinds[0]


def _open_mirror(uri: str | None, out: Path, token: str | None, attempts: int, backoff: float):
    from e2i.store.mirror import Mirror

    return Mirror(uri, out, token=token, attempts=attempts, backoff=backoff) if uri else None


def _export_images(out: Path, options: Mapping[str, Any] | None) -> dict:
    """Pseudo-images of the finished split under ``<split>/pseudo_images/`` (e2i.cache.images)."""
    return export_split(out, **dict(options or {}))

