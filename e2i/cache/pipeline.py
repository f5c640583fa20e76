"""`e2i cache`: a corpus -> encoder embeddings in the parquet store, streamed through Ray Data actor pools.

    e2i cache --metadata data/toy --audio-encoder logmel-stats --text-encoder ngram-hash --cache-dir stores

Data flow, one phase per modality (items first, so captions of rejected items are never embedded)::

    read_corpus ─▶ rows not yet in a complete shard (resume)        item_id, path | caption_id, item_id, text
      ─▶ ray.data.from_items
      ─▶ map_batches(encoder.preprocess)            CPU tasks: decode / resample / tokenise, `error` column
      ─▶ map_batches(EmbedBatch, ActorPoolStrategy) actors: load() once, embed one batch (one GPU each)
      ─▶ iter_batches on the driver ─▶ StoreWriter.write_shard every --shard-size rows
    ─▶ rejected.parquet ─▶ manifest.json (last) ─▶ pseudo-images ─▶ mirror (every --upload-every rows, at the end)

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
"item rejected", so every stored caption points at a stored item.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from e2i.errors import ConfigError, CorpusError, StoreError

ERROR = "error"
KEEP = {"items": ("item_id", "path"), "captions": ("caption_id", "item_id", "text")}
ID = {"items": "item_id", "captions": "caption_id"}
DEFAULTS = {"audio": "passt", "text": "hf-text", "image": "hf-image"}
LIGHT = {"audio": "logmel-stats", "text": "ngram-hash", "image": "image-stats"}
MAX_BLOCKS = 2000  # cap on input blocks: ~batch_size rows per block, without millions of tiny tasks


# ----------------------------------------------------------------------------------------- resources
def pool_resources(cluster: Mapping[str, float], *, num_actors: int | None = None,
                   num_batches: int | None = None, use_gpu: bool = False) -> dict[str, Any]:
    """``map_batches`` kwargs for the embedding actor pool, from ``ray.cluster_resources()``.

    GPUs: one actor per GPU (``num_actors`` caps it; more actors than GPUs could never be scheduled),
    ``num_gpus=1`` each; the actors keep Ray Data's default of one CPU each unless that would take more
    than half the CPUs (then fractional). CPU only: ``num_actors`` (default: half the CPUs, at least one)
    with at most half a CPU each, for two reasons: with whole CPUs a 2-CPU node deadlocks (the actors
    hold both CPUs and the read/preprocess tasks never run), and Ray Data fuses a task stage into the
    next actor stage when their resource requests are equal, which would move decoding into the actors
    (no overlap of decode and embed). ``num_batches`` (the work of a phase) caps the pool: an actor that
    would get no batch is not started. ``use_gpu`` asks for ``num_actors`` (default 1) x 1 GPU even
    when no GPU is up yet, so an autoscaling cluster scaled to zero adds GPU nodes for the pool.
    """
    cpus, gpus = float(cluster.get("CPU", 1.0)), int(cluster.get("GPU", 0))
    if num_actors is not None and num_actors < 1:
        raise ConfigError(f"--num-actors: must be >= 1, got {num_actors}")
    import ray.data

    if use_gpu and gpus < 1:  # nothing up yet: request GPUs and let the autoscaler provide them
        n = num_actors or 1
        kwargs: dict[str, Any] = {"num_gpus": 1}
    elif gpus >= 1:
        n = min(num_actors or gpus, gpus)
        kwargs = {"num_gpus": 1}
        if cpus < 2 * n:
            kwargs["num_cpus"] = cpus / (2 * n)
    else:
        n = num_actors or max(1, int(cpus // 2))
        kwargs = {"num_cpus": min(0.5, cpus / (2 * n))}
    if num_batches is not None:
        n = max(1, min(n, num_batches))
    kwargs["compute"] = ray.data.ActorPoolStrategy(size=n)
    return kwargs


class EmbedBatch:
    """The actor UDF: ``__init__`` loads the encoder once (CUDA if this actor sees a GPU), ``__call__``
    embeds one preprocessed batch and returns the store columns + ``embedding`` (B, D) + ``error``.

    Rows with a preprocess error, or a non-finite embedding, keep their ``error`` (and a zero embedding
    so the column stays finite); the driver routes them to rejected.parquet. Debug columns record where
    each row was decoded (``_prep_pid``) and embedded (``_pid``, ``_gpu_ids``, ``_device``).
    """

    def __init__(self, encoder: Any, keep: tuple[str, ...]) -> None:
        import ray
        import torch

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        encoder.load(self.device)
        self.encoder, self.keep = encoder, keep
        self.gpu_ids = ",".join(str(g) for g in ray.get_gpu_ids())
        self.pid = os.getpid()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        prep_pid = batch.pop("_prep_pid")
        errors = np.array([str(e) for e in batch[ERROR]], dtype=object)  # (B,)
        emb = np.asarray(self.encoder.embed(batch), dtype=np.float32)  # (B, D); NaN rows where error != ""
        bad_output = (errors == "") & ~np.isfinite(emb).all(axis=1)
        errors[bad_output] = "non-finite embedding"
        emb[errors != ""] = 0.0
        n = len(errors)
        out = {k: batch[k] for k in self.keep}
        out.update(embedding=emb, error=errors, _prep_pid=prep_pid, _pid=np.full(n, self.pid, dtype=np.int64),
                   _gpu_ids=np.full(n, self.gpu_ids, dtype=object), _device=np.full(n, self.device, dtype=object))
        return out


def preprocess_batch(batch: dict[str, np.ndarray], encoder: Any) -> dict[str, np.ndarray]:
    """The CPU-task stage: ``encoder.preprocess`` + ``_prep_pid`` (which worker decoded the rows)."""
    out = encoder.preprocess(batch)
    out["_prep_pid"] = np.full(len(out[ERROR]), os.getpid(), dtype=np.int64)
    return out


def embed_stream(rows: list[dict], encoder: Any, kind: str, *, batch_size: int,
                 resources: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
    """Yield embedded numpy batches (see :class:`EmbedBatch`) for ``rows`` of ``kind``, streaming."""
    import ray.data

    blocks = max(1, min(MAX_BLOCKS, math.ceil(len(rows) / batch_size)))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(preprocess_batch, fn_kwargs={"encoder": encoder}, batch_size=batch_size,
                        batch_format="numpy", num_cpus=1)
    ds = ds.map_batches(EmbedBatch, fn_constructor_kwargs={"encoder": encoder, "keep": KEEP[kind]},
                        batch_size=batch_size, batch_format="numpy", **resources)
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


# ----------------------------------------------------------------------------------------- shards
class ShardBuffer:
    """Collects good rows of one kind and writes shards of exactly ``size`` rows (the last may be short).

    Shards are named ``part-NNNNN`` continuing after the highest existing number, so a resumed run
    never overwrites an earlier run's shard.
    """

    def __init__(self, writer: Any, kind: str, size: int, meta: MetaColumns | None = None,
                 encoder_entry: dict | None = None) -> None:
        self.writer, self.kind, self.size, self.meta = writer, kind, size, meta
        # Each shard names the encoder that made it (schema metadata), so a resume can refuse to mix.
        self.tag = {b"e2i.encoder": _shard_encoder_tag(encoder_entry).encode()} if encoder_entry else None
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
        from e2i.store.core import embedding_array

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


# ----------------------------------------------------------------------------------------- phases
@dataclass
class PhaseStats:
    """Counts of one phase (items or captions)."""

    kind: str
    total: int = 0  # rows in the corpus
    skipped: int = 0  # already in complete shards (resume)
    embedded: int = 0  # written to shards by this run
    rejected: int = 0  # rejected by this run (preprocess error, non-finite output, item rejected)
    seconds: float = 0.0
    dim: int | None = None
    placement: set = field(default_factory=set)  # {(actor pid, gpu_ids, device)}
    preprocess_pids: set = field(default_factory=set)  # worker pids of the preprocess tasks
    pool: dict | None = None  # what the actor pool requested: actors, num_gpus, num_cpus


# ----------------------------------------------------------------------------------------- driver
def infer_corpus_kind(path: str | os.PathLike) -> str:
    """Guess the reader for ``--metadata``: Clotho CSV/dir, COCO root, JSON/JSONL metadata, image folder."""
    p = Path(path)
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


def _shard_encoder_tag(entry: dict) -> str:
    """What a shard records about its encoder (schema metadata ``e2i.encoder``): name + options."""
    return json.dumps({"name": entry["name"], "options": entry.get("options", {})}, sort_keys=True, default=str)


def check_resume_compatible(writer: Any, kind: str, entry: dict) -> None:
    """Refuse to add shards made by another encoder (or other options) to a split: compares ``entry``
    with the ``e2i.encoder`` schema metadata of an existing shard and with an existing manifest."""
    import pyarrow.parquet as pq

    want = _shard_encoder_tag(entry)
    for info in list(writer.completed_shards(kind).values())[:1]:
        meta = pq.read_schema(os.path.join(writer.root, info["path"])).metadata or {}
        have = meta.get(b"e2i.encoder", b"").decode()
        if have and have != want:
            raise StoreError(f"{writer.uri}/{info['path']}: written with encoder {have}, this run uses {want}; "
                             "use another --cache-dir/--dataset or delete the split")
    manifest = Path(writer.root, "manifest.json")
    if manifest.is_file():
        old = (json.loads(manifest.read_text()).get("encoders") or {}).get(entry["modality"])
        if old and _shard_encoder_tag(old) != want:
            raise StoreError(f"{manifest}: split was written with encoder {_shard_encoder_tag(old)}, this run "
                             f"uses {want}; use another --cache-dir/--dataset or delete the split")


def _resources_summary(res: dict[str, Any]) -> dict[str, Any]:
    c = res["compute"]
    return {"actors": c.max_size, "num_gpus": res.get("num_gpus", 0), "num_cpus": res.get("num_cpus", 1.0)}


class CacheRun:
    """One ``cache_corpus`` call after setup: phases, rejected rows, checkpoints (manifest + mirror).

    A checkpoint writes pending rejected rows, a manifest over the shards so far (``cache.complete``
    false until the end) and syncs the mirror; it runs every ``upload_every`` rows with a mirror, and
    once at the end.
    """

    def __init__(self, writer: Any, encoders: dict[str, Any], *, batch_size: int, shard_size: int,
                 num_actors: int | None, extra: dict, mirror: Any = None, upload_every: int | None = None,
                 mirror_embeddings: bool = True, use_gpu: bool = False) -> None:
        import ray

        self.writer, self.encoders, self.extra = writer, encoders, extra
        self.batch_size, self.shard_size, self.num_actors = batch_size, shard_size, num_actors
        self.use_gpu = use_gpu
        self.cluster = ray.cluster_resources()
        self.stats = {k: PhaseStats(k) for k in ("items", "captions")}
        self.rejected: list[dict] = []  # pipeline rejects not yet in rejected.parquet
        self.mirror, self.upload_every, self.mirror_embeddings = mirror, upload_every, mirror_embeddings
        self.mirror_report = None
        self._since_upload = 0

    def phase(self, kind: str, rows: list[dict], meta: MetaColumns | None = None) -> None:
        """Embed ``rows`` of ``kind`` and stream them into shards; bad rows go to ``self.rejected``."""
        stats, encoder = self.stats[kind], self.encoders[kind]
        if not rows:
            return
        t0 = time.perf_counter()
        res = pool_resources(self.cluster, num_actors=self.num_actors, use_gpu=self.use_gpu,
                             num_batches=math.ceil(len(rows) / self.batch_size))
        stats.pool = _resources_summary(res)
        buffer = ShardBuffer(self.writer, kind, self.shard_size, meta, encoder.manifest_entry())
        source = f"{encoder.modality}:{encoder.name}"
        for batch in embed_stream(rows, encoder, kind, batch_size=self.batch_size, resources=res):
            ok = np.array([e == "" for e in batch[ERROR]], dtype=bool)  # (B,)
            self.rejected += [{"source": source, "id": str(batch[ID[kind]][i]), "reason": str(batch[ERROR][i])}
                              for i in np.flatnonzero(~ok)]
            stats.rejected += int((~ok).sum())
            stats.placement.update(zip(batch["_pid"].tolist(), batch["_gpu_ids"].tolist(),
                                       batch["_device"].tolist()))
            stats.preprocess_pids.update(batch["_prep_pid"].tolist())
            stats.dim = int(batch["embedding"].shape[1])
            for info in buffer.add({k: batch[k][ok] for k in (*KEEP[kind], "embedding")}):
                self._on_shard(info)
        for info in buffer.flush():
            self._on_shard(info)
        stats.embedded = buffer.written
        stats.seconds = time.perf_counter() - t0

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
            e["dim"] = e.get("dim") or self.stats[kind].dim or _existing_dim(self.writer, kind)
            out[e["modality"]] = e
        return out

    def finalize(self, complete: bool) -> dict | None:
        """Write pending rejected rows, then the manifest (last) if any item shard exists."""
        if self.rejected:
            self.writer.write_rejected(self.rejected)
            self.rejected.clear()
        if not self.writer.completed_shards("items"):
            return None
        self.writer.encoders = self.encoder_entries()
        return self.writer.finalize(extra={"cache": {**self.extra, "complete": complete}})

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
                 cache_dir: str | os.PathLike = "stores", dataset: str | None = None, batch_size: int = 32,
                 audio_encoder: str = DEFAULTS["audio"], text_encoder: str = DEFAULTS["text"],
                 image_encoder: str = DEFAULTS["image"], encoder_options: Mapping[str, dict] | None = None,
                 curate_captions: bool = False, num_actors: int | None = None, shard_size: int = 10_000,
                 with_images: bool = False, image_options: Mapping[str, Any] | None = None,
                 mirror: str | None = None, upload_every: int | None = None, include_embeddings: bool = False,
                 hf_token: str | None = None, mirror_attempts: int = 4, mirror_backoff: float = 1.0,
                 quiet: bool = False, use_gpu: bool = False,
                 ray_init: Callable[[], Any] | None = None) -> dict:
    """Embed a corpus into ``<cache_dir>/<dataset>/<split>/`` and return the run summary (see module doc).

    ``encoder_options`` maps a modality ("audio", "image", "text") to ``get_encoder`` options. Resumes an
    interrupted run of the same split; prints the summary table unless ``quiet``. If Ray is not running,
    ``ray_init`` (default ``ray.init``) starts it once the output directory exists: an output that cannot
    be written (read-only, under a file) fails before Ray starts.
    """
    import ray

    from e2i.corpus.sources import read_corpus
    from e2i.store.core import StoreWriter

    _check_positive(batch_size=batch_size, shard_size=shard_size, upload_every=upload_every)
    t_start = time.perf_counter()
    kind = corpus or infer_corpus_kind(metadata)
    data = read_corpus(kind, metadata, split=split, curate=curate_captions)
    names = {"audio": audio_encoder, "image": image_encoder, "text": text_encoder}
    encs = _build_encoders(names, _items_modality(data, metadata), encoder_options or {})
    dataset = dataset or data.name
    out = Path(cache_dir) / dataset / data.split
    writer = StoreWriter(out, dataset=dataset, split=data.split)  # encoders are set once dims are known
    for k in ("items", "captions"):
        check_resume_compatible(writer, k, encs[k].manifest_entry())
    if not ray.is_initialized():
        (ray_init or ray.init)()
    if data.rejected:
        writer.write_rejected(data.rejected_rows())
    mirror_obj = _open_mirror(mirror, out, hf_token, mirror_attempts, mirror_backoff)
    extra = {"corpus": kind, "metadata": str(metadata), "curate_captions": curate_captions, "batch_size": batch_size}
    run = CacheRun(writer, encs, batch_size=batch_size, shard_size=shard_size, num_actors=num_actors,
                   extra=extra, mirror=mirror_obj, upload_every=upload_every,
                   mirror_embeddings=not with_images or include_embeddings, use_gpu=use_gpu)
    run.phase("items", _item_rows(data, writer, run.stats["items"]), MetaColumns(data.items))
    run.phase("captions", _caption_rows(data, writer, run.stats["captions"], run.rejected))
    manifest = run.finalize(complete=True)
    if manifest is None:
        raise CorpusError(f"{metadata}: every item was rejected (see {out / 'rejected.parquet'})")
    images = _export_images(out, image_options) if with_images else None
    run.sync(images=with_images)
    summary = _summary(out, dataset, data, kind, run, manifest, t_start, images)
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


def _item_rows(data: Any, writer: Any, stats: PhaseStats) -> list[dict]:
    done = writer.existing_ids("items")
    stats.total = len(data.items)
    rows = [{"item_id": it.item_id, "path": it.path} for it in data.items if it.item_id not in done]
    stats.skipped = stats.total - len(rows)
    return rows


def _caption_rows(data: Any, writer: Any, stats: PhaseStats, rejected: list[dict]) -> list[dict]:
    """Captions still to embed; captions of items that are not in the store are rejected instead."""
    items, done = writer.existing_ids("items"), writer.existing_ids("captions")
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


def _existing_dim(writer: Any, kind: str) -> int | None:
    import pyarrow.parquet as pq

    for info in writer.completed_shards(kind).values():
        return pq.read_schema(os.path.join(writer.root, info["path"])).field("embedding").type.list_size
    return None


def _open_mirror(uri: str | None, out: Path, token: str | None, attempts: int, backoff: float):
    from e2i.store.mirror import Mirror

    return Mirror(uri, out, token=token, attempts=attempts, backoff=backoff) if uri else None


def _export_images(out: Path, options: Mapping[str, Any] | None) -> dict:
    """Pseudo-images of the finished split under ``<split>/pseudo_images/`` (e2i.cache.images)."""
    from e2i.cache import images

    return images.export_split(out, **dict(options or {}))


def _summary(out: Path, dataset: str, data: Any, kind: str, run: CacheRun, manifest: dict, t_start: float,
             images: Any) -> dict:
    stats = run.stats
    embedded = sum(s.embedded for s in stats.values())
    embed_s = sum(s.seconds for s in stats.values())
    return {
        "store": str(out), "dataset": dataset, "split": data.split, "corpus": kind,
        **{k: {"total": s.total, "skipped": s.skipped, "embedded": s.embedded, "rejected": s.rejected,
               "seconds": round(s.seconds, 3), "rows_per_s": round(s.embedded / s.seconds, 2) if s.seconds else None,
               "dim": s.dim, "pool": s.pool, "preprocess_pids": sorted(s.preprocess_pids),
               "placement": [{"pid": p, "gpu_ids": g, "device": d} for p, g, d in sorted(s.placement)]}
           for k, s in stats.items()},
        "rejected": {"corpus": len(data.rejected), "pipeline": sum(s.rejected for s in stats.values()),
                     "stored": manifest["counts"].get("rejected")},
        "counts": manifest["counts"],
        "rows_per_s": round(embedded / embed_s, 2) if embed_s else None,
        "seconds": round(time.perf_counter() - t_start, 3),
        "cluster": {"CPU": run.cluster.get("CPU", 0), "GPU": run.cluster.get("GPU", 0)},
        "pool": _resources_summary(pool_resources(run.cluster, num_actors=run.num_actors, use_gpu=run.use_gpu)),
        "images": images,
        "mirror": run.mirror_report.to_dict() if run.mirror_report is not None else None,
    }


def print_summary(summary: dict) -> None:
    """The final table (rich): per kind total / already stored / embedded / rejected / time / rows/s."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"e2i cache: {summary['store']}")
    table.add_column("")
    for k in ("items", "captions"):
        table.add_column(k, justify="right")
    for label, key in (("in corpus", "total"), ("already stored", "skipped"), ("embedded now", "embedded"),
                       ("rejected now", "rejected"), ("embedding dim", "dim"), ("seconds", "seconds"),
                       ("rows/s", "rows_per_s")):
        table.add_row(label, *(str(summary[k][key]) for k in ("items", "captions")))
    console = Console()
    console.print(table)
    pool, rej = summary["pool"], summary["rejected"]
    line = (f"{summary['rows_per_s']} rows/s over {summary['seconds']} s; pool {pool['actors']} actor(s) x "
            f"{pool['num_gpus']} GPU / {pool['num_cpus']} CPU; rejected: {rej['corpus']} by the reader + "
            f"{rej['pipeline']} in the pipeline ({rej['stored']} in rejected.parquet)")
    console.print(line, highlight=False)
    if summary["images"]:
        im = summary["images"]
        console.print(f"pseudo-images: {', '.join(f'{n} {m}' for m, n in im['counts'].items())} -> "
                      f"{im['images_dir']}", highlight=False)
    if summary["mirror"]:
        m = summary["mirror"]
        status = "ok" if not m["failed"] else f"{len(m['failed'])} FAILED: " + "; ".join(
            f"{k}: {v}" for k, v in list(m["failed"].items())[:3])
        console.print(f"mirror {m['uri']}: {m['uploaded']} file(s) uploaded in {m['syncs']} sync(s), {status}",
                      highlight=False)


