"""Benchmark 8, streaming training: the train captions streamed from disk vs the split in memory.

Same store (synthetic-latent, several caption shards), head (``clip``), loss (``sigmoid_infonce``),
batch, epochs and torch threads on every side; ``e2i.train.driver.fit`` in this process (1 CPU
worker: the in-process loop, what ``e2i train`` runs), once with the split in memory
(``data.streaming.mode: never``), once with its captions streamed (``always``: this process reads the
pass's caption row groups chunk by chunk, ``PassReads``: a chunk of >= ``data.streaming.shuffle_rows``
rows read whole with the fast page copy before the loop trains on it; whole blocks go into the shuffle
pool, then batches; the items stay in memory). A third run, report only: the same loop on the Ray Data
``Dataset`` that Ray Train workers and a GPU loop stream from (read tasks reading ahead beside the
loop). Epochs are plain passes (``optim.min_steps_per_epoch: 0``), as on a store large enough to
need streaming.

Figure: ``train/pairs_per_s`` (timed inside the loop over the optimisation steps, validation
excluded; for the streamed run it includes waiting for the stream), best epoch from epoch 2 on
(epoch 1 pays first-call costs and the start of the read workers); target >= 0.8. The runs
alternate (memory, stream, read-ahead, then again in the full run) so a burst of other load on the
machine hits all; the medians are in the note. Reported too: the best val R@1 of each run (the
shuffle pool mixes less than a full permutation of the split).

    python benchmarks/bench_streaming.py [--quick] [--json out.json]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
from harness import Result

BENCH = "streaming training"
FULL = {"n_items": 20000, "dim": 512, "hidden": 512, "output": 256, "batch": 256, "epochs": 3,
        "rounds": 2, "rows_per_shard": 10000}
QUICK = {"n_items": 400, "dim": 32, "hidden": 32, "output": 16, "batch": 64, "epochs": 2,
         "rounds": 1, "rows_per_shard": 500}
TARGET = 0.8  # streamed pairs/s >= 0.8 of in-memory


def make_store(root: Path, size: dict) -> Path:
    """The synthetic store with its train split rewritten in several caption shards."""
    from e2i.store import load_split, write_split
    from e2i.store.synthetic import make_synthetic_store

    store = make_synthetic_store(root / "store", n_items=size["n_items"], item_dim=size["dim"],
                                 caption_dim=size["dim"], seed=0)
    train = load_split(store / "train")
    write_split(train, store / "train", "synthetic", "train", rows_per_shard=size["rows_per_shard"])
    return store


def make_config(store: Path, out: Path, size: dict, mode: str):
    from e2i.config import train_config_from_dict

    return train_config_from_dict({
        "name": f"bench-{mode}", "seed": 0, "output_dir": str(out), "metric": "val/recall@1",
        "data": {"store": str(store), "streaming": {"mode": mode}},
        "model": {"type": "clip", "hidden_dim": size["hidden"], "output_dim": size["output"], "dropout": 0.1,
                  "init_temperature": 0.1},
        "loss": {"type": "sigmoid_infonce"},
        "optim": {"lr": 1e-3, "epochs": size["epochs"], "batch_size": size["batch"], "min_steps_per_epoch": 0,
                  "early_stopping_patience": 0},
        "scaling": {"num_workers": 1, "trainer": "local"},
        "checkpoint": {"every_n_epochs": 0},
        "logging": {"tensorboard": False},
    }, "<bench_streaming>")


def readahead_run(cfg) -> tuple[list[dict], float]:
    """The training loop on the Ray Data ``Dataset`` that Ray Train workers and a GPU loop stream from
    (read tasks reading ahead while the loop trains), here on this CPU; (per-epoch metrics, best)."""
    from e2i.train.loop import run_training
    from e2i.train.stream import caption_dataset, ensure_ray, train_split_path

    ensure_ray()
    history: list[dict] = []
    result = run_training(cfg, report=lambda metrics, _ckpt: history.append(metrics) or False,
                          stream=caption_dataset(train_split_path(cfg), cfg.seed))
    return history, result["best_metric"]


def run(quick: bool = False, work: Path | None = None) -> list[Result]:
    import torch

    from e2i.store.rowgroups import row_groups, split_size
    from e2i.train.driver import fit

    size = QUICK if quick else FULL
    threads = torch.get_num_threads()
    rates: dict[str, list[float]] = {"never": [], "always": [], "readahead": []}
    best: dict[str, list[float]] = {"never": [], "always": [], "readahead": []}
    with harness.work_dir(str(work) if work else None, "e2i-bench-stream-") as root:
        store = make_store(root, size)
        split = split_size(str(store / "train"))
        groups = len(row_groups(str(store / "train")))
        for r in range(size["rounds"]):
            for mode in ("never", "always", "readahead"):
                cfg = make_config(store, root / f"results{r}", size, "always" if mode == "readahead" else mode)
                if mode == "readahead":  # the Ray Data source of Ray Train workers and GPU loops, on this CPU
                    history, best_metric = readahead_run(cfg)
                else:
                    summary = fit(cfg, evaluate=False)
                    assert summary["train_data"]["path"] == ("memory" if mode == "never" else "stream")
                    history, best_metric = summary["history"], summary["best_metric"]
                rates[mode] += [h["train/pairs_per_s"] for h in history[1:]] or [history[0]["train/pairs_per_s"]]
                best[mode].append(best_metric)
    mem, stream, ahead = max(rates["never"]), max(rates["always"]), max(rates["readahead"])
    gb = (split.items_bytes + split.captions_bytes) / 1e9
    pairs = split.captions // size["batch"] * size["batch"]
    val_mem, val_stream = statistics.mean(best["never"]), statistics.mean(best["always"])
    return [
        Result(BENCH, f"streamed train captions ({groups} row groups read by this process a chunk of >= shuffle_rows rows "
                      f"at a time -> shuffle pool -> batches; items in memory) vs the split in memory, same store ({split.captions:,} captions x "
                      f"{split.caption_dim}-d, {gb:.2f} GB), clip head, sigmoid loss, batch {size['batch']}, "
                      f"{threads} torch thread(s), in-process loop",
               f"{harness.fmt_rate(stream, 'pairs/s')} vs {harness.fmt_rate(mem, 'pairs/s')}",
               stream / mem, ">=", TARGET,
               note=f"best epoch of each ({size['rounds']} run(s) x epochs 2-{size['epochs']}, {pairs:,} pairs "
                    f"per epoch; medians {statistics.median(rates['always']):,.0f} vs "
                    f"{statistics.median(rates['never']):,.0f}); validation excluded"),
        Result(BENCH, "the same, Ray Data reading ahead (the source of Ray Train workers and of a GPU loop: read "
                      "tasks beside the loop) instead of this process's chunked reads, on this CPU",
               f"{harness.fmt_rate(ahead, 'pairs/s')} vs {harness.fmt_rate(mem, 'pairs/s')}", ahead / mem,
               note="report only: on 2 cores the read tasks take CPU from torch's threads; on a GPU they have "
                    f"CPUs of their own (median {statistics.median(rates['readahead']):,.0f})"),
        Result(BENCH, f"best val R@1 after {size['epochs']} epochs, streamed vs in memory (same seed)",
               f"{val_stream:.4f} vs {val_mem:.4f} (Ray Data reading ahead: {statistics.mean(best['readahead']):.4f})", val_stream / val_mem if val_mem else float("nan"),
               note="the shuffle pool mixes less than a full permutation of the split; report only"),
    ]


def main(argv: list[str] | None = None) -> int:
    return harness.ray_main(argv, __doc__, "Benchmark: streaming training", run, omp_threads=True)


if __name__ == "__main__":
    sys.exit(main())
