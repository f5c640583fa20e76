"""Issue 17, point 5: faults past one machine, with real processes.

- a worker node of a real 3-raylet cluster on this machine (``ray.cluster_utils.Cluster`` in a helper
  process, see reliability_helpers.LocalCluster) removed while Ray Train trains on it
  (``scaling.max_failures: 1``): the run resumes from its last registered checkpoint on the node left;
- object storage (moto) gone while ``e2i train`` reads its store from it, and unreachable while
  ``e2i tune`` uploads trial checkpoints to it: one line, no lost checkpoint, no trial stuck RUNNING;
- the disk of the run directory filling up while a checkpoint is written: one line naming the file,
  the previous checkpoint complete and loadable, ``--resume`` finishes once there is space again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from reliability_helpers import ROOT, TcpGate, error_line, local_cluster, run_cli, tmpfs_mount
from test_faults import WorkerKiller

from e2i.config import TrainConfig, save_train_config

SMALL_HEAD = {"model.type": "mlp", "loss.type": "softmax_infonce", "model.output_dim": 16, "model.num_layers": 1,
              "optim.batch_size": 32, "optim.early_stopping_patience": 0, "logging.tensorboard": False}


# ========================================================================================= disk full
class FillDiskAfterFirstCheckpoint(threading.Thread):
    """Once ``checkpoint_epoch0001`` is in place, fills the run's disk with a ballast file so that only
    the next checkpoint's model.safetensors and JSON files (a page each) still fit: its train_state.safetensors
    (optimizer moments, twice the model's size) does not, so the disk fills while that checkpoint is
    written."""

    def __init__(self, checkpoints: Path, ballast: Path) -> None:
        super().__init__(daemon=True)
        self.first = checkpoints / "checkpoint_epoch0001"
        self.ballast, self.filled, self.done = ballast, False, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            model = self.first / "model.safetensors"
            if not (self.first / "config.json").is_file():  # the directory is renamed into place complete
                continue
            stat = os.statvfs(self.ballast.parent)
            page = stat.f_frsize
            room = -(-model.stat().st_size // page) * page + 2 * page  # + config.json, progress.json
            self.ballast.write_bytes(b"\0" * max(stat.f_bavail * page - room, 0))
            self.filled = True
            return


@pytest.mark.slow
def test_disk_full_while_a_checkpoint_is_written_keeps_the_previous_one(tmp_path, capsys):
    """`e2i train` (in-process) with its run dir on a small disk that fills up while the epoch-2
    checkpoint is copied in: exit 1 and one line naming the file that did not fit; no partial
    checkpoint is left (none that --resume would take as the latest); epoch 1's checkpoint loads
    (model, optimizer, progress); with space again `--resume` continues after epoch 1 (model,
    optimizer and history from its checkpoint) and finishes."""
    from e2i.model.heads import build_model
    from e2i.store.synthetic import make_synthetic_store
    from e2i.train.checkpoint import STATE_FILE, load_checkpoint, load_weights
    from e2i.train.driver import epoch_checkpoints

    store = make_synthetic_store(tmp_path / "syn", n_items=500, item_dim=32, caption_dim=24,
                                 splits={"train": 400, "val": 50, "test": 50}, seed=3)
    epochs = 4
    with tmpfs_mount(tmp_path / "disk", "size=2m") as disk:
        cfg = TrainConfig(name="full").replace({
            **SMALL_HEAD, "data.store": str(store), "output_dir": str(disk.path / "results"),
            "model.hidden_dim": 512, "optim.epochs": epochs, "checkpoint.every_n_epochs": 1})
        save_train_config(cfg, tmp_path / "full.yaml")
        run_dir = disk.path / "results" / "full"
        filler = FillDiskAfterFirstCheckpoint(run_dir / "checkpoints", disk.path / "ballast")
        filler.start()
        try:
            code, out, err = run_cli(["train", str(tmp_path / "full.yaml"), "--no-evaluate"], capsys)
        finally:
            filler.done.set()
            filler.join()
        assert filler.filled, "the disk was not filled during the run"
        failed = re.escape(str(run_dir / "checkpoints" / "checkpoint_epoch0002"))
        error_line(code, err, exit_code=1, full=(  # the big file; a JSON file if the model's pages ran out
            f"e2i: error: {failed}/(train_state\\.safetensors|progress\\.json|config\\.json): cannot write the "
            "checkpoint \\(No space left on device\\); earlier checkpoints are kept, free space and re-run with --resume"))
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint_epoch0001"]
        assert list(epoch_checkpoints(run_dir)) == [1]
        first = run_dir / "checkpoints" / "checkpoint_epoch0001"  # complete: every file loads
        model = build_model(cfg.model, 32, 24)
        assert load_checkpoint(first, model=model)["epoch"] == 1
        assert any(k.startswith("optimizer.") for k in load_weights(first / STATE_FILE))

        (disk.path / "ballast").unlink()
        code, out, err = run_cli(["train", str(tmp_path / "full.yaml"), "--no-evaluate", "--resume"], capsys)
        assert code == 0, err[-3000:]
        assert "resuming after epoch 1" in out, out[-3000:]
        history = json.loads((run_dir / "metrics.json").read_text())["history"]
        assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
        assert [h["step"] for h in history] == [history[0]["step"] * e for e in range(1, epochs + 1)]


def test_checkpoint_file_on_a_full_disk_is_one_line_and_leaves_no_tmp(tmp_path):
    """save_checkpoint where the disk is full (e.g. the system temp dir the loop writes checkpoints to):
    safetensors' own error is not an OSError; it becomes one StoreWriteError line naming the file, and
    no hidden .tmp file is left."""
    import torch

    from e2i.errors import StoreWriteError
    from e2i.model.heads import build_model
    from e2i.train.checkpoint import save_checkpoint

    cfg = TrainConfig().replace({"model.type": "mlp", "model.hidden_dim": 1024, "model.num_layers": 1})
    model = build_model(cfg.model, 32, 24)  # ~0.3 MB of weights
    with tmpfs_mount(tmp_path / "disk", "size=64k") as disk:
        target = disk.path / "ckpt"
        with pytest.raises(StoreWriteError) as caught:
            save_checkpoint(target, model=model, optimizer=torch.optim.AdamW(model.parameters()),
                            loss_fn=torch.nn.Module(), progress={"epoch": 1}, config={})
        assert str(caught.value) == f"{target}/model.safetensors: cannot write the checkpoint (No space left on device)"
        assert list(target.iterdir()) == []


# ========================================================================================= node loss
E2I = str(Path(sys.executable).with_name("e2i"))  # the console script a user runs
NODE_EPOCHS = 6


def _driver(args: list[str], env: dict) -> subprocess.Popen:
    """A command in its own session (it starts its own Ray, killed with it by :func:`_finish`)."""
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    """(stdout, stderr) once ``proc`` exits (killed after ``timeout``); then SIGKILL whatever of its
    session is left (its Ray processes)."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)



class RemoveBusyNodeAfterCheckpoint(WorkerKiller):
    """Once Ray Train has registered a checkpoint (see test_faults.WorkerKiller: a checkpoint that is only
    on storage may not be registered yet), removes a worker node on which a Ray Train worker runs."""

    def __init__(self, cluster, checkpoints: Path) -> None:
        super().__init__(checkpoints)
        self.cluster, self.removed = cluster, None

    def run(self) -> None:
        while not self.done.wait(0.1):
            epoch = self._registered()
            if epoch < 1:
                continue
            busy = [a["node"] for a in self.cluster.actors("RayTrainWorker") if a["state"] == "ALIVE"]
            node = next((n for n in busy if n in self.cluster.workers), None)
            if node:
                self.cluster.remove(node)
                self.removed, self.registered_epoch = node, epoch
                return


@pytest.mark.slow
def test_worker_node_removed_mid_train_resumes_on_the_remaining_node(tmp_path):
    """`e2i train` with scaling.trainer ray, 2 workers, scaling.max_failures 1, as a driver of a
    3-raylet cluster on this machine (a head without CPUs, 2 worker nodes of 1 CPU): once a
    checkpoint is registered, the worker node running the Train workers is removed (its raylet and
    processes killed). Ray Train restarts the worker group on the node left, from the last registered
    checkpoint: the workers say "resuming after epoch K" (K >= the registered epoch), the run
    finishes every epoch exactly once with optimizer steps continuing, and exits 0."""
    from e2i.store.synthetic import make_synthetic_store

    store = make_synthetic_store(tmp_path / "syn", n_items=1700, item_dim=32, caption_dim=24,
                                 splits={"train": 1600, "val": 50, "test": 50}, seed=4)
    cfg = TrainConfig(name="nodeloss").replace({
        **SMALL_HEAD, "data.store": str(store), "output_dir": str(tmp_path / "results"), "model.hidden_dim": 64,
        "optim.epochs": NODE_EPOCHS, "checkpoint.every_n_epochs": 2, "scaling.trainer": "ray",
        "scaling.num_workers": 2, "scaling.max_failures": 1,
        # 2 x 0.5 CPU: after the loss of one 1-CPU node both workers fit on the other
        "scaling.cpus_per_worker": 0.5})
    save_train_config(cfg, tmp_path / "nodeloss.yaml")
    run_dir = tmp_path / "results" / "nodeloss"
    with local_cluster(2) as cluster:
        env = {**os.environ, "RAY_ADDRESS": cluster.address, "RAY_TMPDIR": cluster.temp_dir,
               "PYTHONPATH": str(ROOT)}
        remover = RemoveBusyNodeAfterCheckpoint(cluster, run_dir / "checkpoints")
        remover.start()
        started = time.monotonic()
        proc = _driver([E2I, "train", str(tmp_path / "nodeloss.yaml"), "--no-evaluate"], env)
        try:
            out, err = _finish(proc)
        finally:
            remover.done.set()
            remover.join()
        elapsed = time.monotonic() - started
        workers = cluster.actors("RayTrainWorker")
        nodes_left = list(cluster.workers)
    log = out + err
    assert remover.removed, f"no worker node was removed (no registered checkpoint?):\n{log[-4000:]}"
    assert proc.returncode == 0, f"exit {proc.returncode} after {elapsed:.0f} s:\n{log[-6000:]}"
    assert re.search(rf"^\[nodeloss\] done: {NODE_EPOCHS} epochs, best val/mAP@10 \d\.\d{{4}} at epoch \d+ -> "
                     rf"{re.escape(str(run_dir))}$", out, re.MULTILINE), log[-4000:]

    # two worker groups of 2: the first on the removed node, the restart on the node left
    assert len(workers) == 4, workers
    assert remover.removed in {w["node"] for w in workers[:2]}, (workers, remover.removed)
    assert {w["node"] for w in workers[2:]} == set(nodes_left), (workers, nodes_left)

    # the restart continued after a registered checkpoint, not from scratch
    resumed = [int(k) for k in re.findall(r"resuming after epoch (\d+)", log)]
    assert len(resumed) == 1 and remover.registered_epoch <= resumed[0] < NODE_EPOCHS, (resumed, log[-4000:])
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, NODE_EPOCHS + 1))
    assert [h["step"] for h in history] == [history[0]["step"] * e for e in range(1, NODE_EPOCHS + 1)]


