"""The `e2i` command: one subcommand per pipeline stage.

    e2i cache ...      corpus -> embeddings in the parquet store (Ray Data)
    e2i train CONFIG   projection heads on a store (Ray Train)
    e2i --help         lists the stages; `e2i <stage> --help` lists every flag of a stage

Each stage module exposes `add_arguments(parser)` and `run(args) -> int`; only the stage being run
is imported, so `e2i --help` stays fast. User errors (E2IError) print one line and exit 2, I/O errors
(OSError, StoreWriteError: disk full, read-only, unreachable storage) one line and exit 1; pass
`--debug` for the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from e2i import __version__
from e2i.errors import E2IError

# stage -> (module, one-line description). Order is the pipeline order shown in --help.
STAGES: dict[str, tuple[str, str]] = {
    "toy": ("e2i.corpus.toy", "write the built-in toy audio-caption corpus (Clotho layout)"),
    "download": ("e2i.corpus.download", "download a public corpus (Clotho v2.1) with checksums and resume"),
    "cache": ("e2i.cache.cli", "embed a corpus into the parquet store with Ray Data actor pools"),
    "images": ("e2i.cache.image_export", "export store embeddings as RGB pseudo-images"),
    "store": ("e2i.store.cli", "inspect, verify and import stores"),
    "split": ("e2i.store.splits", "item-level train/train_subset/val/test splits of a store"),
    "train": ("e2i.train.cli", "train projection heads on a store with Ray Train"),
    "evaluate": ("e2i.evaluate.evaluation", "Recall@K, mAP@10 and plots for a trained model"),
    "compare": ("e2i.evaluate.compare", "paired bootstrap difference of two runs on the same test split"),
    "baseline": ("e2i.evaluate.baselines", "closed-form baselines (cosine, CCA, PLS, ridge, Procrustes) on a store"),
    "tune": ("e2i.tune.cli", "search heads, losses and hyper-parameters with Ray Tune + Optuna"),
    "report": ("e2i.tune.report", "leaderboard and plots of a tune experiment"),
    "finetune": ("e2i.finetune.cli", "fine-tune PaSST + RoBERTa end to end (Lightning on Ray Train)"),
    "demo": ("e2i.demo", "the whole pipeline on the built-in toy corpus, no downloads"),
}


def _selected_stage(argv: Sequence[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token if token in STAGES else None
    return None


def build_parser(stage: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; the arguments of `stage` (if given) are filled in from its module."""
    parser = argparse.ArgumentParser(
        prog="e2i",
        description="Embed2Image contrastive retrieval: cache -> store -> train -> tune -> evaluate.",
        epilog="Run `e2i <stage> --help` for the flags of a stage.",
    )
    parser.add_argument("--version", action="version", version=f"e2i {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name, (module, help_text) in STAGES.items():
        stage_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == stage:
            mod = importlib.import_module(module)
            mod.add_arguments(stage_parser)
            stage_parser.set_defaults(_run=mod.run)
    return parser


# Flags (argparse dests) that name local paths: resolved against the caller's cwd right after parsing,
# before a stage hands anything to Ray (see e2i.paths; URIs pass through). Config/space files are
# read on the driver and keep the name the user typed (error messages quote it).
PATH_ARGS = ("metadata", "cache_dir", "root", "out", "src", "dir", "store", "images_dir", "experiment",
             "checkpoint", "output_dir", "storage_path", "data_root", "mirror", "init_weights", "relevance")
MODEL_ARGS = ("text_model", "image_model")


def resolve_path_args(args: argparse.Namespace) -> argparse.Namespace:
    """Every PATH_ARGS value (or list of values) made absolute in place."""
    from e2i.paths import resolve_path

    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value:
            setattr(args, name, resolve_path(value))
        elif isinstance(value, list):
            setattr(args, name, [resolve_path(v) if isinstance(v, str) and v else v for v in value])
    for name in MODEL_ARGS:  # a hub id unless it names an existing local directory
        value = getattr(args, name, None)
        if isinstance(value, str) and value and os.path.exists(value):
            setattr(args, name, resolve_path(value))
    return args


def os_error_message(exc: OSError) -> str:
    """One line for an I/O error: 'path: reason' when Python knows the path, else the first line."""
    if exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_selected_stage(argv))
    args = resolve_path_args(parser.parse_args(argv))
    try:
        return int(args._run(args) or 0)
    except E2IError as exc:
        if args.debug:
            raise
        print(f"e2i: error: {exc}", file=sys.stderr)
        return exc.exit_code  # 2: the input is wrong; 1: storage failed (StoreWriteError)
    except OSError as exc:  # disk full, read-only or missing output dir, object storage unreachable
        if args.debug:
            raise
        print(f"e2i: error: {os_error_message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("e2i: interrupted (completed work is kept; re-run to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
