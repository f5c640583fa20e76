"""`e2i cache`: the Ray Data pipeline on the toy corpus (light encoders), GPU pool requests, rejected rows,
a real SIGKILL + resume, tiny PaSST + RoBERTa, and mirroring to a real S3-compatible server."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from e2i import cache
from e2i.errors import ConfigError, CorpusError
from e2i.store import load_split, verify_store

LIGHT = {"audio_encoder": "logmel-stats", "text_encoder": "ngram-hash"}
LIGHT_FLAGS = ["--audio-encoder", "logmel-stats", "--text-encoder", "ngram-hash"]
N_ITEMS = 40
BAD = {"broken.wav": "unreadable audio", "silent.wav": "empty audio", "missing.wav": "audio file not found"}


def add_bad_rows(root: Path, split: str = "development") -> None:
    """Three bad clips in the Clotho CSV: garbage bytes, a 0-frame WAV, and a file that does not exist."""
    audio = root / "clotho_audio_files" / split
    (audio / "broken.wav").write_bytes(b"RIFF\x00\x00 this is not a wav file" * 4)
    with wave.open(str(audio / "silent.wav"), "wb") as w:  # a valid header and no samples
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(32000)
    with open(root / f"clotho_captions_{split}.csv", "a", newline="", encoding="utf-8") as f:
        for name in BAD:
            csv.writer(f, lineterminator="\n").writerow([name] + [f"caption {k} of {name}" for k in range(1, 6)])


def file_digests(split_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(split_dir).as_posix(): p.read_bytes() for p in sorted(split_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    from e2i.corpus.toy import make_toy_corpus

    root = make_toy_corpus(tmp_path_factory.mktemp("toy"), n_items=N_ITEMS, seed=0)
    add_bad_rows(root)
    return root


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server with bucket e2i-test for the module; yields the env its clients need."""
    from s3_server import create_bucket, run_moto_server, s3_env

    with run_moto_server() as endpoint:
        create_bucket(endpoint, "e2i-test")
        yield s3_env(endpoint)


@pytest.fixture(scope="module")
def light_run(ray_local, toy_root, tmp_path_factory, s3):
    """One uninterrupted run on the toy corpus with pseudo-images, mirrored to S3 every 100 rows (shards of
    32 rows) and at the end with the images and (--include-embeddings) the shards."""
    cache_dir = tmp_path_factory.mktemp("stores")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s3.items():
            mp.setenv(k, v)
        summary = cache.cache_corpus(toy_root, cache_dir=cache_dir, batch_size=16, shard_size=32,
                                     mirror="s3://e2i-test/stores", upload_every=100, include_embeddings=True,
                                     with_images=True, image_options={"image_size": 16}, **LIGHT)
        remote_problems = verify_store("s3://e2i-test/stores/toy/development")
        remote = load_split("s3://e2i-test/stores/toy/development")
    return summary, Path(summary["store"]), remote_problems, remote


# ----------------------------------------------------------------------------------------- toy corpus
def test_toy_store_is_complete_and_verified(light_run):
    summary, out, _, _ = light_run
    assert out.parts[-2:] == ("toy", "development")
    assert verify_store(out) == []
    data = load_split(out)
    assert data.num_items == N_ITEMS and data.num_captions == 5 * N_ITEMS
    assert np.bincount(data.caption_item, minlength=N_ITEMS).tolist() == [5] * N_ITEMS  # 5 captions per clip
    assert data.item_dim == 213 and data.caption_dim == 512  # logmel-stats 3*64+21, ngram-hash 512
    assert np.isfinite(data.item_emb).all() and np.isfinite(data.caption_emb).all()
    assert len(set(data.item_ids)) == N_ITEMS and not set(data.item_ids) & set(BAD)
    assert summary["items"]["embedded"] == N_ITEMS and summary["captions"]["embedded"] == 5 * N_ITEMS
    # metadata of the toy corpus becomes item columns; the manifest says which encoders made what
    assert "kind" in pq.read_schema(next((out / "items").glob("*.parquet"))).names
    m = data.manifest
    assert m["encoders"]["audio"]["name"] == "logmel-stats" and m["encoders"]["audio"]["dim"] == 213
    assert m["encoders"]["text"]["name"] == "ngram-hash" and m["cache"]["complete"] is True
    # shards of exactly --shard-size rows (the last one shorter)
    rows = sorted((s["kind"], s["rows"]) for s in m["shards"] if s["kind"] != "rejected")
    assert rows == sorted([("items", 32), ("items", 8)] + [("captions", 32)] * 6 + [("captions", 8)])


