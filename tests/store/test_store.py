"""The parquet store: round trip, resume, verify, foreign stores, bad stores, subsets, S3."""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from e2i import store
from e2i.errors import StoreError
from e2i.store import StoreWriter, load_split, make_captions_table, make_items_table, verify_store

ENCODERS = {"audio": {"name": "logmel-stats", "dim": 8}, "text": {"name": "ngram-hash", "dim": 4}}


def toy_arrays(n_items=10, caps_per_item=2, di=8, dc=4, seed=0):
    rng = np.random.default_rng(seed)
    item_ids = np.array([f"clip{i:03d}" for i in range(n_items)], dtype=object)
    cap_item = np.repeat(np.arange(n_items), caps_per_item)
    cap_ids = np.array([f"{item_ids[i]}#{k + 1}" for i in range(n_items) for k in range(caps_per_item)], dtype=object)
    return {"item_ids": item_ids, "item_emb": rng.normal(size=(n_items, di)).astype(np.float32),
            "cap_ids": cap_ids, "cap_item": cap_item,
            "cap_emb": rng.normal(size=(len(cap_ids), dc)).astype(np.float32)}


def write_toy(path, a, item_shards=2, finalize=True):
    """Write toy arrays as a split with ``item_shards`` item shards and captions in reverse order."""
    w = StoreWriter(path, dataset="toy", split="all", encoders=ENCODERS)
    for k, rows in enumerate(np.array_split(np.arange(len(a["item_ids"])), item_shards)):
        ids = a["item_ids"][rows]
        w.write_shard("items", make_items_table(ids, [f"audio/{i}.wav" for i in ids], a["item_emb"][rows],
                                                label=np.array([f"L{r % 3}" for r in rows])), f"part-{k:05d}")
    rev = np.arange(len(a["cap_ids"]))[::-1]  # captions NOT in item order: mapping must go by id
    w.write_shard("captions", make_captions_table(a["cap_ids"][rev], a["item_ids"][a["cap_item"][rev]],
                                                  [f"text of {c}" for c in a["cap_ids"][rev]], a["cap_emb"][rev]),
                  "part-00000")
    w.write_rejected([{"source": "clotho", "id": "broken.wav", "reason": "unreadable audio"}])
    return w.finalize() if finalize else w


def parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------- round trip
def test_round_trip_arrays_mapping_and_manifest(tmp_path):
    a = toy_arrays()
    split = tmp_path / "toy" / "all"
    manifest = write_toy(split, a)
    data = load_split(split)
    assert data.num_items == 10 and data.num_captions == 20 and data.item_dim == 8 and data.caption_dim == 4
    assert list(data.item_ids) == list(a["item_ids"])
    np.testing.assert_array_equal(data.item_emb, a["item_emb"])
    assert data.item_emb.dtype == np.float32 and data.item_emb.flags["C_CONTIGUOUS"]
    assert data.caption_emb.flags["C_CONTIGUOUS"]
    # caption j belongs to the item at row caption_item[j]; captions were stored in reverse
    assert list(data.caption_ids) == list(a["cap_ids"][::-1])
    assert [data.item_ids[i] for i in data.caption_item] == [c.split("#")[0] for c in data.caption_ids]
    np.testing.assert_array_equal(data.caption_emb, a["cap_emb"][::-1])
    assert data.caption_text[0] == f"text of {a['cap_ids'][-1]}"
    assert data.item_paths[3] == "audio/clip003.wav" and list(data.item_meta) == ["label"]
    # manifest: written last, describes every shard with a correct sha256
    assert manifest == json.loads((split / "manifest.json").read_text()) == data.manifest
    assert manifest["schema_version"] == store.SCHEMA_VERSION and manifest["dataset"] == "toy"
    assert manifest["encoders"] == ENCODERS and manifest["dims"] == {"items": 8, "captions": 4}
    assert manifest["counts"] == {"items": 10, "captions": 20, "rejected": 1}
    assert manifest["created_at"] and manifest["e2i_version"]
    kinds = sorted(s["kind"] for s in manifest["shards"])
    assert kinds == ["captions", "items", "items", "rejected"]
    for s in manifest["shards"]:
        assert hashlib.sha256((split / s["path"]).read_bytes()).hexdigest() == s["sha256"]
    assert pq.read_table(split / "items" / "part-00000.parquet").schema.field("embedding").type == \
        pa.list_(pa.float32(), 8)
    lean = load_split(split, with_text=False)
    assert lean.caption_text is None and lean.item_paths is None and lean.item_meta == {}
    np.testing.assert_array_equal(lean.caption_item, data.caption_item)
    assert verify_store(tmp_path) == []


