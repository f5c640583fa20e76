"""`e2i images` beyond the layout: the older exporter's flags, raw embeddings beside the PNGs, mirroring.

- ``--cache-dir DIR``: the older image exporter's name for the store split dir, an alias of ``--store``
  (both given with different paths is an error).
- ``--include-embeddings``: beside the PNGs of each modality, ``pseudo_images/<modality>/embeddings.parquet``
  with one row per PNG: ``id`` (string: the PNG's ``e2i:id``, file name :func:`e2i.cache.images.png_name`) and
  ``embedding`` (``fixed_size_list<float32>[D]``: the store's values, bit for bit), in store order (shards
  in manifest order, rows in shard order). Written after the PNGs of its modality.
- ``--mirror URI`` / ``--hf-dataset owner/name [--hf-prefix P] [--hf-token T]`` / ``--upload-every N``: the
  flags of `e2i cache` (:func:`e2i.store.mirror.add_mirror_arguments`, same URIs, retries and reports). What is
  mirrored is the export: each split's ``pseudo_images/`` tree (PNGs, ``embeddings.parquet``, and
  ``meta.json`` last, only in the final sync) goes to ``<uri>/<dataset>/<split>/pseudo_images/``, every N
  exported rows and at the end; the split's shards and manifest are `e2i cache --mirror`'s. The mirror
  reads the local images dir on the driver, so it needs a local ``--images-dir`` (or split dir).
  Exit code 1 when uploads failed (the local export is complete), as `e2i cache`.

Local files (PNGs, ``embeddings.parquet``) appear atomically (tmp + rename), so a sync in the middle of
the export never uploads half a file.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import time
import uuid

from e2i.errors import ConfigError, StoreError

EMBEDDINGS = "embeddings.parquet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `e2i images` kept from the older tools (called by :func:`e2i.cache.images.add_arguments`)."""
    from e2i.store.mirror import add_mirror_arguments

    parser.add_argument(
        "--cache-dir", metavar="SPLIT_DIR", help="alias of --store (the older image exporter's name for it)"
    )
    parser.add_argument(
        "--include-embeddings",
        action="store_true",
        help="also write pseudo_images/<modality>/embeddings.parquet: columns id, embedding "
        "(float32, exactly the store's values), one row per PNG, in store order",
    )
    add_mirror_arguments(parser, what="each split's pseudo_images/", rows="exported")


def store_dir(args: argparse.Namespace) -> str:
    """The split (or root) dir of ``--store`` / its alias ``--cache-dir``."""
    store, alias = args.store, args.cache_dir
    if store is None and alias is None:
        raise ConfigError("--store (or --cache-dir): the store split dir to export is required")
    if store is not None and alias is not None and not _same_dir(store, alias):
        raise ConfigError(f"--cache-dir {alias} differs from --store {store}: give one of them")
    return store if store is not None else alias


def _same_dir(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def write_file(fs, path: str, data: bytes) -> None:
    """Write ``data`` to ``path``; on a local disk via a hidden tmp file + rename."""
    tmp = _tmp_name(fs, path)
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    if tmp != path:
        fs.move(tmp, path)


def _tmp_name(fs, path: str) -> str:
    import pyarrow.fs as pafs

    if not isinstance(fs, pafs.LocalFileSystem):  # object stores show an object only once it is complete
        return path
    return posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")


def write_embeddings(fs, shards: list[str], id_col: str, out_fs, out_dir: str) -> int:
    """``<out_dir>/embeddings.parquet`` (id, embedding) from the shards, one row group at a time; -> rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from e2i.cache.images import embedding_matrix
    from e2i.store.core import embedding_array

    path = posixpath.join(out_dir, EMBEDDINGS)
    tmp, rows, writer = _tmp_name(out_fs, path), 0, None
    try:
        with out_fs.open_output_stream(tmp) as sink:
            for shard in shards:
                with fs.open_input_file(shard) as f:
                    pf = pq.ParquetFile(f)
                    for g in range(pf.num_row_groups):
                        t = pf.read_row_group(g, columns=[id_col, "embedding"])
                        emb = embedding_array(embedding_matrix(t.column("embedding")))
                        table = pa.table({"id": t.column(id_col).cast(pa.string()), "embedding": emb})
                        if writer is None:
                            writer = pq.ParquetWriter(sink, table.schema)
                        elif table.schema != writer.schema:
                            raise StoreError(f"{shard}: embedding dim differs from the previous shards'")
                        writer.write_table(table)
                        rows += table.num_rows
            if writer is not None:
                writer.close()
    except BaseException:
        if tmp != path:
            out_fs.delete_file(tmp)
        raise
    if tmp != path:
        out_fs.move(tmp, path)
    return rows


class _Upload:
    """Mirror of one split's ``pseudo_images/``: every ``every`` exported rows, and at the end."""

    def __init__(self, uri: str, split: str, local: str, token: str | None, every: int | None) -> None:
        from e2i.store.mirror import Mirror

        if "://" in local:
            raise ConfigError(f"--mirror/--hf-dataset: {local} is not local; write the images there directly")
        self.mirror = Mirror(uri, split, token=token, source=local)
        self.every, self.since, self.report = every, 0, None

    def rows(self, n: int) -> None:
        self.since += n
        if self.every and self.since >= self.every:
            self.sync(final=False)

    def sync(self, final: bool):
        from e2i.store.mirror import IMAGES_DIR, split_files

        files, _ = split_files(self.mirror.split_dir, embeddings=False, images=True)
        meta = f"{IMAGES_DIR}/meta.json"
        report = self.mirror.sync([f for f in files if f != meta], [meta] if final and meta in files else [])
        self.since = 0
        if self.report is None:
            self.report = report
        else:
            self.report.merge(report)
        return self.report


def run(args: argparse.Namespace) -> int:
    """`e2i images`: exit 0, or 1 when the export is complete but the mirror reported failed uploads."""
    import ray

    from e2i.cache.images import export_pseudo_images, image_options
    from e2i.store.mirror import mirror_from_args
    from e2i.store.core import find_splits

    store = store_dir(args)
    uri, token = mirror_from_args(args)
    splits = find_splits(store)
    if not splits:
        raise StoreError(f"{store}: no store split found (expected items/ and captions/ or manifest.json)")
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    start, failed = time.perf_counter(), False
    total: dict[str, int] = {}
    for split in splits:
        out = args.images_dir
        if out is not None and len(splits) > 1:
            out = out.rstrip("/") + "/" + posixpath.basename(split.rstrip("/"))
        upload = _Upload(uri, split, out or split, token, args.upload_every) if uri else None
        counts = export_pseudo_images(
            split, out, args.kinds, batch_size=args.batch_size, include_embeddings=args.include_embeddings,
            on_rows=upload.rows if upload else None, **image_options(args),
        )
        shown = ", ".join(f"{n} {m}" for m, n in counts.items())
        print(f"{split}: {shown} -> {(out or split).rstrip('/')}/pseudo_images/")
        if upload is not None:
            report = upload.sync(final=True)
            print(f"{report.summary()} ({report.syncs} sync(s))")
            failed = failed or not report.ok
        for m, n in counts.items():
            total[m] = total.get(m, 0) + n
    n = sum(total.values())
    print(f"pseudo-images: {n} PNGs from {len(splits)} split(s) in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0
