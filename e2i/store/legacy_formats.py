"""Readers of the legacy embedding caches: each turns one format into ``(SplitData, encoders, info)``.

The formats (``pt-pairs``, ``coco-pt``, ``parquet``) are documented in :mod:`e2i.store.legacy`, which
detects the format and writes the split. Every ``.pt`` file goes through :func:`load_pt`
(``torch.load(weights_only=True)``; torch is imported only then): pickled code is refused, never run.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from e2i.errors import StoreError
from e2i.store.reader import SplitData
from e2i.store.schema import embedding_matrix

PATH_KEYS = ("path", "paths", "file_name", "file_names", "filename", "audio_path", "image_path", "image_paths")
TEXT_KEYS = ("caption", "captions", "text", "texts")


# ----------------------------------------------------------------------------------------- helpers
def load_pt(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; refuses pickled code with a StoreError."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1][:160] if str(e).strip() else ""
        raise StoreError(f"{path}: refused: contains pickled Python objects that weights_only loading does "
                         f"not allow (re-save plain tensors/lists/dicts) [{first}]") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise StoreError(f"{path}: cannot read .pt file ({str(e).splitlines()[0][:160]})") from None


def _matrix(obj: Any, path: Path, keys: tuple[str, ...]) -> np.ndarray:
    """A tensor (N, D), or the first of ``keys`` in a dict -> float32 C-contiguous (N, D)."""
    import torch

    value = obj
    if isinstance(obj, dict):
        value = next((obj[k] for k in keys if k in obj), None)
        if value is None:
            raise StoreError(f"{path}: dict has none of the keys {', '.join(keys)} (has: {', '.join(map(str, obj))})")
    if isinstance(value, torch.Tensor):
        value = value.detach().to(torch.float32).numpy()
    arr = np.ascontiguousarray(np.asarray(value, dtype=np.float32))
    if arr.ndim != 2:
        raise StoreError(f"{path}: expected a 2-D embedding tensor (N, D), got shape {arr.shape}")
    return arr


def _strings(obj: Any, keys: tuple[str, ...], n: int, path: Path) -> np.ndarray | None:
    """An optional list of n strings under one of ``keys`` of a dict."""
    if not isinstance(obj, dict):
        return None
    value = next((obj[k] for k in keys if k in obj), None)
    if value is None:
        return None
    if len(value) != n:
        raise StoreError(f"{path}: list {keys[0]!r} has {len(value)} entries, embeddings have {n} rows")
    return np.asarray([str(v) for v in value], dtype=object)


def _pick(columns, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in columns), None)


def _cumcount(codes: np.ndarray) -> np.ndarray:
    """1-based position of each row among the rows with the same code (caption number per item)."""
    return pd.Series(codes).groupby(codes).cumcount().to_numpy() + 1


def _split_data(src, item_ids, item_emb, item_paths, cap_ids, cap_item, cap_emb, cap_text, meta=None) -> SplitData:
    return SplitData(path=os.fspath(src), item_ids=np.asarray(item_ids, dtype=object), item_emb=item_emb,
                     caption_ids=np.asarray(cap_ids, dtype=object), caption_item=np.asarray(cap_item, np.int64),
                     caption_emb=np.ascontiguousarray(cap_emb, dtype=np.float32),
                     caption_text=np.asarray(cap_text, dtype=object), manifest=None,
                     item_paths=np.asarray(item_paths, dtype=object), item_meta=meta or {})


# ----------------------------------------------------------------------------------------- pt pairs
def _pairs_metadata(src: Path, n: int) -> pd.DataFrame | None:
    for name in ("metadata.json", "metadata.csv"):
        f = src / name
        if not f.exists():
            continue
        try:
            if name.endswith(".json"):
                raw = json.loads(f.read_text())
                df = pd.DataFrame(raw["rows"] if isinstance(raw, dict) else raw)
            else:
                df = pd.read_csv(f, dtype=str, keep_default_na=False)
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{f}: cannot read metadata ({e})") from None
        if len(df) != n:
            raise StoreError(f"{f}: has {len(df)} rows, the embedding files have {n}")
        return df
    return None


def read_pt_pairs(src: str | os.PathLike) -> tuple[SplitData, dict, dict]:
    """Read an older Embed2Image pair cache -> (SplitData, encoders, info). See :mod:`e2i.store.legacy`."""
    src = Path(src)
    item_files = [src / f"{m}_embeddings.pt" for m in ("audio", "image") if (src / f"{m}_embeddings.pt").exists()]
    text_file = src / "text_embeddings.pt"
    if len(item_files) != 1 or not text_file.exists():
        raise StoreError(f"{src}: expected audio_embeddings.pt (or image_embeddings.pt) and text_embeddings.pt")
    item_file = item_files[0]
    modality = item_file.name.split("_")[0]
    item_obj, text_obj = load_pt(item_file), load_pt(text_file)
    pair_emb = _matrix(item_obj, item_file, ("embeddings", f"{modality}_embeddings"))  # (N, Di)
    text_emb = _matrix(text_obj, text_file, ("embeddings", "text_embeddings"))  # (N, Dc)
    n = len(pair_emb)
    if len(text_emb) != n:
        raise StoreError(f"{text_file}: {len(text_emb)} rows but {item_file.name} has {n} (one row per pair)")
    meta = _pairs_metadata(src, n)
    paths = _strings(item_obj, PATH_KEYS, n, item_file)
    texts = _strings(text_obj, TEXT_KEYS, n, text_file)
    if meta is not None and paths is None and (col := _pick(meta.columns, PATH_KEYS)):
        paths = meta[col].astype(str).to_numpy(dtype=object)
    if meta is not None and texts is None and (col := _pick(meta.columns, TEXT_KEYS)):
        texts = meta[col].astype(str).to_numpy(dtype=object)
    if texts is None:
        texts = np.full(n, "", object)
    if paths is not None:
        codes, uniques = pd.factorize(paths)  # codes: item row per pair, first-occurrence order
        first = np.unique(codes, return_index=True)[1]  # (K,) first pair row of each item
        item_ids = item_paths = np.asarray(uniques, dtype=object)
        item_emb = np.ascontiguousarray(pair_emb[first])
        mismatch = int((np.abs(pair_emb - item_emb[codes]).max(axis=1) > 1e-5).sum()) if n else 0
    else:
        codes = np.arange(n)
        item_ids = np.asarray([f"pair-{i:06d}" for i in range(n)], dtype=object)
        item_paths, item_emb, mismatch = np.full(n, "", object), pair_emb, 0
    cap_ids = [f"{item_ids[c]}#{k}" for c, k in zip(codes, _cumcount(codes))]
    data = _split_data(src, item_ids, item_emb, item_paths, cap_ids, codes, text_emb, texts)
    encoders = {modality: {"name": f"legacy:{item_file.name}", "dim": data.item_dim},
                "text": {"name": f"legacy:{text_file.name}", "dim": data.caption_dim}}
    info = {"format": "pt-pairs", "source": str(src), "pairs": n, "item_embedding_mismatch": mismatch}
    return data, encoders, info


# ----------------------------------------------------------------------------------------- COCO .pt
def _coco_files(src: Path) -> tuple[Path, str]:
    suffix = "_image_embeddings.pt"
    if src.is_file():
        if not src.name.endswith(suffix):
            raise StoreError(f"{src}: expected a *{suffix} file")
        return src, src.name[: -len(suffix)]
    found = sorted(src.glob(f"*{suffix}"))
    if len(found) != 1:
        names = ", ".join(f.name for f in found) or "none"
        raise StoreError(f"{src}: expected exactly one *{suffix} file (found: {names}); pass the file itself")
    return found[0], found[0].name[: -len(suffix)]


def _coco_captions(meta: dict, image_ids: list[str], meta_file: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """-> (caption -> image row (M,), caption ids, texts) from either captions layout."""
    caps = meta.get("captions")
    if not isinstance(caps, list):
        raise StoreError(f"{meta_file}: missing list 'captions'")
    row_of = {i: r for r, i in enumerate(image_ids)}
    if all(isinstance(c, list) for c in caps):  # per-image lists aligned with image_ids
        if len(caps) != len(image_ids):
            raise StoreError(f"{meta_file}: 'captions' has {len(caps)} lists for {len(image_ids)} images")
        rows = np.repeat(np.arange(len(caps)), [len(c) for c in caps])
        texts = [str(t) for c in caps for t in c]
        return rows, [f"{image_ids[r]}#{k}" for r, k in zip(rows, _cumcount(rows))], texts
    if not all(isinstance(c, dict) for c in caps):
        raise StoreError(f"{meta_file}: 'captions' must be per-image lists or a list of {{image_id, caption}}")
    rows = np.empty(len(caps), np.int64)
    for j, c in enumerate(caps):
        r = row_of.get(str(c.get("image_id")))
        if r is None:
            raise StoreError(f"{meta_file}: caption {j} points at unknown image_id {c.get('image_id')!r}")
        rows[j] = r
    texts = [str(c.get("caption", c.get("text", ""))) for c in caps]
    if all("id" in c for c in caps):
        ids = [str(c["id"]) for c in caps]
    else:
        ids = [f"{image_ids[r]}#{k}" for r, k in zip(rows, _cumcount(rows))]
    return rows, ids, texts


def read_coco_pt(src: str | os.PathLike) -> tuple[SplitData, dict, dict]:
    """Read a COCO projection-head cache -> (SplitData, encoders, info). See :mod:`e2i.store.legacy`."""
    image_file, prefix = _coco_files(Path(src))
    meta_file = image_file.with_name(f"{prefix}_metadata.json")
    if not meta_file.exists():
        raise StoreError(f"{meta_file}: missing (needed beside {image_file.name})")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"{meta_file}: not valid JSON ({e})") from None
    obj = load_pt(image_file)
    image_emb = _matrix(obj, image_file, ("embeddings", "image_embeddings"))  # (N, Di)
    n = len(image_emb)
    raw_ids = meta.get("image_ids", obj.get("image_ids") if isinstance(obj, dict) else None)
    if raw_ids is None or len(raw_ids) != n:
        raise StoreError(f"{meta_file}: 'image_ids' must list {n} ids (one per image embedding row)")
    image_ids = [str(i) for i in raw_ids]
    paths = meta.get("file_names", meta.get("image_paths", [""] * n))
    rows, cap_ids, texts = _coco_captions(meta, image_ids, meta_file)
    cap_emb, cap_source = _coco_caption_embeddings(image_file, prefix, obj, meta, meta_file)
    if len(cap_emb) != len(rows):
        raise StoreError(f"{cap_source}: {len(cap_emb)} caption embeddings for {len(rows)} captions")
    data = _split_data(image_file, image_ids, image_emb, [str(p) for p in paths], cap_ids, rows, cap_emb, texts)
    encoders = {"image": {"name": f"legacy:{image_file.name}", "dim": data.item_dim},
                "text": {"name": f"legacy:{Path(cap_source).name}", "dim": data.caption_dim}}
    return data, encoders, {"format": "coco-pt", "source": str(image_file)}


def _coco_caption_embeddings(image_file: Path, prefix: str, obj: Any, meta: dict, meta_file: Path):
    for name in (f"{prefix}_caption_embeddings.pt", f"{prefix}_text_embeddings.pt"):
        f = image_file.with_name(name)
        if f.exists():
            return _matrix(load_pt(f), f, ("embeddings", "caption_embeddings", "text_embeddings")), str(f)
    keys = ("caption_embeddings", "text_embeddings")
    if isinstance(obj, dict) and _pick(obj, keys):
        return _matrix(obj, image_file, keys), str(image_file)
    if "caption_embeddings" in meta:
        return _matrix(meta["caption_embeddings"], meta_file, keys), str(meta_file)
    raise StoreError(f"{image_file.parent}: no caption embeddings ({prefix}_caption_embeddings.pt, "
                     f"{prefix}_text_embeddings.pt, or 'caption_embeddings' in {meta_file.name})")


# ----------------------------------------------------------------------------------------- parquet layout
def _read_parquet_dir(directory: Path) -> tuple[pa.Table, np.ndarray, str]:
    """All *.parquet under a directory -> (table without embeddings, embeddings (N, D), column used)."""
    files = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        raise StoreError(f"{directory}: no *.parquet files")
    tables, blocks, col = [], [], ""
    for f in files:
        try:
            t = pq.read_table(f)
        except (OSError, pa.ArrowException) as e:
            raise StoreError(f"{f}: not a readable parquet file ({str(e).splitlines()[0]})") from None
        col = _pick(t.column_names, ("features", "embedding", "embeddings")) or ""
        if not col:
            raise StoreError(f"{f}: no 'features' column (has: {', '.join(t.column_names)})")
        ids = t.column("path").to_numpy() if "path" in t.column_names else np.arange(len(t)).astype(str)
        blocks += [embedding_matrix(c, str(f), ids) for c in t.column(col).chunks if len(c)]
        tables.append(t.drop_columns([col]))
    dims = {b.shape[1] for b in blocks}
    if len(dims) > 1:
        raise StoreError(f"{directory}: shards have different feature dims {sorted(dims)}")
    emb = np.concatenate(blocks) if blocks else np.empty((0, 0), np.float32)
    return pa.concat_tables(tables, promote_options="permissive"), np.ascontiguousarray(emb), col


def read_parquet_layout(items_dir: str | os.PathLike, captions_dir: str | os.PathLike | None = None, *,
                        modality: str = "audio") -> tuple[SplitData, dict, dict]:
    """Read a ``<model>/<dataset>/<split>`` features directory -> (SplitData, encoders, info)."""
    items_dir = Path(items_dir)
    table, item_emb, _ = _read_parquet_dir(items_dir)
    if "path" not in table.column_names:
        raise StoreError(f"{items_dir}: no 'path' column (has: {', '.join(table.column_names)})")
    paths = table.column("path").cast(pa.string()).to_numpy()
    dup = pd.Index(paths).duplicated()
    if dup.any():
        raise StoreError(f"{items_dir}: duplicate path {paths[int(np.flatnonzero(dup)[0])]!r}")
    labels = table.column("label").to_numpy() if "label" in table.column_names else None
    meta = {"label": labels} if labels is not None else {}
    model = items_dir.parent.parent.name or "legacy"
    encoders = {modality: {"name": f"legacy:{model}", "dim": int(item_emb.shape[1])}}
    if captions_dir is not None:
        caps = _captions_from_dir(Path(captions_dir), paths, labels)
        encoders["text"] = {"name": f"legacy:{Path(captions_dir).parent.parent.name or 'legacy'}",
                            "dim": int(caps[3].shape[1])}
    elif labels is not None:
        caps = _captions_from_labels(paths, labels)
        encoders["text"] = {"name": "label-onehot", "dim": int(caps[3].shape[1])}
    else:
        raise StoreError(f"{items_dir}: no captions: pass --captions DIR or give the items a 'label' column")
    cap_ids, cap_item, texts, cap_emb = caps
    data = _split_data(items_dir, paths, item_emb, paths, cap_ids, cap_item, cap_emb, texts, meta)
    info = {"format": "parquet", "source": str(items_dir),
            "captions": str(captions_dir) if captions_dir else "labels (one-hot)"}
    return data, encoders, info


def _captions_from_labels(paths: np.ndarray, labels: np.ndarray):
    """One caption per item: text = its label, embedding = one-hot over the sorted label set (N, K)."""
    names = np.asarray([str(v) for v in labels], dtype=object)
    classes, codes = np.unique(names, return_inverse=True)  # codes: (N,) class index
    onehot = np.zeros((len(names), len(classes)), np.float32)
    onehot[np.arange(len(names)), codes] = 1.0
    return [f"{p}#1" for p in paths], np.arange(len(paths)), names, onehot


def _captions_from_dir(directory: Path, paths: np.ndarray, labels: np.ndarray | None):
    table, emb, _ = _read_parquet_dir(directory)
    cols = table.column_names
    text_col = _pick(cols, ("caption", "text", "label"))
    if "path" in cols and (rows := pd.Index(paths).get_indexer(table.column("path").cast(pa.string()).to_numpy())).max(
            initial=-1) >= 0:
        if (rows < 0).any():  # rows matched by path: every caption row must name a known item
            bad = table.column("path")[int(np.flatnonzero(rows < 0)[0])].as_py()
            raise StoreError(f"{directory}: caption row for path {bad!r} has no item")
        texts = table.column(text_col).to_numpy() if text_col else np.full(len(rows), "", object)
        ids = [f"{paths[r]}#{k}" for r, k in zip(rows, _cumcount(rows))]
        return ids, rows, np.asarray([str(t) for t in texts], dtype=object), emb
    if "label" not in cols or labels is None:
        raise StoreError(f"{directory}: caption rows match items neither by 'path' nor by 'label'")
    by_label = pd.Index([str(v) for v in table.column("label").to_pylist()])
    if by_label.has_duplicates:
        raise StoreError(f"{directory}: label {by_label[by_label.duplicated()][0]!r} appears twice")
    names = np.asarray([str(v) for v in labels], dtype=object)
    src_rows = by_label.get_indexer(names)  # (N,) caption row per item
    if (src_rows < 0).any():
        raise StoreError(f"{directory}: no caption embedding for label {names[int(np.flatnonzero(src_rows < 0)[0])]!r}")
    texts = table.column(text_col).to_numpy()[src_rows] if text_col else names
    return [f"{p}#1" for p in paths], np.arange(len(paths)), np.asarray([str(t) for t in texts], dtype=object), \
        np.ascontiguousarray(emb[src_rows])
