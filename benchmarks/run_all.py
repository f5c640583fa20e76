"""Run every benchmark (what `make bench` does) and print one table: figure, ratio, target, met/missed.

Each benchmark script runs in its own subprocess (its own Ray instance and a clean memory baseline),
streams its output, and hands its rows back as JSON. At the end: the machine (CPU model, cores, RAM,
load average, versions), the time each benchmark took and the combined table.

    python benchmarks/run_all.py                       # full sizes, < 20 min on 2 cores
    python benchmarks/run_all.py --quick               # tiny sizes: checks the scripts in ~minutes
    python benchmarks/run_all.py --only evaluation,store_load --markdown results.md
    make bench BENCH_ARGS="--skip demo"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import Result, result_from_dict  # noqa: E402

HERE = Path(__file__).resolve().parent
# name -> script, in the order they run (cheap, Ray-free ones first)
BENCHMARKS = {
    "store_load": "bench_store_load.py",
    "evaluation": "bench_evaluation.py",
    "training": "bench_training.py",
    "streaming": "bench_streaming.py",
    "caching": "bench_caching.py",
    "cache_cluster": "bench_cache_cluster.py",
    "tuning": "bench_tuning.py",
    "concurrency": "bench_concurrency.py",
    "demo": "bench_demo.py",
}
PACKAGES = ("ray", "torch", "numpy", "pyarrow", "optuna", "pandas")


def machine_info() -> dict:
    """CPU model, cores, RAM, OS, load average and library versions of this machine."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "-"
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem_kb / (1 << 20), 1),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "versions": versions, "loadavg": [round(x, 2) for x in os.getloadavg()]}


def machine_text(info: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return (f"{info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, {info['os']}, "
            f"Python {info['python']}; {versions}")


def run_one(name: str, args: argparse.Namespace, tmp: Path) -> tuple[list[Result], float]:
    """Run one benchmark script in a subprocess; returns its rows and wall seconds."""
    out = tmp / f"{name}.json"
    cmd = [sys.executable, str(HERE / BENCHMARKS[name]), "--json", str(out)]
    if args.quick:
        cmd.append("--quick")
    if args.num_cpus and name != "demo":
        cmd += ["--num-cpus", str(args.num_cpus)]
    if name == "demo":
        cmd += [f"--n-items={args.demo_items}"] if args.demo_items else []
        cmd += [f"--tune-samples={args.demo_tune_samples}"] if args.demo_tune_samples is not None else []
    print(f"\n##### benchmark {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    code = subprocess.call(cmd, cwd=harness.REPO)
    seconds = time.perf_counter() - start
    if code != 0 or not out.is_file():
        return [Result(name, "benchmark script failed", f"exit code {code} (see its output above)")], seconds
    return [result_from_dict(d) for d in json.loads(out.read_text())], seconds


def write_markdown(path: Path, info_start: dict, info_end: dict, results: list[Result],
                   durations: dict[str, float], total: float, quick: bool) -> None:
    lines = [
        f"Machine: {machine_text(info_start)}",
        "",
        f"Load average (1/5/15 min) at start: {' / '.join(map(str, info_start['loadavg']))}, "
        f"at end: {' / '.join(map(str, info_end['loadavg']))}",
        "",
        f"Sizes: {'--quick (tiny; not representative)' if quick else 'full'}; total {total / 60:.1f} min "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in durations.items())})",
        "",
        harness.markdown_table(results),
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes for every benchmark (checks the scripts)")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    p.add_argument("--skip", help="comma-separated benchmarks to leave out")
    p.add_argument("--num-cpus", type=int, help="logical CPUs for the benchmarks' Ray instances (default: all)")
    p.add_argument("--demo-items", type=int, help="e2i demo --n-items (default: the demo's 300)")
    p.add_argument("--demo-tune-samples", type=int, help="e2i demo --tune-samples (default: the demo's 8)")
    p.add_argument("--markdown", help="also write machine info + the table as Markdown to this file")
    p.add_argument("--json", help="also write all rows + machine info as JSON to this file")
    args = p.parse_args(argv)

    names = list(BENCHMARKS)
    for flag, keep in (("only", True), ("skip", False)):
        chosen = [s.strip() for s in (getattr(args, flag) or "").split(",") if s.strip()]
        unknown = [s for s in chosen if s not in BENCHMARKS]
        if unknown:
            p.error(f"--{flag}: unknown benchmark {unknown[0]!r} (valid: {', '.join(BENCHMARKS)})")
        if chosen:
            names = [n for n in names if (n in chosen) == keep]

    harness.quiet_environment()
    info_start = machine_info()
    print(f"machine: {machine_text(info_start)}; load average {info_start['loadavg']}", flush=True)
    results: list[Result] = []
    durations: dict[str, float] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="e2i-bench-all-") as tmp:
        for name in names:
            rows, durations[name] = run_one(name, args, Path(tmp))
            results += rows
    total = time.perf_counter() - start
    info_end = machine_info()

    print(f"\nmachine: {machine_text(info_end)}")
    print(f"load average at start {info_start['loadavg']}, at end {info_end['loadavg']}; total {total / 60:.1f} min: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in durations.items()))
    harness.print_table(results, "e2i benchmarks" + (" (--quick: tiny sizes, not representative)" if args.quick else ""))
    met = [r.met for r in results if r.met is not None]
    print(f"targets: {sum(met)} met, {len(met) - sum(met)} missed of {len(met)}")
    if args.markdown:
        write_markdown(Path(args.markdown), info_start, info_end, results, durations, total, args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine_start": info_start, "machine_end": info_end,
                                               "durations_s": durations, "total_s": total,
                                               "results": [r.to_dict() for r in results]}, indent=1))
    failed = [r for r in results if r.figure == "benchmark script failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
