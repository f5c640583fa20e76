"""`e2i train CONFIG` as a function: projection heads on a store with Ray Train, and the run
directory it writes.

Three layers (as Ray's train/tune interop recommends):

1. :func:`e2i.train.loop.run_training` — the loop one worker runs; also used by
   ``e2i.tune.trial`` inside function trainables.
2. :func:`fit` (this module) — the driver. Several workers or GPUs (or ``scaling.trainer: ray``):
   a ``ray.train.torch.TorchTrainer`` (Ray Train V2 API of Ray 2.60:
   ``ray.train.ScalingConfig/RunConfig/FailureConfig/CheckpointConfig``, ``ray.train.report`` with
   asynchronous checkpoint upload, ``ray.train.get_checkpoint``) with one ``run_training`` per worker.
   One CPU worker (``scaling.trainer: auto``, the default, or ``local``): :func:`train_local`, the
   same loop in this process without Ray (no ~5 s Ray start, no ~15 s worker group), with its own
   restart-from-checkpoint for ``scaling.max_failures``.
3. ``e2i train`` (:mod:`e2i.train.cli`), incl. ``--seeds 0,1,2`` (:mod:`e2i.train.seeds`: mean ± std
   table). Rank 0 logs each epoch through :mod:`e2i.train.epoch_log`.

Run directory ``<output_dir>/<name>/``::

    config.yaml               the exact TrainConfig (``e2i train <run>/config.yaml`` repeats the run)
    checkpoints/              checkpoint_epochNNNN/ (weights, train state, progress, config) of the
                              best-so-far, every-N and last epochs; best and latest kept (+ Ray's snapshot)
    best_model.safetensors    weights of the epoch with the best ``cfg.metric``
    metrics.json              history (a dict per epoch), best epoch/metrics, test metrics with CIs
    training_curves.png       loss, lr and validation metrics per epoch
    tensorboard/              event files (rank 0), when logging.tensorboard
    wandb/                    W&B run files when logging.use_wandb (offline without WANDB_API_KEY)
    evaluation_results/       test-split metrics JSON + t-SNE/PCA maps (see e2i.evaluate.evaluation)

Resume: ``e2i train CONFIG --resume`` reuses ``checkpoints/``. In-process, the loop restarts from the
latest ``checkpoint_epochNNNN``. With Ray Train, V2 finds its run snapshot there and
``ray.train.get_checkpoint()`` hands the latest checkpoint to every worker (as after a worker failure);
a run without Ray's snapshot (trained in-process) gets it from the driver. Training continues after
that epoch with optimizer/queue state and history. Without ``--resume`` ``checkpoints/`` is deleted.
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
from e2i.errors import CheckpointError, ConfigError, E2IError, StoreWriteError
from e2i.store.fs import io_reason
from e2i.train.checkpoint import MODEL_FILE, checkpoint_due, read_progress
from e2i.train.epoch_log import EpochLogger
from e2i.train.loop import pick_device, run_training
from e2i.train.stream import DataPlan, PassReads, caption_dataset, ensure_ray, plan_data, train_split_path

CHECKPOINTS = "checkpoints"  # Ray Train RunConfig(name=...) under the run dir
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of its checkpoints
_CKPT_RE = re.compile(r"^checkpoint_epoch(\d+)$")
# Ray Train V2's controller takes a worker's report only when it polls them, every this many s (default
# 2; a worker's next report waits for it): every epoch took >= 2 s. 0.2 s: 16 short epochs 46 s -> 33 s.
HEALTH_CHECK_ENV, HEALTH_CHECK_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"


def _train_loop_per_worker(config: dict) -> None:
    """Ray Train worker entry: resume from Ray's latest checkpoint if any (a restart after a failure,
    or Ray's run snapshot on --resume), else from the driver's ``resume_dir`` (a run whose checkpoints
    Ray does not know, e.g. one trained in-process); report every epoch, checkpoint when due."""
    import ray.train
    from ray.train import CheckpointUploadMode

    cfg = train_config_from_dict(config["cfg"], "<train_loop_config>")
    rank = ray.train.get_context().get_world_rank()
    _quiet_report_logs()
    logger = EpochLogger(cfg, config["run_dir"], enabled=rank == 0, raw_stdout=True)
    checkpoint = ray.train.get_checkpoint()
    stream = ray.train.get_dataset_shard("train") if config.get("stream") else None  # e2i.train.stream
    resume_dir = checkpoint.to_directory() if checkpoint is not None else None  # local copy
    resume_from = resume_dir or config.get("resume_dir")
    if rank == 0:
        gpus = ",".join(str(g) for g in ray.get_gpu_ids()) or "none"
        logger.say(f"{ray.train.get_context().get_world_size()} worker(s) on {pick_device(cfg).type} "
                   f"(Ray GPU ids of rank 0: {gpus})")
    if resume_from and rank == 0:
        logger.say(f"resuming after epoch {read_progress(resume_from)['epoch']}")

    def report(metrics: dict, checkpoint_dir: str | None) -> bool:
        logger(metrics)
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        # ASYNC: the upload to the run dir overlaps the next epoch; Ray deletes the local dir after it
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_epoch{metrics['epoch']:04d}",
                         checkpoint_upload_mode=CheckpointUploadMode.ASYNC)
        return ckpt is not None

    extra = set(config.get("checkpoint_epochs") or ())  # e.g. ASHA's rungs of a multi-worker Tune trial

    def due(epoch: int, improved: bool, last: bool) -> bool:
        return epoch in extra or checkpoint_due(cfg, epoch, improved, last)

    try:
        run_training(cfg, report=report, resume_from=resume_from, checkpoint_when=due, stream=stream)
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


def _trainer(cfg: TrainConfig, run_dir: Path, resume_dir: str | None = None, plan: DataPlan | None = None):
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        ray.init()
    os.environ.setdefault(HEALTH_CHECK_ENV, HEALTH_CHECK_S)  # passed on to the controller by Ray
    use_gpu, gpus, backend = _gpu_request(cfg)
    resources = {"CPU": cfg.scaling.cpus_per_worker} | ({"GPU": gpus} if use_gpu else {})
    stream = plan is not None and plan.streaming  # the workers' shards: streaming_split(equal=True)
    return TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "run_dir": str(run_dir), "resume_dir": resume_dir,
                           "stream": stream},
        datasets={"train": caption_dataset(train_split_path(cfg), cfg.seed)} if stream else None,
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
    if "://" in cfg.run_dir:  # issue 17 fix: Path("s3://b/x").resolve() silently wrote to ./s3:/b/x
        raise ConfigError(f"output_dir: {cfg.output_dir}: e2i train writes its run directory to a local or shared "
                          "path (object storage is for data.store and e2i tune --storage-path)")
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


def uses_ray_train(cfg: TrainConfig) -> bool:
    """Whether :func:`fit` starts a TorchTrainer: ``scaling.trainer: ray``, or ``auto`` with several
    workers or GPUs; ``auto`` with one CPU worker (and ``local``) runs the loop in this process."""
    if cfg.scaling.trainer != "auto":
        return cfg.scaling.trainer == "ray"
    return cfg.scaling.num_workers > 1 or cfg.scaling.use_gpu


def fit(cfg: TrainConfig, *, resume: bool = False, evaluate: bool = True) -> dict:
    """Train ``cfg`` and write the run directory; returns the metrics.json content.

    A TorchTrainer when :func:`uses_ray_train`, else :func:`train_local` (same loop, same run
    directory, no Ray). ``resume=True`` continues the run in ``cfg.run_dir`` from its latest checkpoint
    (CheckpointError if there is none); otherwise earlier checkpoints of that run dir are removed.
    ``evaluate`` runs ``e2i.evaluate.evaluation`` on the test split afterwards (metrics under ``"test"``).
    """
    if not uses_ray_train(cfg):
        return train_local(cfg, resume=resume, evaluate=evaluate)
    run_dir = prepare_run_dir(cfg, resume=resume)
    plan = plan_data(cfg)  # train split in memory or streamed (e2i.train.stream)
    print(f"[{cfg.name}] {plan.line()}", flush=True)
    existing = epoch_checkpoints(run_dir)
    snapshot = (run_dir / CHECKPOINTS / RAY_SNAPSHOT).is_file()
    # a run Ray Train does not know (trained in-process): hand its latest checkpoint to the workers
    resume_dir = str(existing[max(existing)]) if resume and existing and not snapshot else None
    _fit_trainer(cfg, run_dir, resume_dir, plan)
    return finish_run(cfg, run_dir, evaluate=evaluate, plan=plan)


def _fit_trainer(cfg: TrainConfig, run_dir: Path, resume_dir: str | None = None,
                 plan: DataPlan | None = None) -> None:
    """TorchTrainer.fit(); a user error raised in a worker (bad store, damaged checkpoint) is re-raised
    as itself, so the CLI prints its one line instead of Ray's multi-page WorkerGroupError."""
    import ray.train

    try:
        _trainer(cfg, run_dir, resume_dir, plan).fit()
    except ray.train.TrainingFailedError as exc:
        failures = getattr(exc, "worker_failures", None) or {}
        user_error = next((e for _, e in sorted(failures.items()) if isinstance(e, E2IError)), None)
        if user_error is None:
            raise
        raise user_error from None