def test_rejected_rows_merge_without_duplicates(tmp_path):
    w = StoreWriter(tmp_path / "s", dataset="d", split="s")
    assert w.write_rejected([{"source": "a", "id": "1", "reason": "x"}, {"source": "a", "id": "2", "reason": "y"}]) == 2
    assert w.write_rejected([{"source": "a", "id": "2", "reason": "z"}]) == 2  # re-run replaces, not appends
    df = pd.read_parquet(tmp_path / "s" / "rejected.parquet")
    assert df.set_index("id")["reason"].to_dict() == {"1": "x", "2": "z"}


# ----------------------------------------------------------------------------------------- resume
def test_resume_sees_completed_shards_and_ignores_tmp_leftovers(tmp_path):
    a = toy_arrays()
    split = tmp_path / "toy" / "all"
    w1 = StoreWriter(split, dataset="toy", split="all", encoders=ENCODERS)
    info0 = w1.write_shard("items", make_items_table(a["item_ids"][:5], [""] * 5, a["item_emb"][:5]), "part-00000")
    # a killed run: a half-written temporary shard is left behind, no manifest
    leftover = split / "items" / ".part-00001.parquet.deadbeef.tmp"
    leftover.write_bytes(b"PAR1 half a shard")
    w_peek = StoreWriter(split, dataset="toy", split="all", encoders=ENCODERS, clean_tmp=False)
    assert set(w_peek.completed_shards("items")) == {"part-00000"}  # tmp never counts
    w2 = StoreWriter(split, dataset="toy", split="all", encoders=ENCODERS)  # re-run: cleans leftovers
    assert not leftover.exists()
    done = w2.completed_shards("items")
    assert done == {"part-00000": info0}  # rows + sha256 re-derived from storage
    assert w2.existing_ids("items") == set(a["item_ids"][:5])
    assert w2.completed_shards("captions") == {}
    w2.write_shard("items", make_items_table(a["item_ids"][5:], [""] * 5, a["item_emb"][5:]), "part-00001")
    w2.write_shard("captions", make_captions_table(a["cap_ids"], a["item_ids"][a["cap_item"]], [""] * 20,
                                                   a["cap_emb"]), "part-00000")
    manifest = w2.finalize()
    assert [s["path"] for s in manifest["shards"]] == ["items/part-00000.parquet", "items/part-00001.parquet",
                                                       "captions/part-00000.parquet"]
    assert manifest["counts"]["items"] == 10
    np.testing.assert_array_equal(load_split(split).item_emb, a["item_emb"])
    assert verify_store(split) == []


def test_rewritten_shard_releases_its_old_ids_and_a_new_writer_sees_the_shards(tmp_path):
    """The writer's id -> shard map (ids are checked in O(rows), not against every earlier shard):
    rewriting part-00000 without clip000..clip002 frees those ids for another shard; a second writer
    on the same split reads the shards back and refuses an id they already hold."""
    a = toy_arrays()
    split = tmp_path / "s"
    w = StoreWriter(split, dataset="d", split="s", encoders=ENCODERS)
    w.write_shard("items", make_items_table(a["item_ids"][:5], [""] * 5, a["item_emb"][:5]), "part-00000")
    w.write_shard("items", make_items_table(a["item_ids"][3:5], [""] * 2, a["item_emb"][3:5]), "part-00000")
    w.write_shard("items", make_items_table(a["item_ids"][:3], [""] * 3, a["item_emb"][:3]), "part-00001")
    w2 = StoreWriter(split, dataset="d", split="s", encoders=ENCODERS)
    with pytest.raises(StoreError, match=r"part-00002\.parquet: item_id 'clip001' already in items/part-00001"):
        w2.write_shard("items", make_items_table(a["item_ids"][1:2], [""], a["item_emb"][1:2]), "part-00002")
    assert w2.existing_ids("items") == set(a["item_ids"][:5])