def test_rows_are_embedded_under_their_own_ids(light_run, toy_root):
    """The pipeline reorders nothing wrongly: stored embeddings equal the bare encoder's for the same id."""
    from e2i.encoders import get_encoder

    _, out, _, _ = light_run
    data = load_split(out)
    row = {i: k for k, i in enumerate(data.item_ids)}
    audio = toy_root / "clotho_audio_files" / "development"
    ids = ["toy_0000.wav", "toy_0017.wav", "toy_0039.wav"]
    want = get_encoder("logmel-stats").encode({"path": np.array([str(audio / i) for i in ids], dtype=object)})
    np.testing.assert_allclose(data.item_emb[[row[i] for i in ids]], want, rtol=1e-4, atol=1e-5)
    want = get_encoder("ngram-hash").encode({"text": data.caption_text})
    np.testing.assert_allclose(data.caption_emb, want, rtol=1e-5, atol=1e-6)


def test_bad_rows_are_rejected_with_reasons(light_run):
    summary, out, _, _ = light_run
    rej = pq.read_table(out / "rejected.parquet").to_pandas()
    by_id = {r.id: r for r in rej.itertuples()}
    for name, reason in BAD.items():
        assert reason in by_id[name].reason, (name, by_id[name].reason)
    assert by_id["broken.wav"].source == "audio:logmel-stats"
    assert by_id["missing.wav"].source.startswith("clotho_captions_development.csv:")
    # captions of items rejected by the encoder are rejected too; the missing file's never reached the pipeline
    for name in ("broken.wav", "silent.wav"):
        for k in range(1, 6):
            assert by_id[f"{name}#{k}"].reason == "item rejected"
    assert len(rej) == 3 + 10 and not rej.duplicated(["source", "id"]).any()
    assert summary["rejected"] == {"corpus": 1, "pipeline": 12, "stored": 13}
    assert summary["items"]["rejected"] == 2 and summary["captions"]["rejected"] == 10


# ----------------------------------------------------------------------------------------- GPU requests
def test_pool_resources_from_cluster():
    res = cache.pool_resources({"CPU": 4.0, "GPU": 2.0})
    assert res["num_gpus"] == 1 and "num_cpus" not in res  # Ray Data's default 1 CPU per GPU actor
    assert (res["compute"].min_size, res["compute"].max_size) == (2, 2)
    res = cache.pool_resources({"CPU": 2.0, "GPU": 4.0}, num_actors=8)
    assert res["compute"].max_size == 4 and res["num_gpus"] == 1 and res["num_cpus"] == 0.25
    res = cache.pool_resources({"CPU": 2.0})  # the deadlock case: actors must leave CPUs to the readers
    assert res["compute"].max_size == 1 and res["num_cpus"] == 0.5 and "num_gpus" not in res
    res = cache.pool_resources({"CPU": 2.0}, num_actors=2)
    assert res["compute"].max_size == 2 and res["num_cpus"] == 0.5
    res = cache.pool_resources({"CPU": 16.0}, num_batches=3)
    assert res["compute"].max_size == 3 and res["num_cpus"] == 0.5
    res = cache.pool_resources({"CPU": 2.0}, num_actors=4)
    assert res["compute"].max_size == 4 and res["num_cpus"] == 0.25
    with pytest.raises(ConfigError, match="--num-actors"):
        cache.pool_resources({"CPU": 2.0}, num_actors=0)


