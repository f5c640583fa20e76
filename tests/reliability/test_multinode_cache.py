"""Issue 17, points 1-3 and their part of 5: `e2i cache` past one machine, on a real 3-raylet cluster.

A ``ray.cluster_utils.Cluster`` on this machine (reliability_helpers.LocalCluster: a head with 0 CPUs, two
worker nodes, each its own raylet and object store; here with 2 logical CPUs per worker so the pool and the
decode tasks still fit on one node after the other is lost), a moto S3 server holding the toy corpus (no
local copy left) and the store. The driver is `e2i cache` in a subprocess on the head, as a user runs it.

- corpus and store on S3, `--write-on auto`: the workers write the shards (the manifest names a worker
  node for every shard, never the head), `e2i store verify` OK, ids and embeddings exactly those of the same
  corpus cached with `--write-on driver`;
- a worker node removed mid-cache (`Cluster.remove_node`, no grace: a machine lost): the run finishes (or
  a re-run completes it), the store holds exactly the uninterrupted run's ids, no duplicates, verify OK.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import reliability_helpers
from reliability_helpers import ROOT, local_cluster
from test_multinode import _driver, _finish

E2I = str(Path(sys.executable).with_name("e2i"))
BUCKET = "e2i-mnc"
N_ITEMS = 48
FLAGS = ["--audio-encoder", "logmel-stats", "--text-encoder", "ngram-hash", "--batch-size", "4", "--num-actors", "2"]
EMBED_ACTOR = "MapWorker(MapBatches(EmbedWrite))"


@pytest.fixture(scope="module")
def s3_corpus(tmp_path_factory):
    """A moto server whose bucket holds the toy corpus at s3://e2i-mnc/corpus (the local copy deleted);
    yields the clients' environment."""
    import pyarrow.fs as pafs
    from s3_server import create_bucket, run_moto_server, s3_env

    from e2i.corpus.toy import make_toy_corpus
    from e2i.store import open_fs

    local = make_toy_corpus(tmp_path_factory.mktemp("toy") / "toy", n_items=N_ITEMS, seed=1)
    with run_moto_server() as endpoint, pytest.MonkeyPatch.context() as mp:
        env = s3_env(endpoint)
        for k, v in env.items():
            mp.setenv(k, v)
        create_bucket(endpoint, BUCKET)
        fs, path = open_fs(f"s3://{BUCKET}/corpus")
        pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        shutil.rmtree(local)  # the media exist only in object storage from here on
        yield env


@pytest.fixture(scope="module")
def cluster(s3_corpus):
    """Head (0 CPUs) + 2 worker nodes of 2 logical CPUs, started with the S3 environment (the workers
    read the corpus and write the store with it); the node-loss test removes one, so it runs last."""
    script = reliability_helpers._CLUSTER_SCRIPT.replace("add_node(num_cpus=1,", "add_node(num_cpus=2,")
    assert script != reliability_helpers._CLUSTER_SCRIPT
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reliability_helpers, "_CLUSTER_SCRIPT", script)
        with local_cluster(2) as c:
            yield c


def cache(cluster, env: dict, store: str, *extra: str, timeout: float = 300):
    """`e2i cache` of the S3 corpus into ``store`` as a driver of ``cluster``: (process, stdout, stderr)."""
    run_env = {**os.environ, **env, "RAY_ADDRESS": cluster.address, "RAY_TMPDIR": cluster.temp_dir,
               "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = _driver([E2I, "cache", "--metadata", f"s3://{BUCKET}/corpus", "--split", "development", "--cache-dir",
                    store, *FLAGS, *extra], run_env)
    out, err = _finish(proc, timeout)
    return proc, out, err


def by_id(split) -> dict[str, dict[str, np.ndarray]]:
    """{kind: {id: embedding}} of a loaded split."""
    return {"items": dict(zip(split.item_ids.tolist(), split.item_emb)),
            "captions": dict(zip(split.caption_ids.tolist(), split.caption_emb))}


def manifest(store_split: str) -> dict:
    from e2i.store import open_fs

    fs, path = open_fs(store_split)
    with fs.open_input_stream(f"{path}/manifest.json") as f:
        return json.loads(f.read())


@pytest.fixture(scope="module")
def uninterrupted(cluster, s3_corpus):
    """The reference: one uninterrupted run with `--write-on auto` (-> workers) on the cluster."""
    proc, out, err = cache(cluster, s3_corpus, f"s3://{BUCKET}/ref")
    assert proc.returncode == 0, (out[-3000:], err[-5000:])
    return {"split": f"s3://{BUCKET}/ref/toy/development", "out": out}


