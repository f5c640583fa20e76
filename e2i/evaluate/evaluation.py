"""`e2i evaluate CONFIG_OR_RUN_DIR`: retrieval metrics with 95% CIs and maps of the shared space.

    e2i evaluate results/siglip                 # run dir: its config.yaml + best_model.safetensors
    e2i evaluate configs/siglip.yaml            # the run dir of that config (<output_dir>/<name>/)
    e2i evaluate results/siglip --split val \\
        --checkpoint results/siglip/checkpoints/checkpoint_epoch0003/model.safetensors

Embeds the split (default: the config's test split) through both heads, computes
:func:`e2i.evaluate.metrics.retrieval_metrics` (conventions there: ``text_to_item/*`` = caption queries over
items, ``item_to_text/*`` = item queries over captions, ``*/ci95`` = bootstrap 95% CI over queries)
and writes ``<run dir>/evaluation_results/``:

    <split>_metrics.json   {split, store, checkpoint, counts, chance R@1, metrics, evaluation_data}
    <split>_tsne.png       t-SNE of items + captions in the shared space (subsampled items)
    <split>_pca.png        PCA of the same
    report.html            self-contained page: metrics + CIs, baseline line, plots, retrieval browser
                           (see :mod:`e2i.evaluate.html_report`)
    <split>_topk.parquet   with ``--dump-topk K``: per query and direction the top-K ids, scores and
                           relevant flags (:func:`e2i.evaluate.topk.topk_table`)

``--relevance FILE`` (CSV/parquet, :mod:`e2i.evaluate.relevance_file`) or ``--relevance-from label`` (items
of the same class label are relevant) adds multi-relevance text->item metrics (mAP@16, mAP@10, nDCG@10 when
graded); without them every number is as before. The best closed-form baseline of the store
(:func:`e2i.evaluate.baselines.best_baseline_for_store`) is shown beside the metrics; a head that loses
to it is flagged.

A split whose raw embeddings exceed ``data.streaming.memory_budget_gb`` (``mode: auto``; ``--streaming``
and ``--memory-budget-gb`` override the run's config) is read from disk in chunks and projected chunk by
chunk (:mod:`e2i.evaluate.chunked`): the same numbers, one console line and ``evaluation_data`` say
which path ran. On that path the closed-form baseline is skipped, with the reason in ``baseline_skipped``
(its fit needs the raw train and evaluated splits in memory).

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
TABLE_ORDER = ("recall@1", "recall@5", "recall@10", "mAP@10", "mAP@16", "nDCG@10", "median_rank", "mean_rank")


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


def load_relevance_for(split_data, *, relevance=None, relevance_from: str | None = None):
    """A Relevance for ``split_data`` from a file or from the items' class labels (None without either)."""
    if relevance and relevance_from:
        raise ConfigError("pass --relevance FILE or --relevance-from label, not both")
    if relevance:
        from e2i.evaluate.relevance_file import load_relevance

        return load_relevance(relevance, split_data)
    if relevance_from == "label":
        if "label" not in split_data.item_meta:
            raise ConfigError(f"{split_data.path}: --relevance-from label needs a 'label' column in the items")
        from e2i.evaluate.labels import label_relevance

        return label_relevance(split_data.item_meta["label"], split_data.caption_item)
    if relevance_from:
        raise ConfigError(f"--relevance-from: {relevance_from!r} is not one of label")
    return None


def store_baseline(store: str, split: str, cache_dir: Path | None = None, relevance=None) -> dict | None:
    """{"name", "metrics"} of the best closed-form baseline on ``store``/``split`` (None when the store
    has no train split); cached as ``<cache_dir>/baseline_<split>.json`` so re-evaluating is cheap.
    With ``relevance`` its text->item metrics use the same relevance lists as the head's (not cached)."""
    from e2i.evaluate.baselines import best_baseline_for_store

    cache = cache_dir / f"baseline_{split}.json" if cache_dir is not None else None
    return best_baseline_for_store(store, split=split, cache_path=cache, relevance=relevance)


