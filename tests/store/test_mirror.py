"""Mirroring a store split: local dir and a real S3-compatible server (moto) on 127.0.0.1, incl. failures."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pyarrow.fs as pafs
import pytest

from e2i.errors import ConfigError
from e2i.store import StoreWriter, load_split, make_captions_table, make_items_table, verify_store
from e2i.store.mirror import Mirror, hf_uri, remote_root, split_files

ENCODERS = {"audio": {"name": "logmel-stats", "dim": 6}, "text": {"name": "ngram-hash", "dim": 4}}


def write_split(split_dir, n_shards=2, start=0, finalize=True):
    """A small valid split: ``n_shards`` item/caption shard pairs of 3 items x 2 captions."""
    rng = np.random.default_rng(start)
    w = StoreWriter(split_dir, dataset="toy", split="dev", encoders=ENCODERS)
    for s in range(start, start + n_shards):
        ids = [f"clip{s}_{i}" for i in range(3)]
        w.write_shard("items", make_items_table(ids, [f"/a/{i}.wav" for i in ids],
                                                rng.normal(size=(3, 6)).astype(np.float32)), f"part-{s:05d}")
        caps = [f"{i}#{k}" for i in ids for k in (1, 2)]
        w.write_shard("captions", make_captions_table(caps, [c.split("#")[0] for c in caps], caps,
                                                      rng.normal(size=(6, 4)).astype(np.float32)), f"part-{s:05d}")
    w.write_rejected([{"source": "toy.csv:3", "id": "bad.wav", "reason": "audio file not found"}])
    if finalize:
        w.finalize()
    return w


def digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_split_files_lists_complete_files_and_manifest_last(tmp_path):
    split = tmp_path / "cache" / "toy" / "dev"
    write_split(split)
    (split / "items" / ".part-00009.parquet.abcd1234.tmp").write_bytes(b"half a shard")
    (split / "pseudo_images" / "audio").mkdir(parents=True)
    (split / "pseudo_images" / "audio" / "clip0_0.png").write_bytes(b"png")
    files, last = split_files(split)
    assert files == ["items/part-00000.parquet", "items/part-00001.parquet", "captions/part-00000.parquet",
                     "captions/part-00001.parquet", "rejected.parquet"]
    assert last == ["manifest.json"]
    files, _ = split_files(split, embeddings=False, images=True)
    assert files == ["pseudo_images/audio/clip0_0.png"]
    assert remote_root("s3://b/p/", split) == "s3://b/p/toy/dev"


def test_local_mirror_is_incremental_and_uploads_manifest_last(tmp_path):
    split = tmp_path / "cache" / "toy" / "dev"
    write_split(split)
    mirror = Mirror(str(tmp_path / "remote"), split)
    report = mirror.sync(*split_files(split))
    assert report.ok and report.uploaded[-1] == "manifest.json" and len(report.uploaded) == 6
    remote = tmp_path / "remote" / "toy" / "dev"
    assert digests(remote) == digests(split)
    assert verify_store(remote) == []
    # nothing changed -> nothing uploaded; a new shard + new manifest -> only those two (+ rejected if rewritten)
    assert mirror.sync(*split_files(split)).uploaded == []
    w = StoreWriter(split, dataset="toy", split="dev", encoders=ENCODERS)
    w.write_shard("items", make_items_table(["extra"], ["/a/extra.wav"], np.ones((1, 6), np.float32)), "part-00007")
    w.finalize()
    report = mirror.sync(*split_files(split))
    assert report.uploaded == ["items/part-00007.parquet", "manifest.json"]
    assert digests(remote) == digests(split)
    assert load_split(remote).num_items == 7


def test_failed_upload_is_retried_with_backoff_then_succeeds(tmp_path):
    split = tmp_path / "cache" / "toy" / "dev"
    write_split(split, n_shards=1)
    remote = tmp_path / "remote"
    (remote / "toy" / "dev").mkdir(parents=True)
    (remote / "toy" / "dev" / "items").write_text("a file where the items/ dir should be")
    waits = []

    def sleep(seconds):  # the blocker disappears while the mirror waits: the retry succeeds
        waits.append(seconds)
        if len(waits) == 2:
            (remote / "toy" / "dev" / "items").unlink()

    mirror = Mirror(str(remote), split, attempts=4, backoff=0.5, sleep=sleep)
    report = mirror.sync(*split_files(split))
    assert report.ok, report.failed
    assert waits == [0.5, 1.0]  # exponential backoff, two failed attempts, third succeeded
    assert verify_store(remote / "toy" / "dev") == []


def test_s3_mirror_and_failure_when_server_stops(tmp_path, monkeypatch):
    from s3_server import create_bucket, run_moto_server, s3_env

    split = tmp_path / "cache" / "toy" / "dev"
    write_split(split)
    before = digests(split)
    with run_moto_server() as endpoint:
        for k, v in s3_env(endpoint).items():
            monkeypatch.setenv(k, v)
        create_bucket(endpoint, "e2i-mirror")
        mirror = Mirror("s3://e2i-mirror/stores", split, attempts=2, backoff=0.01)
        report = mirror.sync(*split_files(split))
        assert report.ok, report.failed
        assert report.uploaded[-1] == "manifest.json"
        remote = "s3://e2i-mirror/stores/toy/dev"
        assert verify_store(remote) == []
        data = load_split(remote)
        assert data.num_items == 6 and data.num_captions == 12
        fs = pafs.S3FileSystem(endpoint_override=endpoint.split("://")[1], scheme="http",
                               access_key="testing", secret_key="testing", region="us-east-1")
        with fs.open_input_stream("e2i-mirror/stores/toy/dev/manifest.json") as f:
            assert json.loads(f.read())["counts"]["items"] == 6
    # The server is gone: new shards fail after the retries, are reported, and the manifest is held back.
    write_split(split, n_shards=1, start=5)
    report = mirror.sync(*split_files(split))
    assert not report.ok
    assert set(report.failed) == {"items/part-00005.parquet", "captions/part-00005.parquet", "rejected.parquet"}
    assert "manifest.json" not in report.uploaded and "manifest.json" not in report.failed
    assert "3 failed" in report.summary()
    assert sum(e.startswith("not attempted") for e in report.failed.values()) == 2  # stops after one file
    # the local store is untouched by the failure and still valid
    after = digests(split)
    assert {k: v for k, v in after.items() if k in before and k not in ("manifest.json", "rejected.parquet")} == \
        {k: v for k, v in before.items() if k not in ("manifest.json", "rejected.parquet")}
    assert verify_store(split) == []
    assert not [p for p in os.listdir(split / "items") if p.endswith(".tmp")]


def test_uri_spellings():
    assert hf_uri("me/clotho-emb", "stores/v1/") == "hf://datasets/me/clotho-emb/stores/v1"
    assert hf_uri("me/clotho-emb") == "hf://datasets/me/clotho-emb"
    with pytest.raises(ConfigError, match="owner/name"):
        hf_uri("clotho-emb")
    with pytest.raises(ConfigError, match="unsupported scheme"):
        Mirror("gs://bucket/x", "/tmp/a/b")
    with pytest.raises(ConfigError, match="hf://datasets"):
        Mirror("hf://models/me/x", "/tmp/a/b")


def test_hf_mirror_offline_reports_failure_and_keeps_the_token_out(tmp_path, monkeypatch):
    """No network here: the Hub target gets as far as the request, fails, and the failure is reported
    (the upload code itself runs against the real Hub only)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    split = tmp_path / "cache" / "toy" / "dev"
    write_split(split, n_shards=1)
    before = digests(split)
    mirror = Mirror(hf_uri("someone/e2i-test", "stores"), split, token="hf_secret_value", attempts=2,
                    backoff=0.0)
    assert mirror.uri == "hf://datasets/someone/e2i-test/stores/toy/dev"
    report = mirror.sync(*split_files(split))
    assert not report.ok and report.uploaded == [] and "manifest.json" not in report.failed
    assert "hf_secret_value" not in json.dumps(report.to_dict()) + report.summary()
    assert digests(split) == before
