"""Training: the per-worker loop without Ray, data-parallel equivalence, resume, and Ray Train runs.

Ray Train runs cost ~20 s of worker start each, so the suite has two: a 2-worker resume of seed 1's
run of `e2i train --seeds 0,1` (whose 1-worker runs train in-process: all outputs, TensorBoard served,
mean ± std), and `e2i train --use-gpu` in a subprocess whose own Ray has no GPU (the CPU fallback).
"""

import datetime
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fake_cluster import run_command
from servers import get_json, tensorboard, tensorboard_scalars

from e2i.cli import build_parser, main
from e2i.config import TrainConfig, load_train_config, resolve_config_paths, save_train_config
from e2i.errors import CheckpointError
from e2i.store import load_split
from e2i.store.synthetic import make_synthetic_store, synthetic_splits
from e2i.train.checkpoint import read_progress
from e2i.train.cli import config_from_args
from e2i.train.driver import epoch_checkpoints, fit
from e2i.train.loop import run_training
from e2i.train.schedule import global_batches, lr_at
from e2i.train.seeds import seed_summary

ROOT = Path(__file__).resolve().parents[2]
E2I = str(Path(sys.executable).with_name("e2i"))  # the console script a user runs
NATURAL_LOSS = {
    "siglip": "sigmoid_infonce",
    "clip": "softmax_infonce",
    "attention": "softmax_infonce",
    "mlp": "softmax_infonce",
}  # as in configs/*.yaml
# attention: the synthetic maps mix every input dim, so few wide tokens (and a few more epochs) are needed
HEAD_EXTRA = {
    "siglip": {"model.init_temperature": 0.1},
    "attention": {"model.num_tokens": 2, "optim.epochs": 10},
}
SMALL = {
    "model.output_dim": 32,
    "model.hidden_dim": 64,
    "model.num_layers": 1,
    "optim.epochs": 6,
    "optim.min_steps_per_epoch": 0,  # plain passes: these tests count steps per pass (test_train_steps: the default)
    "optim.batch_size": 128,
    "optim.lr": 3e-3,
    "loss.queue_size": 256,
    "logging.tensorboard": False,
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """400 items x 5 captions: train 280 items (1400 captions), val/test 60 items (chance R@1 1/60)."""
    return make_synthetic_store(
        tmp_path_factory.mktemp("syn") / "store",
        n_items=400,
        item_dim=32,
        caption_dim=24,
        splits={"train": 280, "val": 60, "test": 60},
        seed=0,
    )


def small_cfg(store: Path, **overrides) -> TrainConfig:
    return TrainConfig(name="t").replace({"data.store": str(store), **SMALL, **overrides})


def no_report(metrics, checkpoint_dir):
    assert math.isfinite(metrics["train/loss"])


# --------------------------------------------------------------------------------------------------
# The loop, no Ray


@pytest.mark.parametrize("head", ["siglip", "clip", "attention", "mlp"])
def test_each_head_trains_far_above_chance(store, head):
    cfg = small_cfg(
        store, **{"model.type": head, "loss.type": NATURAL_LOSS[head], **HEAD_EXTRA.get(head, {})}
    )
    out = run_training(cfg, report=no_report)
    chance = 1 / 60
    first, best = out["history"][0], out["best"]
    assert [h["epoch"] for h in out["history"]] == list(range(1, cfg.optim.epochs + 1))
    assert best["val/recall@1"] > 8 * chance, best
    assert best["val/mAP@10"] > best["val/recall@1"]  # mAP@10 >= R@1 by definition, > with any rank-2 hit
    assert out["history"][-1]["train/loss"] < first["train/loss"]
    assert out["best_metric"] == best["val/mAP@10"] == max(h["val/mAP@10"] for h in out["history"])


def test_metric_names_and_schedule(store):
    cfg = small_cfg(
        store, **{"optim.epochs": 2, "optim.warmup_epochs": 1.0, "optim.accumulate_grad_batches": 2}
    )
    out = run_training(cfg, report=no_report)
    h = out["history"]
    for key in (
        "epoch",
        "step",
        "train/loss",
        "lr",
        "logit_scale",
        "val/loss",
        "val/recall@1",
        "val/recall@5",
        "val/recall@10",
        "val/mAP@10",
        "val/median_rank",
        "val/item_to_text/recall@1",
        "val/item_to_text/mAP@10",
        "time/epoch_s",
        "train/pairs_per_s",
    ):
        assert key in h[0], key
    assert global_batches(1400, 128, 1) == (10, 128)  # 10 batches of 128 caption rows, 2 per optimizer step
    assert [x["step"] for x in h] == [5, 10]
    # warmup over epoch 1 (5 steps), cosine over the remaining 5; lr is the one of the last step
    assert h[0]["lr"] == pytest.approx(cfg.optim.lr)
    assert h[1]["lr"] == pytest.approx(lr_at(9, peak=cfg.optim.lr, warmup_steps=5, total_steps=10))


def test_lr_schedule_and_batches():
    lrs = [lr_at(s, peak=1.0, warmup_steps=4, total_steps=12) for s in range(12)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warmup
    assert lrs[4] == 1.0 and all(a > b for a, b in itertools.pairwise(lrs[4:]))  # then cosine decay
    assert lr_at(12, peak=1.0, warmup_steps=4, total_steps=12) == pytest.approx(0.0)
    assert global_batches(1000, 256, 1) == (3, 256)  # incomplete last batch dropped
    assert global_batches(1000, 256, 3) == (3, 85)  # global batch 255 = 3 x 85
    assert global_batches(100, 256, 2) == (1, 50)  # a split smaller than one batch: one batch


def test_bf16_autocast_on_cpu_trains(store):
    cfg = small_cfg(
        store, **{"model.type": "clip", "loss.type": "softmax_infonce", "optim.precision": "bf16-mixed"}
    )
    out = run_training(cfg, report=no_report)
    assert out["best"]["val/recall@1"] > 8 / 60


def test_early_stopping(store):
    # lr 1e-12: the weights do not move, val R@1 stays equal, which is no improvement
    cfg = small_cfg(
        store,
        **{
            "optim.lr": 1e-12,
            "optim.epochs": 10,
            "optim.early_stopping_patience": 2,
            "metric": "val/recall@1",
            "model.dropout": 0.0,
        },
    )
    written = []

    def report(metrics, checkpoint_dir):
        if checkpoint_dir is not None:
            written.append(read_progress(checkpoint_dir)["epoch"])

    out = run_training(cfg, report=report)
    assert out["stopped_early"] and out["epochs"] == 3 and out["best_epoch"] == 1
    assert written == [1, 3]  # the best epoch and the last (the early stop), not epoch 2


def test_checkpoints_only_when_needed(store):
    """Best so far, every checkpoint.every_n_epochs, the last: the other epochs report metrics only.
    lr 1e-12: the weights stay put, so only epoch 1 is an improvement (as in test_early_stopping)."""
    cfg = small_cfg(store, **{"optim.epochs": 7, "checkpoint.every_n_epochs": 3, "optim.lr": 1e-12,
                              "metric": "val/recall@1", "model.dropout": 0.0, "optim.early_stopping_patience": 0})
    written, reported = [], []

    def report(metrics, checkpoint_dir):
        reported.append(metrics["epoch"])
        if checkpoint_dir is not None:
            saved = read_progress(checkpoint_dir)
            assert saved["epoch"] == metrics["epoch"] and saved["history"][-1] == metrics
            written.append(metrics["epoch"])

    out = run_training(cfg, report=report)
    assert out["best_epoch"] == 1 and reported == list(range(1, 8))
    assert written == [1, 3, 6, 7]
    every = []
    run_training(cfg.replace({"checkpoint.every_n_epochs": 0, "optim.epochs": 3}),
                 report=lambda m, d: every.append(m["epoch"]) if d else None)
    assert every == [1, 3]  # every_n_epochs 0: the best and the last only


def test_store_written_by_plain_pandas_trains(tmp_path):
    """A store with no manifest, embeddings as plain list columns, written by pandas alone."""
    mem = synthetic_splits(n_items=300, item_dim=16, caption_dim=12, splits={"train": 240, "val": 60}, seed=5)
    for name, split in mem.items():
        (tmp_path / name / "items").mkdir(parents=True)
        (tmp_path / name / "captions").mkdir(parents=True)
        pd.DataFrame(
            {
                "item_id": split.item_ids,
                "path": [f"{i}.wav" for i in split.item_ids],
                "embedding": list(split.item_emb),
            }
        ).to_parquet(tmp_path / name / "items" / "a.parquet")
        pd.DataFrame(
            {
                "caption_id": split.caption_ids,
                "item_id": split.item_ids[split.caption_item],
                "text": split.caption_text,
                "embedding": list(split.caption_emb),
            }
        ).to_parquet(tmp_path / name / "captions" / "a.parquet")
    assert load_split(tmp_path / "train").manifest is None
    out = run_training(
        small_cfg(tmp_path, **{"model.type": "mlp", "loss.type": "softmax_infonce"}), report=no_report
    )
    assert out["best"]["val/recall@1"] > 8 / 60


def test_store_on_s3_trains(monkeypatch):
    """data.store = s3://... (a real S3-compatible server): loaded once per worker, then trained."""
    from s3_server import create_bucket, run_moto_server, s3_env

    with run_moto_server() as endpoint:
        for key, value in s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        create_bucket(endpoint, "e2i-test")
        make_synthetic_store(
            "s3://e2i-test/stores/syn",
            n_items=200,
            item_dim=16,
            caption_dim=12,
            splits={"train": 150, "val": 50},
            seed=6,
        )
        cfg = small_cfg(
            "s3://e2i-test/stores/syn",
            **{"model.type": "clip", "loss.type": "softmax_infonce", "optim.epochs": 10},
        )
        out = run_training(cfg, report=no_report)
    assert out["best"]["val/recall@1"] > 5 / 50


def test_resume_repeats_the_uninterrupted_run(store, tmp_path):
    """Crash after epoch 2, resume from its checkpoint: the history continues and equals a straight run
    (weights, AdamW moments, the loss's queue, step count and dropout streams all restored)."""
    cfg = small_cfg(store, **{"model.type": "clip", "loss.type": "queue_infonce", "optim.epochs": 4,
                              "checkpoint.every_n_epochs": 2})
    straight = run_training(cfg, report=no_report)
    assert straight["best"]["val/recall@1"] > 8 / 60  # the queue loss learns too

    class Crash(Exception):
        pass

    def crash_after_two(metrics, checkpoint_dir):
        if checkpoint_dir is not None:  # epoch 2 has one (every_n_epochs 2)
            shutil.copytree(checkpoint_dir, tmp_path / f"epoch{metrics['epoch']}")
        if metrics["epoch"] == 2:
            raise Crash

    with pytest.raises(Crash):
        run_training(cfg, report=crash_after_two)
    assert read_progress(tmp_path / "epoch2")["epoch"] == 2
    seen = []
    resumed = run_training(
        cfg, report=lambda m, d: seen.append(m["epoch"]), resume_from=str(tmp_path / "epoch2")
    )
    assert seen == [3, 4]  # epochs 1-2 are not repeated
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    for a, b in zip(straight["history"], resumed["history"]):
        assert a["step"] == b["step"]
        for key in ("train/loss", "val/loss", "val/mAP@10", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["epoch"], key)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str, cfg_dict: dict) -> None:
    """One of two gloo processes running the same loop (what a 2-worker TorchTrainer does)."""
    from e2i.config import train_config_from_dict

    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        cfg = train_config_from_dict(cfg_dict)
        mem = synthetic_splits(
            n_items=200, item_dim=16, caption_dim=12, splits={"train": 160, "val": 40}, seed=2
        )
        out = run_training(cfg, report=lambda m, d: None, data=(mem["train"], mem["val"]))
        if rank == 0:
            Path(out_dir, "history.json").write_text(json.dumps(out["history"]))
        # Both ranks finish every collective before the group is torn down (Ray Train does the same by
        # waiting for all workers); without it a rank that tears down first can abort the other's gloo pair.
        torch.distributed.monitored_barrier(timeout=datetime.timedelta(seconds=120))
    finally:
        torch.distributed.destroy_process_group()


def test_two_workers_match_one_worker(tmp_path):
    """Same global batch split over 2 gloo processes (gathered loss, averaged grads) = 1 process."""
    cfg = TrainConfig(name="ddp").replace(
        {
            **SMALL,
            "model.type": "clip",
            "loss.type": "softmax_infonce",
            "model.dropout": 0.0,
            "optim.epochs": 3,
            "optim.batch_size": 64,
        }
    )
    mem = synthetic_splits(n_items=200, item_dim=16, caption_dim=12, splits={"train": 160, "val": 40}, seed=2)
    single = run_training(cfg, report=lambda m, d: None, data=(mem["train"], mem["val"]))["history"]
    torch.multiprocessing.spawn(
        _ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), cfg.to_dict()), nprocs=2
    )
    double = json.loads((tmp_path / "history.json").read_text())
    for a, b in zip(single, double, strict=True):
        for key in ("train/loss", "val/loss", "val/mAP@10", "val/recall@1", "logit_scale"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), (a["epoch"], key)


