"""`e2i cache --write-on workers` on the session's local Ray: the same store as driver writes (ids,
embeddings, rejected rows; captions of rejected items not stored), resume as an anti-join against complete
shards, the automatic choice, and corpora on S3 (a real moto server): media read by the decode tasks,
bad input as one line or a rejected row naming the URI."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_cache import LIGHT, add_bad_rows

from e2i import cache
from e2i.store import load_split, verify_store

N_ITEMS = 24


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from e2i.corpus.toy import make_toy_corpus

    root = make_toy_corpus(tmp_path_factory.mktemp("toyw") / "toy", n_items=N_ITEMS, seed=2)
    add_bad_rows(root)  # an unreadable, an empty and a missing clip: rejected by the reader or the decoder
    return root


def by_id(split_dir) -> dict[str, dict[str, np.ndarray]]:
    data = load_split(split_dir)
    return {"items": dict(zip(data.item_ids.tolist(), data.item_emb)),
            "captions": dict(zip(data.caption_ids.tolist(), data.caption_emb))}


def rejected(split_dir) -> set[tuple[str, str]]:
    return {(r["id"], r["reason"]) for r in pq.read_table(split_dir / "rejected.parquet").to_pylist()}


def through_both_paths(metadata, root, split: str) -> dict:
    """``metadata`` cached with worker writes and with driver writes under ``root`` (batches of 8 rows:
    several shards per kind): {"workers" | "driver": (summary, the split's dir)}; ``split``: dataset/split."""
    out = {}
    for path in ("workers", "driver"):
        summary = cache.cache_corpus(metadata, cache_dir=root / path, batch_size=8, write_on=path, quiet=True, **LIGHT)
        out[path] = (summary, root / path / split)
    return out


def assert_same_embeddings(a_dir, b_dir) -> dict:
    """Both stores verify and hold the same ids with bit-identical embeddings; returns ``by_id(a_dir)``."""
    assert verify_store(a_dir) == [] and verify_store(b_dir) == []
    a, b = by_id(a_dir), by_id(b_dir)
    for kind in ("items", "captions"):
        assert sorted(a[kind]) == sorted(b[kind]), kind
        assert all(np.array_equal(a[kind][i], b[kind][i]) for i in a[kind]), kind
    return a


@pytest.fixture(scope="module")
def both(ray_local, corpus, tmp_path_factory):
    """The corpus through both paths."""
    return through_both_paths(corpus, tmp_path_factory.mktemp("stores-w"), "toy/development")


def test_worker_writes_give_the_driver_path_store(both):
    (sw, w), (sd, d) = both["workers"], both["driver"]
    assert sw["write_on"] == {"path": "workers", "reason": "--write-on"} and sd["write_on"]["path"] == "driver"
    a = assert_same_embeddings(w, d)
    assert len(a["items"]) == N_ITEMS  # broken.wav and silent.wav rejected by the decoder, missing.wav by the reader
    assert rejected(w) == rejected(d)
    assert {i for i, r in rejected(w) if r == "item rejected"} == {f"{n}#{k}" for n in ("broken.wav", "silent.wav")
                                                                   for k in range(1, 6)}
    m = json.loads((w / "manifest.json").read_text())
    shards = [s for s in m["shards"] if s["kind"] != "rejected"]
    assert all(re.fullmatch(r"(items|captions)/part-w[0-9a-f]{16}\.parquet", s["path"]) and s["node"] for s in shards)
    assert m["cache"]["write_on"] == "workers" and sw["counts"] == sd["counts"]
    # item metadata columns (the toy attributes) are typed as with driver writes
    assert pq.read_schema(next((w / "items").glob("*.parquet"))).remove_metadata() == \
        pq.read_schema(next((d / "items").glob("*.parquet"))).remove_metadata()


def test_worker_writes_resume_embeds_exactly_what_is_missing(both, corpus, tmp_path):
    """A killed run's state: some shards of each kind gone, no manifest. The re-run anti-joins the ids of
    the complete shards, embeds the rest and ends with the uninterrupted store."""
    resume_after_losing_shards(both["workers"][1], corpus, tmp_path, "toy/development")


def resume_after_losing_shards(ref, metadata, root, split: str) -> dict[str, list]:
    """Copies the store ``ref`` to ``root/split`` as a killed run leaves it (no manifest, the first two
    shards of each kind gone), re-runs worker writes of ``metadata`` there, and checks that exactly the
    lost rows were embedded and the store is ``ref``'s again (ids); returns the lost shards' paths."""
    split_dir = root / split
    shutil.copytree(ref, split_dir)
    (split_dir / "manifest.json").unlink()
    lost = {k: sorted((split_dir / k).glob("*.parquet"))[:2] for k in ("items", "captions")}
    lost_rows = {k: sum(pq.read_metadata(p).num_rows for p in v) for k, v in lost.items()}
    for paths in lost.values():
        for p in paths:
            p.unlink()
    summary = cache.cache_corpus(metadata, cache_dir=root, batch_size=8, write_on="workers", quiet=True, **LIGHT)
    for kind in ("items", "captions"):
        assert summary[kind]["embedded"] == lost_rows[kind], (kind, summary[kind])
    assert verify_store(split_dir) == []
    a, b = by_id(split_dir), by_id(ref)
    assert {k: sorted(v) for k, v in a.items()} == {k: sorted(v) for k, v in b.items()}
    return lost


def test_write_on_choice(ray_local, tmp_path):
    from e2i.cache.workers import choose_write_on
    from e2i.errors import ConfigError

    assert choose_write_on("auto", tmp_path) == {"path": "driver", "reason": "local store"}
    assert choose_write_on("auto", "s3://bucket/stores") == {"path": "driver", "reason": "object-storage store, 1 node"}
    assert choose_write_on("workers", tmp_path)["path"] == "workers"
    with pytest.raises(ConfigError, match="--mirror and --with-images need a local store"):
        choose_write_on("auto", "s3://bucket/stores", mirror="s3://other")
    with pytest.raises(ConfigError, match="--write-on: 'gpu' is not one of auto, driver, workers"):
        choose_write_on("gpu", tmp_path)


@pytest.fixture(scope="module")
def s3(corpus):
    """A moto server; the corpus (with its bad rows) at s3://e2i-w/corpus; the env its clients need."""
    import pyarrow.fs as pafs
    from s3_server import create_bucket, run_moto_server, s3_env

    from e2i.store import open_fs

    with run_moto_server() as endpoint, pytest.MonkeyPatch.context() as mp:
        for k, v in s3_env(endpoint).items():
            mp.setenv(k, v)
        create_bucket(endpoint, "e2i-w")
        fs, path = open_fs("s3://e2i-w/corpus")
        pafs.copy_files(str(corpus), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        yield endpoint


def test_s3_corpus_media_are_read_by_the_decode_tasks(s3, both, tmp_path):
    """`e2i cache --metadata s3://...` (its own Ray: the session's workers were started without the S3
    endpoint): the corpus on S3 (metadata listed and read by the reader, media fetched by the decode tasks)
    gives the local corpus's store; paths are the URIs; the missing clip is a rejected row naming its URI."""
    import os
    import subprocess
    import sys
    import tempfile

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with tempfile.TemporaryDirectory(prefix="e2i-ray-", dir="/tmp") as ray_tmp:
        done = subprocess.run([sys.executable, "-m", "e2i", "cache", "--metadata", "s3://e2i-w/corpus", "--cache-dir",
                               str(tmp_path), "--batch-size", "8", "--num-cpus", "2", "--audio-encoder", "logmel-stats",
                               "--text-encoder", "ngram-hash"], env={**env, "RAY_TMPDIR": ray_tmp},
                              capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shards written by the driver (local store)" in " ".join(done.stdout.split())
    split = tmp_path / "toy" / "development"
    assert verify_store(split) == []
    a, b = by_id(split), by_id(both["driver"][1])
    for kind in ("items", "captions"):
        assert sorted(a[kind]) == sorted(b[kind]) and all(np.array_equal(a[kind][i], b[kind][i]) for i in a[kind])
    paths = load_split(split).item_paths.tolist()
    assert all(p.startswith("s3://e2i-w/corpus/clotho_audio_files/development/") for p in paths)
    reasons = dict(rejected(split))
    assert reasons["missing.wav"] == "audio file not found: s3://e2i-w/corpus/clotho_audio_files/development/missing.wav"
    assert reasons["broken.wav"].startswith("unreadable audio")


def test_a_media_file_gone_after_indexing_is_a_rejected_row(ray_local, s3):
    """preprocess_batch fetching a URI that is not there (deleted after the index was read): that row is
    rejected with the URI, the others decode."""
    import numpy as np

    from e2i.cache.embed import KIND, preprocess_batch
    from e2i.encoders import get_encoder

    enc = get_encoder("logmel-stats")
    base = "s3://e2i-w/corpus/clotho_audio_files/development"
    good = next(p for p in load_split_paths(base) if p.endswith(".wav") and "broken" not in p and "silent" not in p)
    batch = {KIND: np.array(["items", "items"], dtype=object), "item_id": np.array(["a", "b"], dtype=object),
             "path": np.array([good, f"{base}/gone.wav"], dtype=object)}
    out = preprocess_batch(batch, {"items": enc})
    assert out["error"].tolist() == ["", f"audio file not found: {base}/gone.wav"]
    assert out["path"].tolist() == batch["path"].tolist() and out["num_samples"][0] > 0


def load_split_paths(prefix: str) -> list[str]:
    from e2i.corpus.fspath import corpus_path

    return [str(p) for p in corpus_path(prefix).iterdir()]


def test_bad_s3_metadata_is_one_line(ray_local, s3, capsys, tmp_path):
    from e2i import cli

    argv = ["--cache-dir", str(tmp_path), "--audio-encoder", "logmel-stats", "--text-encoder", "ngram-hash"]
    assert cli.main(["cache", "--metadata", "s3://e2i-w/nothere", *argv]) == 2
    assert capsys.readouterr().err.strip() == "e2i: error: s3://e2i-w/nothere: no such file or directory"
    assert cli.main(["cache", "--metadata", "s3://e2i-w/corpus/clotho_captions_development.csv", "--split", "x",
                     *argv]) == 2
    assert capsys.readouterr().err.strip().startswith(
        "e2i: error: s3://e2i-w/corpus/clotho_captions_development.csv: no audio folder for split 'x'")


def test_readers_list_remote_folders_and_keep_uris(s3, tmp_path):
    """The clotho, jsonl and imagefolder readers on s3:// (FsPath): items point at their URIs; a JSONL
    record may name a media URI in another prefix; a missing one is a rejected row."""
    import pyarrow.fs as pafs
    from PIL import Image

    from e2i.corpus import read_corpus
    from e2i.store import open_fs

    clotho = read_corpus("clotho", "s3://e2i-w/corpus", split="development")
    assert len(clotho.items) == N_ITEMS + 2 and all(it.path.startswith("s3://e2i-w/corpus/") for it in clotho.items)
    folder = tmp_path / "imgs"
    for label in ("red", "blue"):
        (folder / label).mkdir(parents=True)
        Image.new("RGB", (8, 8), label).save(folder / label / "a.png")
    fs, path = open_fs("s3://e2i-w/imgs")
    pafs.copy_files(str(folder), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    images = read_corpus("imagefolder", "s3://e2i-w/imgs")
    assert sorted((it.item_id, it.path, it.captions[0]) for it in images.items) == [
        ("blue/a.png", "s3://e2i-w/imgs/blue/a.png", "blue"), ("red/a.png", "s3://e2i-w/imgs/red/a.png", "red")]
    with fs.open_output_stream("e2i-w/meta/metadata.jsonl") as f:
        f.write(b'{"path": "s3://e2i-w/imgs/red/a.png", "caption": "a red square"}\n'
                b'{"path": "../imgs/blue/a.png", "caption": "a blue square"}\n'
                b'{"path": "s3://e2i-w/imgs/green/a.png", "caption": "gone"}\n')
    records = read_corpus("jsonl", "s3://e2i-w/meta/metadata.jsonl")
    assert [it.path for it in records.items] == ["s3://e2i-w/imgs/red/a.png", "s3://e2i-w/imgs/blue/a.png"]
    assert [(r.source, r.reason) for r in records.rejected] == [
        ("metadata.jsonl:3", "image file not found: s3://e2i-w/imgs/green/a.png")]
    # many metadata files on S3: a glob, listed once, read in name order as one corpus
    with fs.open_output_stream("e2i-w/meta/train-1.jsonl") as f:
        f.write(b'{"path": "../imgs/blue/a.png", "caption": "blue"}\n')
    with fs.open_output_stream("e2i-w/meta/train-0.jsonl") as f:
        f.write(b'{"path": "../imgs/red/a.png", "caption": "red"}\n')
    shards = read_corpus("jsonl", "s3://e2i-w/meta/train-*.jsonl")
    assert (shards.name, shards.split) == ("meta", "train")
    assert [it.path for it in shards.items] == ["s3://e2i-w/imgs/red/a.png", "s3://e2i-w/imgs/blue/a.png"]
