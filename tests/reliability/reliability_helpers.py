"""Helpers of the reliability suite: run the CLI and check its error contract, find our own
processes (to kill them), small corpora with bad rows, and small tmpfs mounts (disk full / read-only filesystem).

The CLI contract checked here (see e2i.cli): an error prints exactly one line
``e2i: error: <message naming the file/row/field>`` on stderr, no traceback, and exits 2 for a user error,
1 for an I/O error (disk full, read-only, unreachable storage).
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from e2i.cli import main

ROOT = Path(__file__).resolve().parents[2]
LIGHT_FLAGS = ["--audio-encoder", "logmel-stats", "--text-encoder", "ngram-hash", "--image-encoder", "image-stats"]


# ----------------------------------------------------------------------------------------- the CLI
def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``e2i <argv>`` in-process: (exit code, stdout, stderr). argparse errors exit through SystemExit."""
    capsys.readouterr()  # drop earlier output
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def run_module(argv: list[str], *, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m e2i <argv>`` in a subprocess (what a user types), output captured as text."""
    return subprocess.run([sys.executable, "-m", "e2i", *argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT, check=False)


# "--- Logging error ---" reports of Python's logging module: a library's log handler still bound to the
# stderr capture of an earlier test (pytest closes it); not output of the command under test.
_LOGGING_ERROR = re.compile(r"--- Logging error ---\n.*?\nArguments: [^\n]*\n", re.DOTALL)


def error_line(code: int, err: str, *needles: str, exit_code: int, full: str | None = None) -> str:
    """Check the one-line error contract: exit code ``exit_code`` (2 user error, 1 I/O error), no traceback,
    exactly one ``e2i: error: `` line, which names ``needles`` and, given ``full`` (a regex), is exactly
    that line (``re.fullmatch``). Returns the line."""
    err = _LOGGING_ERROR.sub("", err)
    assert code == exit_code, f"expected exit code {exit_code}, got {code}; stderr: {err[-2000:]}"
    assert "Traceback" not in err, err[-4000:]
    lines = [line for line in err.splitlines() if line.startswith("e2i: error: ")]
    assert len(lines) == 1, f"expected one 'e2i: error:' line, got {len(lines)}: {err[-3000:]}"
    message = lines[0]
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    if full is not None:
        assert re.fullmatch(full, message), f"{message!r} is not {full!r}"
    return message


def ray_sessions(ray_tmp: str | Path) -> list[Path]:
    """The Ray sessions started with ``RAY_TMPDIR=ray_tmp``: ray.init makes ``<RAY_TMPDIR>/ray/session_*``."""
    return sorted(Path(ray_tmp).rglob("session_*"))


# ----------------------------------------------------------------------------------------- processes
def _children_map() -> dict[int, list[int]]:
    """{ppid: [pid, ...]} of every process, from /proc (no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4; the name (field 2) may hold spaces
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """All processes below ``pid`` (children, grandchildren, ...)."""
    tree, out, todo = _children_map(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def own_processes_named(prefix: str) -> list[int]:
    """Our own descendants whose command line (Ray's process title) starts with ``prefix``."""
    return [p for p in descendants(os.getpid()) if cmdline(p).startswith(prefix)]


# ----------------------------------------------------------------------------------------- corpora
def write_wav(path: Path, *, seconds: float = 0.5, sr: int = 32000, hz: float = 440.0) -> Path:
    """A mono 16-bit WAV tone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((0.3 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2").tobytes())
    return path


def append_clotho_rows(csv_path: Path, rows: list[list[str]]) -> None:
    with open(csv_path, "a", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


# ----------------------------------------------------------------------------------------- mounts
class TmpfsMount:
    """A small tmpfs mounted at ``target`` (a 'disk' that fills up, or a read-only filesystem).

    Root can write through ``chmod``, so a real mount is the only honest read-only/full directory.
    Unmounted (lazily) on close; needs root or CAP_SYS_ADMIN, see :func:`tmpfs_mount`.
    """

    def __init__(self, target: Path, options: str) -> None:
        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "e2i-test", str(target)],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            raise OSError(f"cannot mount a tmpfs: {done.stderr.strip()}")
        self.path = target

    def remount(self, options: str) -> None:
        """Change the mount's options (e.g. ``size=8m`` to free the 'disk')."""
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True, capture_output=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)


@contextlib.contextmanager
def tmpfs_mount(target: Path, options: str) -> Iterator[TmpfsMount]:
    """A :class:`TmpfsMount` for the duration of the block; skips the test where mounting is not allowed."""
    import pytest

    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a tmpfs (disk-full / read-only filesystem)")
    try:
        mount = TmpfsMount(target, options)
    except OSError as exc:
        pytest.skip(f"{exc} (run the suite as root to cover disk-full / read-only filesystems)")
    try:
        yield mount
    finally:
        mount.close()


def tree_files(root: Path) -> dict[str, int]:
    """{relative path: size} of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------- a local multi-node cluster
# Run in its own process (the test process already has the session's Ray): a ray.cluster_utils.Cluster
# with a CPU-less head and worker nodes of 1 CPU each (each its own raylet and object store), driven
# by one JSON command per line on stdin, one JSON answer per line on stdout.
_CLUSTER_SCRIPT = r"""
import json, sys
from ray.cluster_utils import Cluster

n_workers = int(sys.argv[1])
# a dead raylet is noticed within ~3 s (default 5 x 3 s): the run's failure shows up sooner
system = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                        "_system_config": system})
workers = {}
for _ in range(n_workers):
    node = cluster.add_node(num_cpus=1, resources={"e2i_worker": 1}, object_store_memory=80 * 1024**2)
    workers[node.node_id] = node
