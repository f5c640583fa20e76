"""`e2i report EXPERIMENT_DIR`: leaderboard and plots of a tune experiment.

    e2i report results/default          # written by `e2i tune tune_spaces/default.yaml`

Reads ``experiment.json`` (written by e2i tune), the Optuna study it names (SQLite by default) and
Tune's per-trial ``result.json`` files (local or s3://). Writes ``<experiment_dir>/report/``:

    leaderboard.csv / leaderboard.txt   one row per trial, best first (rich table on the console)
    optimization_history.png            objective per trial, best so far; pruned trials as crosses
    param_importances.png               Optuna's importances over complete trials (needs >= 2;
                                        otherwise the plot says why)
    parallel_coordinates.png            one line per finished trial across the parameters
    asha_learning_curves.png            validation metric per epoch with the rungs, and the values
                                        each rung compared (promoted vs stopped there)
    best_so_far_time.png                best objective so far against wall-clock seconds since the
                                        first trial started, the best closed-form baseline as a line
    report.html                         all of the above in one self-contained page

Conventions: "value" is the trial's objective, ``best/<metric>`` = best validation value within the
trial; for a pruned trial it is the value when ASHA stopped it. "epochs" = epochs the trial ran.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from e2i.errors import E2IError

STATE_COLORS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red", "RUNNING": "tab:gray",
                "WAITING": "tab:gray"}


@dataclass
class TrialRow:
    number: int
    state: str  # COMPLETE | PRUNED (stopped by ASHA) | FAIL | RUNNING | WAITING
    value: float | None
    params: dict[str, Any]
    epochs: int
    curve: dict[int, float] = field(default_factory=dict)  # epoch -> objective (Optuna intermediate)
    history: list[dict] = field(default_factory=list)  # Tune's per-epoch results, when readable
    started: float | None = None  # POSIX seconds (Optuna's datetime_start / datetime_complete)
    finished: float | None = None


# --------------------------------------------------------------------------------------------------
# Reading


def read_experiment(experiment_dir: str | os.PathLike, storage: str | None = None) -> tuple[dict, Any]:
    """(experiment.json, optuna Study)."""
    import optuna

    path = Path(experiment_dir) / "experiment.json"
    if not path.is_file():
        raise E2IError(f"{path}: not a tune experiment (no experiment.json; run `e2i tune` first)")
    info = json.loads(path.read_text())
    url = storage or info["optuna_storage"]
    if "***" in url:
        raise E2IError(f"{path}: the Optuna storage URL has a password; pass it with --storage")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=info["study_name"], storage=url)
    except KeyError:
        raise E2IError(f"{url}: no study named {info['study_name']!r}") from None
    return info, study


def read_tune_results(experiment: str) -> dict[int, list[dict]]:
    """{optuna trial number: [result rows]} from Tune's ``<trial dir>/result.json`` (local or s3://)."""
    import pyarrow.fs as pafs

    from e2i.store import open_fs

    try:
        fs, root = open_fs(experiment)
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=False, allow_not_found=True))
    except Exception:  # noqa: BLE001 - the report still works from the study alone
        return {}
    out: dict[int, list[dict]] = {}
    for info in infos:
        if info.type != pafs.FileType.Directory:
            continue
        try:
            with fs.open_input_stream(f"{info.path}/result.json") as f:
                rows = [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
        except (OSError, ValueError):
            continue
        number = (rows[0].get("config") or {}).get("optuna_trial") if rows else None
        if number is not None:
            out.setdefault(int(number), []).extend(rows)
    for rows in out.values():
        rows.sort(key=lambda r: (r.get("epoch", 0), r.get("training_iteration", 0)))
    return out


def trial_rows(study, results: dict[int, list[dict]] | None = None) -> list[TrialRow]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        curve = dict(sorted(t.intermediate_values.items()))
        history = (results or {}).get(t.number, [])
        epochs = max([*curve, *(int(r.get("epoch", 0)) for r in history), 0])
        value = t.value if t.value is not None else (curve[max(curve)] if curve else None)
        start, end = (d.timestamp() if d else None for d in (t.datetime_start, t.datetime_complete))
        rows.append(TrialRow(t.number, t.state.name, value, dict(t.params), epochs, curve, history, start, end))
    return rows


def ranked(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    """Complete by value, then pruned by (epochs desc, value), then the rest (TPE's order too)."""
    sign = -1.0 if mode == "max" else 1.0

    def key(r: TrialRow):
        v = sign * r.value if r.value is not None and math.isfinite(r.value) else math.inf
        group = {"COMPLETE": 0, "PRUNED": 1}.get(r.state, 2)
        return (group, -r.epochs if group == 1 else 0, v, r.number)

    return sorted(rows, key=key)


# --------------------------------------------------------------------------------------------------
# Leaderboard


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def leaderboard(rows: list[TrialRow], info: dict,
                base: dict | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, table rows) with head, loss, the other params compactly, value, epochs, ASHA stop."""
    base = base or {}
    header = ["rank", "trial", "head", "loss", "params", info["metric"], "epochs", "stopped by ASHA", "state"]
    table = []
    for rank, r in enumerate(ranked(rows, info["mode"]), 1):
        head = r.params.get("model.type", base.get("model", {}).get("type", "?"))
        loss = r.params.get("loss.type", base.get("loss", {}).get("type", "?"))
        others = ", ".join(f"{k.split('.', 1)[-1]}={_short(v)}" for k, v in r.params.items()
                           if k not in ("model.type", "loss.type"))
        value = f"{r.value:.4f}" if r.value is not None and math.isfinite(r.value) else "-"
        table.append([str(rank), str(r.number), str(head), str(loss), others, value, str(r.epochs),
                      "yes" if r.state == "PRUNED" else "no", r.state])
    return header, table


def print_leaderboard(header: list[str], table: list[list[str]], title: str,
                      path: Path | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for name in header:
        numeric = name in ("rank", "trial", "epochs")
        t.add_column(name, overflow="fold", justify="right" if numeric else "left")
    for row in table:
        t.add_row(*row)
    console = Console(record=path is not None, width=max(120, Console().width))
    console.print(t)
    if path is not None:
        path.write_text(console.export_text())


# --------------------------------------------------------------------------------------------------
# Plots


def plot_history(rows: list[TrialRow], info: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sign = 1 if info["mode"] == "max" else -1
    best, best_line = None, []
    for r in sorted(rows, key=lambda r: r.number):
        if r.value is None or not math.isfinite(r.value):
            continue
        marker = "o" if r.state == "COMPLETE" else "x"
        ax.scatter([r.number], [r.value], marker=marker, color=STATE_COLORS.get(r.state, "k"), zorder=3)
        if r.state == "COMPLETE" and (best is None or sign * r.value > sign * best):
            best = r.value
        best_line.append((r.number, best))
    steps = [(n, b) for n, b in best_line if b is not None]
    if steps:
        xs, ys = zip(*steps)
        ax.step(xs, ys, where="post", color="tab:green", label="best complete so far")
    for state, color in STATE_COLORS.items():
        if any(r.state == state for r in rows):
            ax.scatter([], [], color=color, marker="o" if state == "COMPLETE" else "x",
                       label=state.lower() + (" (ASHA)" if state == "PRUNED" else ""))
    ax.set(xlabel="trial", ylabel=info["metric"], title=f"optimisation history: {info['space']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def param_importances(study) -> tuple[dict[str, float], str]:
    """({param: importance}, reason if empty): Optuna's default evaluator (PED-ANOVA in Optuna 5,
    which copes with conditional params) over the complete trials."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, f"needs >= 2 complete trials (have {len(complete)})"
    try:
        with warnings.catch_warnings():  # "some regimes have < 2 trials": expected for small searches
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:
        return {}, str(exc).splitlines()[0]
    if not importances:
        return {}, "no parameter present in every complete trial"
    return importances, ""


def _count_complete(study) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def plot_importances(study, path: Path) -> Path:
    importances, reason = param_importances(study)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.4 * len(importances) + 1)))
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set(xlabel="importance (Optuna's default evaluator, normalised)",
               title=f"parameter importances ({_count_complete(study)} complete trials)")
    else:
        ax.text(0.5, 0.5, f"parameter importances unavailable:\n{reason}", ha="center", va="center",
                wrap=True)
        ax.set_axis_off()
    return _save(fig, path)


