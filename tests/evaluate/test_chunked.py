"""Evaluation read from disk in chunks (e2i.evaluate.chunked) gives the in-memory numbers, holds only the
projected embeddings, and is picked by data.streaming like training's stream.

Stores are written by the project's writer with small shards, so a split has many row groups; runs are
real run directories (config.yaml + best_model.safetensors) of a seeded, untrained head: the paths are
compared on the same weights, which is what equality needs (training is not under test here).
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from e2i.cli import main
from e2i.config import TrainConfig, save_train_config
from e2i.errors import ConfigError
from e2i.evaluate.chunked import DiskSplit, plan_evaluation, project_split
from e2i.evaluate.evaluation import embed_for_evaluation, evaluate_run
from e2i.evaluate.metrics import retrieval_metrics
from e2i.model.heads import build_model
from e2i.store import SplitData, load_split, write_split
from e2i.store.rowgroups import row_groups, split_size
from e2i.store.synthetic import make_synthetic_store
from e2i.stream_config import StreamingConfig
from e2i.train.checkpoint import load_weights, save_weights
from e2i.train.loop import SplitTensors, embed_split

ITEM_DIM, CAPTION_DIM, OUTPUT_DIM = 48, 40, 8


def _run(root: Path, store: Path, name: str = "chunks") -> Path:
    """A run directory of a seeded mlp head on ``store`` (config.yaml + best_model.safetensors)."""
    cfg = TrainConfig(name=name, output_dir=str(root / "results")).replace({
        "data.store": str(store), "model.type": "mlp", "model.output_dim": OUTPUT_DIM,
        "model.hidden_dim": 32, "model.num_layers": 1, "logging.tensorboard": False})
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True)
    save_train_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(0)
    save_weights(build_model(cfg.model, ITEM_DIM, CAPTION_DIM).state_dict(), run_dir / "best_model.safetensors")
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A synthetic store whose test split (60 items, 300 captions) is rewritten in shards of 23 rows, with
    a class label per item: 3 item and 14 caption row groups, read one at a time on the chunked path."""
    root = tmp_path_factory.mktemp("chunked")
    store = make_synthetic_store(root / "store", n_items=260, item_dim=ITEM_DIM, caption_dim=CAPTION_DIM,
                                 splits={"train": 150, "val": 50, "test": 60}, seed=5)
    test = load_split(store / "test")
    test.item_meta["label"] = np.array([f"class{k % 4}" for k in range(test.num_items)], object)  # multi-relevance
    write_split(test, store / "test", "synthetic", "test", rows_per_shard=23)
    return _run(root, store)


def _test_path(run_dir: Path) -> str:
    return str(run_dir.parent.parent / "store" / "test")


def test_chunked_evaluation_equals_in_memory(run_dir, capsys):
    path = _test_path(run_dir)
    assert len(row_groups(path, "captions")) == 14 and len(row_groups(path, "items")) == 3
    out = {}
    for mode in ("never", "always"):
        out[mode] = evaluate_run(run_dir, split="test", streaming=mode, output_dir=run_dir / mode, plots=False,
                                 show=False, baseline=False, relevance_from="label", dump_topk=3)
    mem, chunks = out["never"], out["always"]
    assert mem["evaluation_data"]["path"] == "memory" and chunks["evaluation_data"]["path"] == "chunks"
    assert (chunks["num_items"], chunks["num_captions"]) == (mem["num_items"], mem["num_captions"]) == (60, 300)
    assert chunks["metrics"] == mem["metrics"]  # Recall@K both ways, mAP@10/16 with labels, CIs: identical
    assert chunks["zero_shot"] == mem["zero_shot"]
    topk = [(run_dir / m / "test_topk.parquet").read_bytes() for m in ("never", "always")]
    assert topk[0] == topk[1]
    lines = capsys.readouterr().out
    assert "[chunks] test split evaluated in chunks from disk (data.streaming.mode: always" in lines
    assert "[chunks] test split evaluated in memory (data.streaming.mode: never)" in lines

    # the projections themselves, and the per-query ranks of both directions
    state, ckpt = load_weights(run_dir / "best_model.safetensors"), run_dir / "best_model.safetensors"
    cfg = TrainConfig(name="x").replace({"data.store": str(Path(path).parent), "model.type": "mlp",
                                         "model.output_dim": OUTPUT_DIM, "model.hidden_dim": 32, "model.num_layers": 1})
    per_query = {}
    for mode in ("never", "always"):
        plan, data, item_z, cap_z = embed_for_evaluation(cfg, "test", state, ckpt, streaming=mode)
        per_query[mode] = (item_z, cap_z, retrieval_metrics(item_z, cap_z, data.caption_item, ci=False,
                                                            per_query=True)[1])
    assert plan.chunked and data.caption_emb.shape == (300, 0)  # no raw caption embeddings held
    (mi, mc, mq), (ci, cc, cq) = per_query["never"], per_query["always"]
    assert torch.equal(mi, ci) and torch.equal(mc, cc)  # bit for bit: the same blocks are projected
    for key in ("text_to_item/mean_rank", "item_to_text/mean_rank", "text_to_item/query", "item_to_text/query"):
        np.testing.assert_array_equal(mq[key], cq[key])


