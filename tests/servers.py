"""The dashboards a user starts to watch runs, as real servers on 127.0.0.1 for tests.

Usage::

    from servers import get_json, optuna_dashboard, tensorboard   # tests/ is on sys.path under pytest

    with tensorboard(run_dir) as url:                    # `tensorboard --logdir DIR --host 127.0.0.1 --port N`
        tags = get_json(f"{url}/data/plugin/scalars/tags")                  # {run: {tag: {...}}}
        points = get_json(f"{url}/data/plugin/scalars/scalars?run=RUN&tag=TAG")  # [[wall, step, value]]
    with optuna_dashboard("sqlite:///results/x/optuna.db") as url:   # `optuna-dashboard URL --host ... --port N`
        studies = get_json(f"{url}/api/studies")["study_summaries"]
        detail = get_json(f"{url}/api/studies/{studies[0]['study_id']}")   # trials, best_trials, ...

Each server is the executable beside this interpreter (.venv/bin), started on a free port in its own
process group, waited for until it answers over HTTP, and terminated (then killed) on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fake_cluster import free_port


def get_json(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
            return


@contextlib.contextmanager
def serve(command: Callable[[int], list[str]], ready: Callable[[str], bool], *, name: str,
          timeout: float = 90, attempts: int = 3) -> Iterator[str]:
    """Run ``command(port)`` on a free port; yield ``http://127.0.0.1:PORT`` once ``ready(url)`` is true.

    A server that exits before it answers (e.g. another process took the port first) is retried on a
    new port, ``attempts`` times; its output is in the error otherwise."""
    exe = str(Path(sys.executable).with_name(name))
    for attempt in range(attempts):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen([exe, *command(port)], stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                deadline = time.monotonic() + timeout
                while proc.poll() is None and time.monotonic() < deadline:
                    with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
                        if ready(url):
                            break
                    time.sleep(0.5)
                else:
                    log.seek(0)
                    output = log.read().decode(errors="replace")[-3000:]
                    if proc.poll() is not None and attempt + 1 < attempts:
                        continue
                    raise RuntimeError(f"{name} on {url} did not answer within {timeout:.0f} s "
                                       f"(exit code {proc.poll()}):\n{output}")
                yield url
                return
            finally:
                _stop(proc)


@contextlib.contextmanager
def tensorboard(logdir: str | os.PathLike, *, runs: int = 1) -> Iterator[str]:
    """``tensorboard --logdir DIR --host 127.0.0.1 --port N``; ready once its scalars plugin lists
    ``runs`` runs (TensorBoard reads the event files in the background after it starts serving)."""
    def ready(url: str) -> bool:
        return len(get_json(f"{url}/data/plugin/scalars/tags", timeout=5)) >= runs

    with serve(lambda port: ["--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)], ready,
               name="tensorboard") as url:
        yield url


def tensorboard_scalars(url: str, run: str, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one scalar series, through TensorBoard's HTTP API."""
    query = urllib.parse.urlencode({"run": run, "tag": tag})
    return [(int(step), float(value)) for _, step, value in get_json(f"{url}/data/plugin/scalars/scalars?{query}")]


@contextlib.contextmanager
def optuna_dashboard(storage_url: str) -> Iterator[str]:
    """``optuna-dashboard STORAGE_URL --host 127.0.0.1 --port N``; ready once ``/api/studies`` answers."""
    def ready(url: str) -> bool:
        return "study_summaries" in get_json(f"{url}/api/studies", timeout=5)

    with serve(lambda port: [storage_url, "--host", "127.0.0.1", "--port", str(port)], ready,
               name="optuna-dashboard") as url:
        yield url
