"""The embedding column at disk speed: a parquet float column's PLAIN pages copied straight into numpy.

pyarrow decodes a ``fixed_size_list<float32>[D]`` column level by level (a repetition and a definition
level per float, then list offsets), at ~0.4x the speed of reading the same bytes. The values
themselves are stored as raw little-endian float32 when the column chunk is uncompressed, PLAIN
and without a dictionary (what :mod:`e2i.store.writer` writes). This module walks such a chunk's
pages and copies each page's value bytes into rows of a preallocated ``(n, D)`` array:
``os.preadv`` straight into the array for local files (no intermediate buffer), one ranged read
per row group for other filesystems (S3), so memory stays at the result + one row group per reading thread.

Pages (Thrift compact ``PageHeader``): DATA_PAGE (v1) = [rep levels: u32 length + RLE/bit-packed]
[def levels: u32 length + RLE] [values]; DATA_PAGE_V2 = [rep levels][def levels][values] with the
level lengths in the header. The fast path is taken only when it can prove that every level slot
holds a value: each page's definition levels are RLE runs of the maximum level (no null list, no
null float), the chunk holds rows x D values, and the Arrow schema stored in the file says
fixed_size_list (so every row has D floats). Anything else (compressed, dictionary, BYTE_STREAM_SPLIT,
nulls, a foreign writer's variable lists) returns None and the caller decodes with pyarrow.

Also here: :func:`embedding_rows` (one shard's embeddings into rows of the result: fast path, else
pyarrow one row group at a time; checked finite), :func:`read_in_order` (shards of unknown or mixed
D) and :class:`Background` (the fill threads of :func:`e2i.store.reader.load_split`).
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from e2i.errors import StoreError
from e2i.store.fs import io_reason
from e2i.store.schema import check_finite, embedding_matrix

_DATA_PAGE, _DICT_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_HEADER_PEEK = 1 << 16  # bytes read at a page start: header + levels (levels ~ 5 bytes per row)


class _Reject(Exception):
    """The chunk is not plain float32 without nulls: decode it with pyarrow instead."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _skip(buf: memoryview, pos: int, ftype: int) -> int:
    """Position after one value of compact-protocol type ``ftype`` (values we do not need)."""
    if ftype in (1, 2):  # bool in a field header
        return pos
    if ftype == 3:
        return pos + 1
    if ftype in (4, 5, 6):
        return _varint(buf, pos)[1]
    if ftype == 7:
        return pos + 8
    if ftype == 8:
        n, pos = _varint(buf, pos)
        return pos + n
    if ftype in (9, 10):  # list/set: size in the high nibble (15 = varint follows)
        head = buf[pos]
        pos += 1
        n, etype = head >> 4, head & 0x0F
        if n == 15:
            n, pos = _varint(buf, pos)
        for _ in range(n):
            pos = pos + 1 if etype in (1, 2) else _skip(buf, pos, etype)
        return pos
    if ftype == 11:  # map
        n, pos = _varint(buf, pos)
        if n:
            kv = buf[pos]
            pos += 1
            for _ in range(n):
                pos = _skip(buf, _skip(buf, pos, kv >> 4), kv & 0x0F)
        return pos
    if ftype == 12:
        return _struct(buf, pos)[1]
    raise _Reject(f"thrift type {ftype}")


def _struct(buf: memoryview, pos: int) -> tuple[dict, int]:
    """A compact-protocol struct -> ({field id: int | nested dict | bool}, end position)."""
    out: dict = {}
    fid = 0
    while True:
        head = buf[pos]
        pos += 1
        if head == 0:
            return out, pos
        delta, ftype = head >> 4, head & 0x0F
        if delta:
            fid += delta
        else:
            raw, pos = _varint(buf, pos)
            fid = _zigzag(raw)
        if ftype in (1, 2):
            out[fid] = ftype == 1
        elif ftype in (3, 4, 5, 6):
            if ftype == 3:
                out[fid], pos = buf[pos], pos + 1
            else:
                raw, pos = _varint(buf, pos)
                out[fid] = _zigzag(raw)
        elif ftype == 12:
            out[fid], pos = _struct(buf, pos)
        else:
            pos = _skip(buf, pos, ftype)