def test_small_blocks_cross_row_groups_and_keep_the_ranks(run_dir):
    """Blocks of 17 rows straddle the 23-row groups: every row lands where load_split puts it."""
    path = _test_path(run_dir)
    mem = load_split(path, with_text=False)
    torch.manual_seed(0)
    model = build_model(TrainConfig(name="x").replace({"model.type": "mlp", "model.output_dim": OUTPUT_DIM,
                                                        "model.hidden_dim": 32, "model.num_layers": 1}).model,
                        ITEM_DIM, CAPTION_DIM)
    ref_i, ref_c = embed_split(model, SplitTensors(mem, torch.device("cpu")))
    data, item_z, cap_z = project_split(model, path, split_size(path), with_text=False, rows=17)
    np.testing.assert_array_equal(data.caption_item, mem.caption_item)
    torch.testing.assert_close(item_z, ref_i, rtol=0, atol=1e-6)
    torch.testing.assert_close(cap_z, ref_c, rtol=0, atol=1e-6)
    _, pq_mem = retrieval_metrics(ref_i, ref_c, mem.caption_item, ci=False, per_query=True)
    _, pq_chunks = retrieval_metrics(item_z, cap_z, data.caption_item, ci=False, per_query=True)
    np.testing.assert_array_equal(pq_mem["text_to_item/mean_rank"], pq_chunks["text_to_item/mean_rank"])


def test_validate_on_a_split_read_in_chunks_equals_in_memory(run_dir):
    """The val split of a streamed training run over the budget: validate() on a DiskSplit (read and
    projected every call) gives the in-memory metrics, per-query values and val loss."""
    from e2i.model.losses import build_loss
    from e2i.train.loop import validate

    path = _test_path(run_dir)
    torch.manual_seed(0)
    cfg = TrainConfig(name="x").replace({"model.type": "mlp", "model.output_dim": OUTPUT_DIM,
                                         "model.hidden_dim": 32, "model.num_layers": 1})
    model, loss = build_model(cfg.model, ITEM_DIM, CAPTION_DIM), build_loss(cfg.loss, dim=OUTPUT_DIM)
    mem = validate(model, loss, SplitTensors(load_split(path, with_text=False), torch.device("cpu")), 64, True, True)
    disk = validate(model, loss, DiskSplit(path, split_size(path)), 64, True, True)
    assert disk[0] == mem[0] and disk[0]["val/loss"] > 0
    for key in mem[1]:
        np.testing.assert_array_equal(disk[1][key], mem[1][key])


