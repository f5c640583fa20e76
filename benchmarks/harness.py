"""What every benchmark script shares: result rows with targets, the table, the CLI flags, Ray start-up.

A benchmark measures two things in the same process (e.g. the Ray pipeline and a bare loop doing the
same work) and reports their ratio next to a target, so the machine's speed and noise cancel out.
Each script exposes ``run(quick=False, ...) -> list[Result]`` (callable in-process, e.g. from tests with
an already running Ray) and ``main(argv=None)`` (parses ``--quick/--json``, starts its own Ray, prints
the table, writes the rows as JSON for ``run_all.py``); for the scripts on Ray that ``main`` is
:func:`ray_main`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/x.py` from anywhere imports the repo's e2i
    sys.path.insert(0, str(REPO))


# --------------------------------------------------------------------------------------------------
# Result rows


@dataclass
class Result:
    """One measured figure: ``ratio`` compared with ``target`` (``op`` is '>=' or '<='; None = report only).

    ``measured`` is the human-readable pair behind the ratio (e.g. '812 rows/s vs 870 rows/s');
    ``note`` says how it was measured or why a target is missed.
    """

    benchmark: str
    figure: str
    measured: str
    ratio: float | None = None
    op: str | None = None  # ">=" | "<=" | None
    target: float | None = None
    unit: str = "x"  # how the ratio is shown: "x" (1.23x), "%" (45.6%) or "pt" (a difference: -0.8 pt)
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.op is None or self.target is None or self.ratio is None or not math.isfinite(self.ratio):
            return None
        return self.ratio >= self.target if self.op == ">=" else self.ratio <= self.target

    def ratio_text(self) -> str:
        if self.ratio is None:
            return "-"
        return self._show(self.ratio, ratio=True)

    def _show(self, value: float, ratio: bool = False) -> str:
        if self.unit == "%":
            return f"{100 * value:.1f}%" if ratio else f"{100 * value:.0f}%"
        if self.unit == "pt":
            return f"{100 * value:+.1f} pt"
        return f"{value:.3g}x" if ratio else f"{value:g}x"

    def target_text(self) -> str:
        if self.op is None or self.target is None:
            return "(report)"
        return f"{'≥' if self.op == '>=' else '≤'} {self._show(self.target)}"

    def status(self) -> str:
        return {True: "met", False: "MISSED", None: "-"}[self.met]

    def to_dict(self) -> dict:
        return {**asdict(self), "met": self.met}


def result_from_dict(d: dict) -> Result:
    return Result(**{k: v for k, v in d.items() if k != "met"})


def print_table(results: list[Result], title: str) -> None:
    """The results as a rich table: benchmark, figure, measured, ratio, target, met/missed."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for name, justify in (("benchmark", "left"), ("figure", "left"), ("measured", "left"),
                          ("ratio", "right"), ("target", "right"), ("status", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for r in results:
        table.add_row(r.benchmark, r.figure, r.measured, r.ratio_text(), r.target_text(), r.status())
    Console(width=max(Console().width, 160)).print(table)


def markdown_table(results: list[Result]) -> str:
    lines = ["| benchmark | figure | measured | ratio | target | status |", "|---|---|---|---:|---:|---|"]
    for r in results:
        cells = (r.benchmark, r.figure, r.measured, r.ratio_text(), r.target_text(), r.status())
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Timing


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, return value) of one call."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` calls in seconds (the least disturbed by other load on the machine)."""
    return min(timed(fn)[0] for _ in range(max(1, repeats)))


# --------------------------------------------------------------------------------------------------
# Command line and Ray


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds): checks the script, not the machine")
    p.add_argument("--json", help="also write the result rows to this JSON file (used by run_all.py)")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="logical CPUs of the local Ray instance (default: os.cpu_count())")
    p.add_argument("--work-dir", help="scratch directory (default: a new temp dir, removed at the end)")
    return p


def quiet_environment() -> None:
    """Environment for a benchmark process: offline, Agg plots, Ray token auth from env (no ~/.ray file)."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@contextlib.contextmanager
def local_ray(num_cpus: int | None, *, object_store_gb: float | None = None,
              env_vars: dict[str, str] | None = None) -> Iterator[bool]:
    """A local Ray instance for the block unless one is already running (tests: ``ray_local``).

    Yields True if this call started it (and shuts it down at the end). Ray's session files go to a
    temp dir that is removed afterwards.

    Ray starts its worker processes at nice 15 (``RAY_worker_niceness``) so the raylet and drivers
    win on a busy machine. A benchmark compares Ray workers with a bare loop in this (nice 0)
    process, so workers are started at nice 0 too: otherwise any other load on the machine would
    slow the Ray side alone (measured: 0.08x instead of ~1x for head training at load average 20).
    """
    import ray

    if ray.is_initialized():
        yield False
        return
    os.environ.setdefault("RAY_worker_niceness", "0")  # read by the raylet started below
    tmp = tempfile.mkdtemp(prefix="e2i-bench-ray-")
    kwargs: dict = {"num_cpus": num_cpus or os.cpu_count(), "include_dashboard": False, "_temp_dir": tmp,
                    "configure_logging": False, "log_to_driver": False}
    if object_store_gb:
        kwargs["object_store_memory"] = int(object_store_gb * (1 << 30))
    if env_vars:
        kwargs["runtime_env"] = {"env_vars": env_vars}
    ray.init(**kwargs)
    try:
        yield True
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def ray_worker_niceness() -> int:
    """The nice value of a Ray worker process of the running instance (15 = Ray's default)."""
    import ray

    @ray.remote(num_cpus=0)
    def nice() -> int:
        return os.nice(0)

    return int(ray.get(nice.remote()))


@contextlib.contextmanager
def work_dir(path: str | None, prefix: str) -> Iterator[Path]:
    """``path`` (kept) or a fresh temp dir (removed at the end)."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def finish(results: list[Result], title: str, json_path: str | None) -> int:
    """Print the table, write JSON if asked; exit code 0 (a missed target is a finding, not a failure)."""
    print_table(results, title)
    if json_path:
        Path(json_path).write_text(json.dumps([r.to_dict() for r in results], indent=1))
    return 0


def ray_main(argv: list[str] | None, doc: str, title: str, run: Callable[..., list[Result]], *,
             omp_threads: bool = False, setup: Callable[[], None] | None = None) -> int:
    """The ``main()`` of a benchmark on Ray: parse :func:`parser`'s flags (description: ``doc``'s first
    line), start a local Ray of ``--num-cpus`` CPUs (default: all; ``omp_threads``: its workers get
    ``OMP_NUM_THREADS`` = that many, like this process's torch), call ``setup()`` and then
    ``run(quick=..., work=...)`` in it, and :func:`finish` with ``title``."""
    args = parser(doc.splitlines()[0]).parse_args(argv)
    quiet_environment()
    cpus = args.num_cpus or os.cpu_count() or 1
    with local_ray(cpus, env_vars={"OMP_NUM_THREADS": str(cpus)} if omp_threads else None):
        if setup is not None:
            setup()
        results = run(quick=args.quick, work=Path(args.work_dir) if args.work_dir else None)
    return finish(results, title, args.json)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def fmt_rate(x: float, unit: str) -> str:
    return f"{x:,.0f} {unit}" if x >= 100 else f"{x:.3g} {unit}"