def plot_parallel(rows: list[TrialRow], info: dict, path: Path) -> Path:
    """Axes = parameters (numeric: min-max scaled, log where the range spans > 20x; categorical:
    evenly spaced levels), colour = value; pruned trials dashed."""
    finished = [r for r in rows if r.value is not None and math.isfinite(r.value) and r.params]
    seen = {k for r in finished for k in r.params}
    names = [k for k in info.get("params", []) if k in seen] + sorted(seen - set(info.get("params", [])))
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(names) + 2), 5))
    if not finished or not names:
        ax.text(0.5, 0.5, "no finished trials", ha="center", va="center")
        ax.set_axis_off()
        return _save(fig, path)
    scaled, labels = {}, {}
    for name in names:
        values = [r.params.get(name) for r in finished]
        scaled[name], labels[name] = _scale_axis([v for v in values if v is not None])
    vals = np.array([r.value for r in finished])
    norm = plt.Normalize(vals.min(), vals.max() if vals.max() > vals.min() else vals.min() + 1e-9)
    cmap = plt.get_cmap("viridis" if info["mode"] == "max" else "viridis_r")
    for r in sorted(finished, key=lambda r: r.value if info["mode"] == "max" else -r.value):
        ys = [scaled[n](r.params[n]) if n in r.params else np.nan for n in names]
        ax.plot(range(len(names)), ys, color=cmap(norm(r.value)), alpha=0.85,
                linestyle="-" if r.state == "COMPLETE" else "--", linewidth=1.4)
    for i, name in enumerate(names):
        ax.axvline(i, color="k", linewidth=0.6)
        for y, text in labels[name]:
            ax.text(i + 0.03, y, text, fontsize=7, va="center")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set(yticks=[], ylim=(-0.05, 1.05), title="parallel coordinates (solid: complete, dashed: pruned)")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=info["metric"])
    return _save(fig, path)