def test_gpu_runs_cap_what_ray_data_may_ask_the_autoscaler_for():
    """A GPU pool of N actors limits the run to N GPUs and N x cpus_per_gpu CPUs (Ray Data's
    resource_limits, which also bound its cluster-autoscaler requests); CPU pools are not limited."""
    from e2i.cache.embed import CPUS_PER_GPU, execution_limits

    gpu = cache.pool_resources({"CPU": 0.0}, num_actors=2, use_gpu=True)
    assert execution_limits(gpu) == {"cpu": 2 * CPUS_PER_GPU, "gpu": 2.0}
    assert execution_limits(gpu, cpus_per_gpu=6) == {"cpu": 12.0, "gpu": 2.0}
    assert execution_limits(cache.pool_resources({"CPU": 8.0, "GPU": 4.0}, num_actors=3)) == {"cpu": 12.0, "gpu": 3.0}
    assert execution_limits(cache.pool_resources({"CPU": 2.0})) is None
    assert execution_limits(cache.pool_resources({"CPU": 8.0, "GPU": 4.0}, cpu_only=True)) is None
    with pytest.raises(ConfigError, match="--cpus-per-gpu: must be >= 1, got 0.5"):
        execution_limits(gpu, cpus_per_gpu=0.5)


def test_input_blocks_are_never_smaller_than_the_gpu_batch():
    """GPU stages bundle blocks up to their batch size; every block has at least min(batch_size, rows of its
    kind) rows and fewer than twice the batch size, so the smallest block's size bundles nothing."""
    from e2i.cache.embed import ID, expand_block, input_blocks, num_blocks

    work = {"items": [{"item_id": f"i{i}", "path": f"p{i}"} for i in range(21)],
            "captions": [{"caption_id": f"c{i}", "item_id": "i0", "text": "t"} for i in range(9)]}
    specs = input_blocks(work, {"items": 4, "captions": 4})
    sizes = [(b["_kind"], len(b[ID[b["_kind"]]])) for b in specs]
    assert sizes == [("items", 4), ("items", 4), ("items", 4), ("items", 4), ("items", 5),
                     ("captions", 4), ("captions", 5)], sizes
    rows = [expand_block({k: np.array([v], dtype=object) for k, v in b.items()}) for b in specs]
    assert [r["item_id"].tolist() for r in rows[:5]] == [[f"i{i}" for i in range(lo, hi)]
                                                         for lo, hi in ((0, 4), (4, 8), (8, 12), (12, 16), (16, 21))]
    assert set(rows[5]) == {"_kind", "caption_id", "item_id", "text"} and rows[6]["caption_id"][-1] == "c8"
    assert all(set(r["_kind"].tolist()) == {k} for r, (k, _) in zip(rows, sizes))
    assert [num_blocks(n, 4) for n in (0, 3, 4, 7, 8, 9)] == [0, 1, 1, 1, 2, 2]
    assert [len(b["item_id"]) for b in input_blocks({"items": work["items"][:3]}, {"items": 4})] == [3]


def test_actors_got_one_fake_gpu_each(light_run, ray_local):
    """ray_local has 2 fake GPUs: the pool asks for 2 actors x 1 GPU, and each actor was really given
    one GPU id by Ray (ray.get_gpu_ids() inside the actor); torch.cuda is unavailable, so compute is CPU."""
    summary = light_run[0]
    assert ray_local.cluster_resources()["GPU"] == 2
    assert summary["pool"] == {"actors": 2, "num_gpus": 1, "num_cpus": 1.0, "limits": {"cpu": 8.0, "gpu": 2.0}}
    for kind in ("items", "captions"):
        assert summary[kind]["pool"]["num_gpus"] == 1 and summary[kind]["pool"]["actors"] == 2
        placement = summary[kind]["placement"]
        assert placement
        gpus_by_pid = {p["pid"]: p["gpu_ids"] for p in placement}
        assert all(g in ("0", "1") for g in gpus_by_pid.values())  # exactly one GPU id per actor
        assert len(set(gpus_by_pid.values())) == len(gpus_by_pid)  # different actors, different GPUs
        assert {p["device"] for p in placement} == {"cpu"}
        assert not set(summary[kind]["preprocess_pids"]) & set(gpus_by_pid)  # decoding ran in CPU tasks


