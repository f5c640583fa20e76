"""`e2i tune SPACE.yaml`: the command line of :func:`e2i.tune.search.tune_space`.

    e2i tune tune_spaces/default.yaml --num-samples 16
    e2i tune tune_spaces/default.yaml --resume            # after the driver was killed
"""

from __future__ import annotations

import argparse
import sys

from e2i.errors import ConfigError
from e2i.tune.search import tune_space


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("space", help="search space YAML (e.g. tune_spaces/default.yaml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the experiment and its Optuna study after an interruption")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete an existing experiment and study of this space first")
    parser.add_argument("--num-samples", type=int, help="number of trials (search.num_samples)")
    parser.add_argument("--max-concurrent-trials", type=int, help="trials running at once")
    parser.add_argument("--max-t", type=int, help="epochs of a full trial (scheduler.max_t)")
    parser.add_argument("--output-dir", help="root of <output_dir>/<space>/ (storage.output_dir)")
    parser.add_argument("--storage-path", help="Tune results/checkpoints: local dir or s3://bucket/prefix")
    parser.add_argument("--storage",
                        help="Optuna storage URL (default sqlite:///<output_dir>/<space>/optuna.db)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the space file, e.g. --set base.data.store=stores/x "
                             "(repeatable)")
    parser.add_argument("--no-report", action="store_true", help="skip the leaderboard and plots at the end")


def run(args: argparse.Namespace) -> int:
    summary = tune_space(args.space, num_samples=args.num_samples, output_dir=args.output_dir,
                         storage_path=args.storage_path, storage=args.storage, overrides=args.overrides,
                         max_t=args.max_t, max_concurrent_trials=args.max_concurrent_trials,
                         resume=args.resume, overwrite=args.overwrite, report=not args.no_report)
    if not summary.get("best_config"):
        raise ConfigError(f"{args.space}: no trial completed; see the Tune logs under "
                          f"{summary['experiment_dir']}")
    return 0


if __name__ == "__main__":
    from e2i.cli import main

    sys.exit(main(["tune", *sys.argv[1:]]))
