"""benchmarks/: every script runs at --quick size and produces its rows (figure, ratio, target).

These check that the scripts do not rot, not the machine: no timing value is asserted, only that
each figure is measured (a finite ratio) and compared with its stated target. Ray-based ones run
in-process on the shared ``ray_local`` instance (marked slow: each starts Ray Data / Train / Tune).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import harness  # noqa: E402
import run_all  # noqa: E402
from harness import Result  # noqa: E402


def check_rows(rows: list[Result], benchmark: str, min_targets: int) -> None:
    """Every row is of this benchmark and measured; at least ``min_targets`` rows carry a target."""
    assert rows, "no rows"
    for r in rows:
        assert r.benchmark == benchmark
        assert r.figure and r.measured
        if r.ratio is not None:
            assert math.isfinite(r.ratio), r
    targeted = [r for r in rows if r.op is not None]
    assert len(targeted) >= min_targets
    for r in targeted:
        assert r.op in (">=", "<=") and r.target is not None and r.met in (True, False)
        assert r.status() in ("met", "MISSED")


def test_result_compares_ratio_with_target_and_renders_table():
    hit = Result("b", "f", "1 vs 2", ratio=0.95, op=">=", target=0.9)
    miss = Result("b", "g", "3 vs 1", ratio=3.0, op="<=", target=1.5)
    info = Result("b", "h", "x", ratio=0.5, unit="%")
    assert (hit.met, miss.met, info.met) == (True, False, None)
    assert (hit.target_text(), miss.ratio_text(), info.ratio_text()) == ("≥ 0.9x", "3x", "50.0%")
    table = harness.markdown_table([hit, miss, info])
    assert "| b | f | 1 vs 2 | 0.95x | ≥ 0.9x | met |" in table
    assert "MISSED" in table and "(report)" in table
    assert harness.result_from_dict(json.loads(json.dumps(miss.to_dict()))) == miss


def test_run_all_rejects_unknown_benchmark_names(capsys):
    with pytest.raises(SystemExit):
        run_all.main(["--only", "nope"])
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


def test_tree_memory_sees_this_process_and_children():
    import subprocess

    from procmem import TreeMemorySampler, tree_memory

    rss, pss, n = tree_memory()
    assert n >= 1 and rss >= pss > 0
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(64 << 20); time.sleep(3)"])
    try:
        with TreeMemorySampler(interval=0.05) as mem:
            import time

            time.sleep(1.5)
        assert mem.peak.processes >= 2
        assert mem.peak.rss >= rss + (48 << 20)  # the child's 64 MiB buffer is counted
    finally:
        child.kill()
        child.wait()


def test_store_load_quick(tmp_path):
    import bench_store_load

    check_rows(bench_store_load.run(quick=True, work=tmp_path, repeats=1), "store loading", 1)


def test_evaluation_quick():
    import bench_evaluation

    rows = bench_evaluation.run(quick=True, repeats=1)
    check_rows(rows, "evaluation", 3)
    assert "results agree: yes" in rows[2].figure  # chunked == brute force on the benchmark data


def test_store_load_script_writes_json(tmp_path):
    """The script entry point (what run_all calls) prints the table and writes its rows as JSON."""
    import bench_store_load

    out = tmp_path / "rows.json"
    assert bench_store_load.main(["--quick", "--json", str(out), "--work-dir", str(tmp_path / "w"),
                                  "--repeats", "1"]) == 0
    rows = [harness.result_from_dict(d) for d in json.loads(out.read_text())]
    check_rows(rows, "store loading", 1)


@pytest.mark.slow
def test_training_quick(ray_local, tmp_path):
    import bench_training

    check_rows(bench_training.run(quick=True, work=tmp_path), "head training", 1)


@pytest.mark.slow
def test_streaming_quick(ray_local, tmp_path):
    import bench_streaming

    check_rows(bench_streaming.run(quick=True, work=tmp_path), "streaming training", 1)


@pytest.mark.slow
def test_caching_quick(ray_local, tmp_path):
    import bench_caching

    check_rows(bench_caching.run(quick=True, work=tmp_path), "caching", 2)


# bench_cache_cluster (a 3-node cluster and driver subprocesses, independent of the session's Ray) runs at
# --quick size on the identical cluster of tests/reliability/test_multinode_cache.py, in
# test_cache_cluster_benchmark_quick there: one cluster start less.


@pytest.mark.slow
def test_tuning_quick(ray_local, tmp_path):
    import bench_tuning

    check_rows(bench_tuning.run(quick=True, work=tmp_path), "tuning", 3)


@pytest.mark.slow
def test_concurrency_quick(ray_local, tmp_path):
    import bench_concurrency

    check_rows(bench_concurrency.run(quick=True, work=tmp_path), "concurrent trials", 2)


@pytest.mark.slow
def test_demo_quick(tmp_path):
    """The script times whatever steps the demo prints: here a demo without its tune steps (5/6 and 6/6,
    run by test_jobs.py::test_demo_pipeline_as_a_job and by CI's `make demo`), which saves a Ray Tune run."""
    import bench_demo

    rows = bench_demo.run(quick=True, work=tmp_path, tune_samples=0, echo=False)
    check_rows(rows, "end to end", 2)
    steps = [r.figure.split()[1] for r in rows if r.figure.startswith("  step ")]
    assert steps == ["1/6", "2/6", "3/6", "4/6"], [r.figure for r in rows]
