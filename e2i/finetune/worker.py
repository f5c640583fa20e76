"""What every Ray Train worker runs: :func:`train_worker`, the ``train_loop_per_worker`` of ``e2i finetune``.

[1] rebuild the config, seed, pick the device and precision (``bf16-mixed`` on GPUs with bf16,
``16-mixed`` on older GPUs, ``32-true`` on CPU, logged); [2] build the module and the data; [3] a
Lightning Trainer with ``RayDDPStrategy`` + ``RayLightningEnvironment`` + ``prepare_trainer`` (Ray Train
V2, the default in Ray 2.60), checkpoint callbacks, TensorBoard (+ W&B) loggers; [4] fit (or resume
from last.ckpt); [5] rank 0 exports the best-mAP weights and evaluates them on the test split.
Rank 0 writes into the run directory, so on a multi-node cluster ``--output-dir`` must be storage
every node sees (NFS).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor

from e2i.finetune.checkpoints import (
    CKPT_DIR,
    METRICS_FILE,
    checkpoint_callbacks,
    export_model,
    last_checkpoint,
    load_own_checkpoint,
)
from e2i.finetune.config import FinetuneConfig, finetune_config_from_dict
from e2i.finetune.data import ClothoDataModule, make_loader, read_split
from e2i.finetune.metrics import embedding_rows, relevance_file_for, split_metrics
from e2i.finetune.model import RetrievalModule


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str | None]:
    """(precision Lightning should use, note for the log or None) for ``device``."""
    requested = "32-true" if requested == "32" else requested
    if requested == "32-true":
        return requested, None
    if device.type != "cuda":
        return "32-true", f"precision {requested} needs a GPU here; running 32-true on {device.type}"
    if requested == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        return "16-mixed", "this GPU has no bf16; running 16-mixed (fp16 autocast + loss scaling)"
    return requested, None


def _limit(value: float) -> float | int:
    return int(value) if value > 1 else float(value)  # Lightning: int = batches, float = fraction


def worker_device() -> torch.device:
    """This worker's torch device: the GPU Ray assigned when torch sees CUDA, else the CPU. Ray may hold
    a GPU for a worker whose torch has no CUDA (a CPU build on a GPU node, logical GPUs of a test
    cluster); ``ray.train.torch.get_device()`` would still answer ``cuda:0`` there."""
    import ray.train.torch

    return ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")


def _ddp_strategy(ray_ddp_strategy: type, device: torch.device):
    """``RayDDPStrategy`` on ``device`` (its own ``root_device`` is ``ray.train.torch.get_device()``,
    ``cuda:0`` even where torch has no CUDA, and Lightning's CPU accelerator refuses that)."""

    class Strategy(ray_ddp_strategy):
        @property
        def root_device(self) -> torch.device:
            return device

    return Strategy(find_unused_parameters=False)


class RayMetricsReport(pl.Callback):
    """Reports the epoch's metrics to Ray Train (all workers; Ray keeps rank 0's). Checkpoints stay in the
    run dir (ModelCheckpoint), so nothing heavy is copied to Ray's storage every epoch."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        import ray.train

        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        metrics.update(epoch=trainer.current_epoch, step=trainer.global_step)
        ray.train.report(metrics)


def _loggers(cfg: FinetuneConfig, run_dir: Path) -> list:
    from lightning.pytorch.loggers import TensorBoardLogger

    loggers = [TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")]
    if cfg.use_wandb:
        from lightning.pytorch.loggers import WandbLogger

        if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
            os.environ["WANDB_MODE"] = "offline"  # no key: log locally, `wandb sync` later
        loggers.append(
            WandbLogger(
                project=cfg.wandb_project,
                entity=cfg.wandb_entity,
                name=cfg.name,
                save_dir=str(run_dir),
                config=cfg.to_dict(),
            )
        )
    return loggers


def train_worker(config: dict) -> None:
    """``train_loop_per_worker``: build the module, fit with RayDDPStrategy, then (rank 0) export the
    best-mAP weights and evaluate them on the test split."""
    import ray.train
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer

    # [1] config, seed, device, precision
    cfg = finetune_config_from_dict(config)
    run_dir = cfg.run_dir
    seed_everything(cfg.seed, workers=True)
    device = worker_device()
    precision, note = resolve_precision(cfg.precision, device)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    if rank == 0:
        gpus = ",".join(str(g) for g in ray.get_gpu_ids()) or "none"
        group = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
        print(f"e2i finetune: {context.get_world_size()} worker(s) on {device.type} "
              f"(Ray GPU ids of rank 0: {gpus}; process group: {group})", flush=True)
        if note:
            print(f"e2i finetune: {note}", flush=True)
    # [2] model and data, [3] the Lightning trainer on Ray's DDP strategy
    module = RetrievalModule(cfg.to_dict())
    data = ClothoDataModule(cfg, module.tokenizer)
    by_map, by_loss, last = checkpoint_callbacks(run_dir / CKPT_DIR)
    callbacks = [by_map, by_loss, last, LearningRateMonitor(logging_interval="step"), RayMetricsReport()]
    trainer = Trainer(
        max_epochs=cfg.epochs,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices="auto",
        strategy=_ddp_strategy(RayDDPStrategy, device),
        plugins=[RayLightningEnvironment()],
        precision=precision,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.grad_clip_norm or None,
        callbacks=callbacks,
        logger=_loggers(cfg, run_dir),
        limit_train_batches=_limit(cfg.limit_train_batches),
        limit_val_batches=_limit(cfg.limit_val_batches),
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_progress_bar=cfg.progress,
        default_root_dir=str(run_dir),
    )
    trainer = prepare_trainer(trainer)
    # [4] fit, from last.ckpt with --resume
    resume = None
    if cfg.resume:
        resume = str(last_checkpoint(run_dir))
        load_own_checkpoint(
            Path(resume), run_dir
        )  # refuses foreign paths / pickled code before Lightning loads it
    trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    # [5] rank 0: export the best-mAP weights, evaluate them on the test split
    progress = {"epoch": trainer.current_epoch, "step": trainer.global_step}
    if trainer.global_rank == 0:
        _export_and_evaluate(module, cfg, run_dir, by_map.best_model_path or last.last_model_path, progress)
    ray.train.report(progress)  # a barrier: every worker reports once more, after rank 0 has evaluated


def _export_and_evaluate(
    module: RetrievalModule, cfg: FinetuneConfig, run_dir: Path, best: str, progress: dict
) -> None:
    state = load_own_checkpoint(Path(best), run_dir)["state_dict"]
    module.load_state_dict(state)
    export_model(module, run_dir)
    items = read_split(cfg.data_root, cfg.test_split, cfg.subset)
    metrics = evaluate_module(module, items, cfg, ci=True)
    report = {
        "split": cfg.test_split,
        "checkpoint": str(Path(best).relative_to(run_dir)),
        "num_items": len(items),
        "num_captions": int(sum(len(it.captions) for it in items)),
        "trained": progress,
        "metrics": metrics,
    }  # trained: epochs and optimizer steps done in total
    (run_dir / METRICS_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


@torch.no_grad()
def evaluate_module(module: RetrievalModule, items: list, cfg: FinetuneConfig, *, ci: bool = True) -> dict:
    """Embed every clip (deterministic crop) and caption of ``items``: the metrics of ``e2i evaluate``."""
    module.eval()
    loader = make_loader(items, cfg, module.tokenizer, train=False, shuffle=False)
    use_bf16 = (
        module.device.type == "cuda" and cfg.precision == "bf16-mixed" and torch.cuda.is_bf16_supported()
    )
    parts = []
    for batch in loader:
        batch = {k: v.to(module.device) for k, v in batch.items()}
        with torch.autocast(module.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            item_z, cap_z = module.embed_batch(batch)
        parts.append(embedding_rows(batch, item_z, cap_z))
    return split_metrics(parts, ci=ci, items=items, relevance=relevance_file_for(cfg.data_root, cfg.test_split))
