"""Several seeds of one config (``e2i train CONFIG --seeds 0,1,2``): one run per seed under
``<run_dir>/seed<S>/``, then mean ± std (sample std, ddof=1) of the test (or best validation) metrics
in ``<run_dir>/seeds.json`` and a table on the console.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from e2i.config import TrainConfig
from e2i.train.driver import epoch_checkpoints, fit


def fit_seeds(cfg: TrainConfig, seeds: list[int], *, resume: bool = False, evaluate: bool = True) -> dict:
    """Train one run per seed under ``<run_dir>/seed<S>/`` and summarise mean ± std over seeds.

    Summarised: the test metrics when evaluated, else the best validation metrics. Writes
    ``<run_dir>/seeds.json`` and prints a table. With ``resume``, seeds that have checkpoints resume.
    """
    runs = []
    for seed in seeds:
        sub = cfg.replace({"seed": seed, "name": f"seed{seed}", "output_dir": cfg.run_dir})
        runs.append(fit(sub, resume=resume and bool(epoch_checkpoints(sub.run_dir)), evaluate=evaluate))
    summary = {
        "name": cfg.name,
        "seeds": seeds,
        "summary": seed_summary(runs, "test" if evaluate else "best"),
    }
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.run_dir) / "seeds.json").write_text(json.dumps(summary, indent=1))
    print_seed_table(summary)
    return summary


def seed_summary(runs: list[dict], section: str) -> dict[str, dict]:
    """{metric: {mean, std (sample, ddof=1; 0 for one seed), values}} over runs[i][section] scalars."""
    keys = [
        k
        for k, v in runs[0][section].items()
        if isinstance(v, (int, float))
        and not k.endswith("num_queries")
        and k not in ("epoch", "step")
        and not k.startswith("time/")
    ]
    out = {}
    for key in keys:
        values = np.array([float(r[section][key]) for r in runs])
        out[key] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "values": values.tolist(),
        }
    return out


def print_seed_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['name']}: mean ± std over seeds {', '.join(map(str, summary['seeds']))}")
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    table.add_column("per seed", justify="right")
    for key, s in summary["summary"].items():
        table.add_row(key, f"{s['mean']:.4f} ± {s['std']:.4f}", "  ".join(f"{v:.4f}" for v in s["values"]))
    Console().print(table)
