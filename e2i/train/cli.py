"""`e2i train CONFIG`: the command line of :func:`e2i.train.driver.fit` and, with ``--seeds``, of
:func:`e2i.train.seeds.fit_seeds`.

    e2i train configs/siglip.yaml --set optim.lr=1e-4 --num-workers 2
    e2i train configs/siglip.yaml --seeds 0,1,2          # mean ± std over seeds
    e2i train configs/siglip.yaml --resume               # continue from the last checkpoint
"""

from __future__ import annotations

import argparse
import sys

from e2i.config import TrainConfig, load_train_config
from e2i.errors import ConfigError
from e2i.train.driver import fit
from e2i.train.seeds import fit_seeds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", help="train config YAML (e.g. configs/siglip.yaml or <run dir>/config.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=1e-4 (repeatable)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in <output_dir>/<name>/ from its last checkpoint",
    )
    parser.add_argument(
        "--num-workers", type=int,
        help="data-parallel workers (scaling.num_workers); 1 CPU worker trains in-process, more use Ray Train"
    )
    parser.add_argument(
        "--use-gpu",
        action="store_true",
        default=None,
        help="request one GPU per worker (CPU fallback when there is none)",
    )
    parser.add_argument(
        "--use-wandb",
        action="store_true",
        default=None,
        help="log to Weights & Biases (offline mode when WANDB_API_KEY is unset)",
    )
    parser.add_argument("--wandb-project", help="W&B project (logging.wandb_project)")
    parser.add_argument("--wandb-entity", help="W&B entity/team (logging.wandb_entity)")
    parser.add_argument("--run-name", help="W&B run name (logging.run_name; default: the config name)")
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2: train each, report mean ± std")
    parser.add_argument(
        "--no-evaluate", action="store_true", help="skip the test-split evaluation after training"
    )
    parser.add_argument("--output-dir", help="root of run directories (output_dir; default: results)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config file with --set overrides, then the dedicated flags on top."""
    flags = {
        "scaling.num_workers": args.num_workers,
        "scaling.use_gpu": args.use_gpu,
        "logging.use_wandb": args.use_wandb,
        "logging.wandb_project": args.wandb_project,
        "logging.wandb_entity": args.wandb_entity,
        "logging.run_name": args.run_name,
        "output_dir": args.output_dir,
    }
    extra = [f"{k}={v}" for k, v in flags.items() if v is not None]
    return load_train_config(args.config, [*args.overrides, *extra])


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: expected distinct comma-separated integers like 0,1,2, got {text!r}")
    return seeds


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.seeds:
        fit_seeds(cfg, parse_seeds(args.seeds), resume=args.resume, evaluate=not args.no_evaluate)
    else:
        fit(cfg, resume=args.resume, evaluate=not args.no_evaluate)
    return 0


if __name__ == "__main__":
    from e2i.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
