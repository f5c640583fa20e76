"""The `e2i store` command: ``verify``, ``info`` and ``import-legacy`` (the stage's add_arguments/run).

A thin layer: the checks are :mod:`e2i.store.verify`, the import is :mod:`e2i.store.legacy` (torch is
imported only when a ``.pt`` file is read). No other store module imports this one; the package
re-exports :func:`add_arguments` / :func:`run`.
"""

from __future__ import annotations

import argparse
import posixpath

from e2i.errors import StoreError
from e2i.store.legacy import FORMATS, import_legacy
from e2i.store.reader import find_splits
from e2i.store.verify import split_summary, verify_store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`e2i store verify|info|import-legacy`."""
    sub = parser.add_subparsers(dest="store_command", required=True, metavar="COMMAND")
    helps = {
        "verify": "re-check sha256 of every shard against manifest.json and validate contents (exit 1 on problems)",
        "info": "print items/captions counts and embedding dims of every split as a table",
        "import-legacy": "convert a legacy embedding cache (.pt pairs, COCO .pt + metadata.json, "
                         "<model>/<dataset>/<split> parquet) into a store split",
    }
    cmds = {name: sub.add_parser(name, help=text, description=text) for name, text in helps.items()}
    for name in ("verify", "info"):
        cmds[name].add_argument("dir", help="a split dir, a dataset dir (holding splits) or a store root; "
                                            "local or s3://bucket/prefix")
    _add_import_legacy_arguments(cmds["import-legacy"])


def run(args: argparse.Namespace) -> int:
    if args.store_command == "verify":
        return _run_verify(args.dir)
    if args.store_command == "info":
        return _run_info(args.dir)
    return _run_import_legacy(args)


def _run_verify(path: str) -> int:
    splits = find_splits(path)
    problems = verify_store(path)
    for p in problems:
        print(f"PROBLEM {p}")
    status = "OK" if not problems else f"{len(problems)} problem(s)"
    print(f"e2i store verify: {len(splits)} split(s) under {path}: {status}")
    return 0 if not problems else 1


def _run_info(path: str) -> int:
    from rich.console import Console
    from rich.table import Table

    splits = find_splits(path)
    if not splits:
        raise StoreError(f"{path}: no store split found (expected manifest.json or items/)")
    table = Table(title=f"e2i store: {path}")
    for col in ("split", "items", "item dim", "captions", "caption dim", "rejected", "encoders", "manifest"):
        table.add_column(col, justify="right" if col not in ("split", "encoders") else "left")
    base = path.rstrip("/")
    for s in splits:
        r = split_summary(s)
        table.add_row(s[len(base) + 1:] or posixpath.basename(base), str(r["items"]), str(r["items_dim"]), str(r["captions"]), str(r["captions_dim"]),
                      str(r["rejected"]), r["encoders"], "yes" if r["manifest"] else "no")
    console = Console()
    Console(width=max(console.width, 140) if not console.is_terminal else None).print(table)
    print(f"e2i store info: {len(splits)} split(s) under {path}")
    return 0


def _add_import_legacy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="legacy cache: a directory (or a *_image_embeddings.pt file)")
    parser.add_argument("--out", required=True, help="split directory to write, e.g. stores/clotho/train (or s3://)")
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS),
                        help="legacy format (default: detect from the files present)")
    parser.add_argument("--captions", default=None,
                        help="parquet format: a text-model directory of the same layout holding caption embeddings")
    parser.add_argument("--modality", default="audio", choices=("audio", "image"),
                        help="parquet format: what the items are (recorded in the manifest's encoders)")
    parser.add_argument("--dataset", default=None, help="dataset name for the manifest (default: parent dir of --out)")
    parser.add_argument("--split", default=None, help="split name for the manifest (default: last dir of --out)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing split at --out")


def _run_import_legacy(args: argparse.Namespace) -> int:
    manifest = import_legacy(args.src, args.out, fmt=args.format, dataset=args.dataset, split=args.split,
                             captions=args.captions, modality=args.modality, overwrite=args.overwrite)
    c, d = manifest["counts"], manifest["dims"]
    print(f"e2i store import-legacy: {manifest['legacy']['format']} {args.src} -> {args.out}: "
          f"{c['items']} items (dim {d['items']}), {c['captions']} captions (dim {d['captions']})")
    return 0
