"""The Ray Data stages of `e2i cache`: rows of both kinds -> preprocess CPU tasks -> one embedding actor
pool -> batches.

    ray.data.from_items(block specs)  items blocks first, then caption blocks (one kind per block)
      ─▶ map_batches(preprocess_batch)   CPU tasks: decode / resample / tokenise with the block's encoder
      ─▶ map_batches(EmbedBatch, ActorPoolStrategy)   one pool for both kinds: each actor loads an
         encoder the first time a block of its kind arrives and keeps it
      ─▶ iter_batches on the driver (e2i.cache.pipeline writes the shards)

One pipeline for items and captions: the pool starts once per run (an actor's start-up, importing torch
and loading the encoder, costs seconds: per phase it was most of a small run), and the captions'
blocks queue right behind the items' ones instead of waiting for a second executor. Each block holds
rows of one kind; blocks are never merged (CPU pools: ``batch_size=None``, a batch is one block; GPU
pools: a batch size no block is smaller than, see :func:`embed_stream`), and the actor splits a block
larger than the encoder's batch size into encoder calls of that size. GPU and CPU pools alike start
once per run: a second pool asking for the GPUs while the first still held them made an autoscaling
cluster add nodes for it.

Owns the batch columns (``KEEP`` store columns per kind, ``ERROR``, ``KIND``) and the pool's resource
request (:func:`pool_resources`). Ray is imported inside the functions that run it, so importing this is
light.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from e2i.cache.media import preprocess_remote
from e2i.errors import ConfigError

ERROR = "error"  # "" for a good row, else why it is rejected
ITEM_REJECTED = "item rejected"  # a caption's error when its item was rejected
KEEP = {"items": ("item_id", "path"), "captions": ("caption_id", "item_id", "text")}  # store columns per kind
ID = {"items": "item_id", "captions": "caption_id"}
SPEC_COLUMNS = ("item_id", "path", "caption_id", "text")  # block specs carry both kinds' columns
KIND = "_kind"  # "items" | "captions": which encoder a block is for
MAX_BLOCKS = 2000  # cap on input blocks per kind: batch_size rows per block, without millions of tiny tasks
# Rows per encoder call when --batch-size is not given. A Ray Data task/actor call costs milliseconds;
# the light text encoder embeds a caption in ~0.3 ms, so batches of 32 would spend most of the phase in
# task overhead: cheap encoders get large batches. Model encoders keep 32 (memory, GPU batch).
BATCH_SIZES = {"ngram-hash": 2048, "logmel-stats": 64, "image-stats": 64}
DEFAULT_BATCH_SIZE = 32
# CPUs a GPU run may use per GPU actor (the actor's own CPU + decoding tasks): a g5/g6.xlarge has 4 vCPUs
# per GPU. Ray Data's cluster autoscaler otherwise asks for twice the measured throughput every 10 s; the
# CPU-only decode stage behind a fixed-size GPU pool then grows without bound (measured on the fake
# autoscaling cluster: 6 gpu_1x nodes and a 4-GPU machine for a 2-actor pool).
CPUS_PER_GPU = 4.0


def batch_size_for(encoder: Any, requested: int | None = None) -> int:
    """``requested`` (--batch-size) if given, else the encoder's ``batch_size`` attribute or
    :data:`BATCH_SIZES` entry, else :data:`DEFAULT_BATCH_SIZE`."""
    if requested is not None:
        return int(requested)
    return int(getattr(encoder, "batch_size", None) or BATCH_SIZES.get(encoder.name, DEFAULT_BATCH_SIZE))


def batch_size_by_name(name: str, requested: int | None = None) -> int:
    """:func:`batch_size_for` from an encoder's registry name, without constructing it (constructing a
    model encoder may fetch its config from the hub)."""
    from e2i.encoders import ENCODERS

    return batch_size_for(ENCODERS.get(name, type("unknown", (), {"name": name})), requested)


def pool_resources(cluster: Mapping[str, float], *, num_actors: int | None = None,
                   num_batches: int | None = None, use_gpu: bool = False, cpu_only: bool = False) -> dict[str, Any]:
    """``map_batches`` kwargs for the embedding actor pool, from ``ray.cluster_resources()``.

    GPUs: one actor per GPU (``num_actors`` caps it; more actors than GPUs could never be scheduled),
    ``num_gpus=1`` each; the actors keep Ray Data's default of one CPU each unless that would take more
    than half the CPUs (then fractional). CPU only: ``num_actors`` (default: half the CPUs, at least one)
    with at most half a CPU each, for two reasons: with whole CPUs a 2-CPU node deadlocks (the actors
    hold both CPUs and the read/preprocess tasks never run), and Ray Data fuses a task stage into the
    next actor stage when their resource requests are equal, which would move decoding into the actors
    (no overlap of decode and embed). ``num_batches`` (the work of a phase) caps the pool: an actor that
    would get no batch is not started. ``use_gpu`` asks for ``num_actors`` (default 1) x 1 GPU even
    when no GPU is up yet, so an autoscaling cluster scaled to zero adds GPU nodes for the pool;
    ``cpu_only`` ignores the cluster's GPUs (light encoders on a GPU cluster).
    """
    cpus, gpus = float(cluster.get("CPU", 1.0)), 0 if cpu_only else int(cluster.get("GPU", 0))
    if num_actors is not None and num_actors < 1:
        raise ConfigError(f"--num-actors: must be >= 1, got {num_actors}")
    if use_gpu and cpu_only:
        raise ConfigError("--use-gpu and --cpu-only: choose one")
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
    """The actor UDF: loads each kind's encoder once, on the first block of that kind (CUDA if this actor
    sees a GPU), and embeds blocks into the store columns + ``embedding`` (B, D) + ``error``.

    ``encoders``: {kind: encoder}; ``batch_sizes``: {kind: rows per encoder call} (a block larger than
    that is embedded in several calls). Rows with a preprocess error, or a non-finite embedding, keep
    their ``error`` (and a zero embedding so the column stays finite); the driver routes them to
    rejected.parquet. Debug columns record where each row was decoded (``_prep_pid``) and embedded
    (``_pid``, ``_gpu_ids``, ``_device``).
    """

    def __init__(self, encoders: Mapping[str, Any], batch_sizes: Mapping[str, int] | None = None) -> None:
        import ray

        gpu_ids = ray.get_gpu_ids()
        self.device = "cpu"
        if gpu_ids:  # torch only when Ray granted a GPU: importing it costs seconds of actor start-up
            import torch

            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.encoders, self.batch_sizes = dict(encoders), dict(batch_sizes or {})
        self.loaded: set[str] = set()
        self.gpu_ids = ",".join(str(g) for g in gpu_ids)
        self.pid = os.getpid()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        kind = str(batch[KIND][0])
        if (batch[KIND] != kind).any():  # embed_stream's bundling guarantees one kind per batch
            raise RuntimeError(f"EmbedBatch: a batch mixes kinds {sorted(set(batch[KIND].tolist()))}")
        encoder = self.encoders[kind]
        if kind not in self.loaded:
            encoder.load(self.device)
            self.loaded.add(kind)
            _cpu_threads()
        prep_pid = batch.pop("_prep_pid")
        errors = np.array([str(e) for e in batch[ERROR]], dtype=object)  # (B,)
        n = len(errors)
        step = self.batch_sizes.get(kind) or n
        emb = np.concatenate([np.asarray(encoder.embed({k: v[lo:lo + step] for k, v in batch.items()}),
                                         dtype=np.float32) for lo in range(0, n, step)])  # (B, D); NaN if error
        bad_output = (errors == "") & ~np.isfinite(emb).all(axis=1)
        errors[bad_output] = "non-finite embedding"
        emb[errors != ""] = 0.0
        out = {k: batch[k] for k in (KIND, *KEEP[kind])}
        out.update(embedding=emb, error=errors, _prep_pid=prep_pid, _pid=np.full(n, self.pid, dtype=np.int64),
                   _gpu_ids=np.full(n, self.gpu_ids, dtype=object), _device=np.full(n, self.device, dtype=object))
        return out


def _cpu_threads() -> None:
    """torch's intra-op threads = this worker's whole CPUs (at least 1), once torch is loaded. The
    preprocess tasks and a fractional-CPU actor run side by side; with ``OMP_NUM_THREADS`` (or all
    cores') threads each, they spin against each other: on 2 cores, 2 threads per process doubled the
    actor's CPU time for the same work and made the whole run ~40 % slower."""
    import sys

    import ray

    torch = sys.modules.get("torch")
    if torch is None or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return  # no torch yet, or not a Ray worker (the UDFs called in-process, as tests do)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    threads = max(1, int(cpus))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def preprocess_batch(batch: dict[str, np.ndarray], encoders: Mapping[str, Any],
                     skip_items: frozenset | list = ()) -> dict[str, np.ndarray]:
    """The CPU-task stage: a block spec's rows (:func:`expand_block`), the kind's encoder's ``preprocess``
    (media on object storage fetched here, :mod:`e2i.cache.media`), ``_prep_pid`` (which worker decoded).
    Captions of ``skip_items`` (items rejected earlier in the run) get the error :data:`ITEM_REJECTED`."""
    _cpu_threads()
    if "caption_id" in batch and "path" in batch:  # a block spec (input_blocks), not rows yet
        batch = expand_block(batch)
    out = preprocess_remote(encoders[str(batch[KIND][0])], batch)  # keeps the input columns, KIND among them
    if len(skip_items) and "caption_id" in out:
        skip = set(skip_items)
        out[ERROR] = np.array([ITEM_REJECTED if i in skip else str(e) for i, e in zip(out["item_id"], out[ERROR])],
                              dtype=object)
    out["_prep_pid"] = np.full(len(out[ERROR]), os.getpid(), dtype=np.int64)
    return out