def evaluate_run(
    target: str | os.PathLike,
    *,
    split: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    plots: bool = True,
    max_plot_items: int = 300,
    show: bool = True,
    relevance: str | os.PathLike | None = None,
    relevance_from: str | None = None,
    dump_topk: int = 0,
    html: bool = True,
    baseline: bool = True,
    streaming: str | None = None,
    memory_budget_gb: float | None = None,
) -> dict:
    """Evaluate a trained model on one split; returns the metrics JSON written (see module docstring).
    ``streaming`` / ``memory_budget_gb`` override the run's ``data.streaming`` (auto | always | never)."""
    from e2i.evaluate.metrics import retrieval_metrics

    cfg, run_dir = resolve_run(target)
    split = split or cfg.data.test_split
    ckpt = Path(checkpoint) if checkpoint else run_dir / "best_model.safetensors"
    state = load_weights(ckpt)
    plan, data, item_z, cap_z = embed_for_evaluation(cfg, split, state, ckpt, streaming=streaming,
                                                     memory_budget_gb=memory_budget_gb)
    print(f"[{cfg.name}] {plan.line()}", flush=True)
    rel = load_relevance_for(data, relevance=relevance, relevance_from=relevance_from)
    extra = {"relevance": rel} if rel is not None else {}
    metrics = retrieval_metrics(item_z, cap_z, data.caption_item, ci=True, **extra)
    result = {
        "split": split,
        "store": cfg.data.store,
        "checkpoint": str(ckpt),
        "config": cfg.name,
        "num_items": data.num_items,
        "num_captions": data.num_captions,
        "chance/recall@1": 1.0 / data.num_items,
        "metrics": _jsonable(metrics),
        "evaluation_data": plan.record(),
    }
    if "label" in data.item_meta:  # class-labelled store: zero-shot classification (e2i.evaluate.labels)
        from e2i.evaluate.labels import zero_shot_metrics

        result["zero_shot"] = zero_shot_metrics(item_z.numpy(), cap_z.numpy(), data.caption_item,
                                                data.item_meta["label"])
    if rel is not None:
        result["relevance"] = {"source": str(relevance or f"items' {relevance_from}"), "pairs": len(rel.query),
                               "queries": int(len(np.unique(rel.query)))}
    out = Path(output_dir) if output_dir else run_dir / RESULTS_DIR
    best = None
    if baseline and plan.chunked:  # never silently: the reason goes into the results and the console
        result["baseline_skipped"] = ("split evaluated in chunks: the closed-form baselines fit and score raw "
                                      "embeddings of whole splits in memory")
        print(f"[{cfg.name}] closed-form baseline skipped ({result['baseline_skipped']})", flush=True)
    elif baseline:
        best = store_baseline(cfg.data.store, split, out, relevance=rel)
    if best is not None:
        result["baseline"] = {"name": best["name"], "metrics": _jsonable(best["metrics"])}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{split}_metrics.json").write_text(json.dumps(result, indent=1))
    pngs = [run_dir / "training_curves.png"]
    if plots:
        from e2i.evaluate.plots import plot_embedding_map

        for method in ("tsne", "pca"):
            pngs.append(plot_embedding_map(
                item_z.numpy(),
                cap_z.numpy(),
                data.caption_item,
                out / f"{split}_{method}.png",
                method=method,
                max_items=max_plot_items,
                title=f"{cfg.name} {split}: {method.upper()} of the shared space",
            ))
    if dump_topk:
        import pyarrow.parquet as pq

        from e2i.evaluate.topk import topk_table

        pq.write_table(topk_table(item_z.numpy(), cap_z.numpy(), data, dump_topk, relevance=rel),
                       out / f"{split}_topk.parquet")
    if html:
        write_html_report(result, item_z.numpy(), cap_z.numpy(), data, rel, pngs, out / "report.html")
    if show:
        print_metrics_table(result)
    return result


def embed_for_evaluation(cfg: TrainConfig, split: str, state: dict, ckpt: Path, *, streaming: str | None = None,
                         memory_budget_gb: float | None = None, with_text: bool = True):
    """(plan, split data, item_z (N, D), caption_z (M, D)) of ``cfg``'s store/``split`` through the model
    holding ``state``: in memory, or read in chunks and projected chunk by chunk
    (:mod:`e2i.evaluate.chunked`; ``data``'s raw embeddings are then (N, 0) / (M, 0))."""
    from dataclasses import replace

    from e2i.evaluate.chunked import plan_evaluation, project_split
    from e2i.model.heads import build_model

    st = cfg.data.streaming
    st = replace(st, mode=streaming or st.mode,
                 memory_budget_gb=st.memory_budget_gb if memory_budget_gb is None else memory_budget_gb)
    try:
        st.validate()
    except ValueError as e:
        raise ConfigError(f"data.streaming.{e.args[1]}: {e.args[0]}") from None
    path = f"{cfg.data.store.rstrip('/')}/{split}"
    plan = plan_evaluation(path, split, st, cfg.model.output_dim)
    data = None if plan.chunked else load_split(path, with_text=with_text)
    dims = (plan.size.item_dim, plan.size.caption_dim) if data is None else (data.item_dim, data.caption_dim)
    model = build_model(cfg.model, *dims)
    load_into(model, state, ckpt)
    with torch.inference_mode():
        if data is None:
            data, item_z, cap_z = project_split(model, path, plan.size, with_text=with_text)
        else:
            item_z, cap_z = embed_split(model, SplitTensors(data, torch.device("cpu")))
    return plan, data, item_z, cap_z