def test_cpu_pool_keeps_preprocessing_in_separate_tasks(ray_local):
    """CPU-only pool (as on a 2-CPU box): fractional actors, and Ray Data must not fuse the preprocess
    tasks into the actors (equal resource requests would), so rows are decoded and embedded in
    different processes."""
    from e2i.encoders import get_encoder

    rows = [{"caption_id": f"c{i}", "item_id": f"i{i}", "text": f"a dog barks {i} times"} for i in range(12)]
    rows.append({"caption_id": "empty", "item_id": "i0", "text": "  "})
    res = cache.pool_resources({"CPU": 2.0})
    batches = list(cache.embed_stream({"captions": rows}, {"captions": get_encoder("ngram-hash", dim=64)},
                                      batch_sizes={"captions": 4}, resources=res))
    got = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    assert sorted(got["caption_id"]) == sorted(r["caption_id"] for r in rows)
    assert got["embedding"].shape == (13, 64) and set(got["_gpu_ids"]) == {""}
    assert not set(got["_prep_pid"]) & set(got["_pid"])
    errors = dict(zip(got["caption_id"], got["error"]))
    assert errors["empty"] == "empty text" and all(e == "" for c, e in errors.items() if c != "empty")


def test_one_cpu_pool_for_both_kinds_holds_captions_that_overtake_their_item(ray_local, toy_root, tmp_path,
                                                                             monkeypatch):
    """CPU pool (both kinds in one stream, one pool): the last item's block is slow and its embedding
    non-finite, so a second actor embeds caption blocks meanwhile; the driver holds that item's
    captions until the item is out, then rejects them ("item rejected"); every other row is stored."""
    from e2i import encoders
    from e2i.encoders import LogMelStatsEncoder

    last = "toy_0039.wav"

    class SlowLast(LogMelStatsEncoder):
        def _embed(self, batch):
            out = super()._embed(batch)
            if last in batch["item_id"]:
                time.sleep(6.0)  # the caption blocks overtake this block on the other actor
                out[list(batch["item_id"]).index(last)] = np.nan
            return out

    monkeypatch.setitem(encoders.ENCODERS, "slow-last", SlowLast)
    summary = cache.cache_corpus(toy_root, cache_dir=tmp_path, audio_encoder="slow-last", text_encoder="ngram-hash",
                                 batch_size=8, num_actors=2, cpu_only=True, quiet=True)
    assert summary["pool"] == {"actors": 2, "num_gpus": 0, "num_cpus": 0.5, "limits": None}
    assert summary["captions"]["held"] >= 1  # captions embedded by the other actor arrived before their item
    out = Path(summary["store"])
    assert verify_store(out) == []
    data = load_split(out)
    assert last not in set(data.item_ids) and len(data.item_ids) == N_ITEMS - 1
    assert not any(c.startswith(last) for c in data.caption_ids) and len(data.caption_ids) == 5 * (N_ITEMS - 1)
    rej = pq.read_table(out / "rejected.parquet").to_pandas().set_index("id")["reason"]
    assert rej[last] == "non-finite embedding"
    assert all(rej[f"{last}#{k}"] == "item rejected" for k in range(1, 6))


def test_embed_batch_rejects_non_finite_rows():
    """An encoder that overflows on one valid row (e.g. fp16): that row gets an error and a zero vector."""
    from e2i.encoders import NgramHashEncoder

    class Overflowing(NgramHashEncoder):
        def _embed(self, batch):
            out = super()._embed(batch)
            out[[t == "overflow" for t in batch["text"]]] = np.inf
            return out

    enc = Overflowing(dim=16)
    texts = np.array(["a dog barks", "overflow", "", "rain"], dtype=object)
    batch = cache.preprocess_batch({"_kind": np.full(4, "captions", dtype=object), "caption_id": np.arange(4).astype(str),
                                    "item_id": np.zeros(4).astype(str), "text": texts}, {"captions": enc})
    out = cache.EmbedBatch({"captions": enc}, {"captions": 3})(batch)  # 2 encoder calls: 3 rows + 1
    assert list(out["error"]) == ["", "non-finite embedding", "empty text", ""]
    assert np.isfinite(out["embedding"]).all() and not out["embedding"][1:3].any()
    assert out["embedding"].shape == (4, 16) and list(out["text"]) == list(texts)


# ----------------------------------------------------------------------------------------- mirror
def test_mirror_to_s3_during_and_after_the_run(light_run):
    summary, out, remote_problems, remote = light_run
    assert remote_problems == []
    assert summary["mirror"]["failed"] == {} and summary["mirror"]["syncs"] >= 3  # every 100 rows + the end
    local = load_split(out)
    assert list(remote.item_ids) == list(local.item_ids)
    np.testing.assert_array_equal(remote.caption_emb, local.caption_emb)
    assert remote.manifest == local.manifest