def test_auto_picks_chunks_over_the_budget_and_refuses_what_does_not_fit_projected(run_dir):
    path = _test_path(run_dir)
    raw_gb = (60 * ITEM_DIM + 300 * CAPTION_DIM) * 4 / 1e9  # 0.0000595 GB
    projected_gb = 360 * OUTPUT_DIM * 4 / 1e9  # 0.0000115 GB
    fits = plan_evaluation(path, "test", StreamingConfig(), OUTPUT_DIM)  # default budget: 8 GB
    assert fits.path == "memory" and "fits" in fits.reason
    assert fits.estimate_gb == pytest.approx(raw_gb) and fits.projected_gb == pytest.approx(projected_gb)
    tight = plan_evaluation(path, "test", StreamingConfig(memory_budget_gb=3e-5), OUTPUT_DIM)
    assert tight.path == "chunks" and "exceeds" in tight.reason and "chunks from disk" in tight.line()
    assert tight.record()["path"] == "chunks" and "size" not in tight.record()
    never = plan_evaluation(path, "test", StreamingConfig(mode="never", memory_budget_gb=1e-9), OUTPUT_DIM)
    assert never.path == "memory"
    with pytest.raises(ConfigError, match=r"the test split does not fit .*\(60 items \+ 300 captions x 8 dims"):
        plan_evaluation(path, "test", StreamingConfig(memory_budget_gb=1e-5), OUTPUT_DIM)


def test_e2i_evaluate_cli_on_the_chunked_path(run_dir, capsys):
    out = run_dir / "cli"
    rc = main(["evaluate", str(run_dir), "--memory-budget-gb", "3e-5", "--no-plots", "--no-html",
               "--output-dir", str(out)])
    assert rc == 0
    result = json.loads((out / "test_metrics.json").read_text())
    assert result["evaluation_data"]["path"] == "chunks" and result["evaluation_data"]["budget_gb"] == 3e-5
    assert "baseline" not in result and "in memory" in result["baseline_skipped"]  # skipped, with the reason
    printed = capsys.readouterr().out
    assert "test split evaluated in chunks from disk (estimate" in printed
    assert "closed-form baseline skipped" in printed
    mem = evaluate_run(run_dir, output_dir=run_dir / "cli-mem", plots=False, html=False, show=False, baseline=False)
    assert result["metrics"] == mem["metrics"]
    with pytest.raises(ConfigError, match="memory_budget_gb: must be > 0"):
        evaluate_run(run_dir, memory_budget_gb=-1.0, plots=False, html=False, show=False)


def test_chunked_peak_memory_stays_below_the_raw_split(tmp_path):
    """36,000 rows of 256-d (37 MB raw): numpy's allocations on the chunked path peak at a fraction of
    that (one 4,096-row block, one 2,000-row group, ids), while load_split allocates the whole of it."""
    rng = np.random.default_rng(0)
    n, m, dim = 6000, 30000, 256
    items = np.array([f"i{k}" for k in range(n)], object)
    split = SplitData(path="", item_ids=items, item_emb=rng.standard_normal((n, dim), np.float32),
                      caption_ids=np.array([f"c{k}" for k in range(m)], object),
                      caption_item=np.arange(m) % n, caption_emb=rng.standard_normal((m, dim), np.float32))
    write_split(split, tmp_path / "big", "big", "test", rows_per_shard=2000)  # 18 shards, one row group each
    del split
    path = str(tmp_path / "big")
    raw = (n + m) * dim * 4
    torch.manual_seed(0)
    model = build_model(TrainConfig(name="x").replace({"model.type": "mlp", "model.output_dim": 16,
                                                        "model.hidden_dim": 16, "model.num_layers": 1}).model, dim, dim)
    peaks = {}
    for name in ("memory", "chunks"):
        tracemalloc.start()
        if name == "memory":
            data = load_split(path, with_text=False)
            z = embed_split(model, SplitTensors(data, torch.device("cpu")))
        else:
            data, *z = project_split(model, path, split_size(path), with_text=False)
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert z[1].shape == (m, 16)
        del data, z
    assert peaks["memory"] >= raw  # the measure sees the raw split when it is loaded
    block, group, ids = 4096 * dim * 4, 2000 * dim * 4, 100 * (n + m)  # ids: ~100 B per row (str + index)
    assert peaks["chunks"] < block + group + ids < raw / 3, peaks  # ~4.2 + 2 + 3.6 MB, not 37 MB