def train_local(cfg: TrainConfig, *, resume: bool = False, evaluate: bool = True) -> dict:
    """:func:`fit` without Ray: the loop in this process, the same run directory.

    Checkpoints go straight to ``<run_dir>/checkpoints/checkpoint_epochNNNN`` (the best and the latest
    are kept). ``scaling.max_failures`` as in Ray Train: after an exception in the loop (not an
    E2IError, which is the user's to fix, nor Ctrl-C) the loop restarts from the latest checkpoint, up
    to max_failures times. A streamed train split (:func:`e2i.train.stream.plan_data`) is read by this
    process chunk by chunk on CPU (:class:`e2i.train.stream.PassReads`), by Ray Data tasks reading
    ahead on a GPU (a local Ray is started if none runs); the loop stays in this process.
    """
    run_dir = prepare_run_dir(cfg, resume=resume)
    plan = plan_data(cfg)
    # Ray's snapshot of a Ray Train run resumed here would be stale (a later Ray --resume would take
    # its older checkpoint): without it, a Ray resume starts from the latest checkpoint_epochNNNN
    (run_dir / CHECKPOINTS / RAY_SNAPSHOT).unlink(missing_ok=True)
    logger = EpochLogger(cfg, run_dir, enabled=True)
    on_cpu = (device := pick_device(cfg).type) == "cpu"
    logger.say(f"1 worker on {device}, in this process (no Ray Train; scaling.trainer: ray to use one)")
    logger.say(plan.line("from disk by this process, chunk by chunk" if on_cpu else "with Ray Data, reading ahead"))
    stream = None
    if plan.streaming and on_cpu:  # read here, chunk by chunk between cuts (no Ray needed)
        stream = PassReads(train_split_path(cfg), cfg.seed)
    elif plan.streaming:  # Ray Data tasks read ahead on the CPUs while the GPU computes
        stream = ensure_ray() or caption_dataset(train_split_path(cfg), cfg.seed)

    def report(metrics: dict, checkpoint_dir: str | None) -> bool:
        logger(metrics)
        if checkpoint_dir is None:
            return False
        target = run_dir / CHECKPOINTS / f"checkpoint_epoch{metrics['epoch']:04d}"
        publish_checkpoint(checkpoint_dir, target)
        keep = {metrics["epoch"], read_progress(target)["best_epoch"]}
        for epoch, path in epoch_checkpoints(run_dir).items():
            if epoch not in keep:
                shutil.rmtree(path)
        return True

    failures = 0
    try:
        while True:
            existing = epoch_checkpoints(run_dir)
            start = str(existing[max(existing)]) if existing and (resume or failures) else None
            if start:
                logger.say(f"resuming after epoch {read_progress(start)['epoch']}")
            try:
                run_training(cfg, report=report, resume_from=start, stream=stream)
                break
            except E2IError:
                raise
            except Exception as exc:  # what Ray Train's FailureConfig retries too
                if failures >= cfg.scaling.max_failures:
                    raise
                failures += 1
                logger.say(f"training failed ({type(exc).__name__}: {exc}); restart {failures} of "
                           f"scaling.max_failures={cfg.scaling.max_failures} from the latest checkpoint")
    finally:
        logger.close()
    return finish_run(cfg, run_dir, evaluate=evaluate, plan=plan)


