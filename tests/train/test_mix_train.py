"""Training on two stores mixed (issue 18 item 2): the toy store plus a second toy store made with another
seed as the "generated" part, at 1x and 3x, through `train_local` (the same run directory as `e2i train`).

Both stores are real toy corpora (`e2i toy`, seeds 0 and 1: the same item ids toy_0000...) embedded with
the light encoders of `e2i demo` (logmel-stats, ngram-hash), in-process (no Ray Data).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from e2i.config import load_train_config
from e2i.corpus import read_corpus
from e2i.corpus.toy import make_toy_corpus
from e2i.encoders import get_encoder
from e2i.store import SplitData, split_store, write_split
from e2i.train.driver import train_local
from e2i.train.loop import load_data

ENCODERS = {"audio": "logmel-stats", "text": "ngram-hash"}


def embed_toy_corpus(root: Path, seed: int, n_items: int) -> SplitData:
    """A toy corpus (Clotho layout) of ``seed`` embedded as one split; manifest names the encoders."""
    corpus = read_corpus("clotho", make_toy_corpus(root, n_items=n_items, seed=seed), split="development")
    audio, text = get_encoder(ENCODERS["audio"]), get_encoder(ENCODERS["text"])
    audio.load("cpu")
    text.load("cpu")
    item_ids = np.array([i.item_id for i in corpus.items], dtype=object)
    caps = [(cid, row, t) for row, i in enumerate(corpus.items) for cid, t in zip(i.caption_ids, i.captions)]
    caption_ids = np.array([c[0] for c in caps], dtype=object)
    paths = np.array([i.path for i in corpus.items], dtype=object)
    return SplitData(
        path=str(root), item_ids=item_ids, item_emb=audio.encode({"item_id": item_ids, "path": paths}),
        caption_ids=caption_ids, caption_item=np.array([c[1] for c in caps], dtype=np.int64),
        caption_emb=text.encode({"caption_id": caption_ids, "text": np.array([c[2] for c in caps], object)}),
        manifest={"encoders": {"audio": audio.manifest_entry(), "text": text.manifest_entry()}},
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """stores/toy/{train,val,test} (seed 0, 120 clips) and stores/toy_gen/development (seed 1, 80 clips)."""
    root = tmp_path_factory.mktemp("mixrun")
    toy = embed_toy_corpus(root / "data" / "toy", seed=0, n_items=120)
    write_split(toy, root / "stores" / "toy" / "development", "toy", "development")
    split_store(root / "stores" / "toy" / "development", root / "stores" / "toy",
                {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    gen = embed_toy_corpus(root / "data" / "toy_gen", seed=1, n_items=80)
    write_split(gen, root / "stores" / "toy_gen" / "development", "toy_gen", "development")
    return root


def mix_config(workdir: Path, repeat: int) -> Path:
    path = workdir / f"mix{repeat}x.yaml"
    path.write_text(yaml.safe_dump({
        "output_dir": "results",
        "data": {"store": "stores/toy", "train": [{"store": "stores/toy", "split": "train", "repeat": 1},
                                                  {"store": "stores/toy_gen", "split": "development",
                                                   "repeat": repeat}]},
        "model": {"type": "siglip", "output_dim": 64, "init_temperature": 0.1},
        "optim": {"epochs": 3, "batch_size": 128, "lr": 3e-3, "early_stopping_patience": 0},
        "logging": {"tensorboard": False},
    }))
    return path


def test_the_mixed_train_split_keeps_the_stores_apart(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    train, val = load_data(load_train_config(mix_config(workdir, 3)))
    toy = np.array([i.startswith("0:") for i in train.item_ids])
    assert toy.sum() == 84 and (~toy).sum() == 80  # 70 % of 120 clips, then all 80 generated ones
    def corpus_ids(mask):
        return {i.split(":", 1)[1] for i in train.item_ids[mask]}

    shared = corpus_ids(toy) & corpus_ids(~toy)
    assert len(shared) >= 40  # toy_NNNN.wav in both corpora: the same id, two items of the mix
    from_gen = np.array([c.startswith("1:") for c in train.caption_ids])
    assert from_gen.sum() == 3 * 400 and (~from_gen).sum() == 5 * 84
    assert (~toy[train.caption_item[from_gen]]).all() and toy[train.caption_item[~from_gen]].all()
    assert val.num_items == 18 and val.item_dim == train.item_dim


@pytest.mark.parametrize("repeat", [1, 3])
def test_a_mixed_run_trains_and_metrics_json_says_which_stores_and_how_much(workdir, monkeypatch, repeat):
    monkeypatch.chdir(workdir)
    cfg = load_train_config(mix_config(workdir, repeat))
    summary = train_local(cfg, evaluate=False)
    run_dir = workdir / "results" / f"mix{repeat}x"
    written = json.loads((run_dir / "metrics.json").read_text())
    mix = written["train_mix"]
    assert mix == summary["train_mix"]
    rows = [(p["store_as_written"], p["split"], p["repeat"], p["items"], p["captions"], p["draws"])
            for p in mix["parts"]]
    assert rows == [("stores/toy", "train", 1.0, 84, 420, 420),
                    ("stores/toy_gen", "development", float(repeat), 80, 400, 400 * repeat)]
    assert mix["draws_per_epoch"] == 420 + 400 * repeat and mix["items"] == 164
    assert mix["parts"][1]["share"] == pytest.approx(400 * repeat / (420 + 400 * repeat))
    assert mix["parts"][1]["path"] == str(workdir / "stores" / "toy_gen" / "development")
    assert mix["parts"][1]["dataset"] == "toy_gen" and mix["parts"][0]["dataset"] == "toy"
    # it trains: the loss falls and validation retrieval beats chance (18 val clips: R@1 = 1/18 by chance)
    history = written["history"]
    assert len(history) == 3 and history[-1]["train/loss"] < history[0]["train/loss"]
    assert written["best"]["val/recall@1"] > 3 / 18
    # the run's config lists the parts, resolved, with the paths as written: rerunnable from elsewhere
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert [p["repeat"] for p in saved["data"]["train"]] == [1.0, float(repeat)]
    assert saved["paths_as_written"]["data.train[1].store"] == "stores/toy_gen"
    monkeypatch.chdir(workdir / "data")
    again = load_train_config(run_dir / "config.yaml")
    assert again.data == cfg.data
