"""The driver of ``e2i finetune``: :func:`fit` checks the run, then runs :func:`~e2i.finetune.worker.
train_worker` on a Ray Train ``TorchTrainer`` and returns the evaluation report rank 0 wrote.

[1] fail fast on the driver (run directory, splits, weights file) before any worker starts; [2] write
the resolved config; [3] connect to / start Ray; [4] one ``TorchTrainer`` of ``--num-workers`` workers
(GPU runs: STRICT_PACK on one node), process-group backend checked on the placed workers
(:func:`torch_config`); [5] read ``evaluation_metrics.json``. Ray's own ``storage_path`` is the run
directory, so like ``--output-dir`` it must be shared storage on a multi-node cluster.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from e2i.config import ConfigError
from e2i.corpus import read_corpus
from e2i.errors import CheckpointError, CorpusError
from e2i.finetune.checkpoints import METRICS_FILE, last_checkpoint, write_config
from e2i.finetune.config import FinetuneConfig
from e2i.finetune.worker import train_worker


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def torch_config():
    """Ray's ``TorchConfig`` whose process-group backend is checked on the placed workers: TorchTrainer
    picks nccl whenever GPUs are requested, which fails on CPU torch ("ProcessGroupNCCL is only supported
    with GPUs"); here nccl is kept only when every worker's torch sees CUDA, else gloo is used. (Probing
    from the driver would need a GPU task of its own, which on an autoscaling cluster launches a node
    just for the probe.) Subclassing the backend is how Ray's own TorchftConfig customises it."""
    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _TorchBackend

    class _Backend(_TorchBackend):
        def on_start(self, worker_group, backend_config):
            if backend_config.backend == "nccl" and not all(worker_group.execute(_cuda_available)):
                backend_config = dataclasses.replace(backend_config, backend="gloo")
            super().on_start(worker_group, backend_config)

    class _Config(TorchConfig):
        @property
        def backend_cls(self):
            return _Backend

    return _Config()


def _check_run_dir(cfg: FinetuneConfig) -> None:
    last = last_checkpoint(cfg.run_dir)
    if cfg.resume and not last.is_file():
        raise CheckpointError(f"{last}: nothing to resume (no last.ckpt in this run directory)")
    if not cfg.resume and last.exists():
        raise ConfigError(
            f"{cfg.run_dir}: run exists; pass --resume to continue it or choose another --run-name"
        )
    if cfg.init_weights and not Path(cfg.init_weights).is_file():
        raise CheckpointError(f"{cfg.init_weights}: no such weights file")


def fit(cfg: FinetuneConfig) -> dict:
    """Run the fine-tuning on Ray Train (connects to / starts Ray) and return the evaluation report."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # [1] fail fast, on the driver
    _check_run_dir(cfg)
    for split in (cfg.train_split, cfg.val_split, cfg.test_split):  # fail fast, before any worker starts
        if not read_corpus("clotho", cfg.data_root, split=split).items:
            raise CorpusError(f"{cfg.data_root}: split {split!r} has no clips")
    # [2] the resolved config, [3] Ray
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, cfg.run_dir)
    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS (e.g. inside `ray job submit`) or a local instance
    # [4] the workers: train_worker on each, rank 0 writes the run directory
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=cfg.to_dict(),
        torch_config=torch_config(),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources,
            # GPU runs: all workers on one multi-GPU node (NVLink/PCIe all-reduce), e.g. cluster.yaml's gpu_4x
            placement_strategy="STRICT_PACK" if cfg.use_gpu else "PACK",
        ),
        run_config=RunConfig(name="ray", storage_path=str(cfg.run_dir)),
    )
    stale = cfg.run_dir / METRICS_FILE
    stale.unlink(missing_ok=True)  # a resumed run rewrites it
    trainer.fit()  # [5] raises ray.train.TrainingFailedError (with the worker's traceback) on failure
    return json.loads(stale.read_text(encoding="utf-8"))
