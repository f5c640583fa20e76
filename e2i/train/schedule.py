"""The step plan of the training loop: global batches, epochs of optimizer steps, the lr schedule.

Pure torch/math (no Ray); :mod:`e2i.train.loop` uses these, tests check them directly.
"""

from __future__ import annotations

import math

import torch


def global_batches(num_rows: int, batch_size: int, world_size: int) -> tuple[int, int]:
    """(number of global batches per epoch, rows per worker per batch).

    The global batch is rounded down to a multiple of world_size; a split smaller than one batch
    gives one (smaller) batch; the incomplete last batch is dropped so every worker gets equal shards.
    """
    size = min(batch_size, num_rows) // world_size * world_size
    if size == 0:
        raise ValueError(f"{num_rows} caption rows cannot be split over {world_size} workers")
    return num_rows // size, size // world_size


def lr_at(step: int, *, peak: float, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total_steps``.

    cosine / linear / constant: linear warmup from 0 to ``peak`` over ``warmup_steps``, then
    ``peak * f(progress)`` with f = (1 + cos(pi p)) / 2, 1 - p or 1, p in [0, 1] the fraction of the
    post-warmup steps done. onecycle: torch's ``OneCycleLR`` (``pct_start`` = warmup_steps /
    total_steps, 0.3 when ``warmup_steps`` is 0; cosine annealing, ``div_factor`` 25,
    ``final_div_factor`` 1e4): peak/25 -> peak at step warmup_steps - 1, then -> peak/(25 * 1e4) at
    the last step.
    """
    if schedule == "onecycle":  # phase ends at steps up-1 and total-1, as torch counts them
        up = warmup_steps or max(1, round(0.3 * total_steps))
        end_up, end = max(1, up - 1), max(up, total_steps - 1)
        low, final = peak / 25.0, peak / 25.0 / 1e4
        if step <= end_up:
            return _cos_anneal(low, peak, step / end_up)
        return _cos_anneal(peak, final, min(1.0, (step - end_up) / max(1, end - end_up)))
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return peak * (1.0 - progress)
    if schedule == "constant":
        return peak
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def _cos_anneal(start: float, end: float, fraction: float) -> float:
    """Cosine interpolation from ``start`` (fraction 0) to ``end`` (fraction 1), as OneCycleLR."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * fraction))


def epoch_plan(num_batches: int, accum: int, min_steps: int) -> tuple[int, int]:
    """(optimizer steps, micro-batches) of one epoch.

    An epoch is one pass of ``num_batches`` micro-batches (``ceil(num_batches / accum)`` steps, the
    last one possibly with fewer micro-batches), or, when that is fewer than ``min_steps`` steps,
    exactly ``min_steps`` steps of ``accum`` micro-batches each, running on into the next shuffled
    passes (micro-batch g of the run is batch ``g % num_batches`` of pass ``g // num_batches``).
    """
    steps = math.ceil(num_batches / accum)
    if steps >= min_steps:
        return steps, num_batches
    return min_steps, min_steps * accum


class PassPermutations:
    """The shuffled caption order of data pass p, ``randperm`` seeded by (seed, p); the last one kept."""

    def __init__(self, num_rows: int, seed: int, device: torch.device) -> None:
        self.num_rows, self.seed, self.device = num_rows, seed, device
        self.cached: tuple[int, torch.Tensor] | None = None

    def __getitem__(self, p: int) -> torch.Tensor:
        if self.cached is None or self.cached[0] != p:
            gen = torch.Generator().manual_seed(self.seed * 7919 + p)
            self.cached = (p, torch.randperm(self.num_rows, generator=gen).to(self.device))
        return self.cached[1]
