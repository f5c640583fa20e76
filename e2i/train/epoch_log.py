"""Per-epoch logging of a training run on rank 0: one console line, TensorBoard scalars, a W&B run.

    logger = EpochLogger(cfg, run_dir, enabled=rank == 0, raw_stdout=True)   # in a Ray Train worker
    logger(metrics)   # 'epoch  3/20  train/loss 2.3100  val/recall@1 0.4120 ...  lr 9.1e-04  1.2s'
    logger.close()

TensorBoard event files go to ``<run_dir>/tensorboard/`` (``logging.tensorboard``), W&B files to
``<run_dir>/wandb/`` (``logging.use_wandb``; offline without WANDB_API_KEY). Both are imported only
when enabled.
"""

from __future__ import annotations

import os
from pathlib import Path

from e2i.config import TrainConfig

CONSOLE_METRICS = ("train/loss", "val/loss", "val/recall@1", "val/recall@10", "val/mAP@10")


def format_epoch(metrics: dict, epochs: int) -> str:
    """One console line: 'epoch  3/20  train/loss 2.3100  val/recall@1 0.4120 ...  lr 9.1e-04  1.2s'."""
    parts = [f"epoch {metrics['epoch']:>3}/{epochs}"]
    parts += [f"{k} {metrics[k]:.4f}" for k in CONSOLE_METRICS if k in metrics]
    parts += [f"lr {metrics.get('lr', 0):.2e}", f"{metrics.get('time/epoch_s', 0):.1f}s"]
    return "  ".join(parts)


class EpochLogger:
    """Console line + TensorBoard scalars + W&B log per epoch (a no-op object on ranks > 0)."""

    def __init__(
        self, cfg: TrainConfig, run_dir: str | os.PathLike, *, enabled: bool, raw_stdout: bool = False
    ) -> None:
        self.cfg, self.enabled, self.raw_stdout, self.tb, self.wandb = cfg, enabled, raw_stdout, None, None
        if not enabled:
            return
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        if cfg.logging.use_wandb:
            self.wandb = init_wandb(cfg, run_dir)

    def __call__(self, metrics: dict) -> None:
        if not self.enabled:
            return
        self.say(format_epoch(metrics, self.cfg.optim.epochs))
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "epoch"}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, global_step=metrics["epoch"])
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=metrics["epoch"])

    def say(self, text: str) -> None:
        """One console line. In a Ray Train worker ``print`` is patched to log *and* tee (two lines),
        so write to file descriptor 1, which Ray streams to the driver once."""
        line = f"[{self.cfg.name}] {text}\n"
        if self.raw_stdout:
            os.write(1, line.encode())
        else:
            print(line, end="", flush=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def init_wandb(cfg: TrainConfig, run_dir: str | os.PathLike):
    """A W&B run (offline when WANDB_API_KEY is unset); project/entity/name from cfg.logging."""
    import wandb

    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(
        project=cfg.logging.wandb_project,
        entity=cfg.logging.wandb_entity,
        name=cfg.logging.run_name or cfg.name,
        config=cfg.to_dict(),
        dir=str(run_dir),
        mode=mode,
        reinit="finish_previous",
        settings=wandb.Settings(quiet=True),
    )
