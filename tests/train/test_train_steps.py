"""The optimizer step of the loop with several workers and mixed precision, the parameter-clamp hook,
and the in-process `e2i train` path: its restarts for scaling.max_failures and which path runs when."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from e2i.config import TrainConfig
from e2i.store.synthetic import make_synthetic_store
from e2i.train.driver import epoch_checkpoints, train_local, uses_ray_train
from e2i.train.loop import _optimizer_step, run_training


def _scaler_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One of two gloo processes: the same model and GradScaler, rank 0's gradients overflow."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world)
    try:
        torch.manual_seed(0)  # same weights on both ranks
        model = torch.nn.Linear(4, 3)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        params = list(model.parameters())
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        cfg = TrainConfig().replace({"optim.grad_clip": 0.0})
        before = [p.detach().clone() for p in params]
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(rank))  # each rank its own shard
        scaler.scale(model(x).square().mean()).backward()
        if rank == 0:
            model.weight.grad[0, 0] = float("inf")  # an fp16 overflow on this worker only
        _optimizer_step(optimizer, params, scaler, cfg, world, 0, 0, 10)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({
            "finite": all(bool(torch.isfinite(p).all()) for p in params),
            "moved": any(not torch.equal(a, p.detach()) for a, p in zip(before, params)),
            "weights": [p.detach().reshape(-1).tolist() for p in params],
            "scale": scaler.get_scale(),
        }))
    finally:
        torch.distributed.destroy_process_group()


def test_grad_scaler_skips_on_every_worker_when_one_overflows(tmp_path):
    """16-mixed with 2 workers: an inf gradient on rank 0 only. Every rank must skip the step (weights
    unchanged and finite, scale halved); checking each rank's own gradients before averaging made
    rank 1 step with the averaged inf and its weights became inf/NaN."""
    torch.multiprocessing.spawn(_scaler_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, got in enumerate(ranks):
        assert got["finite"] and not got["moved"], (r, got)
        assert got["scale"] == 2.0**7, (r, got["scale"])  # the overflow was seen: scale backed off
    assert ranks[0]["weights"] == ranks[1]["weights"]


class _Clamped(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(99.0)))

    def clamp_parameters_(self) -> None:
        with torch.no_grad():
            self.log_scale.clamp_(max=math.log(100.0))


def test_clamp_parameters_runs_after_each_optimizer_step():
    model = _Clamped()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    (-10 * model.log_scale).backward()  # the step pushes log_scale far above log(100)
    cfg = TrainConfig().replace({"optim.grad_clip": 0.0, "optim.lr": 1.0})
    assert _optimizer_step(optimizer, list(model.parameters()), None, cfg, 1, 0, 0, 10, model=model) == 1
    assert model.log_scale.item() == pytest.approx(math.log(100.0))
    plain = torch.nn.Linear(2, 2)  # a model without the hook steps as before
    plain(torch.ones(1, 2)).sum().backward()
    _optimizer_step(torch.optim.SGD(plain.parameters(), lr=0.1), list(plain.parameters()), None, cfg, 1, 0, 0,
                    10, model=plain)


def test_which_path_runs():
    one = TrainConfig()
    assert not uses_ray_train(one)  # 1 CPU worker: in-process
    assert uses_ray_train(one.replace({"scaling.num_workers": 2}))
    assert uses_ray_train(one.replace({"scaling.use_gpu": True}))
    assert uses_ray_train(one.replace({"scaling.trainer": "ray"}))
    assert not uses_ray_train(one.replace({"scaling.trainer": "local"}))


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    return make_synthetic_store(tmp_path_factory.mktemp("syn") / "store", n_items=200, item_dim=16, caption_dim=12,
                                splits={"train": 140, "val": 30, "test": 30}, seed=4)


def _cfg(store: Path, out: Path, **extra) -> TrainConfig:
    return TrainConfig(name="local").replace({
        "data.store": str(store), "output_dir": str(out), "model.type": "mlp", "loss.type": "softmax_infonce",
        "model.output_dim": 16, "model.hidden_dim": 32, "model.num_layers": 1, "optim.epochs": 6,
        "optim.batch_size": 64, "optim.early_stopping_patience": 0, "checkpoint.every_n_epochs": 2,
        "logging.tensorboard": False, **extra})


class _FailOnce:
    """Fault injection: validation raises once, in the epoch ``epoch`` of the first attempt."""

    def __init__(self, real, epoch: int) -> None:
        self.real, self.epoch, self.calls, self.failed = real, epoch, 0, False

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.epoch and not self.failed:
            self.failed = True
            raise RuntimeError("injected fault")
        return self.real(*args, **kwargs)


def test_local_run_restarts_from_its_last_checkpoint(small_store, tmp_path, monkeypatch, capsys):
    """In-process `e2i train` with scaling.max_failures=1: an exception in epoch 5 restarts the loop from
    the epoch-4 checkpoint; the history has each epoch once and equals an uninterrupted run's."""
    from e2i.train import loop

    cfg = _cfg(small_store, tmp_path / "runs", **{"scaling.max_failures": 1})
    straight = run_training(cfg, report=lambda m, d: None)["history"]
    fault = _FailOnce(loop.validate, epoch=5)
    monkeypatch.setattr(loop, "validate", fault)
    summary = train_local(cfg, evaluate=False)
    assert fault.failed
    out = capsys.readouterr().out
    assert "[local] training failed (RuntimeError: injected fault); restart 1 of scaling.max_failures=1" in out
    assert "[local] resuming after epoch 4" in out
    history = summary["history"]
    assert [h["epoch"] for h in history] == list(range(1, 7))
    for got, want in zip(history, straight, strict=True):
        assert (got["step"], got["lr"]) == (want["step"], want["lr"])
        for key in ("train/loss", "val/loss", "val/mAP@10"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (got["epoch"], key)
    assert 6 in epoch_checkpoints(cfg.run_dir) and (Path(cfg.run_dir) / "best_model.safetensors").is_file()

    # without max_failures the same fault ends the run with the error
    monkeypatch.setattr(loop, "validate", _FailOnce(fault.real, epoch=2))
    with pytest.raises(RuntimeError, match="injected fault"):
        train_local(_cfg(small_store, tmp_path / "runs0"), evaluate=False)
