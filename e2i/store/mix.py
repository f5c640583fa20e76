"""Several train splits mixed into one :class:`SplitData`: the stores of ``data.train`` (e2i.train_parts).

    train = load_mix(cfg.data.train, seed=cfg.seed)        # SplitData, manifest["mix"] says what is in it
    record = mix_record(cfg.data.train, seed=cfg.seed)     # the same record from the files, no embeddings

Conventions:

- Items: the items of every part, part after part (part i's rows are offset by the items of parts
  0..i-1); ids become ``"<i>:<id>"`` (i = the part's index in ``data.train``), so two stores' items never
  share an id, and the training loop, whose positive ids are item rows, never treats a caption of one
  store as a positive of an item of another (multi-positive losses match by item).
- Captions = the draws of one epoch. Part i with C_i caption rows contributes D_i rows:
  ``repeat: r`` -> D_i = round(r * C_i); ``weight: w`` (all parts) -> D_i = round(w_i / sum(w) * sum(C)).
  D_i = q * C_i + s: every row q times, plus s rows drawn without replacement by a generator seeded
  from (seed, i). The draw is made once per run (the same s rows in every epoch); the loop shuffles
  the rows every epoch. A repeated caption keeps its id (``"<i>:<caption id>"``).
- Every part must have the item and caption dims of part 0 and, where both manifests name them, the
  same encoders (embeddings of two encoders are not one space); a ConfigError names the part's
  ``data.train[i].store`` and the field otherwise.
- The result's manifest is derived (like :func:`e2i.store.reader.subset_split`'s): ``parents`` = the
  split paths, ``mix`` = :func:`plan_record` (per part: path, dataset, created_at, items, captions,
  repeat/weight, draws, times, share), ``counts``, ``dims``, the encoders of part 0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow.parquet as pq

from e2i.errors import ConfigError
from e2i.store.fs import join, open_fs, read_json, shown_path
from e2i.store.reader import SplitData, load_split, shard_list, subset_split
from e2i.store.schema import ID_COLUMN, MANIFEST, SCHEMA_VERSION


class Part(Protocol):  # e2i.train_parts.TrainPart, or anything with these attributes
    store: str
    split: str
    repeat: float | None
    weight: float | None


def split_path(part: Part) -> str:
    return f"{part.store.rstrip('/')}/{part.split}"


# --------------------------------------------------------------------------------------------------
# How many rows of each part an epoch draws


def epoch_draws(captions: Sequence[int], parts: Sequence[Part]) -> list[int]:
    """Caption rows each part contributes to one epoch (see the module doc); ConfigError for 0 draws."""
    if any(p.weight is not None for p in parts):
        total, weights = sum(captions), [float(p.weight) for p in parts]
        draws = [round(w / sum(weights) * total) for w in weights]
    else:
        draws = [round((1.0 if p.repeat is None else float(p.repeat)) * c) for p, c in zip(parts, captions)]
    for i, (d, c, p) in enumerate(zip(draws, captions, parts)):
        if d < 1:
            how = f"weight {p.weight}" if p.weight is not None else f"repeat {p.repeat}"
            raise ConfigError(f"data.train[{i}]: {how} draws no caption row of {split_path(p)} "
                              f"({c} caption rows) per epoch")
    return draws


def draw_rows(num_rows: int, draws: int, seed: int, index: int) -> np.ndarray:
    """(draws,) int64 row indices: every row draws // num_rows times, then a seeded sample of the rest."""
    full, rest = divmod(draws, num_rows)
    rng = np.random.default_rng([seed % 2**32, index])
    extra = np.sort(rng.permutation(num_rows)[:rest])  # (rest,) without replacement
    return np.concatenate([np.tile(np.arange(num_rows, dtype=np.int64), full), extra.astype(np.int64)])


