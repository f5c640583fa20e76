"""Checking a store after the fact: :func:`verify_store` (the `e2i store verify` check) and
:func:`split_summary` (the row of `e2i store info`, from parquet footers only).

verify re-hashes every shard listed in ``manifest.json`` (sha256), reports shards on storage that the
manifest does not list (an unfinished run) and then runs the full content validation of
:func:`e2i.store.reader.load_split`. A problem is a string naming the file; [] means OK.
"""

from __future__ import annotations

import os
from typing import Any

from e2i.errors import StoreError
from e2i.store.fs import exists, is_shard_name, join, list_files, open_fs, read_json, sha256_file, shown_path
from e2i.store.reader import find_splits, load_split, shard_header, shard_list
from e2i.store.schema import KINDS, MANIFEST, embedding_dim_from_type


def verify_store(path: str | os.PathLike) -> list[str]:
    """Re-check every split under ``path``: sha256/size/rows of each shard against the manifest,
    unlisted shards, and the full content validation of :func:`load_split`. Returns problems ([] = OK)."""
    splits = find_splits(path)
    if not splits:
        return [f"{os.fspath(path)}: no store split found (expected manifest.json or items/)"]
    problems: list[str] = []
    for split in splits:
        problems += _verify_split(split)
    return problems


def _verify_split(uri: str) -> list[str]:
    fs, root = open_fs(uri)
    problems = []
    try:
        manifest = read_json(fs, join(root, MANIFEST), shown_path(uri, MANIFEST))
    except StoreError as e:
        return [str(e)]
    if manifest is not None:
        listed = set()
        for s in manifest.get("shards", []):
            rel, shown = s.get("path", ""), shown_path(uri, s.get("path", ""))
            listed.add(rel)
            if not exists(fs, join(root, rel)):
                problems.append(f"{shown}: listed in manifest.json but missing")
                continue
            sha, size = sha256_file(fs, join(root, rel))
            if sha != s.get("sha256"):
                problems.append(f"{shown}: sha256 mismatch (file {sha[:12]}..., manifest "
                                f"{str(s.get('sha256'))[:12]}...; {size} bytes, manifest {s.get('bytes')})")
        for kind in KINDS:
            for f in list_files(fs, join(root, kind)):
                if is_shard_name(f.base_name) and f"{kind}/{f.base_name}" not in listed:
                    problems.append(f"{shown_path(uri, kind + '/' + f.base_name)}: not listed in manifest.json "
                                    "(unfinished run? finalize it or delete the file)")
    try:
        data = load_split(uri)
        if manifest is not None:
            counts = manifest.get("counts", {})
            for kind, n in (("items", data.num_items), ("captions", data.num_captions)):
                if counts.get(kind) is not None and int(counts[kind]) != n:
                    problems.append(f"{shown_path(uri, MANIFEST)}: counts.{kind} is {counts[kind]}, shards hold {n}")
    except StoreError as e:
        problems.append(str(e))
    return problems


def split_summary(uri: str) -> dict:
    """Counts and dims of one split from parquet footers and the manifest (no embedding read)."""
    fs, root = open_fs(uri)
    manifest = read_json(fs, join(root, MANIFEST), shown_path(uri, MANIFEST))
    row: dict[str, Any] = {"split": uri, "manifest": manifest is not None}
    for kind in KINDS:
        shards = shard_list(fs, root, manifest, kind, uri)
        rows, dim = 0, None
        for rel, _ in shards:
            head = shard_header(fs, root, rel, shown_path(uri, rel), None, kind)
            rows += head.num_rows
            dim = dim or embedding_dim_from_type(head.schema.to_arrow_schema().field("embedding").type)
        row[kind], row[f"{kind}_dim"], row[f"{kind}_shards"] = rows, dim, len(shards)
    row["rejected"] = (manifest or {}).get("counts", {}).get("rejected", 0)
    row["encoders"] = ", ".join(f"{m}={e.get('name', '?')}" for m, e in ((manifest or {}).get("encoders") or {}).items()
                                if isinstance(e, dict))
    return row
