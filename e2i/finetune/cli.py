"""``e2i finetune``: one flag per :class:`~e2i.finetune.config.FinetuneConfig` field, then :func:`fit`.

    e2i finetune --data-root ~/data/CLOTHO_v2.1 --num-workers 4 --use-gpu        # 4 GPUs, DDP
    e2i finetune --config configs/finetune.yaml --resume                            # continue last.ckpt

Precedence: built-in defaults < ``--config FILE`` < explicit flags (``--audio-option KEY=VALUE`` adds
to the file's ``audio_options``).
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from e2i.config import ConfigError, read_yaml
from e2i.finetune.checkpoints import METRICS_FILE
from e2i.finetune.config import FinetuneConfig, finetune_config_from_dict, resolve_finetune_paths
from e2i.finetune.driver import fit

_FLAG_HELP = {
    "data_root": "Clotho root (clotho_captions_<split>.csv + audio dirs; `e2i download clotho` makes one)",
    "train_split": "split to train on",
    "val_split": "split for model selection (val/loss, val/mAP@10)",
    "test_split": "split evaluated after training",
    "subset": "use the first N clips of every split",
    "output_dir": "runs go to OUTPUT_DIR/RUN_NAME/",
    "run_name": "run directory name (default: <arch>-<text model>)",
    "audio_arch": "PaSST architecture (hear21passt get_model arch)",
    "text_model": "HF hub id or local dir of the text encoder (baseline: roberta-large)",
    "text_pooling": "caption embedding: cls = first token (baseline) | mean = mean over tokens",
    "init_weights": "start from these module weights (.safetensors; .pt read with weights_only=True)",
    "projection_dim": "shared embedding size",
    "hidden_dim": "projection MLP width (0 = one Linear)",
    "init_temperature": "initial softmax temperature (learnable)",
    "max_text_tokens": "caption token limit",
    "max_audio_seconds": "audio crop/pad length (random crop in training, first seconds in evaluation)",
    "batch_size": "clip-caption pairs per worker and step",
    "accumulate_grad_batches": "gradient accumulation",
    "epochs": "training epochs",
    "warmup_epochs": "linear warmup length, then cosine decay to 0",
    "max_lr": "peak AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "grad_clip_norm": "gradient norm clip (0 = off)",
    "precision": "32-true | bf16-mixed | 16-mixed (falls back to what the device supports)",
    "num_workers": "Ray Train workers (data parallel; one per GPU)",
    "use_gpu": "one GPU per worker",
    "cpus_per_worker": "CPUs reserved per worker",
    "loader_workers": "DataLoader processes per worker",
    "limit_train_batches": "fraction (<= 1) or number (> 1) of train batches per epoch",
    "limit_val_batches": "fraction (<= 1) or number (> 1) of validation batches",
    "use_wandb": "log to Weights & Biases (WANDB_API_KEY from the environment; offline without it)",
    "wandb_project": "W&B project",
    "wandb_entity": "W&B entity (team/user)",
    "seed": "random seed",
    "resume": "continue OUTPUT_DIR/RUN_NAME/checkpoints/last.ckpt",
    "progress": "show the progress bar",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per FinetuneConfig field (dashes); defaults shown but applied in :func:`config_from_args`
    so that ``--config FILE`` values sit between the built-in defaults and explicit flags."""
    parser.add_argument(
        "--config", default=None, help="YAML with FinetuneConfig keys (e.g. configs/finetune.yaml)"
    )
    parser.add_argument(
        "--audio-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="PaSST option, repeatable: pretrained=false, weights=FILE (.safetensors), embed_dim, "
        "depth, num_heads (tiny test models), segment_seconds, s_patchout_t (15), "
        "s_patchout_f (2), freqm (0), timem (0)",
    )
    defaults = FinetuneConfig()
    for f in fields(FinetuneConfig):
        if f.name == "audio_options":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        text = f"{_FLAG_HELP[f.name]} (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = {"limit_train_batches": float, "limit_val_batches": float}.get(f.name)
            kind = kind or (int if f.name in ("subset",) else type(default) if default is not None else str)
            parser.add_argument(flag, type=kind, default=None, help=text)


def _parse_option(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--audio-option {text!r}: expected KEY=VALUE")
    return key.strip(), yaml.safe_load(raw)


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    data: dict = read_yaml(args.config) if args.config else {}
    for f in fields(FinetuneConfig):
        value = getattr(args, f.name, None)
        if value is not None and f.name != "audio_options":
            data[f.name] = value
    options = dict(data.get("audio_options") or {})
    options.update(_parse_option(o) for o in args.audio_option)
    data["audio_options"] = options
    return resolve_finetune_paths(finetune_config_from_dict(data, args.config or "<command line>"))


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    report = fit(cfg)
    m = report["metrics"]
    print(
        f"e2i finetune: {cfg.name}: {report['split']} ({report['num_items']} clips, {report['num_captions']} "
        f"captions): text->audio mAP@10 {m['text_to_item/mAP@10']:.3f}, "
        f"R@1 {m['text_to_item/recall@1']:.3f}, "
        f"R@10 {m['text_to_item/recall@10']:.3f} -> {cfg.run_dir / METRICS_FILE}"
    )
    return 0
