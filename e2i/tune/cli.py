"""`e2i tune SPACE.yaml`: the command line of :func:`e2i.tune.search.tune_space`.

    e2i tune tune_spaces/default.yaml --num-samples 16
    e2i tune tune_spaces/default.yaml --resume            # after the driver was killed
    e2i tune tune_spaces/default.yaml --time-budget 10m   # trials until 10 minutes are spent; Ctrl-C
                                                          # ends early and exports the best so far
    e2i tune --from-wandb-sweep sweep.yaml --print-space  # a W&B sweep (or --from-optuna-yaml) as an
                                                          # e2i space (e2i.tune.sweeps); without
                                                          # --print-space it runs
"""

from __future__ import annotations

import argparse
import sys

from e2i.errors import ConfigError
from e2i.tune.search import parse_duration, tune_space


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("space", nargs="?", help="search space YAML (e.g. tune_spaces/default.yaml)")
    parser.add_argument("--from-wandb-sweep", metavar="SWEEP.yaml", help="convert a W&B sweep (and run it)")
    parser.add_argument("--from-optuna-yaml", metavar="FILE.yaml", help="convert an Optuna YAML (and run it)")
    parser.add_argument("--print-space", action="store_true", help="with --from-*: print the space, no run")
    parser.add_argument("--output", help="with --from-*: write the space to this file")
    parser.add_argument("--resume", action="store_true",
                        help="continue the experiment and its Optuna study after an interruption")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete an existing experiment and study of this space first")
    parser.add_argument("--num-samples", type=int, help="number of trials (search.num_samples)")
    parser.add_argument("--max-concurrent-trials", type=int, help="trials running at once")
    parser.add_argument("--max-t", type=int, help="epochs of a full trial (scheduler.max_t)")
    parser.add_argument("--time-budget", type=_duration, metavar="DURATION",
                        help="stop after this wall time (90s, 10m, 1h, seconds); trials keep coming until "
                             "then unless --num-samples is also given")
    parser.add_argument("--output-dir", help="root of <output_dir>/<space>/ (storage.output_dir)")
    parser.add_argument("--storage-path", help="Tune results/checkpoints: local dir or s3://bucket/prefix")
    parser.add_argument("--storage",
                        help="Optuna storage URL (default sqlite:///<output_dir>/<space>/optuna.db)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the space file, e.g. --set base.data.store=stores/x "
                             "(repeatable)")
    parser.add_argument("--no-report", action="store_true", help="skip the leaderboard and plots at the end")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from e2i.tune.sweeps import space_to_run

    args.space = space_to_run(args)  # the converted file with --from-*; None: printed, nothing to run
    if args.space is None:
        return 0
    summary = tune_space(args.space, num_samples=args.num_samples, output_dir=args.output_dir,
                         storage_path=args.storage_path, storage=args.storage, overrides=args.overrides,
                         max_t=args.max_t, max_concurrent_trials=args.max_concurrent_trials,
                         resume=args.resume, overwrite=args.overwrite, report=not args.no_report,
                         time_budget_s=args.time_budget)
    if not summary.get("best_config"):
        raise ConfigError(f"{args.space}: no trial completed; see the Tune logs under "
                          f"{summary['experiment_dir']}")
    return 0


if __name__ == "__main__":
    from e2i.cli import main

    sys.exit(main(["tune", *sys.argv[1:]]))
