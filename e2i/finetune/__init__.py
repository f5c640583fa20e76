"""End-to-end fine-tuning of PaSST + RoBERTa on Clotho, Lightning on Ray Train: ``e2i finetune``.

    from e2i.finetune import fit, load_finetune_config, load_finetuned
    report = fit(load_finetune_config("configs/finetune.yaml", {"num_workers": 4, "use_gpu": True}))
    module = load_finetuned("checkpoints/passt_s_swa_p16_128_ap476-roberta-large")  # no pickle, no hub

Modules, in the order a run goes through them:

===============  ==================================================================================
config.py        FinetuneConfig, YAML/dict loading and validation, driver-side path resolution
data.py          Clotho splits -> cropped 32 kHz audio + tokenised captions (datasets, loaders)
metrics.py       retrieval metrics of whole splits from per-batch embeddings (DDP duplicates removed)
model.py         the LightningModule: PaSST audio tower, text tower, projection heads, InfoNCE, AdamW
checkpoints.py   the run directory: checkpoint callbacks, own .ckpt loading, export and reload
worker.py        train_worker: what each Ray Train worker runs (Trainer, loggers, final evaluation)
driver.py        fit: checks, then the TorchTrainer of train_worker
cli.py           add_arguments / run of ``e2i finetune``
===============  ==================================================================================

May import: e2i.corpus, e2i.encoders, e2i.model, e2i.evaluate.metrics, e2i.train.checkpoint,
e2i.config, e2i.paths, e2i.errors; torch and lightning at module level, ray only inside the functions
that run Ray (driver, worker).
"""

from e2i.finetune.checkpoints import export_model, load_finetuned, load_own_checkpoint
from e2i.finetune.cli import add_arguments, config_from_args, run
from e2i.finetune.config import (
    FinetuneConfig,
    finetune_config_from_dict,
    load_finetune_config,
    resolve_finetune_paths,
)
from e2i.finetune.data import ClipDataset, Collate, crop_or_pad, make_loader, read_split
from e2i.finetune.driver import fit
from e2i.finetune.metrics import split_metrics
from e2i.finetune.model import AudioTower, RetrievalModule, warmup_cosine
from e2i.finetune.worker import _loggers, evaluate_module, resolve_precision, train_worker  # noqa: F401

__all__ = [
    "AudioTower",
    "ClipDataset",
    "Collate",
    "FinetuneConfig",
    "RetrievalModule",
    "add_arguments",
    "config_from_args",
    "crop_or_pad",
    "evaluate_module",
    "export_model",
    "finetune_config_from_dict",
    "fit",
    "load_finetune_config",
    "load_finetuned",
    "load_own_checkpoint",
    "make_loader",
    "read_split",
    "resolve_finetune_paths",
    "resolve_precision",
    "run",
    "split_metrics",
    "train_worker",
    "warmup_cosine",
]
