"""Item-level splits with no leakage: `e2i split SRC_SPLIT_DIR --spec train=0.8,val=0.1,test=0.1`.

Conventions:

- Splits are made over *items* (audio clips / images); every caption goes with its item, so no item
  and none of its captions can be in two of train / val / test.
- ``train_subset`` (a small training set for fast tuning) is drawn from ``train``: it is a subset of
  train by design; all other splits are pairwise disjoint.
- Sizes: a number with a decimal point is a fraction (``0.8``), an integer is a count (``100``).
  Fractions of train / val / test are of all items; a ``train_subset`` fraction is of train. Fractions
  that add up to 1 assign every item (rounding remainders go to the largest remainders); otherwise
  the leftover items are in no split.
- Deterministic by seed and independent of row order: items are sorted by id, then permuted with
  ``numpy.random.default_rng(seed)``. For one seed a smaller ``train_subset`` is a prefix of a larger one.
"""

from __future__ import annotations

import argparse
import os
import posixpath

import numpy as np

from e2i.errors import ConfigError
from e2i.store.reader import load_split, split_exists, subset_split
from e2i.store.writer import write_split

SPLIT_NAMES = ("train", "val", "test", "train_subset")
DISJOINT = ("train", "val", "test")  # carved from the shuffled items in this order
DEFAULT_SPEC = "train=0.8,val=0.1,test=0.1"


