"""Evaluation of a trained run: metrics JSON with CIs, plots, and safe checkpoint loading."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from e2i.train.checkpoint import load_weights, save_weights
from e2i.cli import main
from e2i.config import TrainConfig, load_train_config, save_train_config
from e2i.errors import CheckpointError
from e2i.evaluate.evaluation import evaluate_run, resolve_run
from e2i.model.heads import build_model
from e2i.evaluate.metrics import retrieval_metrics_bruteforce
from e2i.evaluate.plots import plot_training_curves
from e2i.store.synthetic import make_synthetic_store
from e2i.train.driver import train_local


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A small trained run (in-process, no Ray) with the same layout `e2i train` writes."""
    root = tmp_path_factory.mktemp("eval")
    store = make_synthetic_store(
        root / "store",
        n_items=300,
        item_dim=24,
        caption_dim=16,
        splits={"train": 200, "val": 50, "test": 50},
        seed=3,
    )
    cfg = TrainConfig(name="evalrun", output_dir=str(root / "results")).replace(
        {
            "data.store": str(store),
            "model.type": "mlp",
            "loss.type": "softmax_infonce",
            "model.output_dim": 32,
            "model.hidden_dim": 64,
            "model.num_layers": 1,
            "optim.epochs": 4,
            "optim.batch_size": 100,
            "optim.lr": 3e-3,
            "logging.tensorboard": False,
        }
    )
    save_train_config(cfg, root / "evalrun.yaml")
    train_local(cfg, evaluate=False)
    return Path(cfg.run_dir)


def _reference_metrics(run_dir: Path) -> dict:
    """The test split's metrics recomputed without evaluate_run or the store loader: the weights read from
    best_model.safetensors, the split's parquet read with pyarrow, positives joined by item_id, and the
    brute-force reference (full score matrix, stable argsort, explicit loops over relevant captions)."""
    cfg = load_train_config(run_dir / "config.yaml")
    split = Path(cfg.data.store) / cfg.data.test_split
    items = pq.read_table(split / "items", columns=["item_id", "embedding"]).to_pydict()
    caps = pq.read_table(split / "captions", columns=["item_id", "embedding"]).to_pydict()
    row_of = {item_id: row for row, item_id in enumerate(items["item_id"])}
    model = build_model(cfg.model, len(items["embedding"][0]), len(caps["embedding"][0]))
    model.load_state_dict(load_file(str(run_dir / "best_model.safetensors")))
    model.eval()
    with torch.no_grad():
        item_z = model.encode_items(torch.tensor(items["embedding"])).numpy()
        cap_z = model.encode_captions(torch.tensor(caps["embedding"])).numpy()
    cap_item = np.array([row_of[item_id] for item_id in caps["item_id"]])
    top1 = np.argmax(cap_z @ item_z.T, axis=1)  # text->item R@1 by hand, too
    return {**retrieval_metrics_bruteforce(item_z, cap_z, cap_item, ci=False),
            "by_hand/recall@1": float(np.mean(top1 == cap_item))}


def test_evaluate_writes_metrics_with_cis_and_plots(run_dir):
    evaluate_run(run_dir, max_plot_items=40)
    out = run_dir / "evaluation_results"
    saved = json.loads((out / "test_metrics.json").read_text())
    assert (saved["split"], saved["num_items"], saved["num_captions"]) == ("test", 50, 250)
    assert saved["checkpoint"] == str(run_dir / "best_model.safetensors")
    m = saved["metrics"]
    # the numbers in the file are the test split's under the saved weights
    want = _reference_metrics(run_dir)
    assert m["text_to_item/recall@1"] == pytest.approx(want.pop("by_hand/recall@1"))
    for key, value in want.items():
        assert m[key] == pytest.approx(value, abs=1e-6), key
    for direction in ("text_to_item", "item_to_text"):
        for name in ("recall@1", "recall@5", "recall@10", "mAP@10", "median_rank", "mean_rank"):
            key = f"{direction}/{name}"
            low, high = m[f"{key}/ci95"]
            assert low <= m[key] <= high, key
    assert m["text_to_item/recall@1"] > 8 * saved["chance/recall@1"]
    assert m["text_to_item/recall@1"] <= m["text_to_item/recall@5"] <= m["text_to_item/recall@10"]
    for name in ("test_tsne.png", "test_pca.png"):
        assert (out / name).stat().st_size > 10_000  # a real figure, not an empty file


def test_evaluate_from_config_other_split_and_cli(run_dir, capsys):
    config = run_dir.parent.parent / "evalrun.yaml"
    cfg, resolved = resolve_run(config)
    assert resolved.resolve() == run_dir.resolve() and cfg.name == "evalrun"
    code = main(
        ["evaluate", str(config), "--split", "val", "--no-plots", "--output-dir", str(run_dir / "ev_val")]
    )
    assert code == 0
    stdout = capsys.readouterr().out
    assert "text_to_item/recall@1" in stdout and "95% CI" in stdout
    saved = json.loads((run_dir / "ev_val" / "val_metrics.json").read_text())
    assert saved["split"] == "val" and not (run_dir / "ev_val" / "val_tsne.png").exists()


def test_truncated_safetensors_is_a_one_line_error(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken.safetensors"
    data = (run_dir / "best_model.safetensors").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="broken.safetensors: not a valid safetensors file"):
        load_weights(broken)
    assert main(["evaluate", str(run_dir), "--checkpoint", str(broken), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("e2i: error: ") and "broken.safetensors" in err and "\n" not in err


class Payload:
    """Unpickling this would run code (os.system) if torch.load allowed arbitrary objects."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pt_files_load_only_plain_tensors(run_dir, tmp_path):
    state = load_file(str(run_dir / "best_model.safetensors"))
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)  # a legacy state_dict of tensors: accepted
    from_pt = evaluate_run(run_dir, checkpoint=plain, plots=False, output_dir=tmp_path / "pt", show=False)
    from_st = evaluate_run(run_dir, plots=False, output_dir=tmp_path / "st", show=False)
    assert from_pt["metrics"] == from_st["metrics"]
    evil = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": Payload()}, evil)
    with pytest.raises(CheckpointError, match="evil.pt: refused or unreadable torch file"):
        load_weights(evil)


def test_checkpoint_of_another_model_is_refused(run_dir, tmp_path):
    state = load_file(str(run_dir / "best_model.safetensors"))
    key = next(k for k, v in state.items() if v.dim() == 2)
    state[key] = torch.zeros(3, 3)
    save_weights(state, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match=r"other.safetensors: .* has shape \(3, 3\)"):
        evaluate_run(run_dir, checkpoint=tmp_path / "other.safetensors", plots=False, show=False)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        evaluate_run(run_dir, checkpoint=tmp_path / "missing.safetensors", plots=False, show=False)


def test_training_curves_plot(run_dir, tmp_path):
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert (run_dir / "training_curves.png").stat().st_size > 10_000
    path = plot_training_curves(history[:1], tmp_path / "one_epoch.png")  # a single point still plots
    assert path.is_file()
