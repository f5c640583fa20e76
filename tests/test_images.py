"""Pseudo-images: documented layout, round trips, determinism, PNG metadata, Ray Data export + CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from e2i import images
from e2i.errors import ConfigError
from e2i.images import (
    embedding_to_image,
    grid_side,
    image_to_embedding,
    png_name,
    pseudo_image_png,
    read_pseudo_image,
    value_range,
)
from e2i.store import StoreWriter, make_captions_table, make_items_table


# ------------------------------------------------------------------------------------------ layout
def test_grid_side():
    assert grid_side(768, "split") == 16  # 256 values per channel -> 16 x 16
    assert grid_side(769, "split") == 17
    assert grid_side(768, "replicate") == 28  # ceil(sqrt(768))
    assert grid_side(1, "split") == 1
    with pytest.raises(ConfigError, match="channel_mode"):
        grid_side(8, "mix")


def test_split_layout_is_channel_major_row_major_with_black_padding():
    v = np.arange(10, dtype=np.float32)  # D = 10 -> g = 2, 12 cells, 2 padding cells
    img = embedding_to_image(v, image_size=2)  # S = g: one pixel per cell
    u = np.rint(v / 9 * 255)  # min-max to [0, 255]
    assert img.shape == (2, 2, 3) and img.dtype == np.uint8
    assert img[..., 0].ravel().tolist() == u[0:4].tolist()  # R = values 0..3, row-major
    assert img[..., 1].ravel().tolist() == u[4:8].tolist()  # G = values 4..7
    assert img[..., 2].ravel().tolist() == u[8:10].tolist() + [0, 0]  # B = 8, 9, then black padding


def test_replicate_is_grey_and_nearest_blocks():
    v = np.array([-1.0, 0.0, 1.0, 0.5])
    img = embedding_to_image(v, image_size=4, channel_mode="replicate")  # g = 2 -> 2x2 blocks
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    assert img[:2, :2, 0].tolist() == [[0, 0], [0, 0]] and img[2:, 2:, 0].tolist() == [[191, 191], [191, 191]]


@pytest.mark.parametrize("channel_mode", ["split", "replicate"])
@pytest.mark.parametrize("dim,size", [(7, 128), (213, 128), (512, 37), (768, 128), (1295, 50), (4096, 64)])
def test_nearest_round_trip_within_quantisation(dim, size, channel_mode):
    v = np.random.default_rng(dim).normal(size=dim).astype(np.float32)
    if size < grid_side(dim, channel_mode):
        pytest.skip("downsampling is not invertible")
    img = embedding_to_image(v, image_size=size, channel_mode=channel_mode)
    assert img.shape == (size, size, 3)
    lo, hi = value_range(v, clip_values=False)
    back = image_to_embedding(img, dim=dim, channel_mode=channel_mode, lo=lo, hi=hi)
    assert np.abs(back - v).max() <= (hi - lo) / 255 + 1e-6


def test_clip_values_uses_fixed_range_and_clamps():
    v = np.array([-3.0, -0.5, 0.0, 0.25, 2.0, 1.0])
    img = embedding_to_image(v, image_size=16, clip_values=True)
    back = image_to_embedding(img, dim=6, clip_values=True)  # lo, hi = -1, 1 implied
    assert np.abs(back - np.clip(v, -1, 1)).max() <= 2 / 255
    with pytest.raises(ValueError, match="lo and hi"):
        image_to_embedding(img, dim=6)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_smooth_modes_are_approximately_invertible(mode):
    v = np.random.default_rng(1).normal(size=768)
    img = embedding_to_image(v, image_size=128, mode=mode)
    lo, hi = value_range(v, False)
    back = image_to_embedding(img, dim=768, lo=lo, hi=hi)
    assert np.corrcoef(back, v)[0, 1] > 0.98


def test_deterministic_png_bytes_and_metadata_round_trip():
    v = np.random.default_rng(2).normal(size=300).astype(np.float32)
    a = pseudo_image_png(v, item_id="clip 1.wav#3", image_size=64)
    assert a == pseudo_image_png(v, item_id="clip 1.wav#3", image_size=64)
    back, meta = read_pseudo_image(a)
    assert meta["id"] == "clip 1.wav#3" and meta["dim"] == "300" and meta["grid"] == "10"
    lo, hi = float(meta["lo"]), float(meta["hi"])
    assert (lo, hi) == value_range(v, False)
    assert np.abs(back - v).max() <= (hi - lo) / 255 + 1e-6


def test_bad_inputs():
    with pytest.raises(ValueError, match="finite"):
        embedding_to_image(np.array([0.0, np.nan]))
    with pytest.raises(ConfigError, match="mode"):
        embedding_to_image(np.ones(4), mode="lanczos")


def test_png_names_are_reversible_and_flat():
    assert png_name("toy_0001.wav#1") == "toy_0001.wav%231.png"
    assert "/" not in png_name("cats/001.jpg") and png_name("cats/001.jpg") == "cats%2F001.jpg.png"


# ------------------------------------------------------------------------------------------ export
def _small_store(path, *, with_manifest=True, n=6, di=10, dc=7, ext=".wav"):
    rng = np.random.default_rng(0)
    item_ids = np.array([f"clip{i}{ext}" for i in range(n)], dtype=object)
    cap_ids = np.array([f"{i}#{k}" for i in item_ids for k in (1, 2)], dtype=object)
    item_emb = rng.normal(size=(n, di)).astype(np.float32)
    cap_emb = rng.normal(size=(2 * n, dc)).astype(np.float32)
    w = StoreWriter(
        path,
        dataset="toy",
        split="all",
        encoders={
            "audio" if ext == ".wav" else "image": {"name": "x", "dim": di},
            "text": {"name": "y", "dim": dc},
        },
    )
    w.write_shard(
        "items", make_items_table(item_ids[:4], [f"a/{i}" for i in item_ids[:4]], item_emb[:4]), "p0"
    )
    w.write_shard(
        "items", make_items_table(item_ids[4:], [f"a/{i}" for i in item_ids[4:]], item_emb[4:]), "p1"
    )
    w.write_shard(
        "captions", make_captions_table(cap_ids, np.repeat(item_ids, 2), ["t"] * len(cap_ids), cap_emb), "p0"
    )
    if with_manifest:
        w.finalize()
    return dict(zip(item_ids, item_emb)), dict(zip(cap_ids, cap_emb))


def test_export_writes_one_invertible_png_per_row(ray_local, tmp_path):
    split = tmp_path / "toy" / "all"
    items, caps = _small_store(split)
    counts = images.export_pseudo_images(split, image_size=32, batch_size=4)
    assert counts == {"audio": 6, "text": 12}
    root = split / "pseudo_images"
    assert sorted(os.listdir(root / "audio")) == sorted(png_name(i) for i in items)
    assert sorted(os.listdir(root / "text")) == sorted(png_name(c) for c in caps)
    for ids, folder in ((items, "audio"), (caps, "text")):
        for item_id, vec in ids.items():
            back, meta = read_pseudo_image(root / folder / png_name(item_id))
            assert meta["id"] == item_id
            assert np.abs(back - vec).max() <= (vec.max() - vec.min()) / 255 + 1e-6
    assert Image.open(root / "audio" / png_name("clip0.wav")).size == (32, 32)
    meta = json.loads((root / "meta.json").read_text())
    assert meta["modalities"] == {"audio": 6, "text": 12} and meta["options"]["image_size"] == 32
    assert pq.read_table(split / "items").num_rows == 6  # the store itself is untouched


def test_cli_images_on_a_foreign_split(ray_local, tmp_path, capsys):
    """No manifest: items are images by their path extension; flags reach the layout."""
    from e2i.cli import main

    split = tmp_path / "foreign" / "all"
    _small_store(split, with_manifest=False, ext=".jpg")
    out = tmp_path / "imgs"
    rc = main(
        [
            "images",
            "--store",
            str(tmp_path / "foreign"),
            "--images-dir",
            str(out),
            "--image-size",
            "24",
            "--image-mode",
            "bicubic",
            "--image-channel-mode",
            "replicate",
            "--clip-values",
            "--kinds",
            "items",
        ]
    )
    assert rc == 0
    files = sorted(os.listdir(out / "pseudo_images" / "image"))
    assert files == sorted(png_name(f"clip{i}.jpg") for i in range(6))
    img = np.asarray(Image.open(out / "pseudo_images" / "image" / files[0]))
    assert img.shape == (24, 24, 3) and (img[..., 0] == img[..., 2]).all()  # replicate = grey
    meta = json.loads((out / "pseudo_images" / "meta.json").read_text())
    assert meta["options"] == {
        "image_size": 24,
        "mode": "bicubic",
        "channel_mode": "replicate",
        "clip_values": True,
    }
    assert "pseudo-images: 6 PNGs from 1 split(s)" in capsys.readouterr().out
    assert main(["images", "--store", str(tmp_path / "nothing")]) == 2
    with pytest.raises(ConfigError, match="modalities"):
        images.export_pseudo_images(split, out, modalities=("audio",))