def parse_spec(text: str) -> dict[str, float | int]:
    """``"train=0.8,val=0.1,test=0.1,train_subset=100"`` -> ``{"train": 0.8, ..., "train_subset": 100}``."""
    spec: dict[str, float | int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not value:
            raise ConfigError(f"--spec: {part!r} is not name=size")
        try:
            spec[name] = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            raise ConfigError(f"--spec: {name}: size {value!r} is not a number") from None
    return spec


def _validate(spec: dict[str, float | int]) -> None:
    if not spec:
        raise ConfigError("split spec is empty (e.g. train=0.8,val=0.1,test=0.1)")
    for name, size in spec.items():
        if name not in SPLIT_NAMES:
            raise ConfigError(f"split spec: unknown split {name!r} (valid: {', '.join(SPLIT_NAMES)})")
        if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
            raise ConfigError(f"split spec: {name}: size {size!r} is not a number")
        if not np.isfinite(size) or size <= 0:
            raise ConfigError(f"split spec: {name}: size must be > 0, got {size}")
        if isinstance(size, (float, np.floating)) and size > 1:
            raise ConfigError(f"split spec: {name}: fraction {size} > 1 (write counts as integers)")
    fractions = sum(float(v) for k, v in spec.items() if k in DISJOINT and isinstance(v, (float, np.floating)))
    if fractions > 1 + 1e-9:
        raise ConfigError(f"split spec: fractions of train/val/test add up to {fractions:g} > 1")
    if "train_subset" in spec and "train" not in spec:
        raise ConfigError("split spec: train_subset needs a train split to be drawn from")


def _sizes(spec: dict[str, float | int], n: int) -> dict[str, int]:
    """Item counts for train/val/test (largest-remainder rounding of fractions)."""
    names = [k for k in DISJOINT if k in spec]
    exact = {k: float(spec[k]) * n if isinstance(spec[k], (float, np.floating)) else float(spec[k]) for k in names}
    sizes = {k: int(np.floor(v)) for k, v in exact.items()}
    frac_names = [k for k in names if isinstance(spec[k], (float, np.floating))]
    target = round(sum(exact[k] for k in frac_names))  # items the fractions should cover
    missing = target - sum(sizes[k] for k in frac_names)
    for k in sorted(frac_names, key=lambda k: exact[k] - sizes[k], reverse=True)[:max(missing, 0)]:
        sizes[k] += 1
    for k, v in sizes.items():
        if v == 0:
            raise ConfigError(f"split spec: {k}={spec[k]} gives 0 of {n} items")
    if sum(sizes.values()) > n:
        raise ConfigError(f"split spec: needs {sum(sizes.values())} items ({sizes}), the source has {n}")
    return sizes


def assign_splits(item_ids, spec: dict[str, float | int], seed: int = 0) -> dict[str, np.ndarray]:
    """Assign item rows to splits; returns ``{name: sorted int64 row indices into item_ids}``.

    train/val/test are disjoint; train_subset is a subset of train. Same ids + spec + seed -> same
    split, whatever the row order of ``item_ids``. Raises ConfigError for bad specs.
    """
    _validate(spec)
    ids = np.asarray(item_ids, dtype=object)
    n = len(ids)
    order = np.argsort(ids, kind="stable")  # (N,) rows by id: makes the result row-order independent
    same = ids[order[1:]] == ids[order[:-1]]  # (N-1,) neighbours in sorted order are equal
    if same.any():
        raise ConfigError(f"assign_splits: duplicate item id {ids[order[1:]][same][0]!r}")
    shuffled = order[np.random.default_rng(seed).permutation(n)]  # (N,) rows in random order
    sizes = _sizes(spec, n)
    out: dict[str, np.ndarray] = {}
    start = 0
    for name in DISJOINT:
        if name in sizes:
            out[name] = shuffled[start:start + sizes[name]]
            start += sizes[name]
    if "train_subset" in spec:
        size = spec["train_subset"]
        k = round(float(size) * len(out["train"])) if isinstance(size, (float, np.floating)) else int(size)
        if not 0 < k <= len(out["train"]):
            raise ConfigError(f"split spec: train_subset={size} gives {k} items; train has {len(out['train'])}")
        out["train_subset"] = out["train"][:k]  # a prefix of train's random order
    return {name: np.sort(rows).astype(np.int64) for name, rows in out.items()}


def _same_location(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.abspath(a) == os.path.abspath(b)


def split_store(src: str | os.PathLike, out: str | os.PathLike, spec: dict[str, float | int], *, seed: int = 0,
                overwrite: bool = True) -> dict[str, dict]:
    """Load split dir ``src``, assign items and write ``<out>/<name>`` for each split; returns manifests.

    Splits are derived data (same source + spec + seed -> same result), so existing split dirs are
    replaced unless ``overwrite=False`` (the CLI asks for ``--overwrite``).
    """
    src, out = os.fspath(src), os.fspath(out)
    _validate(spec)
    targets = {name: f"{out.rstrip('/')}/{name}" for name in spec}
    for name, target in targets.items():
        if _same_location(target, src):
            raise ConfigError(f"split {name}: output {target} is the source split itself")
        if not overwrite and split_exists(target):
            raise ConfigError(f"{target}: split already exists (pass --overwrite to replace it)")
    data = load_split(src, with_text=True)
    rows = assign_splits(data.item_ids, spec, seed)
    dataset = (data.manifest or {}).get("dataset") or posixpath.basename(out.rstrip("/")) or "dataset"
    extra = {"split_spec": {k: spec[k] for k in spec}, "split_seed": seed}
    return {name: write_split(subset_split(data, rows[name]), targets[name], dataset, name, extra=extra)
            for name in spec}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="split dir holding all items, e.g. stores/toy/all (local or s3://)")
    parser.add_argument("--out", default=None, help="dataset dir to write the split dirs into (default: parent of SRC)")
    parser.add_argument("--spec", default=DEFAULT_SPEC,
                        help=f"name=size list; names: {', '.join(SPLIT_NAMES)}; 0.1 = fraction, 100 = count "
                             f"(default: {DEFAULT_SPEC})")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the assignment (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace split dirs that already exist")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    out = args.out or posixpath.dirname(args.src.rstrip("/"))
    spec = parse_spec(args.spec)
    manifests = split_store(args.src, out, spec, seed=args.seed, overwrite=args.overwrite)
    table = Table(title=f"e2i split {args.src} (seed {args.seed})")
    for col in ("split", "items", "captions", "path"):
        table.add_column(col, justify="right" if col in ("items", "captions") else "left")
    for name, m in manifests.items():
        table.add_row(name, str(m["counts"]["items"]), str(m["counts"]["captions"]), f"{out.rstrip('/')}/{name}")
    console = Console()
    Console(width=max(console.width, 140) if not console.is_terminal else None).print(table)
    total = sum(m["counts"]["items"] for n, m in manifests.items() if n != "train_subset")
    print(f"e2i split: wrote {len(manifests)} splits to {out} ({total} items in train/val/test)")
    return 0