# ----------------------------------------------------------------------------------------- CLI
# flag -> (modality, encoder option it sets); applied only when the flag is given.
FLAG_OPTIONS = {"audio_arch": ("audio", "arch"), "max_audio_seconds": ("audio", "max_audio_seconds"),
                "text_model": ("text", "model"), "image_model": ("image", "model")}


def parse_encoder_options(pairs: list[str], names: Mapping[str, str]) -> dict[str, dict]:
    """``[modality.]key=value`` strings -> {modality: {key: value}}. Values are JSON when they parse
    (``64``, ``0.5``, ``false``, ``null``), else strings. A key without a modality goes to every encoder
    in ``names`` (modality -> encoder name) that has that option."""
    out: dict[str, dict] = {m: {} for m in names}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--encoder-option {pair!r}: expected [modality.]key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        modality, _, opt = key.rpartition(".")
        targets = [modality] if modality else [m for m, n in names.items() if opt in option_names(n)]
        if modality and modality not in names:
            raise ConfigError(f"--encoder-option {pair!r}: unknown modality {modality!r} (valid: {', '.join(names)})")
        if not targets:
            raise ConfigError(f"--encoder-option {pair!r}: no encoder has option {opt!r} "
                              f"({', '.join(f'{m}={n}' for m, n in names.items())})")
        for m in targets:
            out[m][opt] = value
    return out


