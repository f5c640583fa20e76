"""`e2i train CONFIG` as a function: projection heads on a store with Ray Train, and the run
directory it writes.

Three layers (as Ray's train/tune interop recommends):

1. :func:`e2i.train.loop.run_training` — the loop one worker runs; also used by
   ``e2i.tune.trial`` inside function trainables.
2. :func:`fit` (this module) — the driver: a ``ray.train.torch.TorchTrainer`` (Ray Train V2 API of
   Ray 2.60: ``ray.train.ScalingConfig/RunConfig/FailureConfig/CheckpointConfig``,
   ``ray.train.report``, ``ray.train.get_checkpoint``) with one ``run_training`` per worker, then the
   run directory. :func:`train_local` is the same without Ray.
3. ``e2i train`` (:mod:`e2i.train.cli`), incl. ``--seeds 0,1,2`` (:mod:`e2i.train.seeds`: mean ± std
   table). Rank 0 logs each epoch through :mod:`e2i.train.epoch_log`.

Run directory ``<output_dir>/<name>/``::

    config.yaml               the exact TrainConfig (``e2i train <run>/config.yaml`` repeats the run)
    checkpoints/              Ray Train's storage: checkpoint_epochNNNN/ (model.safetensors,
                              train_state.safetensors, progress.json, config.json), the best and the
                              latest kept; Ray's run snapshot (what ``--resume`` restores from)
    best_model.safetensors    weights of the epoch with the best ``cfg.metric``
    metrics.json              history (one dict per epoch), best epoch/metrics, test metrics with CIs
    training_curves.png       loss, lr and validation metrics per epoch
    tensorboard/              event files (rank 0), when logging.tensorboard
    wandb/                    W&B run files when logging.use_wandb (offline without WANDB_API_KEY)
    evaluation_results/       test-split metrics JSON + t-SNE/PCA maps (see e2i.evaluate.evaluation)

Resume: ``e2i train CONFIG --resume`` reuses ``checkpoints/``; Ray Train V2 finds its run snapshot
there and ``ray.train.get_checkpoint()`` hands the latest checkpoint to every worker, which continues
after that epoch with optimizer/queue state and history (the same path Ray uses to recover from
worker failures, ``scaling.max_failures``). Without ``--resume`` an existing ``checkpoints/`` is
deleted first, so a new run never silently continues an old one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import warnings
from pathlib import Path

from e2i.config import TrainConfig, save_train_config, train_config_from_dict
from e2i.errors import CheckpointError, E2IError
from e2i.train.checkpoint import MODEL_FILE, read_progress
from e2i.train.epoch_log import EpochLogger
from e2i.train.loop import pick_device, run_training

CHECKPOINTS = "checkpoints"  # Ray Train RunConfig(name=...) under the run dir
_CKPT_RE = re.compile(r"^checkpoint_epoch(\d+)$")


def _train_loop_per_worker(config: dict) -> None:
    """Ray Train worker entry: resume from Ray's latest checkpoint if any, report every epoch."""
    import ray.train

    cfg = train_config_from_dict(config["cfg"], "<train_loop_config>")
    rank = ray.train.get_context().get_world_rank()
    _quiet_report_logs()
    logger = EpochLogger(cfg, config["run_dir"], enabled=rank == 0, raw_stdout=True)
    checkpoint = ray.train.get_checkpoint()
    resume_dir = checkpoint.to_directory() if checkpoint is not None else None  # local copy
    if rank == 0:
        gpus = ",".join(str(g) for g in ray.get_gpu_ids()) or "none"
        logger.say(f"{ray.train.get_context().get_world_size()} worker(s) on {pick_device(cfg).type} "
                   f"(Ray GPU ids of rank 0: {gpus})")
    if resume_dir and rank == 0:
        logger.say(f"resuming after epoch {read_progress(resume_dir)['epoch']}")

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        logger(metrics)
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(
            metrics, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_epoch{metrics['epoch']:04d}"
        )

    try:
        run_training(cfg, report=report, resume_from=resume_dir)
    finally:
        logger.close()
        if resume_dir:
            shutil.rmtree(resume_dir, ignore_errors=True)