# ========================================================================================= object storage
class StopServerAfterFirstCheckpoint(threading.Thread):
    """SIGKILLs the S3 server once the run's first checkpoint is in place (training is under way)."""

    def __init__(self, server: subprocess.Popen, checkpoints: Path) -> None:
        super().__init__(daemon=True)
        self.server, self.first, self.stopped = server, checkpoints / "checkpoint_epoch0001", False
        self.done = threading.Event()

    def run(self) -> None:
        from test_faults import _stop

        while not self.done.wait(0.005):
            if (self.first / "config.json").is_file():
                _stop(self.server)
                self.stopped = True
                return


@pytest.mark.slow
def test_object_storage_down_mid_train_keeps_checkpoints_and_resume_completes(tmp_path, capsys, monkeypatch):
    """`e2i train` on a store in a real S3-compatible server (moto), killed after the first checkpoint.
    Training goes on from memory; the test-split evaluation at the end cannot read the store: exit 1,
    one line naming the key and the endpoint, every checkpoint on the run's disk complete. With the
    server back (same endpoint, the store uploaded again) `--resume` trains nothing again and finishes
    (evaluation included)."""
    import pyarrow.fs as pafs
    from s3_server import _free_port, create_bucket, s3_env
    from test_faults import _start_moto, _stop

    from e2i.store import open_fs
    from e2i.store.synthetic import make_synthetic_store
    from e2i.train.checkpoint import load_checkpoint, read_progress
    from e2i.train.driver import epoch_checkpoints

    local = make_synthetic_store(tmp_path / "syn", n_items=900, item_dim=32, caption_dim=24,
                                 splits={"train": 800, "val": 50, "test": 50}, seed=5)
    port = _free_port("127.0.0.1")
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in s3_env(endpoint).items():
        monkeypatch.setenv(key, value)

    def serve() -> subprocess.Popen:  # moto keeps objects in memory: a new server starts empty
        server = _start_moto(port)
        create_bucket(endpoint, "e2i-mn")
        fs, path = open_fs("s3://e2i-mn/syn")
        pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        return server

    epochs = 4
    cfg = TrainConfig(name="s3down").replace({
        **SMALL_HEAD, "data.store": "s3://e2i-mn/syn", "output_dir": str(tmp_path / "results"),
        "model.hidden_dim": 64, "optim.epochs": epochs, "checkpoint.every_n_epochs": 1})
    save_train_config(cfg, tmp_path / "s3down.yaml")
    run_dir = tmp_path / "results" / "s3down"
    server = serve()
    try:
        stopper = StopServerAfterFirstCheckpoint(server, run_dir / "checkpoints")
        stopper.start()
        try:
            code, out, err = run_cli(["train", str(tmp_path / "s3down.yaml")], capsys)
        finally:
            stopper.done.set()
            stopper.join()
        assert stopper.stopped, "the server was not stopped during the run"
        error_line(code, err, exit_code=1, full=(  # pyarrow's S3 message: the key and the endpoint
            r"e2i: error: When getting information for key 'syn/test' in bucket 'e2i-mn': AWS Error "
            r"NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Could not connect to server; Details: "
            rf"Failed to connect to 127\.0\.0\.1:{port} after \d+ ms: Could not connect to server"))
        kept = epoch_checkpoints(run_dir)
        assert max(kept) == epochs and not list((run_dir / "checkpoints").glob(".*"))  # no partial one
        model_dims = (32, 24)
        from e2i.model.heads import build_model

        for path in kept.values():  # every kept checkpoint loads
            assert load_checkpoint(path, model=build_model(cfg.model, *model_dims))["epoch"] == \
                read_progress(path)["epoch"]
        assert not (run_dir / "metrics.json").exists()

        server = serve()
        code, out, err = run_cli(["train", str(tmp_path / "s3down.yaml"), "--resume"], capsys)
        assert code == 0, err[-3000:]
        assert f"resuming after epoch {epochs}" in out, out[-3000:]
        summary = json.loads((run_dir / "metrics.json").read_text())
        assert [h["epoch"] for h in summary["history"]] == list(range(1, epochs + 1))
        assert "text_to_item/recall@1" in summary["test"]
    finally:
        _stop(server)


