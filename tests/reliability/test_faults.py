"""Faults with real processes: a Ray Train worker SIGKILLed mid-run, the S3-compatible server stopped
mid-run, a disk that fills up, a read-only or impossible output directory.

Covered elsewhere (not repeated here, see the README table): the cache driver SIGKILLed and re-run
(tests/cache/test_cache.py::test_sigkill_part_way_then_resume_gives_the_uninterrupted_result), the tune
driver SIGKILLed and resumed (tests/tune/test_tune.py::test_killed_driver_resumes_same_experiment_and_study_on_s3),
mirror retries with backoff (tests/store/test_mirror.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from reliability_helpers import (
    LIGHT_FLAGS,
    error_line,
    own_processes_named,
    ray_sessions,
    run_cli,
    run_module,
    tmpfs_mount,
    tree_files,
)

from e2i.config import TrainConfig, load_train_config, save_train_config
from e2i.store import load_split, open_fs, verify_store

CACHE_FLAGS = [*LIGHT_FLAGS, "--batch-size", "8", "--shard-size", "8"]


# ========================================================================================= Ray Train worker
class WorkerKiller(threading.Thread):
    """SIGKILLs this process's Ray Train worker(s) once Ray Train has registered a checkpoint.

    Ray Train's controller records reported checkpoints in ``checkpoint_manager_snapshot.json``; killing
    after that guarantees there is a registered checkpoint to restart from (a checkpoint directory
    that merely exists on storage may not be registered yet: the controller polls every ~2 s).
    """

    def __init__(self, checkpoints: Path) -> None:
        super().__init__(daemon=True)
        self.snapshot = checkpoints / "checkpoint_manager_snapshot.json"
        self.killed: list[int] = []
        self.registered_epoch = 0
        self.done = threading.Event()

    def _registered(self) -> int:
        try:
            latest = json.loads(self.snapshot.read_text()).get("latest_checkpoint_result") or {}
        except (OSError, ValueError):  # not written yet / being written
            return 0
        return int(latest.get("metrics", {}).get("epoch", 0))

    def run(self) -> None:
        while not self.done.wait(0.05):
            epoch = self._registered()
            if epoch < 1:
                continue
            workers = own_processes_named("ray::RayTrainWorker")
            if workers:
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
                self.killed, self.registered_epoch = workers, epoch
                return


def _tensorboard_runs(log_dir: Path, tag: str) -> list[dict[int, float]]:
    """{step: value} of ``tag`` per event file, oldest writer first (one file per training process)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    runs = []
    files = sorted(log_dir.glob("events.out.tfevents.*"), key=lambda p: float(p.name.split(".")[3]))
    for path in files:
        values = {}
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                if v.tag == tag:
                    values[event.step] = float(tensor_util.make_ndarray(v.tensor)) if v.HasField("tensor") \
                        else v.simple_value
        runs.append(values)
    return runs


EPOCHS = 16


