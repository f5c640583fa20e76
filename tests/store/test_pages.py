"""The embedding fast path (e2i.store.pages): plain float pages copied straight into numpy, else pyarrow."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from e2i.errors import StoreError
from e2i.store import StoreWriter, embedding_array, load_split, make_captions_table, make_items_table
from e2i.store.pages import read_plain_rows


def _shard(path, emb, **kwargs):
    ids = [f"id{i:04d}" for i in range(len(emb))]
    pq.write_table(pa.table({"item_id": ids, "path": ids, "embedding": embedding_array(emb)}), path, **kwargs)
    return pq.ParquetFile(path).metadata


@pytest.mark.parametrize("page_version", ["1.0", "2.0"])
def test_plain_pages_copied_exactly_across_row_groups_and_pages(tmp_path, page_version):
    emb = np.random.default_rng(0).standard_normal((3000, 24)).astype(np.float32)
    meta = _shard(tmp_path / "a.parquet", emb, compression="none", use_dictionary=False, row_group_size=700,
                  data_page_size=4096, data_page_version=page_version)
    assert meta.num_row_groups == 5
    out = np.full_like(emb, np.nan)
    assert read_plain_rows(meta, "embedding", out, local_path=str(tmp_path / "a.parquet")) == []
    np.testing.assert_array_equal(out, emb)
    out[:] = np.nan  # the ranged-read path (S3 and other filesystems)
    opener = lambda: pa.OSFile(str(tmp_path / "a.parquet"))
    assert read_plain_rows(meta, "embedding", out, opener=opener) == []
    np.testing.assert_array_equal(out, emb)


def test_compressed_dictionary_or_null_shards_fall_back_to_pyarrow(tmp_path):
    emb = np.arange(40, dtype=np.float32).reshape(10, 4)
    out = np.empty_like(emb)
    for name, kwargs in (("zstd", {"compression": "zstd"}), ("dict", {"compression": "none"})):
        meta = _shard(tmp_path / f"{name}.parquet", emb, **kwargs)
        assert read_plain_rows(meta, "embedding", out, local_path=str(tmp_path / f"{name}.parquet")) is None
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), 4, mask=pa.array([False] * 9 + [True]))
    pq.write_table(pa.table({"embedding": col}), tmp_path / "n.parquet", compression="none", use_dictionary=False)
    meta = pq.ParquetFile(tmp_path / "n.parquet").metadata
    assert read_plain_rows(meta, "embedding", out, local_path=str(tmp_path / "n.parquet")) is None


def _split(tmp_path, item_emb):
    w = StoreWriter(tmp_path / "s", dataset="d", split="s")
    ids = [f"clip{i}" for i in range(len(item_emb))]
    w.write_shard("items", make_items_table(ids, ids, item_emb), "part-00000")
    caps = np.ones((2 * len(ids), 3), np.float32)
    w.write_shard("captions", make_captions_table([f"c{i}" for i in range(len(caps))], ids * 2,
                                                  ["t"] * len(caps), caps), "part-00000")
    w.finalize()
    return tmp_path / "s"


def test_load_split_fast_path_round_trip_and_names_a_nan_row(tmp_path):
    emb = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32)
    split = _split(tmp_path, emb)
    data = load_split(split, with_text=False)
    np.testing.assert_array_equal(data.item_emb, emb)
    np.testing.assert_array_equal(data.caption_item, np.tile(np.arange(50), 2))
    shard = split / "items" / "part-00000.parquet"
    out = np.empty_like(emb)  # what StoreWriter writes takes the fast path
    assert read_plain_rows(pq.ParquetFile(shard).metadata, "embedding", out, local_path=str(shard)) == []
    # Damage a value in place on disk (same layout, so the fast path reads it): the error names the row.
    raw = bytearray(shard.read_bytes())
    at = raw.find(emb[17, 3].tobytes())
    assert at > 0
    raw[at:at + 4] = np.float32(np.inf).tobytes()
    shard.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"part-00000.parquet: 'clip17': embedding has NaN/inf"):
        load_split(split, with_text=False)
