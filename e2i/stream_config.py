"""``data.streaming`` of a train config: when the train split is streamed instead of loaded, and when an
evaluated split is read in chunks from disk (typed, validated at load; the streaming itself is
:mod:`e2i.train.stream`, the chunked evaluation :mod:`e2i.evaluate.chunked`).

    data:
      streaming:
        mode: auto              # auto | always | never
        memory_budget_gb: 8     # per worker: a train split estimated above this is streamed
        shuffle_rows: 16384     # rows of the shuffle pool of each worker (streaming only)

``auto`` (the default) loads the split into memory when its estimate (manifest counts x dims x 4
bytes, items + captions) fits ``memory_budget_gb``, else streams the caption rows with Ray Data while
the items stay in memory. ``always`` / ``never`` force one path. The test-split evaluation (and
``e2i evaluate``) applies the same rule to the evaluated split (:func:`choose_path`). No ray import here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STREAMING_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class StreamingConfig:
    mode: str = "auto"  # auto: stream when the train split's estimate exceeds memory_budget_gb | always | never
    memory_budget_gb: float = 8.0  # per worker (every in-memory worker holds the whole train split)
    shuffle_rows: int = 16384  # shuffle pool per worker, whole blocks permuted together (memory: rows x dim x 4 B)

    def validate(self) -> None:
        if self.mode not in STREAMING_MODES:
            raise ValueError(f"{self.mode!r} is not one of {', '.join(STREAMING_MODES)}", "mode")
        if not (math.isfinite(self.memory_budget_gb) and self.memory_budget_gb > 0):
            raise ValueError(f"must be > 0, got {self.memory_budget_gb!r}", "memory_budget_gb")
        if self.shuffle_rows < 1:
            raise ValueError(f"must be >= 1, got {self.shuffle_rows!r}", "shuffle_rows")


def choose_path(mode: str, estimate_gb: float, budget_gb: float) -> tuple[bool, str]:
    """(leave memory?, reason) for a split estimated at ``estimate_gb``: ``auto`` leaves memory (streams
    or reads in chunks) when the estimate exceeds ``budget_gb``; ``always`` / ``never`` force it."""
    if mode != "auto":
        return mode == "always", f"data.streaming.mode: {mode}"
    over = estimate_gb > budget_gb
    relation = "exceeds" if over else "fits"
    return over, f"estimate {estimate_gb:.3g} GB {relation} data.streaming.memory_budget_gb {budget_gb:g}"