def write_html_report(result: dict, item_z, cap_z, data, rel, pngs: list, path: Path) -> Path:
    """``report.html`` of one evaluation (:mod:`e2i.evaluate.html_report`)."""
    from e2i.evaluate import html_report as h
    from e2i.evaluate.topk import browser_entries

    entries = browser_entries(item_z, cap_z, data, relevance=rel)
    title = f"{result['config']} on {result['split']}"
    subtitle = (f"{result['num_captions']} captions, {result['num_items']} items of {result['store']} "
                f"(chance R@1 {result['chance/recall@1']:.4f}); checkpoint {result['checkpoint']}")
    sections = [h.metrics_section(result["metrics"], result.get("baseline")),
                h.browser_section(entries, path.parent), h.images_section("Plots", pngs)]
    return h.write_report(path, title, sections, subtitle=subtitle)


def print_metrics_table(result: dict) -> None:
    """A rich table: direction/metric, value, 95% CI (and the best closed-form baseline's value)."""
    from rich.console import Console
    from rich.table import Table

    from e2i.evaluate.html_report import loses

    metrics, base = result["metrics"], result.get("baseline")
    table = Table(
        title=f"{result['config']} on {result['split']}: {result['num_captions']} captions, "
        f"{result['num_items']} items (chance R@1 {result['chance/recall@1']:.4f})"
    )
    columns = [("metric", "left"), ("value", "right"), ("95% CI", "right")]
    columns += [(f"baseline {base['name']}", "right")] if base else []
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for direction in ("text_to_item", "item_to_text"):
        for name in TABLE_ORDER:
            key = f"{direction}/{name}"
            if key in metrics:
                ci = metrics.get(f"{key}/ci95")
                row = [key, f"{metrics[key]:.4f}", f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""]
                if base:
                    row.append(f"{base['metrics'][key]:.4f}" if key in base["metrics"] else "")
                table.add_row(*row)
    console = Console()
    console.print(table)
    if base and (verdict := loses(metrics, base)) is not None:
        key = "text_to_item/recall@1"
        word = "[bold red]LOSES to[/]" if verdict else "beats"
        console.print(f"vs best closed-form baseline: trained head {word} {base['name']} "
                      f"({key} {metrics[key]:.4f} vs {base['metrics'][key]:.4f})")


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
    parser.add_argument("--relevance", metavar="FILE",
                        help="CSV/parquet of extra relevant (caption_id or query, item_id[, relevance]) pairs: "
                             "adds text->item mAP@16, mAP@10 (and nDCG@10 when graded)")
    parser.add_argument("--relevance-from", choices=("label",),
                        help="label: items with the same class label (items column 'label') are relevant")
    parser.add_argument("--dump-topk", type=int, default=0, metavar="K",
                        help="write <split>_topk.parquet: per query (both directions) the top-K ids, scores, "
                             "relevant flags")
    parser.add_argument("--no-html", action="store_true", help="skip report.html")
    parser.add_argument("--no-baseline", action="store_true", help="skip the closed-form baseline comparison")
    parser.add_argument("--streaming", choices=("auto", "always", "never"),
                        help="read the split in chunks from disk: auto (when its raw embeddings exceed the budget), "
                             "always, never (default: the run's data.streaming.mode)")
    parser.add_argument("--memory-budget-gb", type=float, metavar="GB",
                        help="budget of --streaming auto (default: the run's data.streaming.memory_budget_gb)")


def run(args: argparse.Namespace) -> int:
    if args.dump_topk < 0:
        raise ConfigError(f"--dump-topk must be >= 0, got {args.dump_topk}")
    result = evaluate_run(
        args.target,
        split=args.split,
        checkpoint=args.checkpoint,
        output_dir=args.output_dir,
        plots=not args.no_plots,
        max_plot_items=args.max_plot_items,
        relevance=args.relevance,
        relevance_from=args.relevance_from,
        dump_topk=args.dump_topk,
        html=not args.no_html,
        baseline=not args.no_baseline,
        streaming=args.streaming,
        memory_budget_gb=args.memory_budget_gb,
    )
    m = result["metrics"]
    out = Path(args.output_dir) if args.output_dir else resolve_run(args.target)[1] / RESULTS_DIR
    extra = f" mAP@16 {m['text_to_item/mAP@16']:.4f}" if "text_to_item/mAP@16" in m else ""
    print(
        f"e2i evaluate: {result['split']} R@1 {m['text_to_item/recall@1']:.4f} "
        f"mAP@10 {m['text_to_item/mAP@10']:.4f}{extra} -> {out}"
    )
    return 0
