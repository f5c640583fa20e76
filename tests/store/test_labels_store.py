"""Class labels in the store: the items column ``label`` round-trips through write/load/subset, stores
without it keep loading, and `e2i cache` on an image folder of class sub-folders records it."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from e2i.errors import StoreError
from e2i.evaluate.labels import split_labels
from e2i.store import SplitData, load_split, subset_split, write_split
from e2i.store.schema import LABEL_COLUMN


def _split(labels) -> SplitData:
    rng = np.random.default_rng(0)
    n = len(labels)
    return SplitData(path="<mem>", item_ids=np.array([f"img{i}" for i in range(n)], dtype=object),
                     item_emb=rng.standard_normal((n, 6)).astype(np.float32),
                     caption_ids=np.array([f"img{i}#1" for i in range(n)], dtype=object),
                     caption_item=np.arange(n, dtype=np.int64),
                     caption_emb=rng.standard_normal((n, 6)).astype(np.float32),
                     caption_text=np.array([f"a photo of a {c}" for c in labels], dtype=object),
                     item_meta={LABEL_COLUMN: np.asarray(labels)} if labels is not None else {})


@pytest.mark.parametrize("labels", [["sparrow", "wren", "sparrow", "tern"], [3, 1, 3, 0]])
def test_label_column_round_trips(tmp_path, labels):
    write_split(_split(labels), tmp_path / "cub" / "test", "cub", "test")
    schema = pq.read_schema(next((tmp_path / "cub" / "test" / "items").glob("*.parquet")))
    assert LABEL_COLUMN in schema.names  # a plain parquet column other tools can read
    back = load_split(tmp_path / "cub" / "test")
    assert split_labels(back).tolist() == labels
    assert split_labels(subset_split(back, [2, 0])).tolist() == [labels[2], labels[0]]
    assert LABEL_COLUMN not in load_split(tmp_path / "cub" / "test", with_text=False).item_meta


def test_store_without_labels_loads_and_says_so(tmp_path):
    data = _split(["a", "b"])
    data.item_meta = {}
    write_split(data, tmp_path / "s", "toy", "s")
    back = load_split(tmp_path / "s")
    assert back.num_items == 2 and back.item_meta == {}
    with pytest.raises(StoreError, match=r"s: no 'label' column in the items \(not a class-labelled store"):
        split_labels(back)


def test_cache_of_an_image_folder_records_class_labels(tmp_path):
    """The path of `e2i cache` from corpus rows to store columns (ShardBuffer + MetaColumns, as
    CacheRun.phase uses them), without the Ray embedding step in between (embeddings are random)."""
    from e2i.cache.shards import MetaColumns, ShardBuffer
    from e2i.corpus import read_corpus
    from e2i.store import StoreWriter

    for label, colour in {"golden_retriever": (200, 150, 0), "tabby_cat": (90, 90, 90)}.items():
        for k in range(2):
            path = tmp_path / "pets" / "val" / label / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), colour).save(path)
    corpus = read_corpus("imagefolder", tmp_path / "pets", split="val", template="a photo of a {}")
    writer = StoreWriter(tmp_path / "stores" / "pets" / "val", dataset="pets", split="val")
    rng = np.random.default_rng(0)
    items = ShardBuffer(writer, "items", 3, MetaColumns(corpus.items))  # 2 shards: 3 + 1 rows
    items.add({"item_id": np.array([it.item_id for it in corpus.items], dtype=object),
               "path": np.array([it.path for it in corpus.items], dtype=object),
               "embedding": rng.standard_normal((4, 5)).astype(np.float32)})
    items.flush()
    rows = corpus.caption_rows()
    captions = ShardBuffer(writer, "captions", 10)
    captions.add({k: np.array([r[k] for r in rows], dtype=object) for k in ("caption_id", "item_id", "text")}
                 | {"embedding": rng.standard_normal((len(rows), 5)).astype(np.float32)})
    captions.flush()
    writer.finalize()
    data = load_split(tmp_path / "stores" / "pets" / "val")
    assert dict(zip(data.item_ids, split_labels(data))) == {
        f"{label}/{k}.png": label for label in ("golden_retriever", "tabby_cat") for k in range(2)}
    assert data.caption_text[data.caption_item == 3].tolist() == ["a photo of a tabby cat"]
