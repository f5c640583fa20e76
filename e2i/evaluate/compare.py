"""`e2i compare RUN_A RUN_B`: is B better than A? Paired differences on the same test split.

    e2i compare results/mlp results/siglip                    # test split of both configs
    e2i compare results/mlp results/siglip --relevance rel.csv --output cmp.json

Both runs are embedded on their configs' ``--split`` (default: each config's test split); the two
splits must hold the same item and caption ids (the same store split, or a copy of it), otherwise a
one-line error. B's rows are aligned to A's by id. Per query, both runs' values (R@K, mAP@10, ranks,
and with ``--relevance`` mAP@16 ...) come from :func:`e2i.evaluate.metrics.retrieval_metrics`
(``per_query=True``); :func:`e2i.evaluate.bootstrap.paired_bootstrap` resamples **items** (all captions
of an item together, the same resample for A and B) and gives ``diff = B - A`` with a 95% percentile
interval. "B better" when the whole interval is on B's side (above 0; below 0 for ranks).

Writes a JSON file (``--output``, default ``<RUN_B>/evaluation_results/compare_<A>_<split>.json``) and a
Markdown table beside it (``.md``, README-ready) and prints a rich table.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from e2i.errors import ConfigError
from e2i.evaluate.evaluation import RESULTS_DIR, _jsonable, load_relevance_for, resolve_run
from e2i.store import load_split
from e2i.store.reader import SplitData, subset_split

ORDER = ("recall@1", "recall@5", "recall@10", "mAP@10", "mAP@16", "nDCG@10", "median_rank", "mean_rank")


def _embed(cfg, run_dir: Path, data: SplitData, checkpoint: str | None = None):
    from e2i.model.heads import build_model
    from e2i.train.checkpoint import load_into, load_weights
    from e2i.train.loop import SplitTensors, embed_split

    ckpt = Path(checkpoint) if checkpoint else run_dir / "best_model.safetensors"
    model = build_model(cfg.model, data.item_dim, data.caption_dim)
    load_into(model, load_weights(ckpt), ckpt)
    with torch.inference_mode():
        item_z, cap_z = embed_split(model, SplitTensors(data, torch.device("cpu")))
    return item_z.numpy(), cap_z.numpy()


def align(a: SplitData, b: SplitData) -> SplitData:
    """``b`` reordered to ``a``'s item and caption order; ConfigError unless both hold the same ids."""
    for kind, ia, ib in (("item", a.item_ids, b.item_ids), ("caption", a.caption_ids, b.caption_ids)):
        if len(ia) != len(ib) or set(ia.tolist()) != set(ib.tolist()):
            only = sorted(set(ia.tolist()) ^ set(ib.tolist()))[:1]
            raise ConfigError(f"{a.path} and {b.path} are not the same split: {len(ia)} vs {len(ib)} {kind}s"
                              + (f", e.g. {kind} {only[0]!r} is in only one" if only else ""))
    pos = {c: r for r, c in enumerate(b.item_ids.tolist())}
    b = subset_split(b, np.array([pos[i] for i in a.item_ids.tolist()], np.int64))  # items in a's order
    pos = {c: r for r, c in enumerate(b.caption_ids.tolist())}
    order = np.array([pos[c] for c in a.caption_ids.tolist()], np.int64)  # captions in a's order
    return SplitData(path=b.path, item_ids=b.item_ids, item_emb=np.ascontiguousarray(b.item_emb),
                     caption_ids=b.caption_ids[order], caption_item=b.caption_item[order],
                     caption_emb=np.ascontiguousarray(b.caption_emb[order]),
                     caption_text=None if b.caption_text is None else b.caption_text[order],
                     manifest=b.manifest, item_paths=b.item_paths, item_meta=b.item_meta)


