"""The Ray Data stages of `e2i cache`: rows -> preprocess CPU tasks -> an embedding actor pool -> batches.

    ray.data.from_items(rows) ─▶ map_batches(preprocess_batch)   CPU tasks: decode / resample / tokenise
                              ─▶ map_batches(EmbedBatch, ActorPoolStrategy)   load() once, embed per batch
                              ─▶ iter_batches on the driver (e2i.cache.pipeline writes the shards)

Owns the batch columns (``KEEP`` store columns per kind, ``ERROR``) and the pool's resource request
(:func:`pool_resources`). Ray is imported inside the functions that run it, so importing this is light.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from e2i.errors import ConfigError

ERROR = "error"  # "" for a good row, else why it is rejected
KEEP = {"items": ("item_id", "path"), "captions": ("caption_id", "item_id", "text")}  # store columns per kind
ID = {"items": "item_id", "captions": "caption_id"}
MAX_BLOCKS = 2000  # cap on input blocks: ~batch_size rows per block, without millions of tiny tasks
# Rows per encoder call when --batch-size is not given. A Ray Data task/actor call costs milliseconds;
# the light text encoder embeds a caption in ~0.3 ms, so batches of 32 would spend most of the phase in
# task overhead: cheap encoders get large batches. Model encoders keep 32 (memory, GPU batch).
BATCH_SIZES = {"ngram-hash": 2048, "logmel-stats": 64, "image-stats": 64}
DEFAULT_BATCH_SIZE = 32


def batch_size_for(encoder: Any, requested: int | None = None) -> int:
    """``requested`` (--batch-size) if given, else the encoder's ``batch_size`` attribute or
    :data:`BATCH_SIZES` entry, else :data:`DEFAULT_BATCH_SIZE`."""
    if requested is not None:
        return int(requested)
    return int(getattr(encoder, "batch_size", None) or BATCH_SIZES.get(encoder.name, DEFAULT_BATCH_SIZE))


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

        gpu_ids = ray.get_gpu_ids()
        self.device = "cpu"
        if gpu_ids:  # torch only when Ray granted a GPU: importing it costs seconds of actor start-up
            import torch

            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        encoder.load(self.device)
        self.encoder, self.keep = encoder, keep
        self.gpu_ids = ",".join(str(g) for g in gpu_ids)
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
