"""Pseudo-images: documented layout, round trips, determinism, PNG metadata, Ray Data export + CLI."""

from __future__ import annotations

import argparse
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from e2i.cache import image_export, images
from e2i.cache.pseudo_image import (
    embedding_to_image,
    grid_side,
    image_to_embedding,
    png_name,
    pseudo_image_png,
    read_pseudo_image,
    value_range,
)
from e2i.errors import ConfigError
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
    assert size >= grid_side(dim, channel_mode)  # upsampling cases only (downsampling: the tests below)
    img = embedding_to_image(v, image_size=size, channel_mode=channel_mode)
    assert img.shape == (size, size, 3)
    lo, hi = value_range(v, clip_values=False)
    back = image_to_embedding(img, dim=dim, channel_mode=channel_mode, lo=lo, hi=hi)
    assert np.abs(back - v).max() <= (hi - lo) / 255 + 1e-6


def test_nearest_downsampling_keeps_every_other_cell_and_is_not_invertible():
    """S < g: D = 48 -> g = 4 cells per side, S = 2 -> pixel (y, x) takes cell (2y + 1, 2x + 1)."""
    v = np.arange(48, dtype=np.float32)  # plane R = 0..15, G = 16..31, B = 32..47 (4 x 4, row-major)
    assert grid_side(48) == 4
    img = embedding_to_image(v, image_size=2)
    kept = np.array([[5, 7], [13, 15]])  # cells (1, 1), (1, 3), (3, 1), (3, 3) of a plane
    for c in range(3):
        assert img[..., c].tolist() == np.rint((kept + 16 * c) / 47 * 255).tolist()
    # Inverting reads the pixel of each cell's centre: every 2 x 2 block of cells gets its kept cell's value.
    back = image_to_embedding(img, dim=48, lo=0.0, hi=47.0)
    blocks = np.repeat(np.repeat(kept, 2, axis=0), 2, axis=1).ravel()  # (16,)
    expected = np.concatenate([blocks + 16 * c for c in range(3)])
    assert np.abs(back - expected).max() <= 47 / 510 + 1e-6
    assert np.abs(back - v).max() >= 5  # cell 0 comes back as 5: lost, not invertible


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_smooth_downsampling_keeps_constant_planes(mode):
    """S < g through PIL's filters: a constant plane stays constant, so R, G, B keep their values."""
    v = np.concatenate([np.full(16, 2.0), np.full(16, -1.0), np.full(16, 0.0)])  # g = 4, min-max -> 1, 0, 1/3
    img = embedding_to_image(v, image_size=3, mode=mode)
    assert img.shape == (3, 3, 3)
    assert (img[..., 0] == 255).all() and (img[..., 1] == 0).all() and (img[..., 2] == 85).all()


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


