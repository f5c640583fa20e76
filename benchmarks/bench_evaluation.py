"""Benchmark 4, evaluation: Recall@K + mAP@10 on 25 000 captions x 5 000 items at d=512.

Compared in one process on the same embeddings (unit-norm float32; caption = its item + noise, 5
captions per item, so ranks are realistic and ties absent):

- **floor**: the single matmul ``cap_emb @ item_emb.T`` (25 000 x 5 000 x 512, 128 GFLOP) that computes
  every similarity once; numpy/OpenBLAS with all cores, best of 3;
- ``e2i.evaluate.metrics.retrieval_metrics`` (chunked, both directions, no bootstrap CIs), best of 2
  (target <= 1.5x the matmul); also with the default 1000-resample bootstrap CIs, for information;
- ``retrieval_metrics_bruteforce``: the straightforward full (M, N) matrix + stable argsort per
  query, timed once (it also checks that both give the same numbers).

Memory (tracemalloc, which sees numpy's allocations): peak traced bytes during one call, minus
nothing (inputs are allocated before tracing starts), for two chunk sizes. "Bounded by the chunk
size" = the peak is a small multiple of one chunk's score block (``chunk x max(N, M) x 4`` bytes)
and does not depend on the full matrix (``M x N x 4``); the brute force needs several full matrices.

    python benchmarks/bench_evaluation.py [--quick] [--json out.json]
"""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import Result  # noqa: E402

BENCH = "evaluation"
FULL = {"items": 5_000, "per_item": 5, "dim": 512, "chunks": (256, 1024)}
QUICK = {"items": 300, "per_item": 5, "dim": 64, "chunks": (32, 128)}
TARGET_TIME = 1.5  # metrics time <= 1.5x the matmul
TARGET_MEMORY = 4.0  # peak traced memory <= 4 chunk score blocks


def make_embeddings(n_items: int, per_item: int, dim: int, seed: int = 0):
    """(item_emb (N, D), cap_emb (M, D), cap_item (M,)): unit rows; a caption is its item + noise."""
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_items, dim), dtype=np.float32)  # (N, D)
    cap_item = np.repeat(np.arange(n_items, dtype=np.int64), per_item)  # (M,)
    caps = items[cap_item] + 1.5 * rng.standard_normal((len(cap_item), dim), dtype=np.float32)  # (M, D)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    caps /= np.linalg.norm(caps, axis=1, keepdims=True)
    return items, caps, cap_item


def traced_peak(fn) -> int:
    """Peak bytes allocated (tracemalloc: Python + numpy) during ``fn()``, above the start."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = tracemalloc.get_traced_memory()[0]
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def _agree(a: dict, b: dict) -> bool:
    keys = [k for k in a if isinstance(a[k], float) and k in b]
    return all(abs(a[k] - b[k]) <= 1e-6 * max(1.0, abs(a[k])) for k in keys)


def run(quick: bool = False, repeats: int = 2) -> list[Result]:
    from e2i.evaluate.metrics import retrieval_metrics, retrieval_metrics_bruteforce

    size = QUICK if quick else FULL
    items, caps, cap_item = make_embeddings(size["items"], size["per_item"], size["dim"])
    n, m, d = len(items), len(caps), size["dim"]
    chunk = size["chunks"][-1]

    t_matmul = harness.best_of(lambda: caps @ items.T, repeats + 1)  # (M, N) similarities, the floor
    runs = [harness.timed(lambda: retrieval_metrics(items, caps, cap_item, chunk_size=chunk, ci=False))
            for _ in range(max(1, repeats))]
    t_metrics, metrics = min(runs, key=lambda r: r[0])
    t_ci = harness.timed(lambda: retrieval_metrics(items, caps, cap_item, chunk_size=chunk, ci=True))[0]
    t_brute, brute = harness.timed(lambda: retrieval_metrics_bruteforce(items, caps, cap_item))
    same = _agree(metrics, brute)

    peaks = {c: traced_peak(lambda c=c: retrieval_metrics(items, caps, cap_item, chunk_size=c, ci=False))
             for c in size["chunks"]}
    block = {c: c * max(n, m) * 4 for c in size["chunks"]}  # bytes of one chunk's score block
    full = m * n * 4  # bytes of the full score matrix
    gflop = 2 * m * n * d / 1e9
    shape = f"{m:,} captions x {n:,} items, d={d}"
    results = [
        Result(BENCH, f"retrieval_metrics (R@1/5/10, mAP@10, ranks, both directions, chunk {chunk}) "
                      f"vs one matmul, {shape}",
               f"{t_metrics:.2f} s vs matmul {t_matmul:.2f} s ({gflop / t_matmul:.0f} GFLOP/s)",
               t_metrics / t_matmul, "<=", TARGET_TIME, note="time ratio, best of runs"),
        Result(BENCH, "same with 1000-resample bootstrap CIs (what `e2i evaluate` computes)",
               f"{t_ci:.2f} s vs matmul {t_matmul:.2f} s", t_ci / t_matmul),
        Result(BENCH, f"full-matrix argsort version vs one matmul (results agree: {'yes' if same else 'NO'})",
               f"{t_brute:.2f} s vs matmul {t_matmul:.2f} s (chunked is {t_brute / t_metrics:.1f}x faster)",
               t_brute / t_matmul),
    ]
    for c in size["chunks"]:
        results.append(Result(
            BENCH, f"peak traced memory, chunk {c}, vs one chunk score block ({c} x {max(n, m):,} x 4 B)",
            f"{harness.fmt_bytes(peaks[c])} vs block {harness.fmt_bytes(block[c])} "
            f"(full matrix {harness.fmt_bytes(full)})",
            peaks[c] / block[c], "<=", TARGET_MEMORY, note="tracemalloc peak above the inputs"))
    return results


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="timed repetitions (best counts; default 2)")
    args = p.parse_args(argv)
    harness.quiet_environment()
    return harness.finish(run(quick=args.quick, repeats=args.repeats), "Benchmark: evaluation", args.json)


if __name__ == "__main__":
    sys.exit(main())
