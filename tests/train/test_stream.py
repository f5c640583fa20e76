"""Training from a streamed train split (e2i.train.stream): the same pairs and labels as in memory.

A pass of the stream gives every (caption_id, item_id) pair of the split exactly once, with the
caption's own embedding and its item's row as the positive id (captions of one item in a batch are
positives of each other); a `fit` forced to stream trains to a val metric close to the in-memory one
on the same store; `auto` keeps a split that fits its budget in memory.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from e2i.config import train_config_from_dict
from e2i.errors import ConfigError, StoreError
from e2i.model.losses import positive_mask
from e2i.store import load_split, write_split
from e2i.store.synthetic import make_synthetic_store
from e2i.store.rowgroups import split_size
from e2i.train.stream import CaptionStream, PassReads, caption_dataset, plan_data

COLUMNS = ["caption_id", "item_id", "embedding"]


@pytest.fixture(scope="module")
def sharded_store(tmp_path_factory):
    """A synthetic store whose train split has 7 caption shards (several Ray Data blocks per pass)."""
    root = make_synthetic_store(tmp_path_factory.mktemp("stream") / "syn", n_items=200, item_dim=24,
                                caption_dim=16, seed=3)
    train = load_split(root / "train")
    write_split(train, root / "train", "synthetic", "train", rows_per_shard=110)  # 700 captions
    return root


def _cfg(store, out, **overrides):
    data = {
        "name": "stream", "seed": 0, "output_dir": str(out), "metric": "val/recall@1",
        "data": {"store": str(store)},
        "model": {"type": "clip", "hidden_dim": 32, "output_dim": 16, "dropout": 0.0},
        "loss": {"type": "softmax_infonce"},
        "optim": {"lr": 3e-3, "epochs": 4, "batch_size": 70, "min_steps_per_epoch": 30,
                  "early_stopping_patience": 0, "warmup_epochs": 0.5},
        "scaling": {"trainer": "local"},
        "logging": {"tensorboard": False},
    }
    cfg = train_config_from_dict(data, "<test>")
    return cfg.replace(overrides) if overrides else cfg


def _pass_pairs(stream: CaptionStream, p: int, local: int) -> list[tuple[str, str]]:
    pairs = []
    for batch in stream.pass_batches(p, local):
        assert len(batch["row"]) == local
        pairs += zip(batch["caption_id"].tolist(), batch["item_id"].tolist())
    return pairs


@pytest.mark.parametrize("source", [caption_dataset, PassReads])  # Ray Data reading ahead; bursts (CPU loop)
def test_each_pass_streams_every_caption_once_with_its_item(ray_local, sharded_store, tmp_path, source):
    cfg = _cfg(sharded_store, tmp_path)
    mem = load_split(sharded_store / "train", with_text=False)
    expected = Counter(zip(mem.caption_ids, mem.item_ids[mem.caption_item]))
    assert len(expected) == mem.num_captions == 700
    ds = source(str(sharded_store / "train"), seed=0, columns=COLUMNS)
    stream = CaptionStream(ds, cfg, world=1, device=torch.device("cpu"))
    assert stream.num_captions == 700 and list(stream.items.item_ids) == list(mem.item_ids)
    first, second = _pass_pairs(stream, 0, 35), _pass_pairs(stream, 1, 35)  # 20 full batches a pass
    assert Counter(first) == expected and Counter(second) == expected  # each caption once per pass
    assert first != second  # reshuffled every pass
    order = [c for c, _ in first]
    assert order != sorted(order)  # not the store's order

    # each batch: the caption's own embedding, its item's row as the positive id
    cap_row = {c: j for j, c in enumerate(mem.caption_ids)}
    for batch in stream.pass_batches(2, 70):
        rows, emb = stream.tensors(batch)
        caps = [cap_row[c] for c in batch["caption_id"].tolist()]
        np.testing.assert_array_equal(rows.numpy(), mem.caption_item[caps])
        np.testing.assert_array_equal(emb.numpy(), mem.caption_emb[caps])


def test_burst_reads_cover_the_pass_in_pool_sized_chunks_and_repeat_exactly(ray_local, sharded_store, tmp_path):
    # PassReads (the CPU loop in this process): a pass's row groups in chunks of >= shuffle_rows rows,
    # each read whole before the loop trains on it, in chunk order, so the same pass gives the same batches
    reads = PassReads(str(sharded_store / "train"), seed=0, columns=COLUMNS)
    chunks = reads.chunks(0, 200)
    rows = [sum(g["rows"] for g in c) for c in chunks]
    assert len(chunks) > 2 and all(n >= 200 for n in rows[:-1]) and sum(rows) == 700
    assert sorted((g["uri"], g["group"]) for c in chunks for g in c) == sorted(
        (g["uri"], g["group"]) for g in reads.groups)  # every row group once
    assert [g["uri"] for c in reads.chunks(1, 200) for g in c] != [g["uri"] for c in chunks for g in c]
    tables = reads.read(chunks[0])
    assert [len(t) for t in tables] == [g["rows"] for g in chunks[0]]  # whole chunk, in its order

    cfg = _cfg(sharded_store, tmp_path).replace({"data.streaming.shuffle_rows": 200})
    one, two = (CaptionStream(PassReads(str(sharded_store / "train"), seed=0, columns=COLUMNS), cfg, world=1,
                              device=torch.device("cpu")) for _ in range(2))
    assert _pass_pairs(one, 3, 35) == _pass_pairs(two, 3, 35)


def test_a_caption_of_an_unknown_item_is_a_one_line_store_error(ray_local, sharded_store, tmp_path):
    import pyarrow as pa

    stream = CaptionStream(PassReads(str(sharded_store / "train"), seed=0), _cfg(sharded_store, tmp_path),
                           world=1, device=torch.device("cpu"))
    table = pa.table({"item_id": ["syn_000001", "nope"], "embedding": pa.array(
        [[0.0] * 16] * 2, pa.list_(pa.float32(), 16))})
    with pytest.raises(StoreError, match="a caption points at missing item 'nope'"):
        stream.block_columns(table)


def test_captions_of_one_item_in_a_batch_are_positives(ray_local, sharded_store, tmp_path):
    cfg = _cfg(sharded_store, tmp_path)
    ds = caption_dataset(str(sharded_store / "train"), seed=1, columns=COLUMNS)
    stream = CaptionStream(ds, cfg, world=1, device=torch.device("cpu"))
    shared = 0
    for batch in stream.pass_batches(0, 70):
        rows, _ = stream.tensors(batch)
        names = np.asarray(batch["item_id"], dtype=object)
        same_item = torch.from_numpy(names[:, None] == names[None, :])
        assert torch.equal(positive_mask(rows), same_item)  # labels = item ids, not row positions
        shared += int(same_item.sum()) - len(names)
    assert shared > 0  # some batch held two captions of one item: both were positives


def test_micro_batches_run_on_into_the_next_pass(ray_local, sharded_store, tmp_path):
    cfg = _cfg(sharded_store, tmp_path)
    stream = CaptionStream(caption_dataset(str(sharded_store / "train"), seed=0), cfg, world=1,
                           device=torch.device("cpu"))
    n = 700 // 64  # global_batches(700, 64, 1): 10 batches of 64, the last 60 rows of a pass dropped
    batches = stream.micro_batches(n + 7, n, 64)  # a resume at batch 7 of pass 1
    got = [next(batches) for _ in range(n - 7)]
    assert stream.passes == 1 and all(len(r) == 64 for r, _ in got)
    next(batches)
    assert stream.passes == 2  # batch 0 of pass 2
    batches.close()


def test_auto_keeps_a_split_that_fits_in_memory_and_streams_one_that_does_not(sharded_store, tmp_path):
    size = split_size(str(sharded_store / "train"))
    assert (size.items, size.captions, size.item_dim, size.caption_dim) == (140, 700, 24, 16)
    plan = plan_data(_cfg(sharded_store, tmp_path))  # default budget: 8 GB
    assert plan.path == "memory" and "fits" in plan.reason
    assert plan.estimate_gb == pytest.approx((140 * 24 + 700 * 16) * 4 / 1e9)
    tiny = plan_data(_cfg(sharded_store, tmp_path, **{"data.streaming.memory_budget_gb": 1e-6}))
    assert tiny.path == "stream" and "exceeds" in tiny.reason and "items in memory" in tiny.line()
    never = plan_data(_cfg(sharded_store, tmp_path, **{"data.streaming.memory_budget_gb": 1e-6,
                                                       "data.streaming.mode": "never"}))
    assert never.path == "memory"
    with pytest.raises(ConfigError, match="data.train_subset is loaded in memory"):
        plan_data(_cfg(sharded_store, tmp_path, **{"data.streaming.mode": "always", "data.train_subset": 10}))
    with pytest.raises(ConfigError, match=r"data\.streaming\.mode: 'sometimes' is not one of auto, always"):
        _cfg(sharded_store, tmp_path, **{"data.streaming.mode": "sometimes"})
    with pytest.raises(ConfigError, match=r"data\.streaming\.memory_budget_gb: must be > 0"):
        _cfg(sharded_store, tmp_path, **{"data.streaming.memory_budget_gb": 0})


def test_fit_forced_to_stream_trains_like_in_memory(sharded_store, tmp_path, capsys):
    from e2i.train.driver import fit

    memory = fit(_cfg(sharded_store, tmp_path / "mem"), evaluate=False)
    # 12 kB: train (58 kB raw) streams; val (12.5 kB raw, 11.5 kB projected to 16-d) is read in chunks
    streamed = fit(_cfg(sharded_store, tmp_path / "str", **{"data.streaming.memory_budget_gb": 1.2e-5}),
                   evaluate=False)
    out = capsys.readouterr().out
    assert "train split in memory (estimate" in out and "train captions streamed from disk by this process, chunk by chunk" in out
    assert "[stream] val split evaluated in chunks from disk (estimate 1.25e-05 GB exceeds" in out
    assert memory["train_data"]["path"] == "memory" and streamed["train_data"]["path"] == "stream"
    saved = json.loads((tmp_path / "str" / "stream" / "metrics.json").read_text())
    assert saved["train_data"]["path"] == "stream" and saved["val_data"]["path"] == "chunks"
    assert "val_data" not in memory  # in memory with the train split, as always
    # the same optimizer steps and passes per epoch on both paths
    assert [h["step"] for h in streamed["history"]] == [h["step"] for h in memory["history"]] == [30, 60, 90, 120]
    assert streamed["history"][-1]["passes"] == memory["history"][-1]["passes"] == 12.0
    chance = 1 / 30  # 30 val items
    best_mem, best_str = memory["best_metric"], streamed["best_metric"]
    assert best_mem > 5 * chance
    assert best_str >= 0.85 * best_mem, (best_str, best_mem)


def test_worker_shards_of_a_pass_are_disjoint_and_cover_the_split(ray_local, sharded_store, tmp_path):
    """What each Ray Train worker gets (DataConfig: streaming_split(world, equal=True)), consumed
    together as the workers do: disjoint shards of equal size, together every caption of the pass."""
    from concurrent.futures import ThreadPoolExecutor

    cfg = _cfg(sharded_store, tmp_path)
    ds = caption_dataset(str(sharded_store / "train"), seed=0, columns=COLUMNS)
    shards = ds.streaming_split(2, equal=True)
    streams = [CaptionStream(s, cfg, world=2, device=torch.device("cpu")) for s in shards]
    for p in range(2):
        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(lambda s: _pass_pairs(s, p, 35), streams))
        assert len(got[0]) == len(got[1]) == 350  # 700 // 2 rows each, 10 batches of 35
        assert not set(got[0]) & set(got[1])
        mem = load_split(sharded_store / "train", with_text=False)
        assert set(got[0]) | set(got[1]) == set(zip(mem.caption_ids, mem.item_ids[mem.caption_item]))
