"""RowGroupReader (what the streamed training reads): the embedding column through the fast page copy,
the same table as pyarrow's decoding, a bad value named by its caption id."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from e2i.errors import StoreError
from e2i.store.rowgroups import RowGroupReader

D = 12


def _write(path, emb: np.ndarray, list_type: pa.DataType, **options) -> str:
    n = len(emb)
    table = pa.table({
        "caption_id": [f"c{i:03d}" for i in range(n)],
        "item_id": [f"i{i // 5:03d}" for i in range(n)],
        "embedding": pa.array(list(emb), list_type),
    })
    pq.write_table(table, path, row_group_size=40, **options)
    return str(path)


@pytest.mark.parametrize("options", [
    {"compression": "none", "use_dictionary": False},  # what e2i writes: the fast page copy
    {"compression": "snappy"},  # compressed: pyarrow decodes
], ids=["plain", "snappy"])
@pytest.mark.parametrize("list_type", [pa.list_(pa.float32(), D), pa.list_(pa.float32())], ids=["fixed", "variable"])
def test_a_row_group_reads_as_pyarrow_decodes_it(tmp_path, options, list_type):
    emb = np.random.default_rng(0).normal(size=(100, D)).astype(np.float32)
    uri = _write(tmp_path / "c.parquet", emb, list_type, **options)
    reader = RowGroupReader(["item_id", "embedding", "caption_id"])
    for group, (lo, hi) in enumerate([(0, 40), (40, 80), (80, 100)]):
        table = reader.read(uri, group)
        assert table.column_names == ["item_id", "embedding", "caption_id"]  # the order asked for
        assert table.column("caption_id").to_pylist() == [f"c{i:03d}" for i in range(lo, hi)]
        got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
        np.testing.assert_array_equal(got, emb[lo:hi])  # bit-identical values, in row order
    both = reader(pa.table({"uri": [uri, uri], "group": [2, 0]}))  # a batch of listed row groups
    assert both.column("caption_id").to_pylist() == [f"c{i:03d}" for i in [*range(80, 100), *range(0, 40)]]


def test_a_nan_in_a_row_group_is_a_store_error_naming_its_caption(tmp_path):
    emb = np.ones((100, D), np.float32)
    emb[57, 3] = np.nan  # row 17 of row group 1
    uri = _write(tmp_path / "c.parquet", emb, pa.list_(pa.float32(), D), compression="none", use_dictionary=False)
    reader = RowGroupReader(["item_id", "embedding"])
    assert len(reader.read(uri, 0)) == 40  # the clean row group reads
    with pytest.raises(StoreError, match="c057"):
        reader.read(uri, 1)


def test_a_missing_file_is_a_one_line_store_error(tmp_path):
    with pytest.raises(StoreError, match=r"gone\.parquet: cannot read row group 0"):
        RowGroupReader(["item_id", "embedding"]).read(str(tmp_path / "gone.parquet"), 0)