cluster.wait_for_nodes()
print(json.dumps({"address": cluster.address, "head": cluster.head_node.node_id, "workers": sorted(workers)}),
      flush=True)

def actors(name):
    table = cluster.global_state.actor_table(None, None, None)
    return sorted(({"node": a["Address"]["NodeID"], "state": a["State"], "start": a["StartTime"]}
                   for a in table.values() if a["ActorClassName"] == name), key=lambda a: a["start"])

for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "actors":
        answer = actors(cmd["name"])
    elif cmd["op"] == "remove":
        cluster.remove_node(workers.pop(cmd["node"]), allow_graceful=False)
        answer = {"removed": cmd["node"]}
    else:
        break
    print(json.dumps(answer), flush=True)
cluster.shutdown()
"""


class LocalCluster:
    """A head (0 CPUs) + ``n_workers`` worker nodes (1 CPU, custom resource ``e2i_worker``) on this machine,
    run by a helper process; ``address`` is the GCS address a driver subprocess gets as RAY_ADDRESS.

    Work needing CPUs lands on the worker nodes only. ``remove(node_id)`` kills a worker node's raylet and
    every process of it (``Cluster.remove_node(allow_graceful=False)``: a machine lost); ``actors(name)``
    lists the actors of a class (dead ones too) with their node, oldest first, from the GCS.
    """

    def __init__(self, n_workers: int, temp_dir: str) -> None:
        self.temp_dir = temp_dir
        env = {**os.environ, "RAY_TMPDIR": temp_dir, "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen([sys.executable, "-c", _CLUSTER_SCRIPT, str(n_workers)], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        info = self._answer()
        self.address, self.head, self.workers = info["address"], info["head"], info["workers"]

    def _answer(self):
        import json

        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the cluster process exited with {self.proc.wait()}")
        return json.loads(line)

    def _ask(self, **cmd):
        import json

        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def actors(self, name: str) -> list[dict]:
        return self._ask(op="actors", name=name)

    def remove(self, node_id: str) -> None:
        self._ask(op="remove", node=node_id)
        self.workers.remove(node_id)

    def close(self) -> None:
        """Shut the cluster down; then SIGKILL whatever still names its temp dir (never `ray stop`)."""
        from fake_cluster import _kill_group

        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write('{"op": "quit"}\n')
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=20)
        _kill_group(self.proc, self.temp_dir, grace=2)


@contextlib.contextmanager
def local_cluster(n_workers: int = 2) -> Iterator[LocalCluster]:
    import tempfile

    temp_dir = tempfile.mkdtemp(prefix="e2i-mn-", dir="/tmp")  # short: Ray's socket paths live under it
    cluster = LocalCluster(n_workers, temp_dir)
    try:
        yield cluster
    finally:
        cluster.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------- an unreachable endpoint
class TcpGate:
    """A TCP forwarder on 127.0.0.1 in front of a server (e.g. moto's S3 on ``target_port``): ``close()``
    makes the endpoint unreachable (the listening socket and every open connection are closed: clients get
    "connection refused") while the server behind keeps its data; ``open()`` serves the same port again.
    Models object storage that becomes unreachable and comes back, which stopping moto cannot (it keeps
    objects in memory only)."""

    def __init__(self, target_port: int, port: int) -> None:
        self.target, self.port = target_port, port
        import threading

        self._listener = None
        self._conns: list = []
        self._lock = threading.Lock()
        self.open()

    def open(self) -> None:
        import socket
        import threading

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        import socket

        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        import socket

        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
