"""Pseudo-images of a store split, written with Ray Data (`e2i images`, `e2i cache --with-images`).

    store split ─▶ ray.data.read_parquet(shards of a kind: id, embedding)
                ─▶ map_batches(one PNG per row: e2i.cache.pseudo_image)
                ─▶ <images_dir>/pseudo_images/<modality>/<quote(id)>.png
                ─▶ [--include-embeddings] <modality>/embeddings.parquet ─▶ pseudo_images/meta.json

Modality of a kind: ``text`` for captions; ``audio`` or ``image`` for items, from the manifest's encoders
(else the first path's extension). ``embeddings.parquet`` has one row per PNG: ``id`` (string: the PNG's
``e2i:id``, file name :func:`e2i.cache.pseudo_image.png_name`) and ``embedding``
(``fixed_size_list<float32>[D]``: the store's values, bit for bit), in store order (shards in manifest
order, rows in shard order); written after the PNGs of its modality. Local files (PNGs,
``embeddings.parquet``) appear atomically (tmp + rename), so a mirror sync in the middle of the export
never uploads half a file. The layout itself: e2i/cache/pseudo_image.py; the flags: e2i/cache/image_export.py.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np

from e2i.cache.pseudo_image import CHANNEL_MODES, MODES, check_choice, png_name, pseudo_image_png
from e2i.errors import ConfigError, StoreError

KIND_ID = {"items": "item_id", "captions": "caption_id"}
AUDIO_EXT = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aiff", ".aif")
EMBEDDINGS = "embeddings.parquet"


def embedding_matrix(col) -> np.ndarray:
    """Arrow embedding column (fixed_size_list / list<float> / tensor extension) -> (N, D) float32."""
    import pyarrow as pa

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(col)
    if (
        pa.types.is_fixed_size_list(col.type)
        or pa.types.is_list(col.type)
        or pa.types.is_large_list(col.type)
    ):
        values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        if n and values.size % n:
            raise StoreError("embedding column has rows of different lengths")
        return values.reshape(n, -1 if n else 0)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(n, -1)


def _write_batch(batch, *, out_dir: str, id_col: str, opts: dict) -> dict[str, np.ndarray]:
    """Ray Data map_batches fn: write one PNG per row of a pyarrow batch; returns {"written": [n]}."""
    from e2i.store import open_fs

    fs, root = open_fs(out_dir)
    ids = batch.column(id_col).to_pylist()
    emb = embedding_matrix(batch.column("embedding"))  # (B, D)
    for item_id, vec in zip(ids, emb):
        png = pseudo_image_png(vec, item_id=item_id, **opts)
        write_file(fs, posixpath.join(root, png_name(item_id)), png)
    return {"written": np.array([len(ids)], dtype=np.int64)}


def write_file(fs, path: str, data: bytes) -> None:
    """Write ``data`` to ``path``; on a local disk via a hidden tmp file + rename."""
    tmp = _tmp_name(fs, path)
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    if tmp != path:
        fs.move(tmp, path)


def _tmp_name(fs, path: str) -> str:
    import pyarrow.fs as pafs

    if not isinstance(fs, pafs.LocalFileSystem):  # object stores show an object only once it is complete
        return path
    return posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")


def write_embeddings(fs, shards: list[str], id_col: str, out_fs, out_dir: str) -> int:
    """``<out_dir>/embeddings.parquet`` (id, embedding) from the shards, one row group at a time; -> rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from e2i.store import embedding_array

    path = posixpath.join(out_dir, EMBEDDINGS)
    tmp, rows, writer = _tmp_name(out_fs, path), 0, None
    try:
        with out_fs.open_output_stream(tmp) as sink:
            for shard in shards:
                with fs.open_input_file(shard) as f:
                    pf = pq.ParquetFile(f)
                    for g in range(pf.num_row_groups):
                        t = pf.read_row_group(g, columns=[id_col, "embedding"])
                        emb = embedding_array(embedding_matrix(t.column("embedding")))
                        table = pa.table({"id": t.column(id_col).cast(pa.string()), "embedding": emb})
                        if writer is None:
                            writer = pq.ParquetWriter(sink, table.schema)
                        elif table.schema != writer.schema:
                            raise StoreError(f"{shard}: embedding dim differs from the previous shards'")
                        writer.write_table(table)
                        rows += table.num_rows
            if writer is not None:
                writer.close()
    except BaseException:
        if tmp != path:
            out_fs.delete_file(tmp)
        raise
    if tmp != path:
        out_fs.move(tmp, path)
    return rows


def _is_file(fs, path: str) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(path).type == pafs.FileType.File


def _split_info(split_dir: str):
    """(fs, root, manifest or None) of a split dir."""
    from e2i.store import MANIFEST, open_fs

    fs, root = open_fs(split_dir)
    manifest = None
    path = posixpath.join(root, MANIFEST)
    if _is_file(fs, path):
        with fs.open_input_stream(path) as f:
            try:
                manifest = json.loads(f.read())
            except ValueError as e:
                raise StoreError(f"{split_dir}/{MANIFEST}: invalid JSON ({e})") from None
    return fs, root, manifest