def _check_def_levels(buf: memoryview, n_values: int, max_def: int) -> None:
    """Definition levels (RLE/bit-packed hybrid) must be ``n_values`` copies of ``max_def``."""
    width = max(max_def.bit_length(), 1)
    nbytes = (width + 7) // 8
    pos = seen = 0
    while seen < n_values:
        if pos >= len(buf):
            raise _Reject("short levels")
        head, pos = _varint(buf, pos)
        if head & 1:  # bit-packed run of (head >> 1) groups of 8: written for mixed levels only
            raise _Reject("bit-packed definition levels")
        value = int.from_bytes(buf[pos:pos + nbytes], "little")
        pos += nbytes
        if value != max_def:
            raise _Reject("null values")
        seen += head >> 1
    if seen != n_values:
        raise _Reject("level count")


class _Source:
    """Byte access to one column chunk: local file (pread) or one in-memory row-group buffer."""

    def __init__(self, fd: int | None, buffer: memoryview | None, base: int) -> None:
        self.fd, self.buffer, self.base = fd, buffer, base

    def peek(self, offset: int, n: int) -> memoryview:
        if self.fd is not None:
            return memoryview(os.pread(self.fd, n, offset))
        return self.buffer[offset - self.base:offset - self.base + n]

    def read_into(self, offset: int, out: memoryview) -> None:
        if self.fd is None:
            src = self.buffer[offset - self.base:offset - self.base + len(out)]
            if len(src) != len(out):
                raise _Reject("short chunk")
            out[:] = src
            return
        done = 0
        while done < len(out):
            got = os.preadv(self.fd, [out[done:]], offset + done)
            if got <= 0:
                raise _Reject("short read")
            done += got


