"""The parquet store: what the cache writes and training, evaluation and tuning read.

Modules, in the order of the data (each imports only the ones above it; pure pyarrow/numpy, no ray):

- ``fs``: local paths and ``s3://`` (:func:`open_fs`), atomic writes, listing, sha256;
- ``schema``: the layout of a split, its columns, Arrow tables and embedding arrays;
- ``reader``: :class:`SplitData` and the zero-copy :func:`load_split`, subsets, finding splits;
- ``rowgroups``: a split's size from its manifest and its caption row groups read one at a time
  (what training streams with Ray Data when a split exceeds its memory budget);
- ``writer``: :class:`StoreWriter` (resumable, manifest last), :func:`write_split`, :func:`remove_split`;
- ``verify``: :func:`verify_store` (sha256 + content) and :func:`split_summary`;
- ``legacy_formats`` / ``legacy``: import of older embedding caches (torch only when a ``.pt`` is read);
- ``splits``: item-level train/val/test splits (`e2i split`); ``mirror``: copies to S3 / HF / a path;
  ``synthetic``: the synthetic-latent store of tests and benchmarks (:func:`make_synthetic_store`);
- ``cli``: the `e2i store` command (verify, info, import-legacy); no other store module imports it.

May import: e2i.errors, e2i.paths (and e2i.__version__). No ray.
"""

from e2i.store.cli import add_arguments, run
from e2i.store.fs import open_fs
from e2i.store.legacy import detect_format, import_legacy
from e2i.store.mirror import Mirror, split_files
from e2i.store.reader import SplitData, find_splits, load_split, split_exists, subset_split
from e2i.store.schema import (
    KINDS,
    MANIFEST,
    REJECTED,
    SCHEMA_VERSION,
    embedding_array,
    embedding_matrix,
    make_captions_table,
    make_items_table,
)
from e2i.store.splits import split_store
from e2i.store.synthetic import make_synthetic_store, synthetic_splits
from e2i.store.verify import split_summary, verify_store
from e2i.store.writer import DEFAULT_ROWS_PER_SHARD, StoreWriter, remove_split, write_split

__all__ = [
    "DEFAULT_ROWS_PER_SHARD", "KINDS", "MANIFEST", "REJECTED", "SCHEMA_VERSION", "Mirror", "SplitData",
    "StoreWriter", "add_arguments", "detect_format", "embedding_array", "embedding_matrix", "find_splits",
    "import_legacy", "load_split", "make_captions_table", "make_items_table", "make_synthetic_store",
    "open_fs", "remove_split", "run", "split_exists", "split_files", "split_store", "split_summary",
    "subset_split", "synthetic_splits", "verify_store", "write_split",
]
