"""`e2i compare`: paired item-level bootstrap of two runs on the same split; a different split is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2i.cli import main
from e2i.config import TrainConfig, save_train_config
from e2i.errors import ConfigError
from e2i.evaluate.compare import compare_runs
from e2i.evaluate.evaluation import evaluate_run
from e2i.store.synthetic import make_synthetic_store
from e2i.train.driver import train_local


def _run(root: Path, store: Path, name: str, **overrides) -> Path:
    cfg = TrainConfig(name=name, output_dir=str(root / "results")).replace({
        "data.store": str(store), "model.type": "mlp", "loss.type": "softmax_infonce", "model.output_dim": 16,
        "model.hidden_dim": 32, "model.num_layers": 1, "optim.epochs": 3, "optim.batch_size": 100,
        "optim.lr": 3e-3, "logging.tensorboard": False, **overrides})
    train_local(cfg, evaluate=False)
    return Path(cfg.run_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    store = make_synthetic_store(root / "store", n_items=200, item_dim=24, caption_dim=16,
                                 splits={"train": 120, "val": 20, "test": 60}, seed=2)
    other = make_synthetic_store(root / "other", n_items=150, item_dim=24, caption_dim=16,
                                 splits={"train": 100, "val": 20, "test": 30}, seed=2)
    return {"weak": _run(root, store, "weak", **{"optim.epochs": 1, "optim.lr": 1e-6}),
            "good": _run(root, store, "good"),
            "elsewhere": _config(root, other)}


def _config(root: Path, store: Path) -> Path:
    """A config on another store (never trained: the split check comes before any weights are read)."""
    path = root / "elsewhere.yaml"
    save_train_config(TrainConfig(name="elsewhere", output_dir=str(root / "results")).replace(
        {"data.store": str(store), "model.type": "mlp"}), path)
    return path


def test_paired_differences_match_each_runs_evaluation(runs, capsys):
    result = compare_runs(runs["weak"], runs["good"], n_boot=300)
    alone = {k: evaluate_run(runs[k], plots=False, html=False, show=False, baseline=False,
                             output_dir=runs[k] / "ev")["metrics"] for k in ("weak", "good")}
    diffs = result["diffs"]
    for key in ("text_to_item/recall@1", "text_to_item/recall@10", "text_to_item/mAP@10", "item_to_text/recall@5"):
        d = diffs[key]
        assert d["a"] == pytest.approx(alone["weak"][key]) and d["b"] == pytest.approx(alone["good"][key])
        assert d["diff"] == pytest.approx(d["b"] - d["a"]) and d["ci95"][0] <= d["diff"] <= d["ci95"][1]
    # a trained head against a barely-initialised one: the interval is clearly above zero
    assert diffs["text_to_item/recall@10"]["ci95"][0] > 0
    # the same run against itself: every difference and interval is zero (up to float summation)
    same = compare_runs(runs["good"], runs["good"], n_boot=50)["diffs"]
    assert all(d["diff"] == 0 and d["ci95"] == pytest.approx([0.0, 0.0], abs=1e-12) for d in same.values())

    out = runs["good"] / "cmp.json"
    assert main(["compare", str(runs["weak"]), str(runs["good"]), "--n-boot", "200", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "B better" in printed and "| text_to_item/recall@10 |" in printed
    saved = json.loads(out.read_text())
    assert saved["a"]["name"] == "weak" and saved["split"] == "test" and saved["num_captions"] == 300
    assert out.with_suffix(".md").read_text().startswith("Paired comparison on `test`")


def test_runs_on_different_splits_are_refused(runs, capsys):
    with pytest.raises(ConfigError, match="are not the same split: 60 vs 30 items"):
        compare_runs(runs["good"], runs["elsewhere"])
    assert main(["compare", str(runs["good"]), str(runs["elsewhere"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("e2i: error: ") and "not the same split" in err and "\n" not in err