def _copy_chunk(src: _Source, start: int, size: int, out: np.ndarray, max_def: int, max_rep: int) -> bool:
    """Copy the values of the pages in [start, start + size) into the flat float32 ``out``.

    Returns whether every page's float32 sum is finite: NaN/inf propagate through a sum, so True proves
    all values finite; False means a non-finite value or an overflow of huge values (check exactly).
    The sum runs right after each page's copy, while its ~1 MB are still in cache.
    """
    dest = memoryview(out).cast("B")
    pos, filled, end, finite = start, 0, start + size, True
    while pos < end:
        head = src.peek(pos, min(_HEADER_PEEK, end - pos))
        header, hlen = _struct(head, 0)
        ptype, comp_size = header.get(1), header.get(3, -1)
        if ptype == _DATA_PAGE:
            page, levels_inline = header.get(5) or {}, True
        elif ptype == _DATA_PAGE_V2:
            page, levels_inline = header.get(8) or {}, False
            if page.get(2, 0):  # num_nulls
                raise _Reject("nulls")
        else:
            raise _Reject(f"page type {ptype}")
        n_values = page.get(1, -1)
        if page.get(2 if levels_inline else 4, 0) != 0:  # value encoding must be PLAIN (0)
            raise _Reject("not PLAIN")
        body = pos + hlen
        if levels_inline:
            lev, off = head[hlen:], 0  # [u32 length + rep levels] [u32 length + def levels]
            for present, is_def in ((max_rep, False), (max_def, True)):
                if not present:
                    continue
                if len(lev) < off + 4:
                    lev = src.peek(body, off + 4)
                n = int.from_bytes(lev[off:off + 4], "little")
                if is_def:
                    if len(lev) < off + 4 + n:
                        lev = src.peek(body, off + 4 + n)
                    _check_def_levels(lev[off + 4:off + 4 + n], n_values, max_def)
                off += 4 + n
        else:
            rlen, dlen = page.get(6, 0), page.get(5, 0)
            if max_def:
                _check_def_levels(src.peek(body + rlen, dlen), n_values, max_def)
            off = rlen + dlen
        nbytes = comp_size - off
        if n_values < 0 or nbytes != 4 * n_values or filled + nbytes > len(dest):
            raise _Reject("page size")
        src.read_into(body + off, dest[filled:filled + nbytes])
        finite = finite and bool(np.isfinite(np.add.reduce(out[filled // 4:(filled + nbytes) // 4])))
        filled += nbytes
        pos = body + comp_size
    if filled != len(dest):
        raise _Reject("value count")
    return finite


def plain_layout(meta: pq.FileMetaData, column: str) -> tuple[int, int, int, int] | None:
    """(leaf index, D, max def level, max rep level) if ``column`` may take the fast path, else None."""
    arrow = meta.schema.to_arrow_schema()
    field = arrow.field(column) if column in arrow.names else None
    if field is None or not pa.types.is_fixed_size_list(field.type) or field.type.value_type != pa.float32():
        return None
    leaves = [j for j in range(meta.num_columns) if meta.schema.column(j).path.split(".")[0] == column]
    if len(leaves) != 1 or meta.schema.column(leaves[0]).physical_type != "FLOAT":
        return None
    leaf = meta.schema.column(leaves[0])
    return leaves[0], field.type.list_size, leaf.max_definition_level, leaf.max_repetition_level


def read_plain_rows(meta: pq.FileMetaData, column: str, out: np.ndarray, *, local_path: str | None = None,
                    opener=None, groups: range | None = None) -> list[tuple[int, int]] | None:
    """Fill ``out`` (rows x D float32, C-contiguous) with ``column`` of the row groups ``groups`` (default:
    every row group) of a file; ``out`` has exactly their rows.

    ``local_path``: pread from this local file; else ``opener()`` gives a pyarrow input file (one ranged
    read per row group). Returns the row ranges [(lo, hi)] of ``out`` whose float sum was not finite
    (NaN/inf, or an overflow: the caller checks those rows exactly), or None (``out`` partly written)
    when the column is not plain uncompressed float32 without nulls: decode it with pyarrow then.
    """
    layout = plain_layout(meta, column)
    groups = range(meta.num_row_groups) if groups is None else groups
    if layout is None or sum(meta.row_group(g).num_rows for g in groups) != len(out) or \
            out.shape[1:] != (layout[1],):
        return None
    leaf, dim, max_def, max_rep = layout
    for g in groups:
        col = meta.row_group(g).column(leaf)
        if col.compression != "UNCOMPRESSED" or col.has_dictionary_page or \
                col.num_values != meta.row_group(g).num_rows * dim or not set(col.encodings) <= {"PLAIN", "RLE"}:
            return None
    fd = os.open(local_path, os.O_RDONLY) if local_path else None
    remote = None if local_path else opener()
    suspect = []
    try:
        row = 0
        for g in groups:
            n, col = meta.row_group(g).num_rows, meta.row_group(g).column(leaf)
            start, size = col.data_page_offset, col.total_compressed_size
            src = _Source(fd, None if fd is not None else memoryview(remote.read_at(size, start)), start)
            if not _copy_chunk(src, start, size, out[row:row + n].reshape(-1), max_def, max_rep):
                suspect.append((row, row + n))
            row += n
        return suspect if row == len(out) else None
    except (_Reject, IndexError, ValueError):
        return None
    finally:
        if fd is not None:
            os.close(fd)
        if remote is not None:
            remote.close()


# ----------------------------------------------------------------------------------------- shards
def embedding_rows(fs, full: str, shown: str, head: pq.FileMetaData, out: np.ndarray, ids_of,
                   groups: range | None = None) -> None:
    """Fill ``out`` (rows of one shard, (n, D) float32) with the shard's embeddings, checked finite;
    ``groups``: only these row groups (``out`` has their rows), default all.

    Fast path (:mod:`e2i.store.pages`): plain uncompressed float32 pages copied straight into ``out``;
    otherwise pyarrow decodes one row group at a time (memory: ``out`` + one row group). ``ids_of()``
    gives the ids of ``out``'s rows (from its first row on), needed only to name a bad row.
    """
    local = full if isinstance(fs, pafs.LocalFileSystem) else None
    groups = range(head.num_row_groups) if groups is None else groups
    try:
        suspect = read_plain_rows(head, "embedding", out, local_path=local, opener=lambda: fs.open_input_file(full),
                                  groups=groups)
    except OSError as e:
        raise StoreError(f"{shown}: cannot read ({io_reason(e)})") from None
    if suspect is not None:
        for lo, hi in suspect:
            check_finite(out[lo:hi], _Offset(ids_of, lo), shown)
        return
    try:
        with fs.open_input_file(full) as f:
            pf = pq.ParquetFile(f)
            row = 0
            for g in groups:
                for chunk in pf.read_row_group(g, columns=["embedding"]).column(0).chunks:
                    block = embedding_matrix(chunk, shown, _Offset(ids_of, row))  # (n, D) view of the values
                    if block.shape[1] != out.shape[1]:
                        raise StoreError(f"{shown}: {_Offset(ids_of, row)[0]!r}: embedding dim {block.shape[1]} "
                                         f"!= {out.shape[1]}")
                    check_finite(block, _Offset(ids_of, row), shown)
                    out[row:row + len(block)] = block
                    row += len(block)
    except (OSError, pa.ArrowException) as e:
        raise StoreError(f"{shown}: cannot read ({str(e).splitlines()[0]})") from None


class _Offset:
    """``ids[start + i]`` for error messages, reading the ids only when a message needs one."""

    def __init__(self, ids_of, start: int) -> None:
        self.ids_of, self.start = ids_of, start

    def __getitem__(self, i: int):
        return self.ids_of()[self.start + i]


def read_in_order(fs, fulls: list[str], files: list[str], heads: list[pq.FileMetaData], offsets: np.ndarray,
                  ids_parts: list[np.ndarray]) -> np.ndarray:
    """Shards whose dims are not all one fixed D: the first row fixes D, a differing shard is named."""
    emb, dim_file = None, ""
    for k, head in enumerate(heads):
        ids = ids_parts[k]
        if not head.num_rows:
            continue
        with fs.open_input_file(fulls[k]) as f:
            first = pq.ParquetFile(f).read_row_group(0, columns=["embedding"]).column(0)
        d = embedding_matrix(first.chunks[0], files[k], ids).shape[1]
        if emb is None:
            emb, dim_file = np.empty((int(offsets[-1]), d), np.float32), files[k]
        if d != emb.shape[1]:
            raise StoreError(f"{files[k]}: {ids[0]!r}: embedding dim {d} != {emb.shape[1]} in {dim_file}")
        embedding_rows(fs, fulls[k], files[k], head, emb[offsets[k]:offsets[k + 1]], lambda ids=ids: ids)
    return emb


class Background:
    """Run each of ``fns`` in its own thread; ``join()`` re-raises an exception here."""

    def __init__(self, *fns) -> None:
        self.errors: list[BaseException | None] = [None] * len(fns)

        def run(k: int) -> None:
            try:
                fns[k]()
            except BaseException as e:  # noqa: BLE001 - handed to the caller by join()
                self.errors[k] = e

        self.threads = [threading.Thread(target=run, args=(k,), name="e2i-store-read", daemon=True)
                        for k in range(len(fns))]
        for t in self.threads:
            t.start()

    def join(self) -> None:
        """Wait for every thread; re-raise the first function's error (in argument order, not time)."""
        for t in self.threads:
            t.join()
        for e in self.errors:
            if e is not None:
                raise e