def test_writer_refuses_duplicates_bad_values_and_mixed_encoders(tmp_path):
    a = toy_arrays()
    split = tmp_path / "s"
    w = StoreWriter(split, dataset="d", split="s", encoders=ENCODERS)
    w.write_shard("items", make_items_table(a["item_ids"][:5], [""] * 5, a["item_emb"][:5]), "part-00000")
    with pytest.raises(StoreError, match=r"part-00001\.parquet: item_id 'clip004' already in items/part-00000"):
        w.write_shard("items", make_items_table(a["item_ids"][4:], [""] * 6, a["item_emb"][4:]), "part-00001")
    bad = a["item_emb"][5:].copy()
    bad[2, 1] = np.nan
    with pytest.raises(StoreError, match=r"part-00001\.parquet: 'clip007': embedding has NaN"):
        w.write_shard("items", make_items_table(a["item_ids"][5:], [""] * 5, bad), "part-00001")
    with pytest.raises(StoreError, match=r"embedding dim 6 != 8"):
        w.write_shard("items", make_items_table(a["item_ids"][5:], [""] * 5, a["item_emb"][5:, :6]), "part-00001")
    assert not (split / "items" / "part-00001.parquet").exists()
    w.write_shard("captions", make_captions_table(["x#1"], ["nope"], [""], a["cap_emb"][:1]), "part-00000")
    with pytest.raises(StoreError, match=r"captions/part-00000\.parquet: caption 'x#1' points at missing item 'nope'"):
        w.finalize()
    assert not (split / "manifest.json").exists()
    (split / "captions" / "part-00000.parquet").unlink()
    w.write_shard("captions", make_captions_table(["clip000#1"], ["clip000"], [""], a["cap_emb"][:1]), "part-00000")
    w.finalize()
    with pytest.raises(StoreError, match="refusing to mix"):
        StoreWriter(split, dataset="d", split="s", encoders={"audio": {"name": "passt", "dim": 768}})


# ----------------------------------------------------------------------------------------- verify
def test_verify_detects_flipped_byte(tmp_path, capsys):
    write_toy(tmp_path / "toy" / "all", toy_arrays())
    assert store.run(parse(store, ["verify", str(tmp_path)])) == 0
    shard = tmp_path / "toy" / "all" / "items" / "part-00001.parquet"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0x01  # one bit inside the data pages
    shard.write_bytes(bytes(raw))
    problems = verify_store(tmp_path / "toy" / "all")
    assert problems and "items/part-00001.parquet: sha256 mismatch" in problems[0]
    assert store.run(parse(store, ["verify", str(tmp_path)])) == 1
    out = capsys.readouterr().out
    assert "part-00001.parquet: sha256 mismatch" in out and "1 problem" in out


def test_verify_reports_unlisted_and_missing_shards(tmp_path):
    a = toy_arrays()
    split = tmp_path / "s"
    write_toy(split, a)
    extra = split / "items" / "part-00009.parquet"
    pq.write_table(make_items_table(["new"], [""], a["item_emb"][:1]), extra)
    assert load_split(split).num_items == 10  # the manifest is the committed snapshot
    assert any("part-00009.parquet: not listed in manifest.json" in p for p in verify_store(split))
    extra.unlink()
    (split / "items" / "part-00000.parquet").unlink()
    assert any("part-00000.parquet: listed in manifest.json but missing" in p for p in verify_store(split))
    with pytest.raises(StoreError, match="part-00000.parquet: shard listed in manifest.json is missing"):
        load_split(split)


def test_info_prints_counts_and_dims(tmp_path, capsys):
    write_toy(tmp_path / "toy" / "all", toy_arrays())
    assert store.run(parse(store, ["info", str(tmp_path)])) == 0
    out = capsys.readouterr().out
    assert "toy/all" in out and "20" in out and "logmel-stats" in out
    row = store.split_summary(str(tmp_path / "toy" / "all"))
    assert (row["items"], row["items_dim"], row["captions"], row["captions_dim"]) == (10, 8, 20, 4)