@pytest.mark.slow
def test_s3_corpus_to_s3_store_is_written_by_the_worker_nodes(cluster, s3_corpus, uninterrupted):
    """Auto picks worker-side writes (object-storage store, 3 nodes); every shard of the manifest was
    written by one of the two worker nodes (the head, where the driver runs, has no CPU and never decodes
    or writes); the media were read from S3 only (no local copy exists); the store verifies and equals,
    id for id and bit for bit, the same corpus cached with `--write-on driver`."""
    from e2i.store import load_split, verify_store

    out = " ".join(uninterrupted["out"].split())
    assert "shards written by the workers (object-storage store, 3 nodes)" in out, out[-2000:]
    m = manifest(uninterrupted["split"])
    shards = [s for s in m["shards"] if s["kind"] in ("items", "captions")]
    assert shards and all(re.fullmatch(r"(items|captions)/part-w[0-9a-f]{16}\.parquet", s["path"]) for s in shards)
    nodes = {s["node"] for s in shards}
    assert nodes <= set(cluster.workers) and cluster.head not in nodes, (nodes, cluster.workers, cluster.head)
    assert m["cache"]["write_on"] == "workers"
    assert verify_store(uninterrupted["split"]) == []

    proc, out, err = cache(cluster, s3_corpus, f"s3://{BUCKET}/driver", "--write-on", "driver")
    assert proc.returncode == 0, (out[-3000:], err[-5000:])
    assert "shards written by the driver (--write-on)" in " ".join(out.split())
    ref, drv = by_id(load_split(uninterrupted["split"])), by_id(load_split(f"s3://{BUCKET}/driver/toy/development"))
    for kind in ("items", "captions"):
        assert sorted(ref[kind]) == sorted(drv[kind]) and len(ref[kind]) == (N_ITEMS if kind == "items" else 5 * N_ITEMS)
        assert all(np.array_equal(ref[kind][i], drv[kind][i]) for i in ref[kind]), kind


@pytest.mark.slow
def test_cache_cluster_benchmark_quick(cluster, tmp_path):
    """benchmarks/bench_cache_cluster.py at --quick size produces its rows (as tests/test_benchmarks.py checks
    every benchmark), on this module's cluster: the benchmark starts the same one (2 worker nodes of 2 CPUs)
    when it runs alone. Before the node-loss test, which takes a node away."""
    import importlib

    from test_benchmarks import check_rows  # puts benchmarks/ on sys.path

    bench = importlib.import_module("bench_cache_cluster")
    check_rows(bench.run(quick=True, work=tmp_path, on=cluster), "cache cluster", 1)


@pytest.mark.slow
def test_worker_node_removed_mid_cache_gives_the_uninterrupted_store(cluster, s3_corpus, uninterrupted):
    """Once the first item shard is on S3, the worker node running an embedding actor is removed (its raylet
    and processes killed). Ray Data restarts the actor and retries the lost blocks on the node left; a
    retried block is written again under the same name. The run exits 0 (else a re-run completes it), and
    the store holds exactly the uninterrupted run's ids, each once, with the same embeddings; verify OK."""
    import boto3

    from e2i.store import load_split, verify_store

    s3 = boto3.client("s3", endpoint_url=s3_corpus["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    removed, done = [], threading.Event()

    def remove_on_first_shard() -> None:
        while not done.wait(0.05):
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="lost/").get("Contents", [])]
            if not any("/items/part-w" in k for k in keys):
                continue
            busy = [a["node"] for a in cluster.actors(EMBED_ACTOR) if a["state"] == "ALIVE"]
            node = next((n for n in busy if n in cluster.workers), None)
            if node:
                cluster.remove(node)
                removed.append(node)
                return

    watcher = threading.Thread(target=remove_on_first_shard, daemon=True)
    watcher.start()
    try:
        proc, out, err = cache(cluster, s3_corpus, f"s3://{BUCKET}/lost")
    finally:
        done.set()
        watcher.join()
    assert removed, f"no node was removed during the run:\n{out[-2000:]}\n{err[-3000:]}"
    runs = 1
    if proc.returncode != 0:  # allowed by the issue: a re-run completes
        proc, out, err = cache(cluster, s3_corpus, f"s3://{BUCKET}/lost")
        runs = 2
    assert proc.returncode == 0, (runs, out[-3000:], err[-5000:])
    split = f"s3://{BUCKET}/lost/toy/development"
    assert verify_store(split) == []
    got, ref = by_id(load_split(split)), by_id(load_split(uninterrupted["split"]))
    for kind in ("items", "captions"):
        assert sorted(got[kind]) == sorted(ref[kind]), kind  # load_split refuses duplicate ids
        assert all(np.array_equal(got[kind][i], ref[kind][i]) for i in ref[kind]), kind
    nodes = {s["node"] for s in manifest(split)["shards"] if s["kind"] in ("items", "captions")}
    assert cluster.head not in nodes and nodes <= set(cluster.workers) | set(removed), nodes
    print(f"node {removed[0][:8]} removed; run(s) to complete: {runs}; shards by node: {sorted(n[:8] for n in nodes)}")
