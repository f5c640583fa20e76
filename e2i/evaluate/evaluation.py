"""`e2i evaluate CONFIG_OR_RUN_DIR`: retrieval metrics with 95% CIs and maps of the shared space.

    e2i evaluate results/siglip                 # run dir: its config.yaml + best_model.safetensors
    e2i evaluate configs/siglip.yaml            # the run dir of that config (<output_dir>/<name>/)
    e2i evaluate results/siglip --split val \\
        --checkpoint results/siglip/checkpoints/checkpoint_epoch0003/model.safetensors

Embeds the split (default: the config's test split) through both heads, computes
:func:`e2i.evaluate.metrics.retrieval_metrics` (conventions there: ``text_to_item/*`` = caption queries over
items, ``item_to_text/*`` = item queries over captions, ``*/ci95`` = bootstrap 95% CI over queries)
and writes ``<run dir>/evaluation_results/``:

    <split>_metrics.json   {split, store, checkpoint, counts, chance R@1, metrics}
    <split>_tsne.png       t-SNE of items + captions in the shared space (subsampled items)
    <split>_pca.png        PCA of the same

Weights are read from safetensors only; a legacy ``.pt`` goes through ``torch.load(weights_only=True)``,
which refuses pickled code. Damaged or mismatching checkpoints raise a one-line CheckpointError.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from e2i.train.checkpoint import load_into, load_weights
from e2i.config import TrainConfig, load_train_config
from e2i.errors import ConfigError
from e2i.store import load_split
from e2i.train.loop import SplitTensors, embed_split

RESULTS_DIR = "evaluation_results"
TABLE_ORDER = ("recall@1", "recall@5", "recall@10", "mAP@10", "median_rank", "mean_rank")


def resolve_run(target: str | os.PathLike) -> tuple[TrainConfig, Path]:
    """(config, run dir) from a run directory (holding config.yaml) or a train config file."""
    path = Path(target)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"{path}: not a run directory (no config.yaml)")
        return load_train_config(path / "config.yaml"), path
    if path.is_file():
        cfg = load_train_config(path)
        return cfg, Path(cfg.run_dir)
    raise ConfigError(f"{path}: neither a run directory nor a config file")


def _jsonable(value):
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value)
    return value


def evaluate_run(
    target: str | os.PathLike,
    *,
    split: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    plots: bool = True,
    max_plot_items: int = 300,
    show: bool = True,
) -> dict:
    """Evaluate a trained model on one split; returns the metrics JSON written (see module docstring)."""
    from e2i.model.heads import build_model
    from e2i.evaluate.metrics import retrieval_metrics

    cfg, run_dir = resolve_run(target)
    split = split or cfg.data.test_split
    ckpt = Path(checkpoint) if checkpoint else run_dir / "best_model.safetensors"
    state = load_weights(ckpt)
    data = load_split(f"{cfg.data.store.rstrip('/')}/{split}", with_text=False)
    model = build_model(cfg.model, data.item_dim, data.caption_dim)
    load_into(model, state, ckpt)
    with torch.inference_mode():
        item_z, cap_z = embed_split(model, SplitTensors(data, torch.device("cpu")))
    metrics = retrieval_metrics(item_z, cap_z, data.caption_item, ci=True)
    result = {
        "split": split,
        "store": cfg.data.store,
        "checkpoint": str(ckpt),
        "config": cfg.name,
        "num_items": data.num_items,
        "num_captions": data.num_captions,
        "chance/recall@1": 1.0 / data.num_items,
        "metrics": _jsonable(metrics),
    }
    out = Path(output_dir) if output_dir else run_dir / RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{split}_metrics.json").write_text(json.dumps(result, indent=1))
    if plots:
        from e2i.evaluate.plots import plot_embedding_map

        for method in ("tsne", "pca"):
            plot_embedding_map(
                item_z.numpy(),
                cap_z.numpy(),
                data.caption_item,
                out / f"{split}_{method}.png",
                method=method,
                max_items=max_plot_items,
                title=f"{cfg.name} {split}: {method.upper()} of the shared space",
            )
    if show:
        print_metrics_table(result)
    return result


def print_metrics_table(result: dict) -> None:
    """A rich table: direction/metric, value, 95% CI."""
    from rich.console import Console
    from rich.table import Table

    metrics = result["metrics"]
    table = Table(
        title=f"{result['config']} on {result['split']}: {result['num_captions']} captions, "
        f"{result['num_items']} items (chance R@1 {result['chance/recall@1']:.4f})"
    )
    for name, justify in (("metric", "left"), ("value", "right"), ("95% CI", "right")):
        table.add_column(name, justify=justify)
    for direction in ("text_to_item", "item_to_text"):
        for name in TABLE_ORDER:
            key = f"{direction}/{name}"
            if key in metrics:
                ci = metrics.get(f"{key}/ci95")
                table.add_row(key, f"{metrics[key]:.4f}", f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
    Console().print(table)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        metavar="CONFIG_OR_RUN_DIR",
        help="a run directory (results/<name>) or the train config that produced it",
    )
    parser.add_argument("--split", help="split to evaluate (default: the config's data.test_split)")
    parser.add_argument("--checkpoint", help="weights file (default: <run dir>/best_model.safetensors)")
    parser.add_argument("--output-dir", help="where to write results (default: <run dir>/evaluation_results)")
    parser.add_argument("--no-plots", action="store_true", help="skip the t-SNE/PCA plots")
    parser.add_argument(
        "--max-plot-items",
        type=int,
        default=300,
        help="items (with their captions) drawn in the t-SNE/PCA maps",
    )


def run(args: argparse.Namespace) -> int:
    result = evaluate_run(
        args.target,
        split=args.split,
        checkpoint=args.checkpoint,
        output_dir=args.output_dir,
        plots=not args.no_plots,
        max_plot_items=args.max_plot_items,
    )
    m = result["metrics"]
    out = Path(args.output_dir) if args.output_dir else resolve_run(args.target)[1] / RESULTS_DIR
    print(
        f"e2i evaluate: {result['split']} R@1 {m['text_to_item/recall@1']:.4f} "
        f"mAP@10 {m['text_to_item/mAP@10']:.4f} -> {out}"
    )
    return 0
