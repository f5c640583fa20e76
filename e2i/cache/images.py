"""Pseudo-images: each embedding as an RGB PNG (`e2i images`, also `e2i cache --with-images`).

Layout of one embedding ``v`` (D values) in an ``S x S`` image (``S = image_size``, default 128):

1. Normalise to [0, 1]: ``u = (v - lo) / (hi - lo)`` with
   - ``clip_values=False`` (default): per-vector min-max, ``lo = min(v)``, ``hi = max(v)``
     (``hi = lo + 1`` for a constant vector);
   - ``clip_values=True``: ``v`` is clamped to [-1, 1] first and ``lo, hi = -1, 1`` for every vector.
2. Grid (row-major, C order), padding cells are 0 (black):
   - ``channel_mode="split"``: ``g = ceil(sqrt(ceil(D / 3)))``; ``u`` is zero-padded to ``3 g^2`` values
     and reshaped to ``(3, g, g)``: R holds values ``[0, g^2)``, G ``[g^2, 2 g^2)``, B ``[2 g^2, 3 g^2)``.
   - ``channel_mode="replicate"``: ``g = ceil(sqrt(D))``; ``u`` padded to ``g^2``, reshaped ``(g, g)``
     and copied into R, G and B (a grey image).
3. Resize each ``(g, g)`` plane to ``(S, S)`` on float values:
   - ``nearest``: pixel ``(y, x)`` takes cell ``(floor((y + .5) g / S), floor((x + .5) g / S))``;
   - ``bilinear`` / ``bicubic``: PIL's resampling filters.
4. Quantise: ``pixel = clip(round(255 u), 0, 255)`` as uint8 ``(S, S, 3)``.

Inverse (:func:`image_to_embedding`): read the pixel at each cell centre,
``(floor((i + .5) S / g), floor((j + .5) S / g))``, and map back ``v = lo + pixel / 255 (hi - lo)``.
With ``nearest`` and ``S >= g`` this is exact up to quantisation: ``|error| <= (hi - lo) / 510``.
Bilinear/bicubic are approximately invertible (the cell-centre pixel mixes in neighbours); ``S < g``
(downsampling) loses cells and is not invertible.

Files: ``<images_dir>/pseudo_images/<modality>/<quote(id)>.png`` where modality is ``audio`` or ``image``
for items (from the manifest) and ``text`` for captions, and ``quote`` is URL percent-encoding with no
safe characters (``toy_0001.wav#1`` -> ``toy_0001.wav%231.png``). Each PNG carries ``lo``, ``hi``, ``dim``,
``grid``, the options and the id in tEXt chunks (``e2i:*``), so :func:`read_pseudo_image` inverts it
alone; ``pseudo_images/meta.json`` records the options and counts. Deterministic: same inputs, same bytes.
`e2i images --include-embeddings` adds ``pseudo_images/<modality>/embeddings.parquet`` (e2i/cache/image_export.py).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import posixpath
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import numpy as np

from e2i.errors import ConfigError, StoreError

MODES = ("nearest", "bilinear", "bicubic")
CHANNEL_MODES = ("split", "replicate")
KIND_ID = {"items": "item_id", "captions": "caption_id"}
AUDIO_EXT = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aiff", ".aif")


# ============================================================================================ layout
def grid_side(dim: int, channel_mode: str = "split") -> int:
    """Side ``g`` of the square grid holding ``dim`` values (per channel for split)."""
    _check(channel_mode, CHANNEL_MODES, "channel_mode")
    cells = math.ceil(dim / 3) if channel_mode == "split" else dim
    return max(1, math.ceil(math.sqrt(cells)))


def value_range(vec: np.ndarray, clip_values: bool) -> tuple[float, float]:
    """(lo, hi) used to normalise ``vec`` (see module docstring)."""
    if clip_values:
        return -1.0, 1.0
    lo, hi = float(np.min(vec)), float(np.max(vec))
    return (lo, lo + 1.0) if hi <= lo else (lo, hi)


def embedding_to_image(
    vec: np.ndarray,
    *,
    image_size: int = 128,
    mode: str = "nearest",
    channel_mode: str = "split",
    clip_values: bool = False,
) -> np.ndarray:
    """(D,) embedding -> (S, S, 3) uint8 pseudo-image (layout in the module docstring)."""
    return _to_image(vec, image_size, mode, channel_mode, clip_values)[0]


def _to_image(vec, image_size: int, mode: str, channel_mode: str, clip_values: bool):
    """-> (image (S, S, 3) uint8, lo, hi, g)."""
    _check(mode, MODES, "mode")
    v = np.asarray(vec, dtype=np.float64).ravel()  # (D,)
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError("embedding must be non-empty and finite")
    if image_size < 1:
        raise ValueError("image_size must be >= 1")
    if clip_values:
        v = np.clip(v, -1.0, 1.0)
    lo, hi = value_range(v, clip_values)
    u = (v - lo) / (hi - lo)  # (D,) in [0, 1]
    g = grid_side(v.size, channel_mode)
    planes = 3 if channel_mode == "split" else 1
    grid = np.zeros(planes * g * g, dtype=np.float32)
    grid[: v.size] = u
    grid = grid.reshape(planes, g, g)  # (P, g, g) row-major, padding cells 0
    resized = np.stack([_resize(p, image_size, mode) for p in grid])  # (P, S, S)
    if planes == 1:
        resized = np.repeat(resized, 3, axis=0)
    pixels = np.clip(np.rint(resized * 255.0), 0, 255).astype(np.uint8)  # (3, S, S)
    return np.ascontiguousarray(pixels.transpose(1, 2, 0)), lo, hi, g


def _nearest_index(size: int, g: int) -> np.ndarray:
    """Cell index of each output pixel along one axis: floor((x + 0.5) g / S)."""
    return np.minimum(((np.arange(size) + 0.5) * g / size).astype(np.int64), g - 1)


def _centre_index(size: int, g: int) -> np.ndarray:
    """Pixel at the centre of each cell along one axis: floor((i + 0.5) S / g)."""
    return np.minimum(((np.arange(g) + 0.5) * size / g).astype(np.int64), size - 1)


def _resize(plane: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(g, g) float plane -> (S, S) float plane."""
    if mode == "nearest":
        idx = _nearest_index(size, plane.shape[0])
        return plane[idx][:, idx]
    from PIL import Image

    filt = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[mode]
    img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))  # mode "F"
    return np.asarray(img.resize((size, size), resample=filt), dtype=np.float32)