def plan_record(parts: Sequence[Part], counts: Sequence[tuple[int, int]], manifests: Sequence[dict | None],
                *, seed: int, train_subset: int | None = None) -> dict:
    """The ``train_mix`` record: which stores, and how much of each an epoch draws."""
    draws = epoch_draws([c for _, c in counts], parts)
    total = sum(draws)
    rows = []
    for i, (part, (items, caps), manifest, d) in enumerate(zip(parts, counts, manifests, draws)):
        manifest = manifest or {}
        rows.append({
            "part": i, "store": part.store, "split": part.split, "path": split_path(part),
            "dataset": manifest.get("dataset"), "created_at": manifest.get("created_at"),
            "repeat": part.repeat, "weight": part.weight, "items": items, "captions": caps,
            "draws": d, "times": d / caps, "share": d / total,
        })
    return {"parts": rows, "items": sum(c[0] for c in counts), "draws_per_epoch": total, "seed": seed,
            "train_subset": train_subset}


# --------------------------------------------------------------------------------------------------
# Loading and mixing


def mix_splits(splits: Sequence[SplitData], parts: Sequence[Part], *, seed: int,
               train_subset: int | None = None) -> SplitData:
    """One SplitData of the parts' items and one epoch's caption draws (see the module doc)."""
    _check_compatible(splits, parts)
    counts = [(s.num_items, s.num_captions) for s in splits]
    record = plan_record(parts, counts, [s.manifest for s in splits], seed=seed, train_subset=train_subset)
    offsets = np.cumsum([0] + [s.num_items for s in splits])  # (parts + 1,) first item row of each part
    # (D_i,) caption rows of part i drawn for an epoch
    rows = [draw_rows(s.num_captions, row["draws"], seed, row["part"])
            for s, row in zip(splits, record["parts"])]
    parts_rows = list(enumerate(zip(splits, rows)))

    def label(i: int, ids: np.ndarray) -> np.ndarray:
        return np.array([f"{i}:{x}" for x in ids], dtype=object)

    first = splits[0].manifest or {}
    manifest = {
        "schema_version": SCHEMA_VERSION, "dataset": "mix", "split": "train",
        "encoders": first.get("encoders", {}), "parents": [split_path(p) for p in parts],
        "dims": {"items": splits[0].item_dim, "captions": splits[0].caption_dim},
        "counts": {"items": record["items"], "captions": record["draws_per_epoch"]}, "mix": record,
    }
    return SplitData(
        path="+".join(split_path(p) for p in parts),
        item_ids=np.concatenate([label(i, s.item_ids) for i, s in enumerate(splits)]),
        item_emb=np.concatenate([s.item_emb for s in splits]),  # (N, Di)
        caption_ids=np.concatenate([label(i, s.caption_ids[r]) for i, (s, r) in parts_rows]),
        caption_item=np.concatenate([s.caption_item[r] + offsets[i] for i, (s, r) in parts_rows]),  # (M,)
        caption_emb=np.concatenate([s.caption_emb[r] for s, r in zip(splits, rows)]),  # (M, Dc)
        manifest=manifest,
    )


def load_mix(parts: Sequence[Part], *, seed: int, train_subset: int | None = None) -> SplitData:
    """Load every part's split (local or s3://; ``train_subset`` = its first N items) and mix them."""
    splits = []
    for part in parts:
        split = load_split(split_path(part), with_text=False)
        if train_subset is not None and train_subset < split.num_items:
            manifest = split.manifest  # the part's own (dataset, encoders, created_at) for the record
            split = subset_split(split, np.arange(train_subset))
            split.manifest = manifest
        splits.append(split)
    return mix_splits(splits, parts, seed=seed, train_subset=train_subset)