def _shard_paths(fs, root: str, manifest: dict | None, kind: str, split_dir: str) -> list[str]:
    """Full paths of a kind's shards: the manifest's list, or every visible *.parquet in <kind>/."""
    import pyarrow.fs as pafs

    if manifest and isinstance(manifest.get("shards"), list):
        rels = [s["path"] for s in manifest["shards"] if str(s.get("path", "")).startswith(kind + "/")]
    else:
        infos = fs.get_file_info(pafs.FileSelector(posixpath.join(root, kind), allow_not_found=True))
        rels = sorted(
            f"{kind}/{i.base_name}"
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.endswith(".parquet")
            and not i.base_name.startswith((".", "_"))
        )
    if not rels:
        raise StoreError(f"{split_dir}/{kind}: no parquet shards (not a store split?)")
    return [posixpath.join(root, r) for r in rels]


def item_modality(fs, manifest: dict | None, shard: str) -> str:
    """'audio' | 'image' for items: the manifest's non-text encoder key, else the first path's extension."""
    keys = [k for k in ((manifest or {}).get("encoders") or {}) if k != "text"]
    if keys:
        return str(keys[0])
    import pyarrow.parquet as pq

    first = pq.ParquetFile(fs.open_input_file(shard)).read_row_group(0, columns=["path"]).column(0)
    path = str(first[0]) if len(first) else ""
    return "audio" if path.lower().endswith(AUDIO_EXT) else "image"


def export_pseudo_images(
    split_dir: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    modalities: Iterable[str] = ("items", "captions"),
    *,
    image_size: int = 128,
    mode: str = "nearest",
    channel_mode: str = "split",
    clip_values: bool = False,
    batch_size: int = 256,
    include_embeddings: bool = False,
    on_rows: Any = None,
) -> dict[str, int]:
    """Write every embedding of a store split as a PNG with Ray Data; returns {modality: count}.

    ``images_dir`` defaults to the split dir (PNGs under ``<split>/pseudo_images/``); local or s3://.
    ``modalities`` are store kinds: ``items`` (-> audio|image) and/or ``captions`` (-> text).
    ``include_embeddings``: also ``<modality>/embeddings.parquet`` (module docstring); ``on_rows(n)`` is
    called as batches of n PNGs are done (`e2i images --upload-every`)."""
    import ray

    from e2i.store import open_fs

    split_dir = os.fspath(split_dir)
    images_dir = os.fspath(images_dir) if images_dir is not None else split_dir
    kinds = list(modalities)
    for kind in kinds:
        check_choice(kind, KIND_ID, "modalities")
    check_choice(mode, MODES, "image mode")
    check_choice(channel_mode, CHANNEL_MODES, "image channel mode")
    if int(image_size) < 1 or int(batch_size) < 1:
        raise ConfigError(f"image size and batch size must be >= 1 (got {image_size}, {batch_size})")
    opts = {
        "image_size": int(image_size),
        "mode": mode,
        "channel_mode": channel_mode,
        "clip_values": bool(clip_values),
    }
    fs, root, manifest = _split_info(split_dir)
    out_fs, out_root = open_fs(images_dir)
    counts: dict[str, int] = {}
    for kind in kinds:
        shards = _shard_paths(fs, root, manifest, kind, split_dir)
        modality = "text" if kind == "captions" else item_modality(fs, manifest, shards[0])
        out_fs.create_dir(posixpath.join(out_root, "pseudo_images", modality), recursive=True)
        out_dir = images_dir.rstrip("/") + f"/pseudo_images/{modality}"
        ds = ray.data.read_parquet(shards, filesystem=fs, columns=[KIND_ID[kind], "embedding"])
        written = ds.map_batches(
            _write_batch,
            batch_format="pyarrow",
            batch_size=batch_size,
            fn_kwargs={"out_dir": out_dir, "id_col": KIND_ID[kind], "opts": opts},
        )
        counts[modality] = 0
        for done in written.iter_batches(batch_size=None, batch_format="numpy"):
            n = int(done["written"].sum())
            counts[modality] += n
            if on_rows is not None:
                on_rows(n)
        if include_embeddings:
            out_path = posixpath.join(out_root, "pseudo_images", modality)
            write_embeddings(fs, shards, KIND_ID[kind], out_fs, out_path)
    _write_meta(out_fs, out_root, split_dir, opts, counts)
    return counts


def export_split(
    split_dir: str | os.PathLike, images_dir: str | os.PathLike | None = None, **options: Any
) -> dict:
    """:func:`export_pseudo_images` for `e2i cache --with-images`; returns a summary for its report:
    ``{"images_dir", "counts": {modality: n}, "options", "seconds"}``."""
    start = time.perf_counter()
    counts = export_pseudo_images(split_dir, images_dir, **options)
    base = os.fspath(images_dir if images_dir is not None else split_dir).rstrip("/")
    return {
        "images_dir": f"{base}/pseudo_images",
        "counts": counts,
        "options": dict(options),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _write_meta(fs, root: str, split_dir: str, opts: dict, counts: dict[str, int]) -> None:
    """Merge this export into ``pseudo_images/meta.json`` (options, counts per modality)."""
    path = posixpath.join(root, "pseudo_images", "meta.json")
    meta: dict[str, Any] = {}
    if _is_file(fs, path):
        with fs.open_input_stream(path) as f:
            try:
                meta = json.loads(f.read())
            except ValueError:
                meta = {}
    if meta.get("options") not in (None, opts):
        meta["modalities"] = {}  # a different layout replaces the previous export's record
    layout = "e2i pseudo-image v1 (see e2i/cache/pseudo_image.py)"
    meta.update({"layout": layout, "split": split_dir, "options": opts})
    meta.setdefault("modalities", {}).update(counts)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(meta, indent=2, sort_keys=True).encode())