def option_names(encoder: str) -> set[str]:
    """The options an encoder accepts (fields of its ``Options`` dataclass)."""
    from e2i.encoders import ENCODERS

    if encoder not in ENCODERS:
        raise ConfigError(f"unknown encoder '{encoder}' (valid: {', '.join(ENCODERS)})")
    return {f.name for f in dataclasses.fields(ENCODERS[encoder].Options)}


def encoder_options_from_args(args: argparse.Namespace) -> dict[str, dict]:
    names = {"audio": args.audio_encoder, "image": args.image_encoder, "text": args.text_encoder}
    opts = parse_encoder_options(args.encoder_option or [], names)
    for flag, (modality, opt) in FLAG_OPTIONS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if opt not in option_names(names[modality]):
            raise ConfigError(f"--{flag.replace('_', '-')}: encoder '{names[modality]}' has no option {opt!r}")
        opts[modality].setdefault(opt, value)
    return opts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from e2i.cache import images
    from e2i.store.mirror import add_mirror_arguments

    a = parser.add_argument
    a("--metadata", required=True, help="corpus: Clotho dir or captions CSV, COCO root, JSON/JSONL file, image folder")
    a("--corpus", choices=("clotho", "coco", "jsonl", "imagefolder"), help="corpus kind (default: inferred)")
    a("--split", help="corpus split, e.g. development / val2017 (default: the reader's)")
    a("--cache-dir", default="stores", help="store root; writes <cache-dir>/<dataset>/<split>/ (default: stores)")
    a("--dataset", help="dataset name in the store (default: the corpus name, e.g. clotho, toy)")
    a("--batch-size", type=int, default=32, help="rows per encoder call (default: 32)")
    a("--audio-encoder", default=DEFAULTS["audio"], help=f"audio encoder (default: passt; light: {LIGHT['audio']})")
    a("--audio-arch", help="PaSST architecture (passt option arch; default: passt_s_swa_p16_128_ap476)")
    a("--max-audio-seconds", type=float, help="crop audio to the first N seconds (default: whole clip)")
    a("--text-encoder", default=DEFAULTS["text"], help=f"text encoder (default: hf-text; light: {LIGHT['text']})")
    a("--text-model", help="transformers text model id or local dir for hf-text (default: roberta-base)")
    a("--image-encoder", default=DEFAULTS["image"], help=f"image encoder (default: hf-image; light: {LIGHT['image']})")
    a("--image-model", help="transformers vision model id or local dir for hf-image")
    a("--encoder-option", action="append", metavar="[MODALITY.]KEY=VALUE",
      help="extra encoder option, repeatable (e.g. text.max_length=64, audio.pretrained=false)")
    a("--curate-captions", action="store_true", help="fix common caption typos/spacing before embedding")
    a("--num-actors", type=int, help="embedding actors (default: one per GPU, else half the CPUs)")
    a("--use-gpu", action="store_true",
      help="always request 1 GPU per actor, even before GPU nodes are up (autoscaling clusters)")
    a("--shard-size", type=int, default=10_000, help="rows per store shard, the unit of resume (default: 10000)")
    a("--with-images", action="store_true",
      help="also write pseudo-images of the embeddings under <split>/pseudo_images/ (e2i.cache.images)")
    images.add_image_options(parser)
    add_mirror_arguments(parser)
    a("--include-embeddings", action="store_true",
      help="with --with-images: mirror the embedding shards too (default: pseudo-images + manifest only)")
    a("--ray-address", help="Ray cluster to use (default: RAY_ADDRESS or a new local instance; 'local' forces one)")
    a("--num-cpus", type=int, help="CPUs of a new local Ray instance (default: all)")


def run(args: argparse.Namespace) -> int:
    """`e2i cache`: exit 0, or 1 when the store is complete but the mirror reported failed uploads."""
    from e2i.cache.images import image_options
    from e2i.store.mirror import mirror_from_args

    mirror, hf_token = mirror_from_args(args)
    summary = cache_corpus(
        args.metadata, corpus=args.corpus, split=args.split, cache_dir=args.cache_dir, dataset=args.dataset,
        batch_size=args.batch_size, audio_encoder=args.audio_encoder, text_encoder=args.text_encoder,
        image_encoder=args.image_encoder, encoder_options=encoder_options_from_args(args),
        curate_captions=args.curate_captions, num_actors=args.num_actors, shard_size=args.shard_size,
        use_gpu=args.use_gpu, with_images=args.with_images, image_options=image_options(args), mirror=mirror,
        upload_every=args.upload_every,
        include_embeddings=args.include_embeddings, hf_token=hf_token,
        ray_init=lambda: _init_ray(args.ray_address, args.num_cpus))
    return 1 if summary["mirror"] and summary["mirror"]["failed"] else 0


def _init_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address and address != "local":
        ray.init(address=address)
    else:
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False)
