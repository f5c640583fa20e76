"""`e2i cache --write-on workers` on a corpus of many JSONL metadata files (e2i.cache.index): one read task
per file, the same store as the one-process reader (ids, embeddings, rejected rows naming file:line, a
duplicate id across files), resume re-embedding exactly the deleted shards, block names stable across
runs, and the driver's Python heap flat when the corpus grows 10x. Real files, the session's local Ray."""

from __future__ import annotations

import json
import shutil
import tracemalloc

import pyarrow.parquet as pq
import pytest
from test_cache import LIGHT, add_bad_rows
from test_worker_writes import (
    assert_same_embeddings,
    rejected,
    resume_after_losing_shards,
    through_both_paths,
)

from e2i import cache

N_ITEMS, FILES = 24, 4


def write_shards(root, out, files: int, copies: int = 1, extra: bool = True, note_kb: int = 0,
                 clips: int | None = None) -> str:
    """The toy corpus at ``root`` (its first ``clips``) as ``files`` JSONL files ``out/train-000k.jsonl``
    (records in turn, ``copies`` records per clip under distinct ids, a ``note`` of ``note_kb`` KB in each:
    index weight that costs no embedding); with
    ``extra``: a line that is not JSON (train-0001:3), an id of train-0000 again in train-0003. Metadata
    typed int in three files and float in one. Returns the glob."""
    from e2i.corpus import read_corpus

    data = read_corpus("clotho", root, split="development")
    out.mkdir(parents=True, exist_ok=True)
    lines: list[list[str]] = [[] for _ in range(files)]
    records = [(f"{it.item_id}~{c}" if copies > 1 else it.item_id, it) for c in range(copies) for it in data.items[:clips]]
    for n, (item_id, it) in enumerate(records):
        meta = {"clip": n if n % files != 2 else n + 0.5}  # int64 in three files, float64 in one
        if note_kb:
            meta["note"] = f"{item_id} " * (note_kb * 1024 // (len(item_id) + 1))
        lines[n % files].append(json.dumps({"id": item_id, "path": it.path, "captions": it.captions, **meta}))
    missing = root / "clotho_audio_files" / "development" / "missing.wav"
    lines[0].append(json.dumps({"id": "missing.wav", "path": str(missing), "caption": "gone"}))
    if extra:
        lines[1].insert(2, '{"id": "torn", "path": ')
        lines[3].append(json.dumps({"id": records[0][0], "path": records[0][1].path, "caption": "again"}))
    for k, body in enumerate(lines):
        (out / f"train-{k:04d}.jsonl").write_text("\n".join(body) + "\n")
    return str(out / "train-*.jsonl")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from e2i.corpus.toy import make_toy_corpus

    root = make_toy_corpus(tmp_path_factory.mktemp("toyp") / "toy", n_items=N_ITEMS, seed=2)
    add_bad_rows(root)  # broken.wav, silent.wav: rejected by the decoder
    return write_shards(root, root.parent / "meta", FILES)


@pytest.fixture(scope="module")
def runs(ray_local, shards, tmp_path_factory):
    """The shards through the parallel index (worker writes) and through the one-process reader (driver writes)."""
    return through_both_paths(shards, tmp_path_factory.mktemp("stores-p"), "meta/train")


def test_one_read_task_per_file_same_store_as_one_process(runs):
    (sw, w), (sd, d) = runs["workers"], runs["driver"]
    assert sw["index"]["files"] == FILES and sw["index"]["read_tasks"] == FILES  # four tasks read the index
    assert "index" not in sd
    assert len(assert_same_embeddings(w, d)["items"]) == N_ITEMS
    full = {(r["source"], r["id"], r["reason"]) for r in pq.read_table(w / "rejected.parquet").to_pylist()}
    assert full == {(r["source"], r["id"], r["reason"]) for r in pq.read_table(d / "rejected.parquet").to_pylist()}
    assert ("train-0001.jsonl:3", "", "not valid JSON (Expecting value)") in full  # the bad line, by file:line
    # toy_0000.wav again in the last file: rejected there, stored from its first record
    dup = [r for r in full if r[1] == "toy_0000.wav"]
    assert len(dup) == 1 and dup[0][0].startswith("train-0003.jsonl:") and \
        dup[0][2] == "duplicate id (first at train-0000.jsonl:1)"
    assert any(i == "missing.wav" and r.startswith("audio file not found: ") for i, r in rejected(w))
    assert sw["counts"] == sd["counts"]
    # metadata typed int64 in three files and float64 in one: float64 in every shard, as the one-process read
    schemas = {pq.read_schema(p).remove_metadata() for p in (w / "items").glob("*.parquet")}
    assert len(schemas) == 1 and str(schemas.pop().field("clip").type) == "double"


def test_resume_reembeds_exactly_the_deleted_shards_under_their_names(runs, shards, tmp_path):
    """A killed run's state: two shards of each kind gone, no manifest. The re-run anti-joins, embeds the
    lost rows only, and writes them under the lost shards' names (blocks are fixed row ranges of a file)."""
    ref = runs["workers"][1]
    lost = resume_after_losing_shards(ref, shards, tmp_path, "meta/train")
    for kind, paths in lost.items():
        assert all(p.exists() for p in paths), kind  # written again under the same names
        assert sorted(p.name for p in paths[0].parent.glob("*.parquet")) == \
            sorted(p.name for p in (ref / kind).glob("*.parquet")), kind


def test_layouts_of_many_metadata_files(shards, tmp_path):
    """A glob, a directory with --split (S-*.jsonl, S/*.jsonl); one file stays the one-file reader's."""
    from pathlib import Path

    from e2i.corpus.jsonl import corpus_names, metadata_files
    from e2i.errors import CorpusError

    folder = Path(shards).parent
    files = metadata_files(shards, None)
    assert [f.name for f in files] == [f"train-{k:04d}.jsonl" for k in range(FILES)]
    assert metadata_files(folder, "train") == files
    assert corpus_names(shards, files, None) == ("meta", "train")
    assert corpus_names(folder, files, "train") == ("meta", "train")
    (tmp_path / "val").mkdir()
    shutil.copy(files[0], tmp_path / "val" / "a.jsonl")
    shutil.copy(files[1], tmp_path / "val" / "b.jsonl")
    assert [f.name for f in metadata_files(tmp_path, "val")] == ["a.jsonl", "b.jsonl"]
    assert metadata_files(files[0], None) == [files[0]]
    with pytest.raises(CorpusError, match="no metadata file matches"):
        metadata_files(str(folder / "test-*.jsonl"), None)
    with pytest.raises(CorpusError, match="val-\\*.jsonl"):
        metadata_files(folder, "val")


def heap_peak(fn, *args, **kwargs) -> int:
    """Peak of this process's Python heap (tracemalloc) while ``fn`` runs."""
    tracemalloc.start()
    try:
        fn(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_driver_heap_does_not_grow_with_the_corpus(runs, shards, tmp_path):
    """1x vs 10x the records (4 files; 6 clips listed 1x or 10x under distinct ids, each record with a
    100 KB metadata note; default batch sizes): the driver's peak Python heap over a whole parallel-index
    run stays within 1.25x + 1 MiB (measured 8.33 vs 8.50 MiB), while holding the 10x index on the driver
    (the one-process reader) would grow it by more than that (0.70 vs 7.42 MiB). Ray's C++ core is not
    traced (bench_cache_cluster.py measures RSS). ``runs``: a warm driver (a process's first run allocates
    its imports)."""
    from pathlib import Path

    from e2i.corpus import read_corpus

    root = Path(shards).parents[1] / "toy"
    metas = {c: write_shards(root, tmp_path / f"m{c}" / "meta", 4, copies=c, extra=False, note_kb=100,
                             clips=6) for c in (1, 10)}
    run = {c: heap_peak(cache.cache_corpus, m, cache_dir=tmp_path / f"s{c}", write_on="workers", quiet=True,
                        **LIGHT) for c, m in metas.items()}
    index = {c: heap_peak(read_corpus, "jsonl", m) for c, m in metas.items()}  # the index, held whole
    mib = {f"{what} {c}x": round(v / 2**20, 2) for what, d in (("run", run), ("index", index)) for c, v in d.items()}
    allowed = 0.25 * run[1] + 2**20
    assert run[10] - run[1] <= allowed, mib
    assert index[10] - index[1] > allowed, mib  # the test would see the index on the driver