# ----------------------------------------------------------------------------------------- foreign stores
def write_pandas_store(split, a, *, items_files=1):
    """What another tool writes: plain pandas, list<double> embeddings, int metadata, no manifest."""
    (split / "items").mkdir(parents=True)
    (split / "captions").mkdir()
    for k, rows in enumerate(np.array_split(np.arange(len(a["item_ids"])), items_files)):
        pd.DataFrame({"item_id": a["item_ids"][rows], "path": [f"{i}.wav" for i in a["item_ids"][rows]],
                      "embedding": [e.astype(np.float64).tolist() for e in a["item_emb"][rows]],
                      "duration_s": rows.astype(float)}).to_parquet(split / "items" / f"f{k}.parquet")
    pd.DataFrame({"caption_id": a["cap_ids"], "item_id": a["item_ids"][a["cap_item"]],
                  "text": ["a caption"] * len(a["cap_ids"]),
                  "embedding": [e.tolist() for e in a["cap_emb"]]}).to_parquet(split / "captions" / "c.parquet")


def test_store_written_by_pandas_loads(tmp_path):
    a = toy_arrays()
    write_pandas_store(tmp_path / "s", a, items_files=3)
    (tmp_path / "s" / "items" / "_SUCCESS.parquet").write_bytes(b"")  # other tools' markers are ignored
    data = load_split(tmp_path / "s")
    assert data.manifest is None
    np.testing.assert_allclose(data.item_emb, a["item_emb"], rtol=1e-6)
    assert data.item_emb.dtype == np.float32 and data.item_emb.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(data.caption_item, a["cap_item"])
    np.testing.assert_array_equal(data.item_meta["duration_s"], np.arange(10.0))
    assert verify_store(tmp_path / "s") == []


def _bad(split, a, what):
    """Damage a pandas-written store in one way; return (file name, id) the error must name."""
    if what == "dims":
        df = pd.read_parquet(split / "items" / "f1.parquet")
        df["embedding"] = [e[:6] for e in df["embedding"]]
        df.to_parquet(split / "items" / "f1.parquet")
        return "f1.parquet", df["item_id"].iloc[0]
    if what == "ragged":
        df = pd.read_parquet(split / "items" / "f0.parquet")
        df.at[2, "embedding"] = df.at[2, "embedding"][:5]
        df.to_parquet(split / "items" / "f0.parquet")
        return "f0.parquet", df["item_id"].iloc[2]
    if what in ("nan", "inf"):
        df = pd.read_parquet(split / "captions" / "c.parquet")
        emb = [e.copy() for e in df["embedding"]]
        emb[7][1] = np.nan if what == "nan" else np.inf
        df["embedding"] = emb
        df.to_parquet(split / "captions" / "c.parquet")
        return "c.parquet", df["caption_id"].iloc[7]
    if what == "duplicate":
        df = pd.read_parquet(split / "items" / "f1.parquet")
        df.loc[1, "item_id"] = a["item_ids"][0]  # also in f0
        df.to_parquet(split / "items" / "f1.parquet")
        return "f1.parquet", a["item_ids"][0]
    if what == "orphan":
        df = pd.read_parquet(split / "captions" / "c.parquet")
        df.loc[5, "item_id"] = "ghost-item"
        df.to_parquet(split / "captions" / "c.parquet")
        return "c.parquet", "ghost-item"
    if what == "missing_column":
        df = pd.read_parquet(split / "items" / "f1.parquet").drop(columns=["path"])
        df.to_parquet(split / "items" / "f1.parquet")
        return "f1.parquet", "'path'"
    if what == "truncated":
        f = split / "items" / "f1.parquet"
        f.write_bytes(f.read_bytes()[:-100])
        return "f1.parquet", "not a readable parquet"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["dims", "ragged", "nan", "inf", "duplicate", "orphan", "missing_column", "truncated"])
def test_bad_store_error_names_file_and_first_bad_id(tmp_path, what):
    a = toy_arrays()
    split = tmp_path / "s"
    write_pandas_store(split, a, items_files=2)
    file_name, bad_id = _bad(split, a, what)
    with pytest.raises(StoreError) as err:
        load_split(split)
    msg = str(err.value)
    assert "\n" not in msg and file_name in msg and str(bad_id) in msg, msg
    assert any(file_name in p for p in verify_store(split))


def test_missing_split_and_directories(tmp_path):
    with pytest.raises(StoreError, match="no such store split directory"):
        load_split(tmp_path / "nope")
    (tmp_path / "s" / "items").mkdir(parents=True)
    with pytest.raises(StoreError, match="no parquet shards"):
        load_split(tmp_path / "s")
    (tmp_path / "s" / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="manifest.json: not valid JSON"):
        load_split(tmp_path / "s")


