"""Pseudo-images: one embedding as an RGB PNG and back (numpy + PIL, no Ray), the layout of `e2i images`.

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
`e2i images` (e2i/cache/image_export.py) writes them for a whole store split (e2i/cache/images.py).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import numpy as np

from e2i.errors import ConfigError

MODES = ("nearest", "bilinear", "bicubic")
CHANNEL_MODES = ("split", "replicate")


def check_choice(value: Any, choices: Iterable, what: str) -> None:
    """ConfigError naming the valid ``choices`` unless ``value`` is one of them."""
    if value not in tuple(choices):
        raise ConfigError(f"{what}: {value!r} is not one of {', '.join(choices)}")


# ============================================================================================ layout
def grid_side(dim: int, channel_mode: str = "split") -> int:
    """Side ``g`` of the square grid holding ``dim`` values (per channel for split)."""
    check_choice(channel_mode, CHANNEL_MODES, "channel_mode")
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
    check_choice(mode, MODES, "mode")
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