TUNE_SAMPLES = 2


@pytest.mark.slow
def test_object_storage_unreachable_mid_tune_fails_trials_not_the_study(rel_store, tmp_path, ray_tmp):
    """`e2i tune --storage-path s3://...` (as a user runs it: its own Ray) through a gate in front of a
    real S3 server; the gate closes (connections refused, the server keeps its objects) once a trial
    checkpoint is on S3. Trials that cannot upload error: the command exits 1 with one line naming the
    endpoint, no Optuna trial stays RUNNING (each FAIL, "trial errored"), and every checkpoint uploaded
    before the outage is complete and loads. With the storage back, `--resume` runs."""
    import boto3
    import optuna
    import yaml
    from s3_server import _free_port, create_bucket, s3_env
    from test_faults import _start_moto, _stop

    from e2i.train.checkpoint import MODEL_FILE, PROGRESS_FILE, STATE_FILE, load_weights, read_progress

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "base": {"data": {"store": str(rel_store)}, "model": {"type": "mlp", "output_dim": 16, "hidden_dim": 32},
                 "optim": {"epochs": 6, "batch_size": 16}, "logging": {"tensorboard": False},
                 "checkpoint": {"every_n_epochs": 1}},
        "space": {"optim.lr": {"loguniform": [1.0e-4, 1.0e-2]}}, "scheduler": {"type": "fifo", "max_t": 6},
        "search": {"num_samples": TUNE_SAMPLES, "max_concurrent_trials": 1}}))
    moto_port, port = _free_port("127.0.0.1"), _free_port("127.0.0.1")
    server = _start_moto(moto_port)
    gate = TcpGate(moto_port, port)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        create_bucket(endpoint, "e2i-mn")
        behind = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}", aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")  # past the gate

        def keys() -> list[str]:
            return [o["Key"] for o in behind.list_objects_v2(Bucket="e2i-mn").get("Contents", [])]

        env = {**os.environ, **s3_env(endpoint), "RAY_TMPDIR": ray_tmp}
        env.pop("RAY_ADDRESS", None)
        args = [sys.executable, "-m", "e2i", "tune", str(space), "--storage-path", "s3://e2i-mn/exp",
                "--output-dir", str(tmp_path / "results"), "--no-report"]
        proc = _driver(args, env)
        closed = threading.Event()

        def complete_checkpoints() -> list[str]:
            """Prefixes of the trial checkpoints on S3 with all four files (uploads go file by file)."""
            files: dict[str, set[str]] = {}
            for key in keys():
                if "/checkpoint_" in key:
                    prefix, name = key.rsplit("/", 1)
                    files.setdefault(prefix, set()).add(name)
            return sorted(p for p, names in files.items() if {MODEL_FILE, STATE_FILE, PROGRESS_FILE} <= names
                          and "config.json" in names)

        def close_on_first_checkpoint() -> None:
            while proc.poll() is None:
                if complete_checkpoints():
                    gate.close()
                    closed.set()
                    return
                time.sleep(0.05)

        watcher = threading.Thread(target=close_on_first_checkpoint, daemon=True)
        watcher.start()
        try:
            _, err = _finish(proc)
        finally:
            watcher.join()
        assert closed.is_set(), "the storage was not cut during the run"
        # e2i's one line comes last (above it Ray Tune logs each errored trial with its traceback)
        lines = [x for x in err.splitlines() if x.startswith("e2i: error: ")]
        assert proc.returncode == 1 and lines == [err.strip().splitlines()[-1]], (proc.returncode, err[-3000:])
        assert re.fullmatch(rf"e2i: error: .*'e2i-mn'.*Failed to connect to 127\.0\.0\.1:{port} .*", lines[0]), lines

        url = f"sqlite:///{tmp_path / 'results' / 'space' / 'optuna.db'}"
        trials = optuna.load_study(study_name="space", storage=url).get_trials()
        assert trials and {t.state.name for t in trials} == {"FAIL"}, [(t.number, t.state) for t in trials]
        assert {t.user_attrs.get("e2i:fail_reason") for t in trials} == {"trial errored"}

        # every checkpoint uploaded before the outage is still there and loads (an upload cut by the
        # outage may leave a partial checkpoint_NNNNNN: Tune never registered it, the trial errored in it)
        uploaded = complete_checkpoints()
        assert uploaded
        for prefix in uploaded:
            local = tmp_path / "ckpt" / prefix
            local.mkdir(parents=True)
            for name in (MODEL_FILE, STATE_FILE, PROGRESS_FILE):
                behind.download_file("e2i-mn", f"{prefix}/{name}", str(local / name))
            assert load_weights(local / MODEL_FILE) and load_weights(local / STATE_FILE)
            assert read_progress(local)["epoch"] >= 1

        gate.open()
        resumed = _driver([*args, "--resume"], env)
        _, resumed_err = _finish(resumed)
        states = {t.number: t.state.name for t in optuna.load_study(study_name="space", storage=url).get_trials()}
        assert "RUNNING" not in states.values(), states
        assert resumed.returncode == 0, resumed_err[-3000:]
        assert sum(s == "COMPLETE" for s in states.values()) >= 1, states
        # --resume re-ran the points the outage failed (each errored trial re-queued once)
        after = optuna.load_study(study_name="space", storage=url).get_trials()
        retried = [t.user_attrs["e2i:requeued_from"] for t in after if "e2i:requeued_from" in t.user_attrs]
        assert sorted(retried) == sorted(t.number for t in trials), (retried, [t.number for t in trials])
    finally:
        gate.close()
        _stop(server)


def test_object_storage_output_dir_is_refused_for_train(rel_config, tmp_path, capsys, monkeypatch):
    """`e2i train --output-dir s3://...`: one line naming output_dir (exit 2) before any work, instead of a
    run directory silently written to a local directory named 's3:' under the working directory."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", str(rel_config), "--output-dir", "s3://e2i-mn/results"], capsys)
    error_line(code, err, exit_code=2, full=re.escape(
        "e2i: error: output_dir: s3://e2i-mn/results: e2i train writes its run directory to a local or shared "
        "path (object storage is for data.store and e2i tune --storage-path)"))
    assert list(tmp_path.iterdir()) == []
