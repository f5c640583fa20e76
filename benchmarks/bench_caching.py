"""Benchmark 1, caching: the Ray Data pipeline vs a bare loop; peak memory as the corpus grows 10x.

Corpus: the built-in toy corpus (``e2i.corpus.toy``, 1-4 s clips at 32 kHz, 5 captions per clip); encoders:
the light built-ins ``logmel-stats`` (audio) and ``ngram-hash`` (text), e2i cache's default batch sizes
(per encoder: 64 clips, 2048 captions).

- **pipeline**: ``e2i.cache.pipeline.cache_corpus`` end to end (read the corpus -> Ray Data ``from_arrow`` ->
  ``map_batches(preprocess)`` CPU tasks -> ``map_batches(EmbedBatch)`` actor pool -> shards + manifest),
  rows/s = (items + captions) / its wall time, on the 10x corpus.
- **bare loop**: one process, no Ray: the same rows in the same batches, ``preprocess`` (decodes
  the WAV) + ``embed``, items then captions; nothing written. Same machine, same moment.
  Target: pipeline >= 0.9 x bare. For information: the per-phase rates, the same pipeline at
  ``--batch-size 256`` (fewer, larger Ray Data blocks and tasks), and the fixed cost (start-up) of
  the two phases, which run as one pipeline: the intercept of embedding time vs rows over the N- and
  10 N-clip runs (9 x rows apart; the N-clip run is the best of 2). The 10 N pipeline and the bare
  loop run in 3 interleaved rounds, best of each.

Memory: peak over the run of the summed PSS (and RSS) of the whole process tree (driver, raylet,
GCS, Ray Data workers and actors; see ``benchmarks/procmem.py``) for the corpus of N and of 10 N clips;
"flat" = the 10x corpus peaks at most 1.25x the small one (the corpus index grows, audio and
embeddings stream through bounded blocks and shards). The memory runs go first (they warm Ray up) and
are separate from the timed runs: the sampler itself costs a third of the CPU.

    python benchmarks/bench_caching.py [--quick] [--json out.json]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
from harness import Result
from procmem import TreeMemorySampler

BENCH = "caching"
FULL = {"small": 200, "large": 2000}
QUICK = {"small": 6, "large": 60}
BATCH = None  # e2i cache's default --batch-size: per encoder (e2i.cache.embed.BATCH_SIZES)
BIG_BATCH = 256  # the same pipeline with one --batch-size for both phases (for the note on per-task overhead)
ENCODERS = {"audio_encoder": "logmel-stats", "text_encoder": "ngram-hash"}
TARGET_SPEED = 0.9  # pipeline rows/s >= 0.9 of the bare loop
TARGET_MEMORY = 1.25  # peak memory at 10x the corpus <= 1.25x
TARGET_FIXED_S = 2.0  # fixed cost (start-up) of each phase <= 2 s
ROUNDS = 3  # interleaved rounds of the timed pipeline and bare loop


def bare_loop(corpus_dir: Path) -> dict[str, float]:
    """Seconds of preprocess + embed of every item and caption in the pipeline's batches, in this process."""
    from e2i.cache.embed import batch_size_for
    from e2i.corpus import read_corpus
    from e2i.encoders import get_encoder

    data = read_corpus("clotho", corpus_dir, split="development")
    audio, text = get_encoder(ENCODERS["audio_encoder"]), get_encoder(ENCODERS["text_encoder"])
    audio.load("cpu")
    text.load("cpu")
    items = {"item_id": np.array([it.item_id for it in data.items], dtype=object),
             "path": np.array([it.path for it in data.items], dtype=object)}
    rows = data.caption_rows()
    caps = {k: np.array([r[k] for r in rows], dtype=object) for k in ("caption_id", "item_id", "text")}
    out = {}
    for kind, enc, cols in (("items", audio, items), ("captions", text, caps)):
        n = len(next(iter(cols.values())))
        size = batch_size_for(enc, BATCH)
        start = time.perf_counter()
        for lo in range(0, n, size):
            batch = enc.preprocess({k: v[lo:lo + size] for k, v in cols.items()})
            emb = enc.embed(batch)  # (B, D)
            assert np.isfinite(emb).all(), f"{kind}: bad rows in the toy corpus"
        out[kind] = time.perf_counter() - start
        out[f"{kind}_rows"] = n
    return out