# ----------------------------------------------------------------------------------------- subsets
def test_subset_and_write_split_keep_captions_with_items(tmp_path):
    a = toy_arrays(caps_per_item=3)
    write_toy(tmp_path / "toy" / "all", a)
    src = load_split(tmp_path / "toy" / "all")
    sub = store.subset_split(src, [7, 2, 5])
    assert list(sub.item_ids) == ["clip007", "clip002", "clip005"] and sub.num_captions == 9
    assert all(sub.item_ids[i] == c.split("#")[0] for i, c in zip(sub.caption_item, sub.caption_ids))
    np.testing.assert_array_equal(sub.item_emb, a["item_emb"][[7, 2, 5]])
    assert list(sub.item_meta["label"]) == ["L1", "L2", "L2"]
    manifest = store.write_split(sub, tmp_path / "toy" / "small", "toy", "small", rows_per_shard=2)
    assert manifest["counts"] == {"items": 3, "captions": 9, "rejected": 0}
    assert manifest["parent"] == str(tmp_path / "toy" / "all") and manifest["encoders"] == ENCODERS
    back = load_split(tmp_path / "toy" / "small")
    np.testing.assert_array_equal(back.caption_emb, sub.caption_emb)
    assert list(back.item_paths) == list(sub.item_paths) and list(back.caption_text) == list(sub.caption_text)
    with pytest.raises(StoreError, match="already exists"):
        store.write_split(sub, tmp_path / "toy" / "small", "toy", "small", overwrite=False)
    store.write_split(store.subset_split(src, [0]), tmp_path / "toy" / "small", "toy", "small")
    assert load_split(tmp_path / "toy" / "small").num_items == 1  # overwrite replaced, not merged


# ----------------------------------------------------------------------------------------- S3
def test_s3_round_trip_with_moto_server(tmp_path, monkeypatch):
    from s3_server import create_bucket, run_moto_server, s3_env

    a = toy_arrays()
    with run_moto_server() as endpoint:
        for key, value in s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        create_bucket(endpoint, "e2i-test")
        fs, path = store.open_fs("s3://e2i-test/stores/toy/all")
        assert path == "e2i-test/stores/toy/all" and fs.type_name == "s3"
        manifest = write_toy("s3://e2i-test/stores/toy/all", a)
        data = load_split("s3://e2i-test/stores/toy/all")
        np.testing.assert_array_equal(data.item_emb, a["item_emb"])
        assert data.manifest["counts"] == manifest["counts"]
        assert verify_store("s3://e2i-test/stores") == []
        store.write_split(store.subset_split(data, [1, 2]), "s3://e2i-test/stores/toy/two", "toy", "two")
        assert store.find_splits("s3://e2i-test/stores/toy") == ["s3://e2i-test/stores/toy/all",
                                                                  "s3://e2i-test/stores/toy/two"]
        assert load_split("s3://e2i-test/stores/toy/two").num_captions == 4


def test_many_row_groups_and_sliced_tables(tmp_path, monkeypatch):
    monkeypatch.setattr("e2i.store.writer._ROW_GROUP_BYTES", 1)  # 1024-row groups: several Arrow chunks per shard
    a = toy_arrays(n_items=2600, caps_per_item=1, di=4, dc=3)
    table = make_items_table(a["item_ids"], [""] * 2600, a["item_emb"])
    w = StoreWriter(tmp_path / "s", dataset="d", split="s")
    w.write_shard("items", table.slice(0, 2500), "part-00000")  # 3 row groups
    w.write_shard("items", table.slice(2500), "part-00001")  # a slice with a non-zero offset
    w.write_shard("captions", make_captions_table(a["cap_ids"], a["item_ids"], [""] * 2600, a["cap_emb"]), "c")
    w.finalize()
    assert pq.ParquetFile(tmp_path / "s" / "items" / "part-00000.parquet").metadata.num_row_groups == 3
    data = load_split(tmp_path / "s", with_text=False)
    np.testing.assert_array_equal(data.item_emb, a["item_emb"])
    np.testing.assert_array_equal(data.caption_item, np.arange(2600))
