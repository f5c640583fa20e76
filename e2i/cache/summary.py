"""What an `e2i cache` run reports: counts per phase, the summary dict ``cache_corpus`` returns, its table.

The summary (JSON-able) per kind ("items", "captions"): total / skipped (already stored) / embedded /
rejected rows, seconds, rows/s, embedding dim, the actor pool and where rows were decoded and embedded;
then the rejected counts, the manifest's counts, the cluster, the pool, the pseudo-images and the mirror.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2i.cache.embed import execution_limits, pool_resources


@dataclass
class PhaseStats:
    """Counts of one phase (items or captions)."""

    kind: str
    total: int = 0  # rows in the corpus
    skipped: int = 0  # already in complete shards (resume)
    embedded: int = 0  # written to shards by this run
    rejected: int = 0  # rejected by this run (preprocess error, non-finite output, item rejected)
    seconds: float = 0.0
    held: int = 0  # captions only: peak rows held on the driver until their item left the pipeline
    dim: int | None = None
    placement: set = field(default_factory=set)  # {(actor pid, gpu_ids, device)}
    preprocess_pids: set = field(default_factory=set)  # worker pids of the preprocess tasks
    pool: dict | None = None  # what the actor pool requested: actors, num_gpus, num_cpus


def resources_summary(res: dict[str, Any], cpus_per_gpu: float | None = None) -> dict[str, Any]:
    """The pool of :func:`e2i.cache.embed.pool_resources` kwargs: actors, num_gpus, num_cpus per actor, and
    the run's Ray Data resource limits (``limits``: {"cpu", "gpu"} for GPU pools, else None)."""
    c = res["compute"]
    return {"actors": c.max_size, "num_gpus": res.get("num_gpus", 0), "num_cpus": res.get("num_cpus", 1.0),
            "limits": execution_limits(res, cpus_per_gpu)}


def run_summary(out: Path, dataset: str, data: Any, kind: str, run: Any, manifest: dict, t_start: float,
                images: Any) -> dict:
    """The summary of a finished run; ``run`` is its ``e2i.cache.pipeline.CacheRun`` (stats, cluster,
    pool options, mirror report), ``data`` the corpus read, ``t_start`` the run's ``perf_counter()``."""
    stats = run.stats
    embedded = sum(s.embedded for s in stats.values())
    embed_s = sum(s.seconds for s in stats.values())
    return {
        "store": str(out), "dataset": dataset, "split": data.split, "corpus": kind,
        **{k: {"total": s.total, "skipped": s.skipped, "embedded": s.embedded, "rejected": s.rejected,
               "seconds": round(s.seconds, 3), "rows_per_s": round(s.embedded / s.seconds, 2) if s.seconds else None,
               "dim": s.dim, "held": s.held, "pool": s.pool, "preprocess_pids": sorted(s.preprocess_pids),
               "placement": [{"pid": p, "gpu_ids": g, "device": d} for p, g, d in sorted(s.placement)]}
           for k, s in stats.items()},
        "rejected": {"corpus": len(data.rejected), "pipeline": sum(s.rejected for s in stats.values()),
                     "stored": manifest["counts"].get("rejected")},
        "counts": manifest["counts"],
        "rows_per_s": round(embedded / embed_s, 2) if embed_s else None,
        "batch_size": dict(run.batch_sizes),
        "seconds": round(time.perf_counter() - t_start, 3),
        "cluster": {"CPU": run.cluster.get("CPU", 0), "GPU": run.cluster.get("GPU", 0)},
        "pool": resources_summary(pool_resources(run.cluster, num_actors=run.num_actors, use_gpu=run.use_gpu,
                                                 cpu_only=run.cpu_only), run.cpus_per_gpu),
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
    if pool.get("limits"):
        line += f"; run capped at {pool['limits']['cpu']:g} CPUs, {pool['limits']['gpu']:g} GPUs"
    if summary.get("write_on"):
        w = summary["write_on"]
        line += f"; shards written by the {w['path']} ({w['reason']})"
    if summary.get("index", {}).get("files", 1) > 1:
        ix = summary["index"]
        line += f"; index: {ix['files']} metadata files read by {ix['read_tasks']} tasks"
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
