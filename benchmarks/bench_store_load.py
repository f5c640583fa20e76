"""Benchmark 2, store loading: ``load_split`` of 1M x 512 float32 embeddings vs a plain file read.

The store split holds 200 000 items and 800 000 captions (4 per item), all 512-d float32: 1M embeddings,
2.0 GB of float32. The reference is the physical floor of getting those bytes into memory: the same
float32 values written to one raw file and read with ``readinto`` into a preallocated numpy array.

Page cache: both are read **warm** (both files were just written; one untimed read of each on top),
then they are timed alternately and the best of ``--repeats`` counts for each (the least disturbed
run). On a cold cache both would be bound by the disk, which says nothing about the loader.

Figures: seconds of ``load_split(with_text=False)`` (what training uses) vs the raw read, as a speed
ratio (raw seconds / load seconds, target >= 0.5), and ``with_text=True`` (also ids -> strings of paths
and caption text) for information.

    python benchmarks/bench_store_load.py [--quick] [--json out.json]
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import Result  # noqa: E402

BENCH = "store loading"
FULL = {"items": 200_000, "captions_per_item": 4, "dim": 512}
QUICK = {"items": 4_000, "captions_per_item": 4, "dim": 64}
TARGET = 0.5  # load speed >= half the raw read speed


def make_split(n_items: int, per_item: int, dim: int, seed: int = 0):
    """A SplitData of random unit-scale float32 embeddings; ids like a real store (strings)."""
    from e2i.store import SplitData

    rng = np.random.default_rng(seed)
    m = n_items * per_item
    item_ids = np.array([f"item_{i:07d}" for i in range(n_items)], dtype=object)
    return SplitData(
        path="<bench>", item_ids=item_ids,
        item_emb=rng.standard_normal((n_items, dim), dtype=np.float32),  # (N, D)
        caption_ids=np.array([f"item_{i // per_item:07d}#{i % per_item + 1}" for i in range(m)], dtype=object),
        caption_item=np.repeat(np.arange(n_items, dtype=np.int64), per_item),  # (M,)
        caption_emb=rng.standard_normal((m, dim), dtype=np.float32),  # (M, D)
        caption_text=np.array([f"caption {i % per_item + 1} of item {i // per_item}" for i in range(m)], dtype=object),
        item_paths=np.array([f"audio/item_{i:07d}.wav" for i in range(n_items)], dtype=object),
    )


def write_raw(data, path: Path) -> int:
    """The split's float32 values (items then captions) as one raw file; returns its size in bytes."""
    with open(path, "wb") as f:
        f.write(memoryview(data.item_emb).cast("B"))
        f.write(memoryview(data.caption_emb).cast("B"))
    return path.stat().st_size


def read_raw(path: Path, nbytes: int) -> np.ndarray:
    """Plain buffered read of the whole file into one preallocated float32 array (the floor)."""
    out = np.empty(nbytes // 4, dtype=np.float32)
    with open(path, "rb", buffering=0) as f:
        view, done = memoryview(out).cast("B"), 0
        while done < nbytes:
            got = f.readinto(view[done:])
            if not got:
                raise OSError(f"{path}: short read at {done} of {nbytes} bytes")
            done += got
    return out


def run(quick: bool = False, work: Path | None = None, repeats: int = 2) -> list[Result]:
    from e2i.store import load_split, write_split

    size = QUICK if quick else FULL
    with harness.work_dir(str(work) if work else None, "e2i-bench-store-") as root:
        data = make_split(size["items"], size["captions_per_item"], size["dim"])
        n_emb = data.num_items + data.num_captions
        split_dir, raw = root / "bench" / "train", root / "embeddings.f32"
        write_split(data, split_dir, "bench", "train")
        nbytes = write_raw(data, raw)
        parquet_bytes = sum(p.stat().st_size for p in split_dir.rglob("*.parquet"))
        del data
        gc.collect()

        def load(with_text: bool):
            return lambda: load_split(split_dir, with_text=with_text)

        raw_read = lambda: read_raw(raw, nbytes)  # noqa: E731
        raw_read()  # both files were just written, so they are in the page cache; one untimed read each
        load(False)()
        times: dict[str, list[float]] = {"raw": [], "load": [], "load_text": []}
        for _ in range(repeats):  # alternate so slow phases of the machine hit both
            for key, fn in (("raw", raw_read), ("load", load(False)), ("load_text", load(True))):
                gc.collect()
                times[key].append(harness.timed(fn)[0])
        best = {k: min(v) for k, v in times.items()}

    gbps = lambda s: nbytes / s / 1e9  # noqa: E731  GB/s of float32 payload
    shape = f"{n_emb:,} x {size['dim']} float32 ({nbytes / 1e9:.2f} GB; parquet {parquet_bytes / 1e9:.2f} GB)"
    return [
        Result(BENCH, f"load_split(with_text=False) vs raw read, {shape}, warm cache, best of {repeats}",
               f"{best['load']:.2f} s ({gbps(best['load']):.2f} GB/s) vs raw {best['raw']:.2f} s "
               f"({gbps(best['raw']):.2f} GB/s)",
               best["raw"] / best["load"], ">=", TARGET,
               note="speed ratio = raw seconds / load seconds"),
        Result(BENCH, "load_split(with_text=True) vs raw read (ids, paths and caption text too)",
               f"{best['load_text']:.2f} s vs raw {best['raw']:.2f} s",
               best["raw"] / best["load_text"], note="for information: training loads with_text=False"),
    ]


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="timed repetitions (best counts; default 2)")
    args = p.parse_args(argv)
    harness.quiet_environment()
    results = run(quick=args.quick, work=Path(args.work_dir) if args.work_dir else None, repeats=args.repeats)
    return harness.finish(results, "Benchmark: store loading", args.json)


if __name__ == "__main__":
    sys.exit(main())