def image_to_embedding(
    img: np.ndarray,
    *,
    dim: int,
    channel_mode: str = "split",
    lo: float | None = None,
    hi: float | None = None,
    clip_values: bool = False,
) -> np.ndarray:
    """Inverse of :func:`embedding_to_image`: (S, S, 3) uint8 -> (dim,) float32.

    ``lo``/``hi``: the normalisation range (from the PNG's tEXt or :func:`value_range`); with
    ``clip_values=True`` they default to -1, 1."""
    if lo is None or hi is None:
        if not clip_values:
            raise ValueError("lo and hi are needed to invert a min-max normalised pseudo-image")
        lo, hi = -1.0, 1.0
    pixels = np.asarray(img)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[0] != pixels.shape[1]:
        raise ValueError(f"expected a square (S, S, 3) image, got {pixels.shape}")
    g = grid_side(dim, channel_mode)
    c = _centre_index(pixels.shape[0], g)
    cells = pixels[c][:, c].astype(np.float64)  # (g, g, 3)
    if channel_mode == "split":
        flat = cells.transpose(2, 0, 1).reshape(-1)  # (3 g^2,) R plane, then G, then B
    else:
        flat = cells.mean(axis=2).reshape(-1)  # (g^2,) grey
    return (lo + flat[:dim] / 255.0 * (hi - lo)).astype(np.float32)


# ============================================================================================ PNG files
def pseudo_image_png(
    vec: np.ndarray,
    *,
    item_id: str = "",
    image_size: int = 128,
    mode: str = "nearest",
    channel_mode: str = "split",
    clip_values: bool = False,
) -> bytes:
    """PNG bytes of the pseudo-image with its inversion metadata in tEXt chunks ``e2i:*``."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    pixels, lo, hi, g = _to_image(vec, image_size, mode, channel_mode, clip_values)
    info = PngInfo()
    meta = {
        "id": item_id,
        "dim": np.asarray(vec).size,
        "lo": repr(lo),
        "hi": repr(hi),
        "grid": g,
        "mode": mode,
        "channel_mode": channel_mode,
        "clip_values": int(clip_values),
    }
    for key, value in meta.items():
        info.add_text(f"e2i:{key}", str(value))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_pseudo_image(source: str | os.PathLike | bytes) -> tuple[np.ndarray, dict[str, str]]:
    """(embedding (D,) float32, tEXt metadata) of a PNG written by :func:`pseudo_image_png`."""
    from PIL import Image

    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        meta = {k.removeprefix("e2i:"): v for k, v in im.text.items() if k.startswith("e2i:")}
        pixels = np.asarray(im.convert("RGB"))
    if "dim" not in meta:
        raise ValueError("not an e2i pseudo-image (no e2i:dim metadata)")
    vec = image_to_embedding(
        pixels,
        dim=int(meta["dim"]),
        channel_mode=meta["channel_mode"],
        lo=float(meta["lo"]),
        hi=float(meta["hi"]),
    )
    return vec, meta


def png_name(item_id: str) -> str:
    """File name of an id's pseudo-image: percent-encoded id (no '/' or '#') + '.png'."""
    return quote(str(item_id), safe="") + ".png"


