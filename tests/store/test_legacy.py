"""Legacy cache import: Embed2Image .pt pairs, COCO .pt + metadata.json, <model>/<dataset>/<split> parquet."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import torch

from e2i.errors import StoreError
from e2i.store import cli as store
from e2i.store import legacy, load_split, verify_store


def test_pt_pairs_with_paths_group_pairs_into_items(tmp_path):
    src = tmp_path / "old"
    src.mkdir()
    audio = torch.randn(3, 8)
    rows = [0, 0, 1, 2, 2, 2]  # one row per (clip, caption) pair, clips repeated
    torch.save({"embeddings": audio[rows], "paths": [f"clip{r}.wav" for r in rows]}, src / "audio_embeddings.pt")
    text = torch.randn(6, 4)
    torch.save(text, src / "text_embeddings.pt")
    pd.DataFrame({"file_name": [f"clip{r}.wav" for r in rows],
                  "caption": [f"caption {k}" for k in range(6)]}).to_csv(src / "metadata.csv", index=False)
    parser = argparse.ArgumentParser()
    store.add_arguments(parser)
    args = parser.parse_args(["import-legacy", str(src), "--out", str(tmp_path / "st" / "clotho" / "train")])
    assert store.run(args) == 0
    data = load_split(tmp_path / "st" / "clotho" / "train")
    assert list(data.item_ids) == ["clip0.wav", "clip1.wav", "clip2.wav"]
    np.testing.assert_allclose(data.item_emb, audio.numpy())
    assert list(data.caption_ids) == ["clip0.wav#1", "clip0.wav#2", "clip1.wav#1", "clip2.wav#1", "clip2.wav#2",
                                      "clip2.wav#3"]
    np.testing.assert_array_equal(data.caption_item, rows)
    np.testing.assert_allclose(data.caption_emb, text.numpy())
    assert data.caption_text[4] == "caption 4"
    m = data.manifest
    assert (m["dataset"], m["split"]) == ("clotho", "train")
    assert m["encoders"]["audio"]["dim"] == 8 and m["legacy"]["item_embedding_mismatch"] == 0
    assert verify_store(tmp_path / "st") == []


def test_pt_pairs_without_paths_one_item_per_pair(tmp_path):
    torch.save(torch.randn(4, 5), tmp_path / "image_embeddings.pt")
    torch.save({"embeddings": torch.randn(4, 3), "captions": list("abcd")}, tmp_path / "text_embeddings.pt")
    legacy.import_legacy(tmp_path, tmp_path / "out" / "pairs")
    data = load_split(tmp_path / "out" / "pairs")
    assert list(data.item_ids) == [f"pair-{i:06d}" for i in range(4)] and list(data.caption_text) == list("abcd")
    assert data.manifest["encoders"]["image"]["dim"] == 5
    torch.save(torch.randn(3, 3), tmp_path / "text_embeddings.pt")
    with pytest.raises(StoreError, match="text_embeddings.pt: 3 rows but image_embeddings.pt has 4"):
        legacy.import_legacy(tmp_path, tmp_path / "out" / "bad")


class NotATensor:  # pickled code: weights_only loading must refuse it
    pass


def test_pickled_code_is_refused(tmp_path):
    torch.save({"embeddings": torch.randn(2, 2), "hook": NotATensor()}, tmp_path / "audio_embeddings.pt")
    torch.save(torch.randn(2, 2), tmp_path / "text_embeddings.pt")
    with pytest.raises(StoreError, match=r"audio_embeddings.pt: refused: contains pickled Python objects"):
        legacy.import_legacy(tmp_path, tmp_path / "out" / "x")


@pytest.mark.parametrize("style", ["nested", "coco"])
def test_coco_pt_with_metadata_json(tmp_path, style):
    image = torch.randn(3, 6)
    caps = torch.randn(5, 4)
    torch.save({"image_embeddings": image}, tmp_path / "val2017_image_embeddings.pt")
    torch.save(caps, tmp_path / "val2017_caption_embeddings.pt")
    meta = {"image_ids": [139, 285, 632], "file_names": ["a.jpg", "b.jpg", "c.jpg"]}
    if style == "nested":
        meta["captions"] = [["a cat", "a kitten"], ["a dog"], ["a bed", "a room"]]
    else:
        meta["captions"] = [{"image_id": i, "caption": t, "id": 9000 + k} for k, (i, t) in
                            enumerate([(139, "a cat"), (139, "a kitten"), (285, "a dog"), (632, "a bed"),
                                       (632, "a room")])]
    (tmp_path / "val2017_metadata.json").write_text(json.dumps(meta))
    legacy.import_legacy(tmp_path / "val2017_image_embeddings.pt", tmp_path / "coco" / "val")
    data = load_split(tmp_path / "coco" / "val")
    assert list(data.item_ids) == ["139", "285", "632"] and list(data.item_paths) == ["a.jpg", "b.jpg", "c.jpg"]
    np.testing.assert_array_equal(data.caption_item, [0, 0, 1, 2, 2])
    np.testing.assert_allclose(data.caption_emb, caps.numpy())
    expected_ids = ["139#1", "139#2", "285#1", "632#1", "632#2"] if style == "nested" else \
        [str(9000 + k) for k in range(5)]
    assert list(data.caption_ids) == expected_ids and data.caption_text[1] == "a kitten"


def test_coco_pt_errors(tmp_path):
    torch.save(torch.randn(2, 6), tmp_path / "x_image_embeddings.pt")
    (tmp_path / "x_metadata.json").write_text(json.dumps({"image_ids": [1, 2], "captions": [["a"], ["b"]]}))
    with pytest.raises(StoreError, match="no caption embeddings"):
        legacy.import_legacy(tmp_path, tmp_path / "o" / "s")
    (tmp_path / "x_metadata.json").write_text(json.dumps(
        {"image_ids": [1, 2], "captions": [{"image_id": 3, "caption": "z"}], "caption_embeddings": [[0.0] * 4]}))
    with pytest.raises(StoreError, match=r"x_metadata.json: caption 0 points at unknown image_id 3"):
        legacy.import_legacy(tmp_path, tmp_path / "o" / "s")


def _layout(root, model, rows, dim, seed, **cols):
    d = root / model / "esc50" / "train"
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(rows, dim)).astype(np.float32)
    for k, part in enumerate(np.array_split(np.arange(rows), 2)):
        pd.DataFrame({"features": [feats[i].tolist() for i in part], **{c: np.asarray(v)[part] for c, v in cols.items()}}
                     ).to_parquet(d / f"part{k}.parquet")
    return d, feats


def test_parquet_layout_labels_become_captions(tmp_path):
    paths = [f"audio/{i}.wav" for i in range(6)]
    labels = ["dog", "rain", "dog", "siren", "rain", "dog"]
    d, feats = _layout(tmp_path, "passt", 6, 8, 0, path=paths, label=labels)
    legacy.import_legacy(d, tmp_path / "st" / "esc50" / "train")
    data = load_split(tmp_path / "st" / "esc50" / "train")
    assert list(data.item_ids) == paths and list(data.item_meta["label"]) == labels
    np.testing.assert_allclose(data.item_emb, feats)
    assert list(data.caption_text) == labels and data.caption_dim == 3  # one-hot over dog, rain, siren
    np.testing.assert_array_equal(data.caption_emb.argmax(1), [0, 1, 0, 2, 1, 0])
    assert data.manifest["encoders"] == {"audio": {"name": "legacy:passt", "dim": 8},
                                         "text": {"name": "label-onehot", "dim": 3}}


def test_parquet_layout_with_text_model_captions(tmp_path):
    paths = [f"audio/{i}.wav" for i in range(4)]
    d_items, _ = _layout(tmp_path, "passt", 4, 8, 0, path=paths, label=["a", "b", "a", "b"])
    # caption rows matched by path (two per clip, one clip has a text)
    d_caps, cap_feats = _layout(tmp_path, "roberta", 8, 5, 1, path=paths + paths,
                                caption=[f"c{k}" for k in range(8)])
    legacy.import_legacy(d_items, tmp_path / "st" / "esc50" / "bypath", captions=d_caps)
    data = load_split(tmp_path / "st" / "esc50" / "bypath")
    assert data.num_captions == 8 and data.caption_ids[4] == "audio/0.wav#2"
    np.testing.assert_array_equal(data.caption_item, [0, 1, 2, 3, 0, 1, 2, 3])
    np.testing.assert_allclose(data.caption_emb, cap_feats)
    assert data.manifest["encoders"]["text"] == {"name": "legacy:roberta", "dim": 5}
    # caption rows keyed by label (text embeddings of class names)
    d_labels = tmp_path / "clip-text" / "esc50" / "train"
    d_labels.mkdir(parents=True)
    pd.DataFrame({"features": [[1.0, 0.0], [0.0, 1.0]], "label": ["b", "a"]}).to_parquet(d_labels / "x.parquet")
    legacy.import_legacy(d_items, tmp_path / "st" / "esc50" / "bylabel", captions=d_labels)
    data = load_split(tmp_path / "st" / "esc50" / "bylabel")
    np.testing.assert_array_equal(data.caption_emb, [[0, 1], [1, 0], [0, 1], [1, 0]])
    assert list(data.caption_text) == ["a", "b", "a", "b"]


def test_parquet_layout_errors(tmp_path):
    d, _ = _layout(tmp_path, "m", 3, 4, 0, path=["x", "y", "x"], label=["a", "b", "c"])
    with pytest.raises(StoreError, match="duplicate path 'x'"):
        legacy.import_legacy(d, tmp_path / "o" / "s")
    d2, _ = _layout(tmp_path, "m2", 3, 4, 0, path=["x", "y", "z"])
    with pytest.raises(StoreError, match="no captions: pass --captions DIR"):
        legacy.import_legacy(d2, tmp_path / "o" / "s")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no legacy cache found"):
        legacy.import_legacy(tmp_path / "empty", tmp_path / "o2" / "s")
