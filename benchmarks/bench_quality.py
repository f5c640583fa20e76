"""Quality: does e2i beat what a person gets by hand, on real data, in the same run?

For each data set (the real ones of :mod:`quality_data` plus the toy store when it exists) the rows
are, all on the test split, text->item R@1 with its item-level 95 % interval:

    best closed-form baseline   `e2i baseline DIR`
    reference script            benchmarks/reference_infonce.py (2 MLPs + InfoNCE, 300 epochs)
    configs/<head>.yaml         `e2i train configs/<head>.yaml --set data.store=DIR` (shipped, unchanged)
    tune <B>                    `e2i tune tune_spaces/default.yaml --time-budget B` -> its best config
                                retrained with `e2i train <tune dir>/best_config.yaml`

Every command is the CLI a user runs, in a subprocess, with only the store path changed. Targets
(issue 14): each shipped config >= the best baseline; tune 10m >= 1.1 x max(reference, best
shipped config).

    python benchmarks/bench_quality.py                       # all data sets, budgets 2m,5m,10m (~1.5 h)
    python benchmarks/bench_quality.py --datasets digits-halves --budgets 2m --heads mlp
    python benchmarks/bench_quality.py --quick                # cancer-views, 30 s budget, 30 reference epochs
    python benchmarks/bench_quality.py --datasets cancer-views,toy --budgets none --no-reference  # shipped configs

"best baseline" is `e2i baseline`'s best method **by test R@1** (an oracle pick among 5 methods: a bar at
least as high as the val-picked baseline the shipped configs' warm start keeps). A shipped-config row
marked "(baseline kept)" is a run in which no trained epoch beat its warm-start baseline on val.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402,F401  (puts the repo on sys.path)
import quality_data  # noqa: E402
from harness import REPO, Result  # noqa: E402

HEADS = ("siglip", "clip", "attention", "mlp")
KEY = "text_to_item/recall@1"


def _e2i(*args: str, cwd: Path) -> None:
    cmd = [sys.executable, "-m", "e2i", *args]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-500:]}")


def _test_metrics(run_dir: Path) -> dict:
    saved = json.loads((run_dir / "metrics.json").read_text())
    kept = bool(saved.get("history") and saved["history"][-1].get("warm_start_kept"))
    return {**saved["test"], "baseline_kept": kept}


def _row(name: str, metrics: dict, seconds: float) -> dict:
    return {"row": name, "r@1": metrics[KEY], "ci95": metrics.get(f"{KEY}/ci95"), "seconds": seconds,
            "baseline_kept": metrics.get("baseline_kept", False)}


def quality_rows(store: Path, work: Path, *, heads=HEADS, budgets=("2m", "5m", "10m"),
                 reference_epochs: int = 300, reference: bool = True) -> list[dict]:
    from reference_infonce import reference_run

    work.mkdir(parents=True, exist_ok=True)
    rows = []
    t = time.perf_counter()
    _e2i("baseline", str(store), "--json", str(work / "baselines.json"), cwd=REPO)
    payload = json.loads((work / "baselines.json").read_text())
    best = payload["best"]["method"]
    rows.append(_row(f"baseline ({best})", payload["results"][best], time.perf_counter() - t))
    t = time.perf_counter()
    if reference:
        rows.append(_row("reference script", reference_run(str(store), epochs=reference_epochs),
                         time.perf_counter() - t))
    for head in heads:
        t = time.perf_counter()
        _e2i("train", f"configs/{head}.yaml", "--set", f"data.store={store}", "--output-dir", str(work / "results"),
             cwd=REPO)
        rows.append(_row(f"configs/{head}.yaml", _test_metrics(work / "results" / head), time.perf_counter() - t))
    for budget in budgets:
        t = time.perf_counter()
        out = work / f"tune-{budget}"
        _e2i("tune", "tune_spaces/default.yaml", "--time-budget", budget, "--set", f"base.data.store={store}",
             "--output-dir", str(out), "--overwrite", cwd=REPO)
        best_cfg = next(out.glob("*/best_config.yaml"))
        _e2i("train", str(best_cfg), "--output-dir", str(out / "retrained"), cwd=REPO)
        run_dir = next(p.parent for p in (out / "retrained").glob("*/metrics.json"))
        rows.append(_row(f"tune {budget} -> best config", _test_metrics(run_dir), time.perf_counter() - t))
    return rows


def _verdicts(dataset: str, rows: list[dict]) -> list[Result]:
    by = {r["row"]: r for r in rows}
    base = rows[0]["r@1"]
    out = []
    shipped = [r for r in rows if r["row"].startswith("configs/")]
    for r in shipped:
        out.append(Result("quality", f"{dataset}: {r['row']} vs best baseline", f"{r['r@1']:.4f} vs {base:.4f}",
                          r["r@1"] / max(base, 1e-9), ">=", 1.0))
    bar = max([by["reference script"]["r@1"] if "reference script" in by else 0.0, *(r["r@1"] for r in shipped)])
    for r in rows:
        if r["row"].startswith("tune "):
            target = 1.1 if r["row"].startswith("tune 10m") else None
            out.append(Result("quality", f"{dataset}: {r['row']} vs max(reference, shipped)",
                              f"{r['r@1']:.4f} vs {bar:.4f}", r["r@1"] / max(bar, 1e-9),
                              ">=" if target else None, target))
    return out


def print_table(dataset: str, rows: list[dict]) -> None:
    print(f"\n{dataset}: test text->item R@1 (item-level 95% CI)")
    for r in rows:
        ci = f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]" if r.get("ci95") else ""
        kept = " (baseline kept)" if r.get("baseline_kept") else ""
        print(f"  {r['row']:<34} {r['r@1']:.4f} {ci:<16} {r['seconds']:7.1f} s{kept}")


def run(quick: bool = False, *, work: Path | None = None, datasets=None, budgets=None, heads=HEADS,
        reference: bool = True, toy: Path | None = None) -> list[Result]:
    """``datasets`` may name ``toy`` (the demo store at ``toy``, default ``stores/toy``); ``budgets=()``
    runs no tune; ``reference=False`` skips the reference script (the tune target then uses the
    shipped configs alone)."""
    work = Path(work or REPO / "stores" / "quality-bench")
    names = datasets or (("cancer-views",) if quick else tuple(quality_data.BUILDERS))
    toy = Path(toy or REPO / "stores" / "toy")
    stores = quality_data.build_all(work / "stores", [n for n in names if n != "toy"])
    if (not quick and not datasets or "toy" in names) and (toy / "test" / "manifest.json").is_file():
        stores["toy"] = toy
    budgets = (("30s",) if quick else ("2m", "5m", "10m")) if budgets is None else budgets
    results, tables = [], {}
    for name, store in stores.items():
        rows = quality_rows(store, work / "runs" / name, heads=heads, budgets=budgets,
                            reference_epochs=30 if quick else 300, reference=reference)
        tables[name] = rows
        print_table(name, rows)
        results += _verdicts(name, rows)
    (work / "quality.json").write_text(json.dumps(tables, indent=1))
    return results


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--datasets", help=f"comma-separated subset of {','.join(quality_data.BUILDERS)}")
    p.add_argument("--budgets", help="comma-separated tune budgets, e.g. 2m,5m,10m; 'none': no tune rows")
    p.add_argument("--heads", default=",".join(HEADS))
    p.add_argument("--no-reference", action="store_true", help="skip the reference script")
    p.add_argument("--toy", help="the demo store used for the data set 'toy' (default: stores/toy)")
    a = p.parse_args(argv)
    budgets = None if not a.budgets else () if a.budgets == "none" else tuple(a.budgets.split(","))
    rows = run(a.quick, work=Path(a.work_dir) if a.work_dir else None,
               datasets=tuple(a.datasets.split(",")) if a.datasets else None,
               budgets=budgets, heads=tuple(a.heads.split(",")), reference=not a.no_reference,
               toy=Path(a.toy) if a.toy else None)
    return harness.finish(rows, "quality: e2i vs baselines and a reference script", a.json)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