def publish_checkpoint(source: str | os.PathLike, target: Path) -> None:
    """Move a written checkpoint directory to ``target`` so that ``target`` is complete or absent.

    Issue 17 fix: ``shutil.move`` across file systems (the checkpoint is written under the system temp
    dir, the run dir may be another disk) copies file by file, so a disk that filled up left a
    ``checkpoint_epochNNNN`` with a truncated file that :func:`epoch_checkpoints` took as the latest
    (--resume then failed on it) and a bare ``[Errno 28]`` line. Now: files go into a hidden
    ``.checkpoint_epochNNNN.tmp`` beside the target, renamed into place when all are there; on an
    I/O error the partial directory is removed and a one-line StoreWriteError names the file (exit 1),
    the earlier checkpoints untouched."""
    tmp = target.with_name(f".{target.name}.tmp")
    current = tmp
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a killed run
        tmp.mkdir()
        for path in sorted(Path(source).iterdir()):
            current = tmp / path.name
            shutil.move(path, current)  # a rename when on the same file system
        if target.exists():  # an epoch trained again after a restart
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        shown = target / current.name if current != tmp else target
        raise StoreWriteError(f"{shown}: cannot write the checkpoint ({io_reason(exc)}); "
                              "earlier checkpoints are kept, free space and re-run with --resume") from exc


