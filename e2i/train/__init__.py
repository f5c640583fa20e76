"""Training heads on a store: the per-worker loop, the Ray Train driver, checkpoints, `e2i train`.

    loop.py         run_training: the loop one worker runs (Ray Train workers, Tune trials, tests)
    stream.py       plan_data, caption_dataset, CaptionStream: train captions streamed with Ray Data when
                    the split exceeds data.streaming.memory_budget_gb (items stay in memory)
    distributed.py  data parallelism of the loop over torch.distributed (broadcast, all-reduce)
    driver.py       fit: in-process (train_local) for 1 CPU worker, else a TorchTrainer; the run directory
    seeds.py        fit_seeds: one run per seed, mean ± std
    epoch_log.py    the per-epoch console line, TensorBoard scalars, W&B (rank 0)
    checkpoint.py   safetensors weights + optimizer/queue state + progress.json; when to write one
    cli.py          `e2i train` (add_arguments / run)

May import: e2i.model, e2i.store, e2i.evaluate.metrics, e2i.config, ray. Importing the package imports
torch (the loop), not ray: ray is imported inside the functions that start or run Ray Train.
e2i.evaluate.evaluation imports this package, so e2i.evaluate.{evaluation,plots} are imported only
inside the functions that write a run's evaluation and curves.
"""

from e2i.train.checkpoint import load_weights, read_progress, save_weights
from e2i.train.driver import epoch_checkpoints, finish_run, fit, prepare_run_dir, train_local
from e2i.train.epoch_log import EpochLogger
from e2i.train.loop import load_data, run_training
from e2i.train.seeds import fit_seeds, seed_summary

__all__ = [
    "EpochLogger",
    "epoch_checkpoints",
    "finish_run",
    "fit",
    "fit_seeds",
    "load_data",
    "load_weights",
    "prepare_run_dir",
    "read_progress",
    "run_training",
    "save_weights",
    "seed_summary",
    "train_local",
]