def test_pseudo_images_are_written_and_mirrored(light_run, s3):
    from e2i.cache.pseudo_image import png_name, read_pseudo_image

    summary, out, _, _ = light_run
    assert summary["images"]["counts"] == {"audio": N_ITEMS, "text": 5 * N_ITEMS}
    assert len(list((out / "pseudo_images" / "audio").glob("*.png"))) == N_ITEMS
    assert len(list((out / "pseudo_images" / "text").glob("*.png"))) == 5 * N_ITEMS
    data = load_split(out)
    vec, meta = read_pseudo_image(out / "pseudo_images" / "text" / png_name(data.caption_ids[7]))
    assert meta["id"] == data.caption_ids[7]
    span = data.caption_emb[7].max() - data.caption_emb[7].min()
    np.testing.assert_allclose(vec, data.caption_emb[7], atol=span / 500)  # invertible up to 8-bit steps
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=s3["AWS_ENDPOINT_URL"].split("://")[1], scheme="http",
                           access_key="testing", secret_key="testing", region="us-east-1")
    remote = fs.get_file_info(pafs.FileSelector("e2i-test/stores/toy/development/pseudo_images", recursive=True))
    assert sum(i.base_name.endswith(".png") for i in remote) == 6 * N_ITEMS


def test_rerun_skips_everything_and_a_dead_mirror_is_reported(light_run, toy_root, s3, monkeypatch, tmp_path):
    """Re-running a finished split embeds nothing and keeps every shard; a mirror whose server is down is
    retried, reported in the summary, and leaves the local store intact."""
    _, out, _, _ = light_run
    before = file_digests(out)
    for k, v in s3.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    summary = cache.cache_corpus(toy_root, cache_dir=out.parent.parent, batch_size=16, shard_size=32,
                                 mirror="s3://e2i-test/elsewhere", mirror_attempts=2, mirror_backoff=0.01,
                                 quiet=True, **LIGHT)
    assert summary["items"]["skipped"] == N_ITEMS and summary["items"]["embedded"] == 0
    assert summary["captions"]["skipped"] == 5 * N_ITEMS and summary["captions"]["embedded"] == 0
    assert summary["counts"] == {"items": N_ITEMS, "captions": 5 * N_ITEMS, "rejected": 13}
    assert summary["mirror"]["failed"] and summary["mirror"]["uploaded"] == 0
    assert "manifest.json" not in summary["mirror"]["failed"]  # never attempted: its shards failed
    after = file_digests(out)
    rewritten = ("manifest.json", "rejected.parquet")  # re-finalized; the 2 bad clips were tried again
    assert {k: v for k, v in after.items() if k not in rewritten} == \
        {k: v for k, v in before.items() if k not in rewritten}
    assert summary["items"]["rejected"] == 2 and len(pq.read_table(out / "rejected.parquet")) == 13
    assert verify_store(out) == []


def test_mixing_encoders_in_one_split_is_refused(light_run, toy_root):
    from e2i.errors import StoreError

    _, out, _, _ = light_run
    with pytest.raises(StoreError, match="ngram-hash"):
        cache.cache_corpus(toy_root, cache_dir=out.parent.parent, quiet=True, audio_encoder="logmel-stats",
                           text_encoder="ngram-hash", encoder_options={"text": {"dim": 256}})


# ----------------------------------------------------------------------------------------- kill + resume
def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """`python -m e2i cache ...` in its own session (process group), output to ``log``."""
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", "e2i", "cache", *args], env=env, start_new_session=True,
                                stdout=f, stderr=subprocess.STDOUT)


def _kill_when(proc: subprocess.Popen, ready, log: Path, timeout: float = 240) -> None:
    """SIGKILL the whole process group (driver + its local Ray) as soon as ``ready()``."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no shard appeared in time"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _reap_group(proc.pid)


def _reap_group(pgid: int) -> None:
    """Make sure nothing of a killed run's process group survives (raylet, workers)."""
    for _ in range(100):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"process group {pgid} still alive")


