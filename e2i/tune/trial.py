"""One Tune trial of `e2i tune`: the function trainable, its config, and the multi-worker variant.

A trial trains through the same loop as ``e2i train``:

- a 1-worker trial calls :func:`e2i.train.loop.run_training` inside the function trainable
  :func:`trial_main` (no TorchTrainer start-up per trial), on the train/val splits the driver loaded
  once and ``tune.with_parameters`` put into the object store once (every trial on a node maps the
  same float32 buffers, zero-copy numpy);
- a multi-worker trial (``base.scaling.num_workers > 1``) runs a TorchTrainer with
  :func:`e2i.train.driver._train_loop_per_worker`, whose reports reach Tune through Ray's
  TuneReportCallback.

Every report carries the objective ``best/<metric>``: the best validation value of the trial so far.
A report carries a checkpoint only where Tune's resume needs one (:func:`trial_checkpoint_due`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2i.tune.optuna_search import TRIAL_KEY, objective_key
from e2i.tune.space import TuneSpace


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs besides its sampled params (picklable; shipped once via the object store)."""

    space: TuneSpace
    storage_path: str  # Tune storage root (local path, or bucket/prefix when storage_fs is set)
    storage_fs: Any = None  # pyarrow FileSystem for remote storage

    def config(self, params: dict, trial_dir: str):
        """The trial's TrainConfig: base + params, epochs = max_t, logging done by Tune."""
        number = params.get(TRIAL_KEY, 0)
        res = self.space.search.resources_per_trial
        return self.space.trial_config(params, **{
            "name": f"{self.space.name}-trial{number:04d}", "output_dir": trial_dir,
            "scaling.use_gpu": res.gpu > 0, "scaling.cpus_per_worker": res.cpu,
            "scaling.gpus_per_worker": res.gpu,
            # Tune writes TensorBoard/CSV/JSON per trial; W&B via WandbLoggerCallback when enabled
            "logging.tensorboard": False, "logging.use_wandb": False,
        })


class _Objective:
    """Adds ``best/<metric>`` (best value so far, resumed from the checkpoint's progress)."""

    def __init__(self, metric: str, mode: str, best: float | None = None) -> None:
        self.metric, self.sign, self.best = metric, (1.0 if mode == "max" else -1.0), best

    def __call__(self, metrics: dict) -> dict:
        value = metrics.get(self.metric)
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        if finite and (self.best is None or self.sign * value > self.sign * self.best):
            self.best = float(value)
        return {**metrics, objective_key(self.metric): self.best if self.best is not None else float("nan")}


def trial_main(config: dict, setup: TrialSetup, data=None) -> None:
    """Function trainable: one Tune trial = one training run of the trial's config."""
    import ray.tune

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # object store
    trial_dir = ray.tune.get_context().get_trial_dir()
    cfg = setup.config(config, trial_dir)
    if cfg.scaling.num_workers > 1:
        return _run_torch_trainer(cfg, setup, trial_dir)
    from e2i.train.checkpoint import read_progress
    from e2i.train.loop import run_training

    checkpoint = ray.tune.get_checkpoint()
    objective = _Objective(cfg.metric, cfg.metric_mode)
    due = trial_checkpoint_due(cfg, setup.space.scheduler.rungs())

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        ckpt = ray.tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.tune.report(objective(metrics), checkpoint=ckpt)

    if checkpoint is None:
        run_training(cfg, report=report, data=data, checkpoint_when=due)
        return
    with checkpoint.as_directory() as resume_dir:
        objective.best = read_progress(resume_dir).get("best_metric")
        run_training(cfg, report=report, resume_from=resume_dir, data=data, checkpoint_when=due)


def trial_checkpoint_due(cfg, rungs: list[int]):
    """When a trial writes a checkpoint (only Tune's resume reads trial checkpoints: retraining the
    best config starts from scratch, so "best so far" is not needed): at ASHA's rungs (a trial
    stopped there is then in the experiment snapshot, which Tune takes after a trial checkpoint),
    every ``checkpoint.every_n_epochs`` and at the trial's last epoch; other epochs report metrics
    only."""
    every, at = cfg.checkpoint.every_n_epochs, set(rungs)

    def due(epoch: int, improved: bool, last: bool) -> bool:
        return last or epoch in at or (every > 0 and epoch % every == 0)

    return due


def _run_torch_trainer(cfg, setup: TrialSetup, trial_dir: str) -> None:
    """Multi-worker trial: a TorchTrainer running e2i.train.driver's worker loop; its rank-0 reports are
    forwarded to this Tune trial (with the objective added) by a TuneReportCallback."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from e2i.train.driver import _gpu_request, _train_loop_per_worker

    objective = _Objective(cfg.metric, cfg.metric_mode)

    class _Forward(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            super().after_report(run_context, [objective(metrics[0])], checkpoint)

    use_gpu, gpus, _ = _gpu_request(cfg)
    resources = {"CPU": cfg.scaling.cpus_per_worker} | ({"GPU": gpus} if use_gpu else {})
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "run_dir": trial_dir,
                           "checkpoint_epochs": setup.space.scheduler.rungs()},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            # a stable place per trial, inside the experiment: a restarted trial finds Ray Train's
            # snapshot there and resumes from its latest checkpoint
            name=f"{Path(trial_dir).name}-train", storage_path=f"{setup.storage_path}/{setup.space.name}",
            storage_filesystem=setup.storage_fs, callbacks=[_Forward()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    trainer.fit()


def make_trainable(space: TuneSpace, tune_path: str, fs):
    """The function trainable with its resources and the shared data (put into the object store once)."""
    import ray.tune

    from e2i.store.mix import load_train_val  # not e2i.train: the driver does not need torch

    setup = TrialSetup(space=space, storage_path=tune_path, storage_fs=fs)
    res = space.search.resources_per_trial
    if space.base_config.scaling.num_workers > 1:  # the TorchTrainer's workers hold the resources
        return ray.tune.with_resources(ray.tune.with_parameters(trial_main, setup=setup), {"cpu": 0.01})
    if any(p.key.startswith("data.") for p in space.params):  # the mix is searched: trials load their own
        return ray.tune.with_resources(ray.tune.with_parameters(trial_main, setup=setup),
                                       {"cpu": res.cpu, "gpu": res.gpu})
    train, val = load_train_val(space.base_config.data, seed=space.base_config.seed)
    print(f"e2i tune: train {train.num_items} items / {train.num_captions} captions, val {val.num_items} "
          f"items; shared by all trials through the object store", flush=True)
    fn = ray.tune.with_parameters(trial_main, setup=setup, data=(train, val))
    return ray.tune.with_resources(fn, {"cpu": res.cpu, "gpu": res.gpu})