def compare_runs(run_a: str | os.PathLike, run_b: str | os.PathLike, *, split: str | None = None,
                 relevance: str | os.PathLike | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """``{a, b, split, num_items, num_captions, diffs: {metric: {a, b, diff, ci95}}}`` (B - A)."""
    (cfg_a, dir_a), (cfg_b, dir_b) = resolve_run(run_a), resolve_run(run_b)
    split_a, split_b = split or cfg_a.data.test_split, split or cfg_b.data.test_split
    data_a = load_split(f"{cfg_a.data.store.rstrip('/')}/{split_a}", with_text=True)
    data_b = align(data_a, load_split(f"{cfg_b.data.store.rstrip('/')}/{split_b}", with_text=True))
    rel = load_relevance_for(data_a, relevance=relevance)
    from e2i.evaluate.bootstrap import paired_bootstrap
    from e2i.evaluate.metrics import retrieval_metrics

    extra = {"relevance": rel} if rel is not None else {}
    per_query = []
    for cfg, run_dir, data in ((cfg_a, dir_a, data_a), (cfg_b, dir_b, data_b)):
        item_z, cap_z = _embed(cfg, run_dir, data)
        # data_b is aligned to data_a: rows mean the same items/captions, so per-query values pair up
        _, pq = retrieval_metrics(item_z, cap_z, data_a.caption_item, ci=False, per_query=True,
                                  n_boot=n_boot, seed=seed, **extra)
        per_query.append(pq)
    # clusters: each direction's own (the item of a caption query, the item query itself)
    diffs = paired_bootstrap(per_query[0], per_query[1], None, n_boot=n_boot, seed=seed)
    return {"a": {"name": cfg_a.name, "run": str(dir_a)}, "b": {"name": cfg_b.name, "run": str(dir_b)},
            "split": split_a, "store": cfg_a.data.store, "num_items": data_a.num_items,
            "num_captions": data_a.num_captions, "n_boot": n_boot, "relevance": str(relevance) if relevance else None,
            "diffs": _jsonable_diffs(diffs)}


def _jsonable_diffs(diffs: dict) -> dict:
    return {k: {f: _jsonable(v) for f, v in d.items()} for k, d in diffs.items()}


def ordered_keys(diffs: dict) -> list[str]:
    keys = [f"{d}/{n}" for d in ("text_to_item", "item_to_text") for n in ORDER if f"{d}/{n}" in diffs]
    return keys + sorted(k for k in diffs if k not in keys)


def verdict(key: str, ci: list[float]) -> str:
    """'B better' / 'A better' when the interval excludes 0 (ranks: lower is better), else 'no difference'."""
    sign = -1.0 if key.endswith("_rank") else 1.0
    low, high = sorted((sign * ci[0], sign * ci[1]))
    return "B better" if low > 0 else "A better" if high < 0 else "no clear difference"


def markdown(result: dict) -> str:
    """A README-ready Markdown table of the paired differences."""
    a, b = result["a"]["name"], result["b"]["name"]
    lines = [f"Paired comparison on `{result['split']}` ({result['num_captions']} captions, {result['num_items']} "
             f"items; {result['n_boot']} item-level bootstrap resamples): A = `{a}`, B = `{b}`.", "",
             "| metric | A | B | B - A | 95% CI | verdict |", "|---|---:|---:|---:|---|---|"]
    for key in ordered_keys(result["diffs"]):
        d = result["diffs"][key]
        lines.append(f"| {key} | {d['a']:.4f} | {d['b']:.4f} | {d['diff']:+.4f} | "
                     f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] | {verdict(key, d['ci95'])} |")
    return "\n".join(lines) + "\n"


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"B = {result['b']['name']} vs A = {result['a']['name']} on {result['split']} "
                        f"(paired item-level bootstrap, 95% CI of B - A)")
    for name in ("metric", "A", "B", "B - A", "95% CI", "verdict"):
        table.add_column(name, justify="left" if name in ("metric", "verdict") else "right")
    for key in ordered_keys(result["diffs"]):
        d = result["diffs"][key]
        v = verdict(key, d["ci95"])
        style = "green" if v == "B better" else "red" if v == "A better" else ""
        table.add_row(key, f"{d['a']:.4f}", f"{d['b']:.4f}", f"{d['diff']:+.4f}",
                      f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]", f"[{style}]{v}[/]" if style else v)
    Console(width=max(110, Console().width)).print(table)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", metavar="RUN_A", help="run directory or train config (the reference)")
    parser.add_argument("run_b", metavar="RUN_B", help="run directory or train config (the candidate)")
    parser.add_argument("--split", help="split of both (default: each config's data.test_split)")
    parser.add_argument("--relevance", metavar="FILE", help="relevance file, as for `e2i evaluate --relevance`")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--output", metavar="JSON",
                        help="result file (default: <RUN_B>/evaluation_results/compare_<A>_<split>.json); "
                             "the Markdown table goes beside it (.md)")


def run(args: argparse.Namespace) -> int:
    if args.n_boot < 1:
        raise ConfigError(f"--n-boot must be >= 1, got {args.n_boot}")
    result = compare_runs(args.run_a, args.run_b, split=args.split, relevance=args.relevance,
                          n_boot=args.n_boot, seed=args.seed)
    out = Path(args.output) if args.output else \
        Path(result["b"]["run"]) / RESULTS_DIR / f"compare_{result['a']['name']}_{result['split']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    md = markdown(result)
    out.with_suffix(".md").write_text(md)
    print_table(result)
    print(md, end="")
    key = "text_to_item/recall@1"
    d = result["diffs"].get(key)
    if d:
        print(f"e2i compare: {key} B - A = {d['diff']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] "
              f"({verdict(key, d['ci95'])}) -> {out}")
    return 0
