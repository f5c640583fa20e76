"""The parts of a mixed train set: ``data.train`` of a train config (typed, validated at load).

    data:
      store: stores/toy                     # val/test splits (and the single-store train split)
      train:                                # train on several stores at once instead of train_split
        - {store: stores/toy, split: train, repeat: 1}
        - {store: stores/toy_gen, split: train, repeat: 3}

An epoch draws caption rows from every part: ``repeat: r`` takes each of the part's caption rows r
times (3 = oversampled 3x, 0.5 = a fixed seeded half), ``weight: w`` makes the part that share of the
epoch (the weights of all parts are normalised; the epoch then has as many draws as the parts have
caption rows together). A list uses repeats or weights, not both; no part = repeat 1. How the rows
are drawn and kept apart (item ids per part) is :mod:`e2i.store.mix`. No ray import here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainPart:
    """One store of a mixed train set."""

    store: str = ""  # dataset dir (local path or s3://bucket/prefix), resolved like data.store
    split: str = "train"  # split dir under `store`
    repeat: float | None = None  # draws per epoch = repeat x the part's caption rows (None = 1)
    weight: float | None = None  # or: this share of the epoch's draws (normalised over all parts)

    def validate(self) -> None:
        if not self.store:
            raise ValueError("must not be empty", "store")
        if not self.split or "/" in self.split:
            raise ValueError(f"must be a split name without '/', got {self.split!r}", "split")
        if self.repeat is not None and self.weight is not None:
            raise ValueError("give repeat or weight, not both", "weight")
        for name in ("repeat", "weight"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"must be > 0, got {value!r}", name)


def check_parts(parts: tuple[TrainPart, ...], train_split: str) -> None:
    """Rules of the whole list; ValueError(message, field) as the config sections raise them."""
    if train_split != "train":
        raise ValueError(f"unused when data.train lists the parts (got {train_split!r}; give each part "
                         "its split)", "train_split")
    weighted = [p.weight is not None for p in parts]
    if any(weighted) and not all(weighted):
        i, j = weighted.index(True), weighted.index(False)
        raise ValueError(f"needed on every part when one has a weight (train[{i}] has one; use weights "
                         "or repeats, not both)", f"train[{j}].weight")
    seen: dict[tuple[str, str], int] = {}
    for i, part in enumerate(parts):
        key = (part.store.rstrip("/"), part.split)
        if key in seen:
            raise ValueError(f"{key[0]}/{key[1]} is also train[{seen[key]}] (give one part a repeat "
                             "instead)", f"train[{i}].store")
        seen[key] = i