def _quiet_report_logs() -> None:
    """Ray 2.60 logs every report (all metrics) at INFO from a logger named by a *file path*
    (ray/train/v2/_internal/execution/context.py), which escapes RunConfig's LoggingConfig filter
    for ``ray.train.*``. Raise that one logger to WARNING so the console keeps one line per epoch."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # moved in a later Ray: nothing to quiet
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def _gpu_request(cfg: TrainConfig) -> tuple[bool, float, str]:
    """(use_gpu, GPUs per worker, torch backend). Falls back to CPU when the cluster has no GPUs; the
    backend is nccl only when a GPU worker really has CUDA (fake/logical GPUs get gloo)."""
    import ray

    if not cfg.scaling.use_gpu:
        return False, 0.0, "gloo"
    if ray.cluster_resources().get("GPU", 0) <= 0:
        warnings.warn("scaling.use_gpu: the Ray cluster has no GPUs; training on CPU")
        return False, 0.0, "gloo"
    gpus = cfg.scaling.gpus_per_worker or 1.0

    @ray.remote(num_gpus=gpus, num_cpus=0)
    def has_cuda() -> bool:
        import torch

        return torch.cuda.is_available()

    return True, gpus, "nccl" if ray.get(has_cuda.remote()) else "gloo"


def _trainer(cfg: TrainConfig, run_dir: Path):
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        ray.init()
    use_gpu, gpus, backend = _gpu_request(cfg)
    resources = {"CPU": cfg.scaling.cpus_per_worker} | ({"GPU": gpus} if use_gpu else {})
    return TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "run_dir": str(run_dir)},
        torch_config=TorchConfig(backend=backend),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=CHECKPOINTS,
            storage_path=str(run_dir),
            failure_config=ray.train.FailureConfig(max_failures=cfg.scaling.max_failures),
            # the best (by cfg.metric) and the latest checkpoint are kept
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=cfg.metric, checkpoint_score_order=cfg.metric_mode
            ),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # the console gets our epoch lines
        ),
    )


def epoch_checkpoints(run_dir: str | os.PathLike) -> dict[int, Path]:
    """{epoch: checkpoint dir} under ``<run_dir>/checkpoints``."""
    root = Path(run_dir) / CHECKPOINTS
    found = {}
    for path in root.glob("checkpoint_epoch*"):
        match = _CKPT_RE.match(path.name)
        if match and (path / MODEL_FILE).is_file():
            found[int(match.group(1))] = path
    return found


def prepare_run_dir(cfg: TrainConfig, *, resume: bool) -> Path:
    """The run directory with config.yaml written: kept checkpoints when resuming (an error if there are
    none), removed otherwise."""
    run_dir = Path(cfg.run_dir).resolve()
    if resume and not epoch_checkpoints(run_dir):
        raise CheckpointError(
            f"{run_dir / CHECKPOINTS}: no checkpoint to resume from (train without --resume)"
        )
    if not resume and (run_dir / CHECKPOINTS).exists():
        shutil.rmtree(run_dir / CHECKPOINTS)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_train_config(cfg, run_dir / "config.yaml")
    return run_dir


def fit(cfg: TrainConfig, *, resume: bool = False, evaluate: bool = True) -> dict:
    """Train ``cfg`` with a TorchTrainer and write the run directory; returns the metrics.json content.

    ``resume=True`` continues the run in ``cfg.run_dir`` from its latest checkpoint (CheckpointError if
    there is none); otherwise earlier checkpoints of that run dir are removed. ``evaluate`` runs
    ``e2i.evaluate.evaluation`` on the test split afterwards (metrics under ``"test"``).
    """
    run_dir = prepare_run_dir(cfg, resume=resume)
    _fit_trainer(cfg, run_dir)
    return finish_run(cfg, run_dir, evaluate=evaluate)


def _fit_trainer(cfg: TrainConfig, run_dir: Path) -> None:
    """TorchTrainer.fit(); a user error raised in a worker (bad store, damaged checkpoint) is re-raised
    as itself, so the CLI prints its one line instead of Ray's multi-page WorkerGroupError."""
    import ray.train

    try:
        _trainer(cfg, run_dir).fit()
    except ray.train.TrainingFailedError as exc:
        failures = getattr(exc, "worker_failures", None) or {}
        user_error = next((e for _, e in sorted(failures.items()) if isinstance(e, E2IError)), None)
        if user_error is None:
            raise
        raise user_error from None