def execution_limits(resources: Mapping[str, Any], cpus_per_gpu: float | None = None) -> dict[str, float] | None:
    """Ray Data ``resource_limits`` for a run with the pool ``resources`` (:func:`pool_resources`): a GPU
    pool of N actors may use N GPUs and ``N x cpus_per_gpu`` CPUs (default :data:`CPUS_PER_GPU`), so the
    cluster autoscaler is asked for the pool's nodes and no more; None (no limit) for CPU pools."""
    if not resources.get("num_gpus"):
        return None
    per_gpu = CPUS_PER_GPU if cpus_per_gpu is None else float(cpus_per_gpu)
    if per_gpu < 1:
        raise ConfigError(f"--cpus-per-gpu: must be >= 1, got {per_gpu:g}")
    n = resources["compute"].max_size  # the pool's fixed size
    return {"cpu": n * per_gpu, "gpu": float(n)}


def block_rows(n: int, batch_size: int) -> int:
    """Rows per input block of a kind with ``n`` rows: ``batch_size``, more if that would exceed
    :data:`MAX_BLOCKS` blocks (:func:`input_blocks` then spreads the remainder over the blocks)."""
    return max(batch_size, math.ceil(n / MAX_BLOCKS))


def num_blocks(n: int, batch_size: int) -> int:
    """Input blocks of a kind with ``n`` rows: ``n // block_rows`` (at least 1), so every block has at least
    ``block_rows`` rows (fewer only when the kind has fewer rows) and less than twice that."""
    return max(1, n // block_rows(n, batch_size)) if n else 0


def block_bounds(n: int, per_block: int) -> list[tuple[int, int]]:
    """``[(lo, hi)]`` of ``max(1, n // per_block)`` near-equal consecutive slices of ``n`` rows (none when
    ``n`` is 0): every slice has at least ``per_block`` rows (fewer only when ``n`` is) and less than twice."""
    k = max(1, n // per_block) if n else 0
    return list(itertools.pairwise([i * n // k for i in range(k + 1)] if k else []))


def input_blocks(work: Mapping[str, list[dict]], batch_sizes: Mapping[str, int]) -> list[dict[str, Any]]:
    """The rows to embed as block specs, kind by kind in ``work``'s order (items first): :func:`num_blocks`
    specs per kind of near-equal size, each ``{KIND: kind, column: [values]}`` for every column of
    :data:`SPEC_COLUMNS` (empty lists for the other kind's). One spec is one Ray Data row and one block;
    :func:`expand_block` turns it into the block's rows in the decode task."""
    specs = []
    for kind, rows in work.items():
        for lo, hi in block_bounds(len(rows), block_rows(len(rows), batch_sizes[kind])):
            part = rows[lo:hi]
            specs.append({KIND: kind, **{c: [str(r[c]) for r in part] if c in KEEP[kind] else []
                                         for c in SPEC_COLUMNS}})
    return specs


def expand_block(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Block specs (:func:`input_blocks`; one kind) -> the rows: ``KIND`` + KEEP[kind] columns, (B,) each."""
    kind = str(batch[KIND][0])
    cols = {c: np.array([v for spec in batch[c] for v in spec], dtype=object) for c in KEEP[kind]}
    cols[KIND] = np.full(len(cols[ID[kind]]), kind, dtype=object)
    return cols


def embed_stream(work: Mapping[str, list[dict]], encoders: Mapping[str, Any], *, batch_sizes: Mapping[str, int],
                 resources: dict[str, Any], limits: Mapping[str, float] | None = None,
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Yield embedded numpy batches (see :class:`EmbedBatch`; ``KIND`` says which) for ``work``
    ({kind: rows}), streaming, through one actor pool for every kind.

    Every batch must hold one kind. CPU pools never merge blocks (``batch_size=None``: a batch is a
    block). GPU stages need a ``batch_size``, and Ray Data then bundles consecutive blocks until a bundle
    has that many rows: with the smallest block's row count as the batch size, every block fills a bundle
    on its own (:func:`input_blocks` gives each block at least that many rows, and the preprocess stage
    outputs one block per block: no size-based splitting, ``target_max_block_size=None``), so the last
    items block is never bundled with the first caption block. ``limits`` ({"cpu", "gpu"},
    :func:`execution_limits`) caps what the run may use, and so what Ray Data asks the cluster autoscaler for.
    """
    import ray.data

    specs = input_blocks(work, batch_sizes)
    if not specs:
        return
    encs = {k: encoders[k] for k in work}
    gpu = bool(resources.get("num_gpus"))
    step = min(len(b[ID[b[KIND]]]) for b in specs) if gpu else None  # GPU: rows per actor call, <= any block
    # One spec per block, built on the driver: ray.data.from_arrow would run one 1-CPU metadata task per
    # block, which on a cluster scaled to zero is a demand for as many CPUs (measured: 30 blocks -> two
    # 16-CPU nodes added). The dataset gets its own copy of the DataContext, changed below.
    ds = ray.data.from_items(specs, override_num_blocks=len(specs))
    ds = embed_dataset(ds, encs, batch_sizes=batch_sizes, resources=resources, limits=limits, step=step)
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def embed_dataset(ds: Any, encs: Mapping[str, Any], *, batch_sizes: Mapping[str, int], resources: dict[str, Any],
                  limits: Mapping[str, float] | None, step: int | None, udf: type = EmbedBatch,
                  udf_kwargs: Mapping[str, Any] | None = None, keep_blocks: bool = False,
                  skip_items: list[str] | None = None) -> Any:
    """``ds`` (blocks of rows or block specs, one kind each) -> preprocess tasks -> the ``udf`` actor pool
    (:class:`EmbedBatch` or a subclass, constructed with ``encoders``, ``batch_sizes`` and ``udf_kwargs``).
    ``step``: the actors' batch size (None: a batch is one block, on GPU actors too with ``keep_blocks``).
    ``keep_blocks``: no size-based block splitting, so one input block stays one block up to the actors
    (GPU pools and worker-side writes).
    ``skip_items``: see :func:`preprocess_batch`."""
    import ray.data

    if keep_blocks or step is not None:
        ds.context.target_max_block_size = None  # one output block per input block (one kind each)
    decode: dict[str, Any] = {}
    if limits:
        ds.context.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(**limits)
        # The limit alone does not stop Ray Data from submitting every decode task at once on a cluster
        # scaled to zero (no CPUs yet: measured, 30 pending 1-CPU tasks -> two 16-CPU nodes added); at most
        # the CPUs the actors leave under the limit run (or wait) at a time.
        actor_cpus = resources["compute"].max_size * resources.get("num_cpus", 1.0)
        decode["compute"] = ray.data.TaskPoolStrategy(size=max(1, int(limits["cpu"] - actor_cpus)))
    prep = {"encoders": encs, **({"skip_items": list(skip_items)} if skip_items else {})}
    ds = ds.map_batches(preprocess_batch, fn_kwargs=prep, batch_size=None, batch_format="numpy",
                        num_cpus=1, **decode)
    # Worker-side writes need one block per actor call on GPU actors too (a shard is one input block, named
    # by its ids): `map_batches` refuses batch_size=None with num_gpus, its DeveloperAPI body
    # `map_batches_internal` (ray/data/dataset.py, 2.60) does not; the actor splits the block into calls.
    stage = ds.map_batches_internal if keep_blocks and step is None and resources.get("num_gpus") else ds.map_batches
    ds = stage(udf, fn_constructor_kwargs={"encoders": encs, "batch_sizes": dict(batch_sizes), **dict(udf_kwargs or {})},
               batch_size=step, batch_format="numpy", **resources)
    return ds