# --------------------------------------------------------------------------------------------------
# CLI and Ray Train


def test_cli_flags_override_the_config(tmp_path):
    path = tmp_path / "c.yaml"
    save_train_config(TrainConfig(name="c"), path)
    args = build_parser("train").parse_args(
        [
            "train",
            str(path),
            "--set",
            "optim.lr=1e-4",
            "--num-workers",
            "2",
            "--use-gpu",
            "--use-wandb",
            "--wandb-project",
            "p",
            "--wandb-entity",
            "e",
            "--run-name",
            "r",
            "--output-dir",
            str(tmp_path / "o"),
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.optim.lr, cfg.scaling.num_workers, cfg.scaling.use_gpu) == (1e-4, 2, True)
    assert (
        cfg.logging.use_wandb,
        cfg.logging.wandb_project,
        cfg.logging.wandb_entity,
        cfg.logging.run_name,
    ) == (True, "p", "e", "r")
    assert cfg.run_dir == f"{tmp_path / 'o'}/c"
    plain = config_from_args(build_parser("train").parse_args(["train", str(path)]))
    # flags not given leave the file's values (its local paths resolved against the cwd, as at every load)
    assert plain == resolve_config_paths(TrainConfig(name="c")) and plain.output_dir == str(Path.cwd() / "results")


def test_resume_without_checkpoint_is_an_error(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    save_train_config(TrainConfig(name="c", output_dir=str(tmp_path)), path)
    assert main(["train", str(path), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("e2i: error: ") and "no checkpoint to resume from" in err and "\n" not in err
    with pytest.raises(CheckpointError):
        fit(TrainConfig(name="c", output_dir=str(tmp_path)), resume=True)


def test_seed_summary_is_mean_and_sample_std():
    runs = [
        {"test": {"a": 1.0, "x/num_queries": 5}},
        {"test": {"a": 2.0, "x/num_queries": 5}},
        {"test": {"a": 6.0, "x/num_queries": 5}},
    ]
    s = seed_summary(runs, "test")
    assert (
        list(s) == ["a"]
        and s["a"]["mean"] == 3.0
        and s["a"]["std"] == pytest.approx(np.std([1, 2, 6], ddof=1))
    )


def test_gpu_request_falls_back_to_cpu_torch(ray_local):
    """The suite's Ray has 2 logical GPUs but torch has no CUDA: GPUs are requested, gloo is used,
    and the worker loop trains on CPU."""
    from e2i.train.driver import _gpu_request
    from e2i.train.loop import pick_device

    cfg = TrainConfig().replace({"scaling.use_gpu": True})
    assert _gpu_request(cfg) == (True, 1.0, "gloo")
    assert _gpu_request(TrainConfig()) == (False, 0.0, "gloo")
    assert pick_device(cfg).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_ray_train_polls_reports_every_0_2_s_unless_the_user_says(ray_local, tmp_path, monkeypatch):
    """Ray Train V2 takes a worker's report when its controller polls (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S,
    Ray's default 2 s: every epoch took >= 2 s); e2i's trainer sets 0.2 s, and Ray passes the driver's
    value on to the controller. A value the user set is kept."""
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    from e2i.train.driver import HEALTH_CHECK_ENV, _trainer

    monkeypatch.delenv(HEALTH_CHECK_ENV, raising=False)
    _trainer(TrainConfig(), tmp_path)
    assert get_env_vars_to_propagate()[HEALTH_CHECK_ENV] == "0.2"
    monkeypatch.setenv(HEALTH_CHECK_ENV, "1.5")
    _trainer(TrainConfig(), tmp_path)
    assert get_env_vars_to_propagate()[HEALTH_CHECK_ENV] == "1.5"


@pytest.mark.slow
def test_use_gpu_on_a_ray_without_gpus_trains_on_cpu(tmp_path):
    """`e2i train CONFIG --use-gpu` where Ray has no GPU at all (its own local Ray, started by e2i in a
    subprocess; the suite's Ray has 2 logical GPUs): the warning, no GPU requested for the worker,
    the loop on CPU, and the run completes."""
    store = make_synthetic_store(tmp_path / "store", n_items=120, item_dim=16, caption_dim=12,
                                 splits={"train": 80, "val": 40}, seed=3)
    cfg = small_cfg(store, **{"name": "nogpu", "model.type": "mlp", "loss.type": "softmax_infonce",
                              "optim.epochs": 2})
    save_train_config(cfg, tmp_path / "nogpu.yaml")
    ray_tmp = tempfile.mkdtemp(prefix="e2i-ray-", dir="/tmp")  # own Ray: never joins another on this machine
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    try:  # without the fallback the run waits for a GPU forever: the timeout fails the test
        res = run_command([E2I, "train", str(tmp_path / "nogpu.yaml"), "--use-gpu", "--no-evaluate",
                           "--output-dir", str(tmp_path / "runs")], env=env, cwd=tmp_path, timeout=180, marker=ray_tmp)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-5000:]
    warned = [line for line in log.splitlines()
              if line.endswith("UserWarning: scaling.use_gpu: the Ray cluster has no GPUs; training on CPU")]
    assert len(warned) == 1, log[-5000:]
    assert "[nogpu] 1 worker(s) on cpu (Ray GPU ids of rank 0: none)" in log, log[-5000:]
    assert "[nogpu] done: 2 epochs" in res.stdout, log[-5000:]
    run = tmp_path / "runs" / "nogpu"
    assert load_train_config(run / "config.yaml").scaling.use_gpu is True  # the flag was taken, then fell back
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and "test" not in metrics
    assert math.isfinite(metrics["best_metric"]) and epoch_checkpoints(run)


@pytest.fixture(scope="module")
def seed_runs(store, tmp_path_factory):
    """`e2i train CONFIG --seeds 0,1 --use-wandb`: 1 CPU worker per run, so in-process (no Ray Train)."""
    out = tmp_path_factory.mktemp("runs")
    cfg = small_cfg(
        store,
        **{
            "name": "clipsyn",
            "model.type": "clip",
            "loss.type": "softmax_infonce",
            "optim.epochs": 3,
            "logging.tensorboard": True,
        },
    )
    save_train_config(cfg, out / "clipsyn.yaml")
    code = main(
        ["train", str(out / "clipsyn.yaml"), "--seeds", "0,1", "--use-wandb", "--output-dir", str(out)]
    )
    assert code == 0
    return out / "clipsyn"


@pytest.mark.slow
def test_fit_writes_the_run_directory(seed_runs):
    run = seed_runs / "seed0"
    for name in (
        "best_model.safetensors",
        "config.yaml",
        "training_curves.png",
        "metrics.json",
        "evaluation_results/test_metrics.json",
        "evaluation_results/test_tsne.png",
        "evaluation_results/test_pca.png",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run / "wandb").glob("offline-run-*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert metrics["best"]["val/mAP@10"] == max(h["val/mAP@10"] for h in metrics["history"])
    assert metrics["test"]["text_to_item/recall@1"] > 8 / 60
    assert len(metrics["test"]["text_to_item/recall@1/ci95"]) == 2
    base = metrics["baseline"]  # vs the store's best closed-form baseline, cached beside the evaluation
    assert base["value"] == metrics["test"]["text_to_item/recall@1"]
    assert base["loses"] == (base["value"] < base["baseline_value"]) and base["baseline_value"] > 1 / 60
    assert (run / "evaluation_results" / "baseline_test.json").is_file()
    # the best and the latest checkpoints are kept in the run dir; no Ray Train ran (no snapshot of it)
    assert set(epoch_checkpoints(run)) == {metrics["best_epoch"], 3}
    assert not (run / "checkpoints" / "checkpoint_manager_snapshot.json").exists()


@pytest.mark.slow
def test_tensorboard_serves_every_epoch_of_both_seeds(seed_runs):
    """`tensorboard --logdir <run>` as a user starts it: both seeds' runs, every numeric metric of
    metrics.json as a scalar tag, one point per epoch with the value of that epoch."""
    histories = {f"seed{s}/tensorboard": json.loads((seed_runs / f"seed{s}" / "metrics.json").read_text())["history"]
                 for s in (0, 1)}
    with tensorboard(seed_runs, runs=2) as url:
        tags = get_json(f"{url}/data/plugin/scalars/tags")
        assert set(tags) == set(histories), tags
        for run, history in histories.items():
            numeric = {k for k, v in history[0].items() if isinstance(v, (int, float)) and k != "epoch"}
            assert set(tags[run]) == numeric, (run, sorted(tags[run]))
            for tag in ("train/loss", "val/loss", "val/mAP@10", "val/recall@1", "lr", "logit_scale"):
                points = tensorboard_scalars(url, run, tag)
                assert [step for step, _ in points] == [h["epoch"] for h in history], (run, tag)
                assert [v for _, v in points] == pytest.approx([h[tag] for h in history], rel=1e-6), (run, tag)


@pytest.mark.slow
def test_seeds_report_mean_and_std(seed_runs):
    summary = json.loads((seed_runs / "seeds.json").read_text())
    r1 = [
        json.loads((seed_runs / f"seed{s}" / "metrics.json").read_text())["test"]["text_to_item/recall@1"]
        for s in (0, 1)
    ]
    row = summary["summary"]["text_to_item/recall@1"]
    assert summary["seeds"] == [0, 1] and row["values"] == r1
    assert row["mean"] == pytest.approx(np.mean(r1)) and row["std"] == pytest.approx(np.std(r1, ddof=1))
    losses = [
        json.loads((seed_runs / f"seed{s}" / "metrics.json").read_text())["history"][0]["train/loss"]
        for s in (0, 1)
    ]
    assert losses[0] != losses[1]  # the seed changes the run (init, shuffling, dropout)


@pytest.mark.slow
def test_resume_continues_with_two_workers(ray_local, seed_runs):
    """`--resume` on seed 1's finished 3-epoch run (trained in-process) with epochs=4 and 2 workers: a
    TorchTrainer whose workers start from the run's latest checkpoint; only epoch 4 is trained."""
    cfg_path = seed_runs / "seed1" / "config.yaml"
    before = json.loads((seed_runs / "seed1" / "metrics.json").read_text())["history"]
    code = main(
        [
            "train",
            str(cfg_path),
            "--resume",
            "--num-workers",
            "2",
            "--set",
            "optim.epochs=4",
            "--set",
            "logging.use_wandb=false",
            "--no-evaluate",
        ]
    )
    assert code == 0
    after = json.loads((seed_runs / "seed1" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in after] == [1, 2, 3, 4]
    assert after[:3] == before  # the first three epochs come from the checkpoint, not retrained
    assert after[3]["step"] == before[2]["step"] + 10  # 1400 captions / 128 = 10 global batches
    assert 4 in epoch_checkpoints(seed_runs / "seed1")  # uploaded asynchronously, there when fit returns
    assert (seed_runs / "seed1" / "checkpoints" / "checkpoint_manager_snapshot.json").is_file()