# ============================================================================================ store export
def _check(value: Any, choices: Iterable, what: str) -> None:
    if value not in tuple(choices):
        raise ConfigError(f"{what}: {value!r} is not one of {', '.join(choices)}")


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
    from e2i.cache.image_export import write_file
    from e2i.store.core import open_fs

    fs, root = open_fs(out_dir)
    ids = batch.column(id_col).to_pylist()
    emb = embedding_matrix(batch.column("embedding"))  # (B, D)
    for item_id, vec in zip(ids, emb):
        png = pseudo_image_png(vec, item_id=item_id, **opts)
        write_file(fs, posixpath.join(root, png_name(item_id)), png)
    return {"written": np.array([len(ids)], dtype=np.int64)}


def _is_file(fs, path: str) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(path).type == pafs.FileType.File


def _split_info(split_dir: str):
    """(fs, root, manifest or None) of a split dir."""
    from e2i.store.core import MANIFEST, open_fs

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
    ``include_embeddings``: also ``<modality>/embeddings.parquet`` (e2i.cache.image_export); ``on_rows(n)`` is
    called as batches of n PNGs are done (`e2i images --upload-every`)."""
    import ray

    from e2i.cache import image_export
    from e2i.store.core import open_fs

    split_dir = os.fspath(split_dir)
    images_dir = os.fspath(images_dir) if images_dir is not None else split_dir
    kinds = list(modalities)
    for kind in kinds:
        _check(kind, KIND_ID, "modalities")
    _check(mode, MODES, "image mode")
    _check(channel_mode, CHANNEL_MODES, "image channel mode")
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
            image_export.write_embeddings(fs, shards, KIND_ID[kind], out_fs, out_path)
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
    meta.update({"layout": "e2i pseudo-image v1 (see e2i/cache/images.py)", "split": split_dir, "options": opts})
    meta.setdefault("modalities", {}).update(counts)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(meta, indent=2, sort_keys=True).encode())


# ============================================================================================ CLI
def add_image_options(parser: argparse.ArgumentParser) -> None:
    """The layout flags (shared with `e2i cache --with-images`); read back with :func:`image_options`."""
    parser.add_argument("--image-size", type=int, default=128, help="side of the square PNGs in pixels")
    parser.add_argument(
        "--image-mode",
        choices=MODES,
        default="nearest",
        help="upsampling of the embedding grid (nearest keeps it invertible)",
    )
    parser.add_argument(
        "--image-channel-mode",
        choices=CHANNEL_MODES,
        default="split",
        help="split: the embedding is spread over R, G, B; replicate: grey, same grid in all three",
    )
    parser.add_argument(
        "--clip-values",
        action="store_true",
        help="clamp to [-1, 1] and normalise with that fixed range (default: per-vector min-max)",
    )


def image_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`export_pseudo_images` from the flags of :func:`add_image_options`."""
    return {
        "image_size": args.image_size,
        "mode": args.image_mode,
        "channel_mode": args.image_channel_mode,
        "clip_values": args.clip_values,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from e2i.cache import image_export

    parser.add_argument(
        "--store",
        help="a store split dir, or a dataset/root dir: every split found under it is exported (required, "
        "or --cache-dir)",
    )
    parser.add_argument(
        "--images-dir",
        default=None,
        help="where pseudo_images/ goes (default: inside each split dir; with several splits "
        "<images-dir>/<split>/pseudo_images/)",
    )
    add_image_options(parser)
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=tuple(KIND_ID),
        default=["items", "captions"],
        help="which embeddings to export",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="rows per Ray Data batch")
    image_export.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from e2i.cache.image_export import run

    return run(args)
