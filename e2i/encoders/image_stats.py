"""``image-stats`` (image): colour histogram, spatial colour means, gradient-orientation histograms.

A light built-in encoder: no download, deterministic, real signal (the embedded default, the demo and the
tests). The output row is L2-normalised (cosine similarity = dot product), so its blocks are weighted by
fixed constants stated next to them. dim = 256 with the defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from e2i.encoders.base import ERROR, Encoder, InputError, load_image


@dataclass(frozen=True)
class ImageStatsOptions:
    size: int = 128  # images are resized (aspect ignored; log aspect ratio is a feature) to size x size
    color_bins: int = 4  # joint RGB histogram with color_bins^3 bins
    grid: int = 4  # grid x grid cells for spatial colour means and orientation histograms
    orientation_bins: int = 8  # unsigned gradient orientations over [0, pi)

    def __post_init__(self) -> None:
        if self.size % self.grid or self.size < 8 or self.color_bins < 1 or self.orientation_bins < 1:
            raise ValueError("need size divisible by grid, size >= 8, color_bins >= 1, orientation_bins >= 1")


IMAGE_GLOBALS = (
    "brightness",
    "brightness_std",
    "saturation",
    "saturation_std",
    "colorfulness",
    "edge_density",
    "entropy",
    "log_aspect",
)


class ImageStatsEncoder(Encoder):
    """Colour histogram (b^3), spatial colour means (3 g^2), gradient orientation histograms global and
    per cell (o (1 + g^2)), 8 global statistics. Defaults: 64 + 48 + 136 + 8 = 256 dims."""

    name = "image-stats"
    modality = "image"
    input_column = "path"
    Options = ImageStatsOptions

    def _static_dim(self) -> int:
        o = self.opts
        return o.color_bins**3 + 3 * o.grid**2 + o.orientation_bins * (1 + o.grid**2) + len(IMAGE_GLOBALS)

    def preprocess(self, batch):
        from PIL import Image

        s = self.opts.size
        pixels, aspects, errors = [], [], []
        for path in batch["path"]:
            try:
                img = load_image(path)
                aspects.append(img.width / max(img.height, 1))
                pixels.append(np.asarray(img.resize((s, s), Image.Resampling.BILINEAR), dtype=np.uint8))
                errors.append("")
            except InputError as e:
                pixels.append(np.zeros((s, s, 3), dtype=np.uint8))
                aspects.append(1.0)
                errors.append(str(e))
        out = dict(batch)
        out["pixels"] = np.stack(pixels) if pixels else np.zeros((0, s, s, 3), np.uint8)  # (B, S, S, 3)
        out["aspect"] = np.array(aspects, dtype=np.float32)
        out[ERROR] = np.array(errors, dtype=object)
        return out

    def _embed(self, batch):
        return np.stack(
            [
                image_stats(np.asarray(p), float(a), self.opts)
                for p, a in zip(batch["pixels"], batch["aspect"])
            ]
        )


def image_stats(pixels: np.ndarray, aspect: float, o: ImageStatsOptions) -> np.ndarray:
    """(S, S, 3) uint8 -> (dim,) float32 L2-normalised."""
    x = pixels.astype(np.float32) / 255.0  # (S, S, 3) in [0, 1]
    s, g, b, nb = x.shape[0], o.grid, o.color_bins, o.orientation_bins
    q = np.minimum((x * b).astype(np.int64), b - 1)  # (S, S, 3) colour bin per channel
    hist = np.bincount(((q[..., 0] * b + q[..., 1]) * b + q[..., 2]).ravel(), minlength=b**3) / (s * s)
    cells = x.reshape(g, s // g, g, s // g, 3).mean(axis=(1, 3)) - 0.5  # (g, g, 3) centred means
    grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (S, S)
    gy, gx = np.gradient(grey)
    mag = np.hypot(gx, gy)  # (S, S)
    ang = np.mod(np.arctan2(gy, gx), np.pi)  # unsigned orientation in [0, pi)
    obin = np.minimum((ang / np.pi * nb).astype(np.int64), nb - 1)
    cell = (np.arange(s) // (s // g))[:, None] * g + (np.arange(s) // (s // g))[None, :]  # (S, S) cell id
    total = mag.sum() + 1e-8
    ohist = np.bincount(obin.ravel(), weights=mag.ravel(), minlength=nb) / total  # (nb,)
    ocell = np.bincount((cell * nb + obin).ravel(), weights=mag.ravel(), minlength=g * g * nb) / total
    sat = (x.max(-1) - x.min(-1)) / (x.max(-1) + 1e-6)
    rg, yb = x[..., 0] - x[..., 1], 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
    colorful = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    ghist = np.bincount(np.minimum((grey * 32).astype(np.int64), 31).ravel(), minlength=32) / (s * s)
    entropy = -(ghist[ghist > 0] * np.log2(ghist[ghist > 0])).sum()
    glob = np.array(
        [
            grey.mean(),
            grey.std() * 2,
            sat.mean(),
            sat.std() * 2,
            colorful * 2,
            mag.mean() * 8,
            entropy / 5,
            math.log(max(aspect, 1e-3)),
        ]
    )
    # sqrt of histograms = Hellinger embedding (dot product of two = Bhattacharyya coefficient)
    feat = np.concatenate(
        [np.sqrt(hist), 0.8 * cells.ravel(), 0.7 * np.sqrt(ohist), 0.7 * np.sqrt(ocell), 0.5 * glob]
    )
    return (feat / max(np.linalg.norm(feat), 1e-12)).astype(np.float32)
