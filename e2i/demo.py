"""`e2i demo`: the whole pipeline on one machine, no downloads (the embedded default).

    toy corpus (Clotho layout) -> e2i cache (light encoders, Ray Data) -> e2i split
      -> e2i train (siglip head; 1 CPU worker: in-process) -> e2i tune (ASHA + Optuna, small budget)
      -> e2i evaluate (test split) -> e2i report

Everything lands under --output-dir (default: the repo's `stores/` and `results/` layout, so the
shipped configs run on the demo store afterwards). Each step prints what it wrote; re-running reuses
what is complete (the corpus, cached shards) and redoes the rest.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from e2i.config import load_train_config
from e2i.paths import resolve_path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SPACES = Path(__file__).resolve().parents[1] / "tune_spaces"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default=".", help="root for stores/, results/ and data/ (default: .)")
    parser.add_argument("--n-items", type=int, default=300, help="toy corpus size in clips (default: 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed for corpus, splits and training")
    parser.add_argument("--config", default=str(CONFIGS / "siglip.yaml"), help="train config for the head")
    parser.add_argument("--space", default=str(SPACES / "default.yaml"), help="tune search space")
    parser.add_argument("--tune-samples", type=int, default=8, help="number of tune trials (0 = skip tuning)")
    parser.add_argument("--tune-epochs", type=int, default=6,
                        help="ASHA max_t per trial, in epochs of >= 100 steps (default: 6; the space's is 12)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for the head training (default: config's)")


def _step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def _one_worker_threads(cfg) -> int:
    """Threads for a head trained in this process: the CPUs the config gives its one worker
    (``scaling.cpus_per_worker``, at least 1), as a 1-CPU Ray Train worker or Tune trial gets them (Ray
    sets ``OMP_NUM_THREADS`` to a worker's CPUs). The Ray instance of steps 2 and 5 runs beside it on
    the same cores, and a thread per core there only spins (measured on 2 cores, load average 6-18:
    toy siglip epochs 5-40x slower on 2 torch threads than on 1; the warm start's closed-form fits
    0.5 CPU-s on 1 BLAS thread, 2.9-3.3 CPU-s on 2; on a quiet machine the same wall time for twice
    the CPU). Same results: the training and the evaluation's numbers are equal, the fitted baseline
    maps within 1e-11."""
    return max(1, int(cfg.scaling.cpus_per_worker))


def _fit_in_process(cfg) -> dict:
    """``e2i.train.driver.fit`` with :func:`_one_worker_threads` threads for torch, BLAS (numpy, scipy,
    scikit-learn) and OpenMP, restored afterwards."""
    import torch
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    from e2i.train.driver import fit

    threads, before = _one_worker_threads(cfg), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            return fit(cfg)
    finally:
        torch.set_num_threads(before)


def run_demo(args: argparse.Namespace) -> dict:
    from e2i.cache.pipeline import cache_corpus
    from e2i.corpus.toy import make_toy_corpus
    from e2i.store.splits import split_store

    out = Path(resolve_path(args.output_dir))  # absolute: Ray Train/Tune workers run elsewhere
    store_root, dataset_dir = out / "stores", out / "stores" / "toy"
    results = out / "results"
    summary: dict = {}

    t = _step("1/6 toy corpus")
    corpus = make_toy_corpus(out / "data" / "toy", n_items=args.n_items, seed=args.seed)
    print(f"toy corpus: {args.n_items} clips x 5 captions at {corpus} ({time.perf_counter() - t:.1f}s)")

    _step("2/6 cache embeddings (Ray Data, light encoders)")
    summary["cache"] = cache_corpus(
        metadata=str(corpus), corpus="clotho", split="development", cache_dir=str(store_root),
        dataset="toy", audio_encoder="logmel-stats", text_encoder="ngram-hash",
    )

    _step("3/6 item-level splits")
    split_store(dataset_dir / "development", dataset_dir,
                {"train": 0.7, "val": 0.15, "test": 0.15, "train_subset": 0.5}, seed=args.seed)

    _step("4/6 train a head (in-process: 1 CPU worker needs no Ray Train)")
    overrides = {"data.store": str(dataset_dir), "output_dir": str(results), "seed": args.seed}
    if args.epochs:
        overrides["optim.epochs"] = args.epochs
    cfg = load_train_config(args.config, overrides)
    summary["train"] = _fit_in_process(cfg)

    runs = {f"{cfg.name} (shipped config)": (cfg, summary["train"])}
    if args.tune_samples > 0:
        from e2i.tune.search import tune_space

        _step("5/6 tune heads x losses (Ray Tune: ASHA + Optuna)")
        summary["tune"] = tune_space(
            args.space, num_samples=args.tune_samples, output_dir=str(results),
            overrides={"base.data.store": str(dataset_dir)}, max_t=args.tune_epochs, overwrite=True,
        )
        if summary["tune"].get("best_config"):
            _step("6/6 train the tuned best config and evaluate it on the test split")
            best = load_train_config(summary["tune"]["best_config"], {"output_dir": str(results)})
            runs[f"{best.name} (tuned)"] = (best, _fit_in_process(best))
    summary["table"] = print_comparison(runs)
    (out / "demo_summary.json").write_text(json.dumps(summary["table"], indent=1))
    return summary


def print_comparison(runs: dict[str, tuple]) -> list[dict]:
    """Test-split retrieval of each trained run next to chance level (a rich table); returns the rows.

    Chance: a random ranking puts a caption's item first with probability 1/num_items (t2i R@1).
    """
    from rich.console import Console
    from rich.table import Table

    table = Table(title="demo: test split retrieval (t2i = text->item, i2t = item->text)")
    columns = ("run", "head / loss", "epochs", "t2i R@1", "t2i R@10", "t2i mAP@10", "i2t R@1", "chance R@1")
    for col in columns:
        table.add_column(col, justify="left" if col in ("run", "head / loss") else "right")
    rows = []
    for name, (cfg, run) in runs.items():
        test = run["test"]
        row = {
            "run": name,
            "head": cfg.model.type,
            "loss": cfg.loss.type,
            "epochs": run["epochs"],
            "t2i_R@1": test["text_to_item/recall@1"],
            "t2i_R@10": test["text_to_item/recall@10"],
            "t2i_mAP@10": test["text_to_item/mAP@10"],
            "i2t_R@1": test["item_to_text/recall@1"],
            "chance_R@1": 1.0 / test["item_to_text/num_queries"],
        }
        rows.append(row)
        table.add_row(name, f"{row['head']} / {row['loss']}", str(row["epochs"]),
                      *(f"{row[k]:.4f}" for k in ("t2i_R@1", "t2i_R@10", "t2i_mAP@10", "i2t_R@1", "chance_R@1")))
    Console(width=max(120, Console().width)).print(table)
    return rows


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    run_demo(args)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f}s under {Path(args.output_dir).resolve()}")
    return 0
