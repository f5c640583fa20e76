"""Peak memory of a process tree (the driver + Ray's raylet, GCS and workers), sampled in a thread.

Two sums are kept for every sample:

- **PSS** (proportional set size, ``/proc/<pid>/smaps_rollup``): a page shared by k processes counts
  1/k in each, so the sum over the tree is the memory the tree really holds. Ray's object store is
  shared memory mapped by every worker that reads an object: PSS counts it once.
- **RSS**: what ``top`` shows; a shared page counts in every process that touched it, so the sum
  over-counts shared data (e.g. 4 trials mapping one object-store copy show it 4 times).

Ray starts its raylet/GCS as children of the driver and workers as children of the raylet, so the
tree rooted at the driver (or at a subprocess such as ``e2i demo``) covers the whole local cluster.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass


def _smaps_rollup(pid: int) -> tuple[int, int] | None:
    """(rss, pss) in bytes from /proc/<pid>/smaps_rollup; None if unreadable (gone, other kernel)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            text = f.read()
    except OSError:
        return None
    rss = pss = 0
    for line in text.splitlines():
        if line.startswith(b"Rss:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith(b"Pss:"):
            pss = int(line.split()[1]) * 1024
    return rss, pss


def _parent_of(pid: int) -> int | None:
    """Parent pid from /proc/<pid>/stat (the field after the parenthesised command name)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[1])


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (Linux /proc; no psutil needed)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            parent = _parent_of(int(name))
            if parent is not None:
                children.setdefault(parent, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_memory(root: int | None = None) -> tuple[int, int, int]:
    """(rss sum, pss sum, number of processes) of ``root`` (default: this process) and its descendants."""
    rss = pss = n = 0
    for pid in descendants(root or os.getpid()):
        got = _smaps_rollup(pid)
        if got is not None:  # gone meanwhile
            rss, pss, n = rss + got[0], pss + got[1], n + 1
    return rss, pss, n


@dataclass
class Peak:
    rss: int = 0  # bytes, peak of the RSS sum
    pss: int = 0  # bytes, peak of the PSS sum
    processes: int = 0  # most processes seen at once
    samples: int = 0


class TreeMemorySampler:
    """``with TreeMemorySampler() as s: ...`` then ``s.peak`` (sums over the tree, sampled every ``interval`` s).

    ``baseline`` is the reading at entry; the sampler also takes one reading at exit so short blocks
    get at least two samples.
    """

    def __init__(self, root: int | None = None, interval: float = 0.2) -> None:
        self.root, self.interval = root, interval
        self.peak = Peak()
        self.baseline = Peak()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        rss, pss, n = tree_memory(self.root)
        p = self.peak
        p.rss, p.pss, p.processes, p.samples = max(p.rss, rss), max(p.pss, pss), max(p.processes, n), p.samples + 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "TreeMemorySampler":
        rss, pss, n = tree_memory(self.root)
        self.baseline = Peak(rss, pss, n, 1)
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="tree-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()


def wait_for_exit_sampling(proc, sampler_interval: float = 0.2) -> Peak:
    """Sample the tree of a running subprocess (``subprocess.Popen``) until it exits; returns the peak."""
    sampler = TreeMemorySampler(root=proc.pid, interval=sampler_interval)
    with sampler:
        while proc.poll() is None:
            time.sleep(sampler_interval)
    return sampler.peak
