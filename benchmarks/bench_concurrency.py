"""Benchmark 6, concurrent trials memory: 1 vs 4 concurrent Tune trials on one node share the embeddings.

``e2i tune`` loads the train/val splits once on the driver and hands them to every trial through
``tune.with_parameters`` (one object-store copy; each trial maps the same float32 buffers, zero-copy).
This benchmark runs the same 1-epoch search twice on a store whose train split is ~1 GB of float32
(100 000 items + 100 000 captions at d=1280, random values: only the bytes matter here; few wide rows
keep an epoch at 98 steps of batch 1024):

- 1 trial (``max_concurrent_trials=1``), then 4 trials at once (0.5 CPU each on 2 CPUs);
- a sampler thread sums the memory of the whole process tree (driver, raylet with the object store,
  GCS, trial workers) every 0.2 s; the peak counts. **PSS** counts a shared page once overall (the
  real footprint); the **RSS** sum counts the object-store pages once per trial that touched them.

Figures: peak PSS with 4 trials / with 1 trial (target <= 2: four private copies of the data would
add 3 x the data size on top of the 1-trial peak) and the memory each extra trial adds compared with
the data size (target < 1: a trial that copied the data would add at least one data size; sharing
trials add only their own process: Python + torch + Ray worker, ~0.5 GB).

    python benchmarks/bench_concurrency.py [--quick] [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from bench_store_load import make_split  # noqa: E402
from bench_tuning import write_space  # noqa: E402
from harness import Result  # noqa: E402
from procmem import TreeMemorySampler  # noqa: E402

BENCH = "concurrent trials"
# Few, wide rows: ~1 GB of embeddings in an epoch of only 98 steps (the trials stay short).
FULL = {"items": 100_000, "per_item": 1, "dim": 1280, "val_items": 500}
QUICK = {"items": 2_000, "per_item": 1, "dim": 32, "val_items": 100}
TARGET_RATIO = 2.0  # peak(4 trials) <= 2x peak(1 trial)
TARGET_PER_TRIAL = 1.0  # each extra trial adds less than one copy of the data


def make_store(root: Path, size: dict) -> tuple[Path, int]:
    """train + val splits of random embeddings; returns (dataset dir, bytes of the train embeddings)."""
    from e2i.store import write_split

    train = make_split(size["items"], size["per_item"], size["dim"], seed=0)
    val = make_split(size["val_items"], size["per_item"], size["dim"], seed=1)
    nbytes = train.item_emb.nbytes + train.caption_emb.nbytes
    write_split(train, root / "train", "bench", "train")
    write_split(val, root / "val", "bench", "val")
    return root, nbytes


def measure(space: Path):
    from e2i.tune.search import tune_space

    with TreeMemorySampler(interval=0.2) as mem:
        tune_space(space, report=False)
    return mem


def run(quick: bool = False, work: Path | None = None) -> list[Result]:
    size = QUICK if quick else FULL
    with harness.work_dir(str(work) if work else None, "e2i-bench-conc-") as root:
        store, data_bytes = make_store(root / "store", size)
        spaces = {n: write_space(root / f"bench_conc{n}.yaml", store, root / "results",
                                 scheduler={"type": "fifo", "max_t": 1, "grace_period": 1}, sampler="random", trials=n,
                                 concurrency=n, cpu=0.5, batch_size=1024) for n in (1, 4)}
        mem = {n: measure(spaces[n]) for n in (1, 4)}

    p1, p4 = mem[1].peak, mem[4].peak
    per_trial = (p4.pss - p1.pss) / 3
    copies = p1.pss + 3 * data_bytes  # what four private copies would need at least
    return [
        Result(BENCH, f"peak memory (PSS sum over driver + Ray processes), 4 vs 1 concurrent trials, "
                      f"train embeddings {harness.fmt_bytes(data_bytes)}",
               f"{harness.fmt_bytes(p4.pss)} vs {harness.fmt_bytes(p1.pss)} (4 private copies: "
               f">= {harness.fmt_bytes(copies)}, {copies / p1.pss:.2f}x)",
               p4.pss / p1.pss, "<=", TARGET_RATIO),
        Result(BENCH, "memory added per extra trial vs the size of the train embeddings",
               f"{harness.fmt_bytes(per_trial)} per trial vs {harness.fmt_bytes(data_bytes)}",
               per_trial / data_bytes, "<=", TARGET_PER_TRIAL, unit="%",
               note="a private copy per trial would make this >= 100%"),
        Result(BENCH, "naive RSS sum (counts shared object-store pages once per process), 4 vs 1",
               f"{harness.fmt_bytes(p4.rss)} vs {harness.fmt_bytes(p1.rss)} ({p4.processes} vs "
               f"{p1.processes} processes)", p4.rss / p1.rss, note="for information: why PSS is the measure"),
    ]


def main(argv: list[str] | None = None) -> int:
    return harness.ray_main(argv, __doc__, "Benchmark: concurrent trials memory", run)


if __name__ == "__main__":
    sys.exit(main())