def _scale_axis(values: list) -> tuple[Any, list[tuple[float, str]]]:
    """A map value -> [0, 1] and tick labels for one parallel-coordinates axis."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not numeric or len(set(values)) <= 1:
        levels = sorted(set(map(str, values)))
        pos = {lv: (i + 0.5) / len(levels) for i, lv in enumerate(levels)} if levels else {}
        return (lambda v: pos.get(str(v), np.nan)), [(p, lv) for lv, p in pos.items()]
    lo, hi = float(min(values)), float(max(values))
    use_log = lo > 0 and hi / lo > 20
    f = (lambda v: math.log(v)) if use_log else float
    a, b = f(lo), f(hi)
    return (lambda v: (f(v) - a) / (b - a)), [(0.0, _short(lo)), (1.0, _short(hi))]


def plot_learning_curves(rows: list[TrialRow], info: dict, path: Path) -> Path:
    """Left: validation metric per epoch per trial (Tune's results; the objective otherwise), rungs
    as vertical lines. Right: per rung, the values ASHA compared, promoted vs stopped at that rung."""
    rungs = info.get("rungs", [])
    metric = info["metric"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    for r in rows:
        if r.history and any(metric in h for h in r.history):
            xs = [h["epoch"] for h in r.history if metric in h]
            ys = [h[metric] for h in r.history if metric in h]
        else:
            xs, ys = list(r.curve), list(r.curve.values())
        if xs:
            left.plot(xs, ys, "-", marker=".", color=STATE_COLORS.get(r.state, "k"), alpha=0.7, linewidth=1)
    for t in rungs:
        left.axvline(t, color="k", linestyle=":", linewidth=0.8)
    for state in ("COMPLETE", "PRUNED", "FAIL"):
        if any(r.state == state for r in rows):
            label = state.lower() + (" (stopped by ASHA)" if state == "PRUNED" else "")
            left.plot([], [], color=STATE_COLORS[state], label=label)
    left.set(xlabel="epoch", ylabel=metric, title=f"learning curves (rungs at {rungs or 'none'})")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    for i, t in enumerate(rungs):
        reached = [r for r in rows if t in r.curve and math.isfinite(r.curve[t])]
        promoted = [r.curve[t] for r in reached if r.epochs > t]
        stopped = [r.curve[t] for r in reached if r.epochs <= t]
        jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(promoted) + len(stopped))
        right.scatter(i + jitter[: len(promoted)], promoted, color="tab:blue", s=18,
                      label="went on" if i == 0 else None)
        right.scatter(i + jitter[len(promoted):], stopped, color="tab:orange", marker="x", s=22,
                      label="stopped here" if i == 0 else None)
    right.set_xticks(range(len(rungs)), [f"epoch {t}" for t in rungs])
    right.set(title="values compared at each rung", ylabel=f"best/{metric}")
    right.grid(alpha=0.3)
    if rungs:
        right.legend(fontsize=8)
    return _save(fig, path)


def plot_time(rows: list[TrialRow], info: dict, path: Path, baseline: tuple[dict, str] | None) -> Path:
    """Best-so-far objective against wall-clock seconds since the first trial started."""
    from e2i.evaluate.plots import plot_best_so_far

    t0 = min((r.started for r in rows if r.started is not None), default=None)
    done = [r for r in rows if t0 is not None and r.finished is not None and r.value is not None
            and math.isfinite(r.value) and r.state in ("COMPLETE", "PRUNED")]
    line = (f"{baseline[0]['name']} (val)", float(baseline[0]["metrics"][baseline[1]])) if baseline else None
    return plot_best_so_far([r.finished - t0 for r in done], [r.value for r in done], path,
                            complete=[r.state == "COMPLETE" for r in done], mode=info["mode"], metric=info["metric"],
                            baseline=line, title=f"{info['space']}: best so far against wall time")

def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# Entry points


def make_report(experiment_dir: str | os.PathLike, *, storage: str | None = None,
                quiet: bool = False) -> dict:
    """Write ``<experiment_dir>/report/`` and print the leaderboard; returns paths and the rows."""
    from e2i.evaluate import html_report as h

    exp = Path(experiment_dir)
    info, study = read_experiment(exp, storage)
    rows = trial_rows(study, read_tune_results(info["tune_experiment"]))
    out = exp / "report"
    out.mkdir(parents=True, exist_ok=True)
    base = info.get("base", {})
    header, table = leaderboard(rows, info, base)
    with (out / "leaderboard.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *table])
    title = f"{info['space']}: {len(rows)} trials, objective best/{info['metric']} ({info['mode']})"
    if quiet:
        print_leaderboard(header, table[:10], title + " (top 10)", out / "leaderboard.txt")
    else:
        print_leaderboard(header, table, title, out / "leaderboard.txt")
    plots = [plot_history(rows, info, out / "optimization_history.png"),
             plot_importances(study, out / "param_importances.png"),
             plot_parallel(rows, info, out / "parallel_coordinates.png"),
             plot_learning_curves(rows, info, out / "asha_learning_curves.png")]
    baseline = h.tune_baseline(info, out)
    plots.append(plot_time(rows, info, out / "best_so_far_time.png", baseline))
    html = h.tune_page(out / "report.html", title, header, table, plots, baseline, info)
    if not quiet:
        print(f"e2i report: {len(rows)} trials; leaderboard, {len(plots)} plots and report.html in {out}", flush=True)
    return {"dir": out, "plots": plots, "leaderboard": out / "leaderboard.csv", "rows": rows, "html": html}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment",
                        help="tune experiment dir: <output_dir>/<space> (holds experiment.json)")
    parser.add_argument("--storage", help="Optuna storage URL, if not the one in experiment.json")


def run(args: argparse.Namespace) -> int:
    make_report(args.experiment, storage=args.storage)
    return 0