def load_train_val(data, *, seed: int) -> tuple[SplitData, SplitData]:
    """(train, val) splits of a train config's ``data`` (``e2i.config.DataConfig``; local or s3://):
    ``train_subset`` = first N items; with ``data.train`` the train split is the mix of those stores,
    val stays ``data.store``'s. No torch import: the ``e2i tune`` driver loads the shared data here."""
    base = data.store.rstrip("/")
    if data.train:
        train = load_mix(data.train, seed=seed, train_subset=data.train_subset)
    else:
        train = load_split(f"{base}/{data.train_split}", with_text=False)
        if data.train_subset is not None and data.train_subset < train.num_items:
            train = subset_split(train, np.arange(data.train_subset))
    val = load_split(f"{base}/{data.val_split}", with_text=False)
    if data.train and (val.item_dim, val.caption_dim) != (train.item_dim, train.caption_dim):
        raise ConfigError(f"data.store: {base}/{data.val_split} has item/caption embeddings of dim "
                          f"{val.item_dim}/{val.caption_dim}, the data.train parts {train.item_dim}/"
                          f"{train.caption_dim}")
    return train, val


def _check_compatible(splits: Sequence[SplitData], parts: Sequence[Part]) -> None:
    ref, ref_path = splits[0], split_path(parts[0])
    for i, (split, part) in enumerate(zip(splits, parts)):
        for what, got, want in (("item", split.item_dim, ref.item_dim), ("caption", split.caption_dim,
                                                                           ref.caption_dim)):
            if got != want:
                raise ConfigError(f"data.train[{i}].store: {split_path(part)} has {what} embeddings of dim "
                                  f"{got}, data.train[0] ({ref_path}) has {want}")
        mine, theirs = encoder_names(split.manifest), encoder_names(ref.manifest)
        differ = sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k])
        if differ:
            k = differ[0]
            raise ConfigError(f"data.train[{i}].store: {split_path(part)} was embedded with {k} encoder "
                              f"{mine[k]!r}, data.train[0] ({ref_path}) with {theirs[k]!r} (parts must share "
                              "encoders)")


def encoder_names(manifest: dict | None) -> dict[str, str]:
    """{modality: encoder name} declared by a store manifest ({} when it declares none)."""
    encoders = (manifest or {}).get("encoders") or {}
    return {k: str(v["name"]) for k, v in encoders.items() if isinstance(v, dict) and v.get("name")}


# --------------------------------------------------------------------------------------------------
# The record from the files alone (the driver writes it into metrics.json; no embeddings are read)


def load_manifest(path: str | os.PathLike) -> dict | None:
    fs, root = open_fs(path)
    return read_json(fs, join(root, MANIFEST), shown_path(os.fspath(path), MANIFEST))


def part_counts(path: str, train_subset: int | None = None) -> tuple[int, int]:
    """(items, captions) of a split; with ``train_subset`` those of its first N items (id columns only)."""
    fs, root = open_fs(path)
    manifest = load_manifest(path)
    counts = (manifest or {}).get("counts") or {}
    if train_subset is None and {"items", "captions"} <= set(counts):
        return int(counts["items"]), int(counts["captions"])
    items = _column(fs, root, manifest, "items", ID_COLUMN["items"], path)
    item_of_caption = _column(fs, root, manifest, "captions", "item_id", path)
    if train_subset is not None:
        items = items[:train_subset]
    return len(items), int(np.isin(item_of_caption, items).sum())


def _column(fs, root: str, manifest: dict | None, kind: str, column: str, path: str) -> np.ndarray:
    tables = []
    for rel, _ in shard_list(fs, root, manifest, kind, path):
        with fs.open_input_file(join(root, rel)) as f:
            tables.append(pq.read_table(f, columns=[column]).column(column).to_numpy(zero_copy_only=False))
    return np.concatenate(tables) if tables else np.empty(0, object)


def mix_record(parts: Sequence[Part], *, seed: int, train_subset: int | None = None,
               as_written: dict[str, str] | None = None) -> dict[str, Any]:
    """:func:`plan_record` from manifests and id columns; ``as_written`` = TrainConfig.paths_as_written
    (each part then also shows its store as the user wrote it)."""
    paths = [split_path(p) for p in parts]
    counts = [part_counts(p, train_subset) for p in paths]
    manifests = [load_manifest(p) for p in paths]
    record = plan_record(parts, counts, manifests, seed=seed, train_subset=train_subset)
    for row in record["parts"]:
        row["store_as_written"] = (as_written or {}).get(f"data.train[{row['part']}].store", row["store"])
    return record