def pipeline(corpus_dir: Path, cache_dir: Path, dataset: str, batch_size: int = BATCH) -> dict:
    """The cache_corpus summary of one pipeline run."""
    from e2i.cache.pipeline import cache_corpus

    return cache_corpus(corpus_dir, corpus="clotho", split="development", cache_dir=cache_dir,
                        dataset=dataset, batch_size=batch_size, quiet=True, **ENCODERS)


def peak_memory(corpus_dir: Path, cache_dir: Path, dataset: str) -> object:
    """Peak memory of the process tree over one pipeline run. A run of its own: reading smaps_rollup of
    ~15 processes every 0.1 s costs the driver ~6 CPU-s per run, a third of a 2-core box, so the
    speed figures come from runs without the sampler."""
    with TreeMemorySampler(interval=0.1) as mem:
        pipeline(corpus_dir, cache_dir, dataset)
    return mem.peak


def run(quick: bool = False, work: Path | None = None) -> list[Result]:
    from e2i.corpus.toy import make_toy_corpus

    size = QUICK if quick else FULL
    nice = harness.ray_worker_niceness()
    with harness.work_dir(str(work) if work else None, "e2i-bench-cache-") as root:
        corpora = {k: make_toy_corpus(root / f"toy_{k}", n_items=n, seed=0) for k, n in size.items()}
        peak = {k: peak_memory(corpora[k], root / "stores", f"toy_mem_{k}") for k in ("small", "large")}  # warms up
        smalls = [pipeline(corpora["small"], root / "stores", f"toy_small_{r}") for r in range(1 if quick else 2)]
        small = min(smalls, key=lambda s: s["items"]["seconds"] + s["captions"]["seconds"])  # the least disturbed
        # ROUNDS interleaved rounds of (pipeline, bare loop), the best of each: the same call varies by
        # up to 40 % on this VM from one minute to the next (fresh-clone runs of the same code: 0.80-0.94x)
        rounds = [(pipeline(corpora["large"], root / "stores", f"toy_large_{r}"), bare_loop(corpora["large"]))
                  for r in range(1 if quick else ROUNDS)]  # --quick checks the rows, not the figures
        big_batch = pipeline(corpora["large"], root / "stores", "toy_big_batch", batch_size=BIG_BATCH)

    summary = min((s for s, _ in rounds), key=lambda s: s["seconds"])
    bare = min((b for _, b in rounds), key=lambda b: b["items"] + b["captions"])
    rows = summary["counts"]["items"] + summary["counts"]["captions"]
    pipe_rate = rows / summary["seconds"]
    bare_s = bare["items"] + bare["captions"]
    bare_rate = (bare["items_rows"] + bare["captions_rows"]) / bare_s
    pipe_s = ", ".join(f"{s['seconds']:.1f}" for s, _ in rounds)
    loop_s = ", ".join(f"{b['items'] + b['captions']:.1f}" for _, b in rounds)
    spread = f"pipeline {pipe_s} s; bare loop {loop_s} s"
    phase = {k: (summary[k]["rows_per_s"] or float("nan"), bare[f"{k}_rows"] / bare[k]) for k in ("items", "captions")}
    pool = summary["pool"]
    # run time = fixed + rows x per-row cost; two corpus sizes give both (the intercept is start-up:
    # actor creation, torch import, encoder load, first blocks). Both kinds run in one pipeline with
    # one start-up, so the intercept covers the two phases: budget 2 x TARGET_FIXED_S.
    embed_s = {k: s["items"]["seconds"] + s["captions"]["seconds"] for k, s in (("small", small), ("large", summary))}
    fixed = embed_s["small"] - (embed_s["large"] - embed_s["small"]) / 9
    n_small, n_large = size["small"], size["large"]
    batches = summary.get("batch_size") or {}
    return [
        Result(BENCH, f"cache_corpus (Ray Data, {pool['actors']} actor(s) x {pool['num_cpus']} CPU) vs bare "
                      f"single-process loop, {n_large} clips + {n_large * 5} captions, logmel-stats + ngram-hash, "
                      f"batches {batches}, Ray workers at nice {nice} (bare loop {os.nice(0)})",
               f"{harness.fmt_rate(pipe_rate, 'rows/s')} ({summary['seconds']:.1f} s) vs "
               f"{harness.fmt_rate(bare_rate, 'rows/s')} ({bare_s:.1f} s)",
               pipe_rate / bare_rate, ">=", TARGET_SPEED,
               note=f"pipeline wall time includes reading the corpus, Ray Data start-up, torch import and encoder "
                    f"load in the actor, shards and manifest (the bare loop's timer starts after its encoder "
                    f"load); best of {len(rounds)} interleaved round(s): {spread}"),
        Result(BENCH, "  items phase (audio: decode + log-mel stats; from the start to the last item batch)",
               f"{harness.fmt_rate(phase['items'][0], 'rows/s')} vs {harness.fmt_rate(phase['items'][1], 'rows/s')}",
               phase["items"][0] / phase["items"][1], ">=", TARGET_SPEED),
        Result(BENCH, "  captions phase (text: n-gram hashing; from the last item batch to the end)",
               f"{harness.fmt_rate(phase['captions'][0], 'rows/s')} vs "
               f"{harness.fmt_rate(phase['captions'][1], 'rows/s')}",
               phase["captions"][0] / phase["captions"][1], ">=", TARGET_SPEED),
        Result(BENCH, f"  same pipeline with --batch-size {BIG_BATCH} (8x fewer Ray Data tasks) vs the bare loop",
               f"{harness.fmt_rate(rows / big_batch['seconds'], 'rows/s')} ({big_batch['seconds']:.1f} s; items "
               f"{harness.fmt_rate(big_batch['items']['rows_per_s'] or 0, 'rows/s')}, captions "
               f"{harness.fmt_rate(big_batch['captions']['rows_per_s'] or 0, 'rows/s')})",
               rows / big_batch["seconds"] / bare_rate, note="for information: how much is per-task overhead"),
        Result(BENCH, f"  fixed cost of the two phases, one pipeline (intercept of embedding time over the "
                      f"{n_small}- and {n_large}-clip runs), share of the 2 x {TARGET_FIXED_S:g} s budget",
               f"{fixed:.2f} s of {embed_s['large']:.1f} s", fixed / (2 * TARGET_FIXED_S), "<=", 1.0, unit="%",
               note="actor start, torch import, encoder load, first blocks"),
        Result(BENCH, f"peak memory (PSS, driver + Ray processes), {n_large} vs {n_small} clips",
               f"{harness.fmt_bytes(peak['large'].pss)} vs {harness.fmt_bytes(peak['small'].pss)} "
               f"(RSS {harness.fmt_bytes(peak['large'].rss)} vs {harness.fmt_bytes(peak['small'].rss)}, "
               f"{peak['large'].processes} processes)",
               peak["large"].pss / peak["small"].pss, "<=", TARGET_MEMORY),
    ]


def no_progress_bars() -> None:
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # keep the log readable


def main(argv: list[str] | None = None) -> int:
    return harness.ray_main(argv, __doc__, "Benchmark: caching", run, omp_threads=True, setup=no_progress_bars)


if __name__ == "__main__":
    sys.exit(main())