def finish_run(cfg: TrainConfig, run_dir: Path, *, evaluate: bool = True,
               plan: DataPlan | None = None) -> dict:
    """best_model.safetensors, training_curves.png, metrics.json (+ test evaluation) from the checkpoints;
    ``plan`` (memory or stream) is recorded under ``train_data``."""
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
    if plan is not None:
        summary["train_data"] = plan.record()
    if plan is not None and plan.streaming:  # its val split: in memory or read in chunks every epoch
        from e2i.evaluate.chunked import val_plan

        summary["val_data"] = val_plan(cfg).record()
    if cfg.data.train:  # several stores mixed: which ones and how much of each (e2i.store.mix)
        from e2i.store.mix import mix_record

        summary["train_mix"] = mix_record(cfg.data.train, seed=cfg.seed, train_subset=cfg.data.train_subset,
                                          as_written=cfg.paths_as_written)
    if evaluate:
        from e2i.evaluate.baselines import compare_to_baseline
        from e2i.evaluate.evaluation import evaluate_run

        result = evaluate_run(run_dir, split=cfg.data.test_split)
        summary["test"] = result["metrics"]
        summary["test_data"] = result["evaluation_data"]  # in memory or in chunks (e2i.evaluate.chunked)
        if result.get("baseline_skipped"):
            summary["baseline_skipped"] = result["baseline_skipped"]
        if result.get("baseline"):  # test R@1 vs the store's best closed-form baseline
            summary["baseline"] = compare_to_baseline(result["metrics"], result["baseline"])
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    test = summary.get("test", {})
    tail = (
        f"; test R@1 {test['text_to_item/recall@1']:.4f} mAP@10 {test['text_to_item/mAP@10']:.4f}"
        if test
        else ""
    )
    if summary.get("baseline"):
        b = summary["baseline"]
        tail += f" ({'LOSES to' if b['loses'] else 'beats'} baseline {b['baseline']} {b['baseline_value']:.4f})"
    print(
        f"[{cfg.name}] done: {progress['epoch']} epochs, best {cfg.metric} {summary['best_metric']:.4f} "
        f"at epoch {best_epoch}{tail} -> {run_dir}",
        flush=True,
    )
    return summary
