"""What a fine-tuning run keeps in its run directory, and how e2i reads it back.

Outputs in ``<output-dir>/<run-name>/``::

    checkpoints/last.ckpt            full Lightning state (optimizer, scheduler, loops): --resume uses it
    checkpoints/best-val-loss.ckpt   weights at the lowest val/loss
    checkpoints/best-val-map.ckpt    weights at the highest val/mAP@10 (exported and evaluated)
    best_model.safetensors           the best-val-map weights, no pickle (reload: load_finetuned(run_dir))
    text_model/                      the tokenizer + text model config (reload needs no hub access)
    finetune_config.json             the resolved FinetuneConfig
    evaluation_metrics.json          metrics on the evaluation split (same as ``e2i evaluate``)
    tensorboard/                     losses, val metrics, learning-rate curve (LearningRateMonitor)

Lightning ``.ckpt`` files are pickles: e2i only loads them from its own run directory and with
``torch.load(weights_only=True)`` (plain tensors and containers, no code). Weights you bring yourself
(``--init-weights``) must be safetensors (or a ``.pt`` state_dict, read with ``weights_only=True``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from e2i.errors import CheckpointError
from e2i.finetune.config import FinetuneConfig
from e2i.finetune.model import RetrievalModule
from e2i.train.checkpoint import save_weights

CKPT_LOSS, CKPT_MAP, CKPT_LAST = "best-val-loss", "best-val-map", "last"
EXPORT_FILE, CONFIG_FILE, METRICS_FILE = (
    "best_model.safetensors",
    "finetune_config.json",
    "evaluation_metrics.json",
)
CKPT_DIR, TEXT_DIR = "checkpoints", "text_model"


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / CKPT_DIR / f"{CKPT_LAST}.ckpt"


def checkpoint_callbacks(ckpt_dir: Path) -> list[ModelCheckpoint]:
    """[best val/mAP@10, best val/loss, last]: last.ckpt holds the full state (optimizer, scheduler,
    loops) for --resume; the best ones hold weights only."""
    by_map = _keep_best(ckpt_dir, CKPT_MAP, "val/mAP@10", "max")
    by_loss = _keep_best(ckpt_dir, CKPT_LOSS, "val/loss", "min")
    last = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True, enable_version_counter=False)
    return [by_map, by_loss, last]


def _keep_best(ckpt_dir: Path, filename: str, monitor: str, mode: str) -> ModelCheckpoint:
    """One file ``<filename>.ckpt``, overwritten with the weights whenever ``monitor`` improves."""
    return ModelCheckpoint(
        dirpath=ckpt_dir, filename=filename, monitor=monitor, mode=mode, save_top_k=1, save_weights_only=True,
        auto_insert_metric_name=False, enable_version_counter=False,
    )


def write_config(cfg: FinetuneConfig, run_dir: Path) -> None:
    (run_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")


def export_model(module: RetrievalModule, run_dir: Path) -> Path:
    """best_model.safetensors + finetune_config.json + text_model/ (tokenizer and config) in ``run_dir``."""
    save_weights(module.state_dict(), run_dir / EXPORT_FILE)
    module.tokenizer.save_pretrained(run_dir / TEXT_DIR)
    module.text.config.save_pretrained(run_dir / TEXT_DIR)
    write_config(module.cfg, run_dir)
    return run_dir / EXPORT_FILE


def load_finetuned(run_dir: str | os.PathLike, device: str = "cpu") -> RetrievalModule:
    """Rebuild a module from an exported run dir: no pickle, no hub access (text config is local)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / EXPORT_FILE).is_file():
        raise CheckpointError(f"{run_dir}: no {CONFIG_FILE} + {EXPORT_FILE} (was the run finished?)")
    config = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    config.update(text_model=str(run_dir / TEXT_DIR), init_weights=None)
    module = RetrievalModule(config, load_pretrained=False)
    module.load_weights(run_dir / EXPORT_FILE)
    return module.to(device).eval()


def load_own_checkpoint(path: Path, run_dir: Path) -> dict:
    """A Lightning checkpoint of this run (none outside ``run_dir``), loaded with weights_only=True."""
    path, run_dir = Path(path).resolve(), Path(run_dir).resolve()
    if run_dir not in path.parents:
        raise CheckpointError(
            f"{path}: not inside the run directory {run_dir}; e2i only loads its own .ckpt files"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable or refused by weights_only
        raise CheckpointError(f"{path}: cannot load checkpoint ({str(exc).splitlines()[0]})") from None
