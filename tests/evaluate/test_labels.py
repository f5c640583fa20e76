"""Class-labelled stores: label relevance and `--relevance-from label` metrics against a brute-force
loop (explicit sort per query) on a small labelled store written to disk; zero-shot accuracy against
hand-worked values and a brute-force loop."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from e2i.evaluate.labels import class_embeddings, label_relevance, zero_shot_accuracy, zero_shot_metrics
from e2i.store import SplitData, load_split, write_split

CLASSES = ("albatross", "sparrow", "tern", "wren", "gull", "heron", "owl")


def _labelled_store(tmp_path, *, n_items=60, prompts=2, dim=8, seed=0, split_name="test"):
    """<tmp>/vit-b/cub/<split_name>: random item embeddings with a label column; each item has ``prompts``
    class-name prompt captions whose embeddings are a per-class direction + noise."""
    centre_rng = np.random.default_rng(seed)
    centre = {c: centre_rng.standard_normal(dim) for c in CLASSES}  # the same classes in every split
    rng = np.random.default_rng([seed, zlib.crc32(split_name.encode())])
    labels = np.array([CLASSES[i] for i in rng.integers(0, len(CLASSES), n_items)], dtype=object)
    labels[:len(CLASSES)] = CLASSES  # every class present
    item_emb = np.stack([centre[c] + 1.5 * rng.standard_normal(dim) for c in labels]).astype(np.float32)
    templates = ("a photo of a {}", "a close-up photo of a {}, a type of bird")[:prompts]
    cap_item = np.repeat(np.arange(n_items), prompts)
    cap_text = np.array([templates[k % prompts].format(labels[i]) for k, i in enumerate(cap_item)],
                        dtype=object)
    cap_emb = np.stack([centre[labels[i]] + 0.5 * rng.standard_normal(dim) for i in cap_item])
    cap_emb = cap_emb.astype(np.float32)
    ids = np.array([f"{labels[i]}/{i:04d}.jpg" for i in range(n_items)], dtype=object)
    split = SplitData(path="<mem>", item_ids=ids, item_emb=item_emb,
                      caption_ids=np.array([f"{ids[i]}#{k % prompts + 1}" for k, i in enumerate(cap_item)],
                                           dtype=object),
                      caption_item=cap_item.astype(np.int64), caption_emb=cap_emb, caption_text=cap_text,
                      item_meta={"label": labels})
    path = tmp_path / "vit-b" / "cub" / split_name
    write_split(split, path, "cub", split_name)
    return load_split(path)


def test_label_relevance_lists_every_item_of_the_captions_class():
    labels = np.array(["b", "a", "b", None, "c", "a"], dtype=object)
    cap_item = np.array([0, 3, 1, 4, 5, 0])
    rel = label_relevance(labels, cap_item)
    pairs = sorted(zip(rel.query.tolist(), rel.item.tolist()))
    assert pairs == [(0, 0), (0, 2), (1, 3), (2, 1), (2, 5), (3, 4), (4, 1), (4, 5), (5, 0), (5, 2)]
    assert rel.grade is None and rel.query.dtype == np.int64 and rel.item.dtype == np.int64
    assert list(zip(rel.query, rel.item)) == pairs  # ordered by (query, item)
    ints = label_relevance(np.array([7, 7, 2]), np.array([2, 0]))
    assert list(zip(ints.query.tolist(), ints.item.tolist())) == [(0, 2), (1, 0), (1, 1)]


def test_label_relevance_equals_a_loop_on_a_store(tmp_path):
    data = _labelled_store(tmp_path)
    labels = data.item_meta["label"]
    rel = label_relevance(labels, data.caption_item)
    expected = [(q, i) for q in range(data.num_captions) for i in range(data.num_items)
                if labels[i] == labels[data.caption_item[q]]]
    assert list(zip(rel.query.tolist(), rel.item.tolist())) == expected


def _brute_force_label_metrics(item_z, cap_z, cap_item, labels, ks, map_ks):
    """Per caption: stable sort of all items by cosine (desc), relevant = every item with the label of
    its own item; R@K = any relevant item in the top K; AP@K = sum of precision@rank over relevant
    ranks <= K, / n_rel (the DCASE 2025 baseline's average_precision_at_k, e2i.evaluate.metrics)."""
    recall = {k: [] for k in ks}
    ap = {k: [] for k in map_ks}
    for q in range(len(cap_z)):
        scores = [float(np.dot(item_z[i].astype(np.float64), cap_z[q])) for i in range(len(item_z))]
        order = sorted(range(len(item_z)), key=lambda i: (-scores[i], i))
        relevant = [labels[i] == labels[cap_item[q]] for i in order]
        for k in ks:
            recall[k].append(float(any(relevant[:k])))
        for k in map_ks:
            hits, total = 0, 0.0
            for rank, is_rel in enumerate(relevant[:k], start=1):
                if is_rel:
                    hits += 1
                    total += hits / rank
            ap[k].append(total / sum(relevant))
    return {f"recall@{k}": float(np.mean(v)) for k, v in recall.items()} | \
        {f"mAP@{k}": float(np.mean(v)) for k, v in ap.items()}


def _normalised(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_relevance_from_label_metrics_equal_brute_force(tmp_path):
    from e2i.evaluate.metrics import retrieval_metrics

    data = _labelled_store(tmp_path)
    item_z, cap_z = _normalised(data.item_emb), _normalised(data.caption_emb)
    labels = data.item_meta["label"]
    rel = label_relevance(labels, data.caption_item)
    got = retrieval_metrics(item_z, cap_z, data.caption_item, ci=False, relevance=rel)
    want = _brute_force_label_metrics(item_z, cap_z, data.caption_item, labels, (1, 5, 10), (16, 10))
    for name, value in want.items():
        assert got[f"text_to_item/{name}"] == pytest.approx(value), name
    assert got["text_to_item/num_queries"] == data.num_captions
    own = retrieval_metrics(item_z, cap_z, data.caption_item, ci=False)  # own item only: fewer hits
    assert own["text_to_item/recall@1"] < got["text_to_item/recall@1"]


def test_zero_shot_accuracy_by_hand():
    # 3 classes on the unit circle at 0, 90, 180 degrees; items at 10, 80, 100 and 260 degrees
    deg = np.deg2rad
    class_z = np.array([[1, 0], [0, 1], [-1, 0]], np.float32)
    item_z = np.array([[np.cos(deg(a)), np.sin(deg(a))] for a in (10, 80, 100, 260)], np.float32)
    labels = np.array(["east", "north", "west", "west"], dtype=object)
    acc = zero_shot_accuracy(item_z * 3.0, class_z, labels, ["east", "north", "west"])  # scale-free
    # 10 -> east (right), 80 -> north (right), 100 -> north (label west: wrong), 260 -> west (right)
    assert acc == {"top1": 0.75, "top5": 1.0}  # K = 3 < 5: top-5 holds every class
    acc2 = zero_shot_accuracy(item_z, class_z, labels, ["east", "north", "west"])
    assert acc2["top1"] == 0.75
    with pytest.raises(ValueError, match="item label 'south' has no class embedding"):
        zero_shot_accuracy(item_z, class_z, np.array(["east", "south", "west", "west"], object),
                           ["east", "north", "west"])


def test_class_embeddings_average_the_prompts():
    cap = np.array([[2, 0], [0, 5], [0, 1], [1, 1]], np.float32)  # captions of items 0, 0, 1, 2
    names, class_z = class_embeddings(cap, np.array([0, 0, 1, 2]), np.array(["b", "a", "b"], object))
    assert names.tolist() == ["a", "b"]  # sorted labels
    # a: item 1's one prompt; b: mean of normalised [1,0], [0,1], [1,1]/sqrt2, renormalised
    b = np.array([1, 0]) + np.array([0, 1]) + np.array([1, 1]) / np.sqrt(2)
    np.testing.assert_allclose(class_z, [[0, 1], b / np.linalg.norm(b)], atol=1e-6)


def test_zero_shot_on_a_store_equals_a_brute_force_loop(tmp_path):
    data = _labelled_store(tmp_path, n_items=80, seed=1)
    labels = data.item_meta["label"]
    got = zero_shot_metrics(data.item_emb, data.caption_emb, data.caption_item, labels)
    # brute force: class means by an explicit loop over captions, then a sorted list per item
    means = {}
    for c in sorted(set(labels)):
        rows = [j for j in range(data.num_captions) if labels[data.caption_item[j]] == c]
        m = np.mean([data.caption_emb[j] / np.linalg.norm(data.caption_emb[j]) for j in rows], axis=0)
        means[c] = m / np.linalg.norm(m)
    top1 = top5 = 0
    for i in range(data.num_items):
        z = data.item_emb[i] / np.linalg.norm(data.item_emb[i])
        ranking = sorted(means, key=lambda c: -float(z @ means[c]))
        top1 += ranking[0] == labels[i]
        top5 += labels[i] in ranking[:5]
    assert got["zero_shot/top1"] == pytest.approx(top1 / data.num_items)
    assert got["zero_shot/top5"] == pytest.approx(top5 / data.num_items)
    assert got["zero_shot/num_classes"] == len(CLASSES) and got["zero_shot/num_items"] == data.num_items
    assert 0.3 < got["zero_shot/top1"] < got["zero_shot/top5"] <= 1.0  # signal, not chance (1/7)


def test_evaluate_relevance_from_label_reports_label_metrics_and_zero_shot(tmp_path, capsys):
    """`e2i evaluate --relevance-from label` on a run trained on a labelled store: the text->item metrics
    are the brute-force label metrics of the head's embeddings, and zero_shot/* is in the JSON."""
    import torch

    from e2i.cli import main
    from e2i.config import TrainConfig
    from e2i.evaluate.evaluation import load_weights
    from e2i.model.heads import build_model
    from e2i.train.driver import train_local

    for name, n in (("train", 140), ("val", 40), ("test", 50)):
        data = _labelled_store(tmp_path, n_items=n, seed=2, split_name=name)
    cfg = TrainConfig(name="cub", output_dir=str(tmp_path / "results")).replace({
        "data.store": str(tmp_path / "vit-b" / "cub"), "model.type": "mlp", "model.output_dim": 16,
        "model.hidden_dim": 32, "model.num_layers": 1, "optim.epochs": 2, "optim.batch_size": 70,
        "logging.tensorboard": False})
    train_local(cfg, evaluate=False)
    argv = ["evaluate", cfg.run_dir, "--relevance-from", "label", "--no-plots", "--no-html", "--no-baseline"]
    assert main(argv) == 0
    out = tmp_path / "results" / "cub" / "evaluation_results" / "test_metrics.json"
    result = json.loads(out.read_text())
    model = build_model(cfg.model, data.item_dim, data.caption_dim)
    model.load_state_dict(load_weights(tmp_path / "results" / "cub" / "best_model.safetensors"))
    model.eval()
    with torch.no_grad():
        item_z = model.encode_items(torch.from_numpy(data.item_emb)).numpy()
        cap_z = model.encode_captions(torch.from_numpy(data.caption_emb)).numpy()
    labels = data.item_meta["label"]
    want = _brute_force_label_metrics(item_z, cap_z, data.caption_item, labels, (1, 5, 10), (16, 10))
    for name, value in want.items():
        assert result["metrics"][f"text_to_item/{name}"] == pytest.approx(value, abs=1e-6), name
    assert result["zero_shot"] == pytest.approx(zero_shot_metrics(item_z, cap_z, data.caption_item, labels))
    assert result["zero_shot"]["zero_shot/num_classes"] == len(CLASSES)