@pytest.mark.slow
def test_killed_train_worker_restarts_from_its_last_checkpoint(ray_local, tmp_path, capsys):
    """`e2i train` on Ray Train with scaling.max_failures=1; the worker process is SIGKILLed mid-run.
    Training restarts from the last registered checkpoint (checkpoints only on the best epochs, every
    checkpoint.every_n_epochs (default 5) and the last) and finishes; the history has every epoch once
    and equals an uninterrupted run's, so the curves are not corrupted. (The in-process path's restarts:
    tests/train/test_train_steps.py::test_local_run_restarts_from_its_last_checkpoint.)"""
    from e2i.store.synthetic import make_synthetic_store
    from e2i.train.loop import run_training

    # 1600 train items x 5 captions / batch 32 = 250 steps per epoch: with checkpoints on some epochs
    # only, an epoch is about its compute (~0.5 s), and the run must outlast Ray Train's ~2 s poll
    # that registers the first checkpoint (the kill waits for it)
    store = make_synthetic_store(tmp_path / "syn", n_items=1700, item_dim=32, caption_dim=24,
                                 splits={"train": 1600, "val": 50, "test": 50}, seed=1)
    cfg = TrainConfig(name="victim").replace({
        "data.store": str(store), "output_dir": str(tmp_path / "results"), "model.type": "mlp",
        "loss.type": "softmax_infonce", "model.output_dim": 16, "model.hidden_dim": 64, "model.num_layers": 1,
        "optim.epochs": EPOCHS, "optim.batch_size": 32, "optim.early_stopping_patience": 0,
        "logging.tensorboard": True, "scaling.max_failures": 1,
        # a TorchTrainer although 1 CPU worker would run in-process: its worker process is what is killed
        "scaling.trainer": "ray"})
    save_train_config(cfg, tmp_path / "victim.yaml")
    run_dir = tmp_path / "results" / "victim"
    killer = WorkerKiller(run_dir / "checkpoints")
    killer.start()
    try:
        code, out, err = run_cli(["train", str(tmp_path / "victim.yaml"), "--no-evaluate"], capsys)
    finally:
        killer.done.set()
        killer.join()
    assert killer.killed, "no Ray Train worker of this process was found to kill"
    assert code == 0, err[-3000:]
    # what the user sees (README): Ray's notice of the dead worker, then the run's last line
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)  # without colours
    assert "(raylet) A worker died or was killed while executing a task by an unexpected system error" in plain
    assert re.search(rf"^\[victim\] done: {EPOCHS} epochs, best val/mAP@10 \d\.\d{{4}} at epoch \d+ -> "
                     rf"{re.escape(str(run_dir))}$", out, re.MULTILINE), out[-3000:]

    # the history: every epoch exactly once, optimizer steps continue (no epoch trained twice or skipped)
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    per_epoch = history[0]["step"]
    assert [h["step"] for h in history] == [per_epoch * e for e in range(1, EPOCHS + 1)]

    # two training processes wrote TensorBoard events: the killed one, and the restart, which began
    # right after a registered checkpoint (not at epoch 1) and left no gap
    first, second = _tensorboard_runs(run_dir / "tensorboard", "train/loss")
    assert max(first) < EPOCHS, "the worker was killed only after training ended"
    resumed_after = min(second) - 1
    assert resumed_after >= killer.registered_epoch >= 1  # restarted from the checkpoint, not from scratch
    assert resumed_after <= max(first)  # no gap
    assert sorted(set(first) | set(second)) == list(range(1, EPOCHS + 1))
    for step in set(first) & set(second):  # epochs trained again after the restart give the same values
        assert first[step] == pytest.approx(second[step], rel=1e-5), step

    # the curves equal an uninterrupted run of the same config (the loop is deterministic per epoch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray worker (1 CPU)
    try:
        straight = run_training(load_train_config(run_dir / "config.yaml"), report=lambda m, d: None)["history"]
    finally:
        torch.set_num_threads(threads)
    for got, want in zip(history, straight, strict=True):
        assert (got["step"], got["lr"]) == (want["step"], want["lr"])
        for key in ("train/loss", "val/loss", "val/mAP@10"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (got["epoch"], key)


# ========================================================================================= object storage
def _start_moto(port: int) -> subprocess.Popen:
    from s3_server import _moto_executable, _wait_ready

    proc = subprocess.Popen([_moto_executable(), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_ready(f"http://127.0.0.1:{port}", proc, 30)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


class StopServerOnFirstUpload(threading.Thread):
    """SIGKILLs the S3 server as soon as the first object of the mirror is visible in the bucket."""

    def __init__(self, server: subprocess.Popen, endpoint: str, bucket: str) -> None:
        super().__init__(daemon=True)
        import boto3

        self.server, self.bucket, self.stopped = server, bucket, False
        self.client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                                   aws_secret_access_key="testing", region_name="us-east-1")
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            try:
                seen = self.client.list_objects_v2(Bucket=self.bucket).get("KeyCount", 0)
            except Exception:  # noqa: BLE001 - server busy: ask again
                seen = 0
            if seen:
                _stop(self.server)
                self.stopped = True
                return


@pytest.mark.slow
def test_object_storage_stopped_mid_cache_then_back(ray_local, tmp_path, capsys, monkeypatch):
    """`e2i cache --mirror s3://...`: the server dies during the run. The local store is finished and
    intact, the failure is reported (exit 1); once the server is back a re-run embeds nothing and
    completes the remote copy."""
    from s3_server import _free_port, create_bucket, s3_env

    from e2i.cache import pipeline
    from e2i.corpus.toy import make_toy_corpus

    toy = make_toy_corpus(tmp_path / "toy", n_items=16, seed=5)
    # Each failed sync is retried 4 times with waits of backoff * (1, 2, 4) s: 7 s of sleep per sync at the
    # default backoff of 1 s. The retries are what this test needs, not the waits (their schedule is
    # tests/store/test_mirror.py's): the same real Mirror with a 0.05 s backoff.
    open_mirror = pipeline._open_mirror
    monkeypatch.setattr(pipeline, "_open_mirror",
                        lambda uri, out, token, attempts, backoff: open_mirror(uri, out, token, attempts, 0.05))
    port = _free_port("127.0.0.1")
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in s3_env(endpoint).items():
        monkeypatch.setenv(key, value)
    server = _start_moto(port)
    try:
        create_bucket(endpoint, "e2i-rel")
        stopper = StopServerOnFirstUpload(server, endpoint, "e2i-rel")
        stopper.start()
        args = ["cache", "--metadata", str(toy), "--cache-dir", str(tmp_path / "stores"), *CACHE_FLAGS,
                "--mirror", "s3://e2i-rel/stores"]
        try:  # a sync every 48 embedded rows and one at the end (each retried 4 times)
            code, out, err = run_cli([*args, "--upload-every", "48"], capsys)
        finally:
            stopper.done.set()
            stopper.join()
        assert stopper.stopped, "the server was not stopped during the run"
        # the store is done, the uploads after the outage failed (after their retries): reported, exit 1
        assert code == 1, err[-3000:]
        flat = " ".join(out.split())  # rich may wrap long lines
        assert re.search(r"mirror s3://e2i-rel/stores/toy/development: \d+ file\(s\) uploaded in \d+ sync\(s\), "
                         r"[1-9]\d* FAILED: \S+: OSError: ", flat), out[-3000:]
        local = tmp_path / "stores" / "toy" / "development"
        assert verify_store(local) == []  # the local copy is complete and intact
        assert _table_row(out, "embedded now") == [16, 80]
        before = {k: v for k, v in tree_files(local).items() if k.startswith(("items/", "captions/"))}

        # the server is back (same endpoint; moto keeps objects in memory, so the bucket starts empty)
        server = _start_moto(port)
        create_bucket(endpoint, "e2i-rel")
        code, out, err = run_cli(args, capsys)
        assert code == 0, err[-3000:] + out[-3000:]
        assert "FAILED" not in out and _table_row(out, "embedded now") == [0, 0]
        assert {k: v for k, v in tree_files(local).items() if k.startswith(("items/", "captions/"))} == before
        remote = "s3://e2i-rel/stores/toy/development"
        assert verify_store(remote) == []
        fs, path = open_fs(remote)
        with fs.open_input_stream(f"{path}/manifest.json") as f:
            assert json.loads(f.read()) == json.loads((local / "manifest.json").read_text())
        assert sorted(load_split(remote).caption_ids) == sorted(load_split(local).caption_ids)
    finally:
        _stop(server)


def _unreachable(key: str, port: int) -> str:
    """The line of a command whose first read of ``s3://e2i-rel/<key>`` finds no server at ``port``
    (pyarrow's S3 message, as the README shows it)."""
    return (rf"e2i: error: When getting information for key '{re.escape(key)}' in bucket 'e2i-rel': AWS Error "
            r"NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Could not connect to server; Details: "
            rf"Failed to connect to 127\.0\.0\.1:{port} after \d+ ms: Could not connect to server")


def test_unreachable_object_storage_is_one_line(rel_store, tmp_path, capsys, monkeypatch):
    """Nothing listens at the endpoint: commands that read s3:// stop with one line naming the key and the
    endpoint, exit 1 (an I/O error), no traceback, nothing written."""
    from s3_server import _free_port, s3_env

    port = _free_port("127.0.0.1")
    for key, value in s3_env(f"http://127.0.0.1:{port}").items():
        monkeypatch.setenv(key, value)
    code, _, err = run_cli(["store", "verify", "s3://e2i-rel/stores"], capsys)
    error_line(code, err, exit_code=1, full=_unreachable("stores/manifest.json", port))
    code, _, err = run_cli(["split", "s3://e2i-rel/stores/syn/all", "--out", str(tmp_path / "out")], capsys)
    error_line(code, err, exit_code=1, full=_unreachable("stores/syn/all", port))
    assert not (tmp_path / "out").exists()
    # a search whose Tune storage is on the unreachable server: not "nothing to resume"
    code, _, err = run_cli(["tune", str(_space_file(tmp_path, rel_store)), "--resume", "--storage-path",
                            "s3://e2i-rel/experiments", "--output-dir", str(tmp_path / "results")], capsys)
    error_line(code, err, exit_code=1, full=_unreachable("experiments/space", port))
    assert not (tmp_path / "results").exists()


# ========================================================================================= disk full / read-only
@pytest.mark.slow
def test_disk_full_during_cache_keeps_complete_shards_and_resumes(ray_local, tmp_path, capsys):
    """The store's disk fills up while captions are embedded: one clear line, every complete shard kept,
    no half-written file; with space again the re-run embeds only the rest."""
    from e2i.corpus.toy import make_toy_corpus

    toy = make_toy_corpus(tmp_path / "toy", n_items=24, seed=6)
    with tmpfs_mount(tmp_path / "disk", "size=96k") as disk:  # items fit (3 x ~8 KB), captions do not
        args = ["cache", "--metadata", str(toy), "--cache-dir", str(disk.path), *CACHE_FLAGS]
        code, _, err = run_cli(args, capsys)
        split = disk.path / "toy" / "development"
        files = tree_files(split)
        assert not [f for f in files if f.endswith(".tmp")]  # the shard being written was removed
        assert "manifest.json" not in files
        shards = sorted(f for f in files if f.startswith(("items/", "captions/")))
        assert sum(f.startswith("items/") for f in shards) == 3  # 24 items / 8 per shard
        kept = {f: (split / f).read_bytes() for f in shards}
        for f in shards:  # every file a reader can see is a complete parquet file
            assert pq.read_metadata(split / f).num_rows == 8
        n_captions = sum(f.startswith("captions/") for f in shards)
        assert shards[:n_captions] == [f"captions/part-{k:05d}.parquet" for k in range(n_captions)]
        # an I/O error (exit 1) naming the shard that did not fit: the next caption shard
        error_line(code, err, exit_code=1, full=re.escape(
            f"e2i: error: {split}/captions/part-{n_captions:05d}.parquet: cannot write (No space left on device); "
            "completed shards are kept, re-run to resume"))

        disk.remount("size=8m")
        code, out, err = run_cli(args, capsys)
        assert code == 0, err[-3000:]
        assert verify_store(split) == []
        assert {f: (split / f).read_bytes() for f in shards} == kept  # nothing redone or rewritten
        data = load_split(split)
        assert data.num_items == 24 and data.num_captions == 120 and len(set(data.caption_ids)) == 120
        assert _table_row(out, "already stored") == [24, 8 * n_captions]  # (items, captions)
        assert _table_row(out, "embedded now") == [0, 120 - 8 * n_captions]


def _table_row(out: str, label: str) -> list[int]:
    """The numbers of one row of the `e2i cache` summary table."""
    line = next(line for line in out.splitlines() if label in line)
    return [int(n) for n in re.findall(r"\b\d+\b", line.split(label, 1)[1])]


def _space_file(tmp_path: Path, rel_store: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({
        "base": {"data": {"store": str(rel_store)}, "model": {"type": "mlp", "output_dim": 16, "hidden_dim": 32}},
        "space": {"optim.lr": {"loguniform": [1.0e-4, 1.0e-2]}},
        "scheduler": {"type": "fifo", "max_t": 2}, "search": {"num_samples": 2}}))
    return path


def _refused_everywhere(out_dir: Path, rel_config: Path, rel_store: Path, tmp_path: Path, ray_tmp: str,
                        expected: dict[str, str]) -> None:
    """`e2i cache`, `e2i train` and `e2i tune` with their output under ``out_dir``, run as a user runs them
    (`python -m e2i`, no Ray running): each prints exactly ``e2i: error: <expected[stage]>`` on stderr and
    exits 1 (an I/O error) without starting Ray (no session under its RAY_TMPDIR): no embedding actor,
    Train worker or Tune trial can have run."""
    from e2i.corpus.toy import make_toy_corpus

    toy = make_toy_corpus(tmp_path / "toy", n_items=4, seed=7)
    commands = {
        "cache": ["cache", "--metadata", str(toy), "--cache-dir", str(out_dir / "stores"), *CACHE_FLAGS],
        "train": ["train", str(rel_config), "--output-dir", str(out_dir / "results")],
        "tune": ["tune", str(_space_file(tmp_path, rel_store)), "--output-dir", str(out_dir / "results")],
    }
    for stage, argv in commands.items():
        done = run_module(argv, env={"RAY_TMPDIR": ray_tmp}, timeout=120)
        assert (done.returncode, done.stderr) == (1, f"e2i: error: {expected[stage]}\n"), (stage, done.stdout)
        assert ray_sessions(ray_tmp) == [], f"`e2i {stage}` started Ray before refusing its output"


def test_read_only_output_is_refused_before_any_work(ray_start_is_visible, rel_config, rel_store, tmp_path,
                                                     ray_tmp):
    with tmpfs_mount(tmp_path / "ro", "ro,size=64k") as ro:
        reason = "Read-only file system"  # the first directory that could not be created
        _refused_everywhere(ro.path, rel_config, rel_store, tmp_path, ray_tmp, {
            "cache": f"{ro.path}/stores: {reason}", "train": f"{ro.path}/results: {reason}",
            "tune": f"{ro.path}/results: {reason}"})
        assert tree_files(ro.path) == {}


def test_output_path_under_a_file_is_refused_before_any_work(ray_start_is_visible, rel_config, rel_store, tmp_path,
                                                             ray_tmp):
    """Works without root: a file where a directory is expected (e.g. a mistyped --output-dir)."""
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a directory\n")
    reason = "Not a directory"
    _refused_everywhere(blocker, rel_config, rel_store, tmp_path, ray_tmp, {
        "cache": f"{blocker}/stores: {reason}", "train": f"{blocker}/results/small: {reason}",
        "tune": f"{blocker}/results/space: {reason}"})
    assert blocker.read_text() == "not a directory\n"