def train_local(cfg: TrainConfig, *, resume: bool = False, evaluate: bool = True) -> dict:
    """:func:`fit` without Ray: one in-process worker, the same run directory (tests, notebooks, debugging).

    Checkpoints go to ``<run_dir>/checkpoints/checkpoint_epochNNNN`` (the best and the latest are kept).
    """
    run_dir = prepare_run_dir(cfg, resume=resume)
    existing = epoch_checkpoints(run_dir)
    logger = EpochLogger(cfg, run_dir, enabled=True)

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        logger(metrics)
        shutil.copytree(checkpoint_dir, run_dir / CHECKPOINTS / f"checkpoint_epoch{metrics['epoch']:04d}")
        keep = {metrics["epoch"], read_progress(checkpoint_dir)["best_epoch"]}
        for epoch, path in epoch_checkpoints(run_dir).items():
            if epoch not in keep:
                shutil.rmtree(path)

    try:
        run_training(cfg, report=report, resume_from=str(existing[max(existing)]) if resume else None)
    finally:
        logger.close()
    return finish_run(cfg, run_dir, evaluate=evaluate)


def finish_run(cfg: TrainConfig, run_dir: Path, *, evaluate: bool = True) -> dict:
    """best_model.safetensors, training_curves.png, metrics.json (+ test evaluation) from the checkpoints."""
    from e2i.evaluate.plots import plot_training_curves

    checkpoints = epoch_checkpoints(run_dir)
    if not checkpoints:
        raise CheckpointError(f"{run_dir / CHECKPOINTS}: training wrote no checkpoint")
    progress = read_progress(checkpoints[max(checkpoints)])
    history = progress["history"]
    best_epoch = progress["best_epoch"]
    if best_epoch not in checkpoints:  # Ray kept another epoch with an equal score: take the best kept one
        sign = 1 if cfg.metric_mode == "max" else -1
        best_epoch = max(sorted(checkpoints), key=lambda e: sign * history[e - 1][cfg.metric])
    shutil.copyfile(checkpoints[best_epoch] / MODEL_FILE, run_dir / "best_model.safetensors")
    plot_training_curves(history, run_dir / "training_curves.png", title=cfg.name)
    summary = {
        "name": cfg.name,
        "seed": cfg.seed,
        "metric": cfg.metric,
        "best_metric": history[best_epoch - 1][cfg.metric],
        "best_epoch": best_epoch,
        "epochs": progress["epoch"],
        "stopped_early": progress["epoch"] < cfg.optim.epochs,
        "best": history[best_epoch - 1],
        "history": history,
    }
    if evaluate:
        from e2i.evaluate.evaluation import evaluate_run

        summary["test"] = evaluate_run(run_dir, split=cfg.data.test_split)["metrics"]
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    test = summary.get("test", {})
    tail = (
        f"; test R@1 {test['text_to_item/recall@1']:.4f} mAP@10 {test['text_to_item/mAP@10']:.4f}"
        if test
        else ""
    )
    print(
        f"[{cfg.name}] done: {progress['epoch']} epochs, best {cfg.metric} {summary['best_metric']:.4f} "
        f"at epoch {best_epoch}{tail} -> {run_dir}",
        flush=True,
    )
    return summary