# ------------------------------------------------------------------------------------ the older tools' flags
def _tree(root):
    """{relative path: bytes} of every file under root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_help_lists_the_older_flags(capsys):
    from e2i.cli import main

    with pytest.raises(SystemExit) as info:
        main(["images", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--store", "--cache-dir", "--include-embeddings", "--mirror", "--hf-dataset", "--hf-prefix",
                 "--hf-token", "--upload-every"):
        assert f"\n  {flag} " in out, flag


def test_cache_dir_is_an_alias_of_store(ray_local, tmp_path, capsys):
    from e2i.cli import main

    split = tmp_path / "toy" / "all"
    _, caps = _small_store(split)
    common = ["--image-size", "16", "--batch-size", "4", "--kinds", "captions"]
    assert main(["images", "--store", str(split), "--images-dir", str(tmp_path / "a"), *common]) == 0
    assert main(["images", "--cache-dir", str(split), "--images-dir", str(tmp_path / "b"), *common]) == 0
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert sorted(k for k in a if k.endswith(".png")) == sorted(f"pseudo_images/text/{png_name(c)}" for c in caps)
    assert a == b  # same PNG bytes, same meta.json; no embeddings.parquet without --include-embeddings
    # both flags: fine when they name the same dir, a one-line error naming the flag when they differ
    both = argparse.Namespace(store=str(split), cache_dir=f"{tmp_path}/toy/../toy/all/")
    assert image_export.store_dir(both) == str(split)
    capsys.readouterr()
    assert main(["images", "--store", str(split), "--cache-dir", str(tmp_path / "toy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("e2i: error: --cache-dir") and "--store" in err and "\n" not in err
    assert main(["images", "--image-size", "8"]) == 2
    assert "--store (or --cache-dir)" in capsys.readouterr().err


def test_include_embeddings_and_upload_every_to_a_local_mirror(ray_local, tmp_path, capsys):
    """--include-embeddings: <modality>/embeddings.parquet = (id, embedding) in store order, exact float32;
    --mirror DIR --upload-every 4: the pseudo_images/ tree is mirrored during the export and at the end."""
    from e2i.cli import main

    split = tmp_path / "st" / "toy" / "all"
    items, caps = _small_store(split)
    remote = tmp_path / "remote"
    rc = main(["images", "--cache-dir", str(split), "--include-embeddings", "--image-size", "8",
               "--batch-size", "2", "--mirror", str(remote), "--upload-every", "4"])
    assert rc == 0
    root = split / "pseudo_images"
    for folder, ids in (("audio", items), ("text", caps)):
        table = pq.read_table(root / folder / "embeddings.parquet")
        assert table.column_names == ["id", "embedding"]
        etype = table.schema.field("embedding").type
        assert etype == pa.list_(pa.float32(), len(next(iter(ids.values()))))  # fixed_size_list<float32>[D]
        assert table.column("id").to_pylist() == list(ids)  # store order: shard p0 then p1, row order
        emb = images.embedding_matrix(table.column("embedding"))
        assert emb.dtype == np.float32
        assert emb.tobytes() == np.stack(list(ids.values())).tobytes()  # bit for bit
        pngs = [png_name(i) for i in ids]
        assert sorted(os.listdir(root / folder)) == sorted([*pngs, "embeddings.parquet"])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("mirror "))
    assert line.startswith(f"mirror {remote}/toy/all: ") and ", 0 failed" in line
    syncs = int(re.search(r"\((\d+) sync\(s\)\)$", line).group(1))
    assert syncs >= 3  # >= 1 sync during each modality's 6 / 12 rows, then the final one
    mirrored = remote / "toy" / "all"
    assert sorted(os.listdir(mirrored)) == ["pseudo_images"]  # the export only: no shards, no manifest
    local = _tree(root)
    assert "meta.json" in local and not [k for k in local if k.endswith(".tmp")]
    assert _tree(mirrored / "pseudo_images") == local


def test_mirror_flags_to_a_real_s3_server(ray_local, tmp_path, monkeypatch, capsys):
    import pyarrow.fs as pafs
    from s3_server import create_bucket, run_moto_server, s3_env

    from e2i.cli import main

    split = tmp_path / "st" / "toy" / "all"
    _small_store(split)
    with run_moto_server() as endpoint:
        for k, v in s3_env(endpoint).items():
            monkeypatch.setenv(k, v)
        create_bucket(endpoint, "e2i-images")
        rc = main(["images", "--store", str(split), "--kinds", "captions", "--image-size", "8",
                   "--include-embeddings", "--mirror", "s3://e2i-images/exports"])
        assert rc == 0
        fs = pafs.S3FileSystem(endpoint_override=endpoint.split("://")[1], scheme="http",
                               access_key="testing", secret_key="testing", region="us-east-1")
        base = "e2i-images/exports/toy/all/"
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        remote = {}
        for info in infos:
            if info.type == pafs.FileType.File:
                with fs.open_input_stream(info.path) as f:
                    remote[info.path.removeprefix(base)] = f.read()
    local = {f"pseudo_images/{k}": v for k, v in _tree(split / "pseudo_images").items()}
    assert len(local) == 12 + 2 and "pseudo_images/text/embeddings.parquet" in local  # PNGs, parquet, meta
    assert remote == local
    out = capsys.readouterr().out
    assert "mirror s3://e2i-images/exports/toy/all: 14 uploaded, 0 failed (1 sync(s))" in out


def test_hub_flags_name_the_dataset_repo_and_keep_the_token_out(ray_local, tmp_path, capsys, monkeypatch):
    """No network here (HF_HUB_OFFLINE=1): the Hub upload fails after its retries, is reported with the
    repo path built from --hf-dataset/--hf-prefix, exits 1, and the local export is complete."""
    import functools

    from e2i.cli import main
    from e2i.store import mirror

    # the real Mirror, retrying 4 times as by default, but 0.05 s apart instead of 1, 2, 4 s
    monkeypatch.setattr(mirror, "Mirror", functools.partial(mirror.Mirror, backoff=0.05))

    split = tmp_path / "st" / "toy" / "all"
    _, caps = _small_store(split)
    rc = main(["images", "--cache-dir", str(split), "--kinds", "captions", "--image-size", "8",
               "--hf-dataset", "someone/e2i-images", "--hf-prefix", "exports/",
               "--hf-token", "hf_secret_value"])
    out, err = capsys.readouterr()
    assert rc == 1
    # 12 PNGs failed; meta.json (last) is held back
    assert "mirror hf://datasets/someone/e2i-images/exports/toy/all: 0 uploaded, 12 failed" in out
    assert "hf_secret_value" not in out + err
    assert len(os.listdir(split / "pseudo_images" / "text")) == len(caps)
    m = str(tmp_path / "m")
    for bad, flag in ((["--hf-dataset", "a/b", "--mirror", m], "--mirror or --hf-dataset"),
                      (["--upload-every", "3"], "--upload-every needs"),
                      (["--hf-dataset", "no-owner"], "--hf-dataset"),
                      (["--mirror", m, "--upload-every", "0"], "--upload-every"),
                      (["--mirror", m, "--images-dir", "s3://b/x"], "s3://b/x is not local")):
        assert main(["images", "--store", str(split), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("e2i: error: ") and flag in err and "\n" not in err, bad