@pytest.mark.slow
def test_sigkill_part_way_then_resume_gives_the_uninterrupted_result(light_run, toy_root, tmp_path):
    _, ref_dir, _, _ = light_run
    ray_tmp = tempfile.mkdtemp(prefix="e2i-kill-")  # short: Ray's socket paths must fit in 107 chars
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": ray_tmp}
    args = ["--metadata", str(toy_root), "--cache-dir", str(tmp_path), *LIGHT_FLAGS, "--batch-size", "4",
            "--shard-size", "8", "--ray-address", "local", "--num-cpus", "2"]
    out = tmp_path / "toy" / "development"
    try:
        # 1: SIGKILLed part-way through the items (two 8-row shards exist; captions not started, no manifest)
        log1, log2 = tmp_path / "run1.log", tmp_path / "run2.log"
        _kill_when(_start(args, env, log1), lambda: len(list((out / "items").glob("part-*.parquet"))) >= 2, log1)
        assert not (out / "manifest.json").exists() and not any((out / "captions").glob("*.parquet"))
        assert len(list((out / "items").glob("part-*.parquet"))) < 5  # 40 good items / 8: really part-way
        # 2: the same command again finishes the rest
        proc = _start(args, env, log2)
        proc.wait(timeout=300)
        log = log2.read_text()
        assert proc.returncode == 0, log[-3000:]
        _reap_group(proc.pid)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    skipped = re.search(r"already stored\s*\S\s*(\d+)\s*\S\s*(\d+)", log)  # the summary table
    assert skipped and 16 <= int(skipped.group(1)) < N_ITEMS and int(skipped.group(2)) == 0, log[-3000:]
    assert verify_store(out) == []
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    got, ref = load_split(out), load_split(ref_dir)
    assert sorted(got.item_ids) == sorted(ref.item_ids) and len(set(got.item_ids)) == len(got.item_ids)
    assert sorted(got.caption_ids) == sorted(ref.caption_ids) and len(set(got.caption_ids)) == len(got.caption_ids)
    order = np.argsort(got.item_ids), np.argsort(ref.item_ids)
    np.testing.assert_allclose(got.item_emb[order[0]], ref.item_emb[order[1]], rtol=1e-5, atol=1e-6)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"items": N_ITEMS, "captions": 5 * N_ITEMS, "rejected": 13}
    assert manifest["cache"]["complete"] is True
    # the killed run's shards were kept, the resumed run numbered its shards after them
    assert len(manifest["shards"]) == 5 + 25 + 1
    assert sorted(p.name for p in (out / "items").glob("*.parquet")) == [f"part-{i:05d}.parquet" for i in range(5)]
    rej = pq.read_table(out / "rejected.parquet").to_pandas()
    assert len(rej) == 13 and not rej.duplicated(["source", "id"]).any()


# ----------------------------------------------------------------------------------------- tiny PaSST + RoBERTa
def _tiny_clotho(root: Path, n: int = 6) -> Path:
    """A made-up Clotho-layout corpus: n clips of 1.5-12 s (one longer than PaSST's 10 s window)."""
    import soundfile as sf

    words = ["a dog barks loudly in the distance", "birds are singing in the trees", "rain falls on a metal roof",
             "a low hum with a faint hiss", "fast rhythmic beeping can be heard", "water flows in a stream"]
    audio = root / "clotho_audio_files" / "evaluation"
    audio.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        seconds = 12.0 if i == 0 else 1.5 + i * 0.5
        sf.write(audio / f"clip {i}.wav", (0.1 * rng.standard_normal(int(seconds * 44100))).astype(np.float32), 44100)
        rows.append([f"clip {i}.wav"] + [words[(i + k) % len(words)] for k in range(5)])
    with open(root / "clotho_captions_evaluation.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file_name"] + [f"caption_{k}" for k in range(1, 6)])
        w.writerows(rows)
    return root


@pytest.mark.slow
def test_tiny_passt_and_roberta_through_the_cli(ray_local, tmp_path):
    from tiny_models import TINY_PASST, tiny_roberta

    from e2i import cli

    root = _tiny_clotho(tmp_path / "clotho")
    text_dir = tiny_roberta(tmp_path / "roberta")
    passt = [f"--encoder-option=audio.{k}={json.dumps(v)}" for k, v in TINY_PASST.items()]
    code = cli.main(["cache", "--metadata", str(root), "--cache-dir", str(tmp_path / "stores"),
                     "--dataset", "tinyclotho", "--text-model", text_dir, "--max-audio-seconds", "11",
                     "--batch-size", "4", *passt])
    assert code == 0
    out = tmp_path / "stores" / "tinyclotho" / "evaluation"
    assert verify_store(out) == []
    data = load_split(out)
    assert data.num_items == 6 and data.num_captions == 30
    assert data.item_dim == 32 and data.caption_dim == 32  # tiny PaSST embed_dim, tiny RoBERTa hidden_size
    assert data.manifest["encoders"]["audio"]["name"] == "passt"
    assert data.manifest["encoders"]["audio"]["options"]["max_audio_seconds"] == 11
    assert data.manifest["encoders"]["text"]["options"]["model"] == text_dir
    assert "clip 0.wav" in set(data.item_ids)  # file names with spaces are kept as ids


# ----------------------------------------------------------------------------------------- flags
def test_encoder_options_and_flags():
    names = {"audio": "passt", "image": "hf-image", "text": "hf-text"}
    opts = cache.parse_encoder_options(["audio.depth=1", "text.max_length=64", "dtype=float32", "model=x"], names)
    assert opts["audio"] == {"depth": 1, "dtype": "float32"}
    assert opts["text"] == {"max_length": 64, "dtype": "float32", "model": "x"}
    assert opts["image"] == {"dtype": "float32", "model": "x"}
    with pytest.raises(ConfigError, match="no encoder has option"):
        cache.parse_encoder_options(["delay=1"], names)
    with pytest.raises(ConfigError, match="unknown modality"):
        cache.parse_encoder_options(["video.x=1"], names)

    import argparse

    parser = argparse.ArgumentParser()
    cache.add_arguments(parser)
    args = parser.parse_args(["--metadata", "x", *LIGHT_FLAGS, "--max-audio-seconds", "5",
                              "--encoder-option", "text.dim=64"])
    assert cache.encoder_options_from_args(args) == {"audio": {"max_audio_seconds": 5.0}, "image": {},
                                                     "text": {"dim": 64}}
    args = parser.parse_args(["--metadata", "x", *LIGHT_FLAGS, "--audio-arch", "passt_s_swa_p16_128_ap476"])
    with pytest.raises(ConfigError, match="--audio-arch"):
        cache.encoder_options_from_args(args)


def test_cli_errors_are_one_line(capsys, tmp_path):
    from e2i import cli

    assert cli.main(["cache", "--metadata", str(tmp_path), "--upload-every", "10"]) == 2
    assert capsys.readouterr().err.strip() == "e2i: error: --upload-every needs --mirror or --hf-dataset"
    assert cli.main(["cache", "--metadata", str(tmp_path), "--hf-dataset", "noslash"]) == 2
    assert "--hf-dataset: expected 'owner/name'" in capsys.readouterr().err


def test_corpus_kind_inference(toy_root, tmp_path):
    assert cache.infer_corpus_kind(toy_root) == "clotho"
    assert cache.infer_corpus_kind(toy_root / "clotho_captions_development.csv") == "clotho"
    (tmp_path / "m.jsonl").write_text("{}\n")
    assert cache.infer_corpus_kind(tmp_path / "m.jsonl") == "jsonl"
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "annotations" / "captions_val2017.json").write_text("{}")
    assert cache.infer_corpus_kind(tmp_path / "coco") == "coco"
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    assert cache.infer_corpus_kind(tmp_path / "imgs") == "imagefolder"
    with pytest.raises(CorpusError, match="no such file"):
        cache.infer_corpus_kind(tmp_path / "nope")


def test_use_gpu_requests_gpus_before_any_gpu_node_is_up():
    """On an autoscaling cluster scaled to zero the pool must still ask for GPUs (so nodes get added)."""
    from e2i.cache.embed import pool_resources

    res = pool_resources({"CPU": 2.0}, num_actors=3, use_gpu=True)
    assert res["num_gpus"] == 1 and res["compute"].min_size == 3
    assert "num_gpus" not in pool_resources({"CPU": 2.0}, num_actors=3)
