"""Import legacy embedding caches into a store split (`e2i store import-legacy SRC --out SPLIT_DIR`).

Every ``.pt`` file is read with ``torch.load(weights_only=True)``: tensors, lists, dicts, strings and
numbers only. A file that needs arbitrary pickled code is refused (StoreError), never executed.
The readers are in :mod:`e2i.store.legacy_formats`, the command's flags in :mod:`e2i.store.cli`.

Formats (``--format``, detected when ``auto``):

``pt-pairs`` -- the older Embed2Image cache, one row per (item, caption) pair. A directory with
    ``audio_embeddings.pt`` (or ``image_embeddings.pt``) and ``text_embeddings.pt``. Each file holds a
    tensor (N, D) or a dict with ``embeddings`` (N, D) and optional string lists: ``paths`` /
    ``file_names`` in the item file, ``captions`` / ``texts`` in the text file. An optional
    ``metadata.json`` (list of {path|file_name, caption|text}) or ``metadata.csv`` (same columns), N rows
    in tensor order, supplies what the tensors lack. With paths, pairs that share a path become ONE item
    (item_id = the path; its embedding is the first pair's, the count of pairs whose item embedding
    differs is recorded in the manifest as ``legacy.item_embedding_mismatch``) with captions
    ``<path>#1..k``. Without paths every pair is its own item ``pair-000000`` and caption ``pair-000000#1``.

``coco-pt`` -- the COCO projection-head cache: ``<prefix>_image_embeddings.pt`` (tensor (N, Di) or dict
    with ``embeddings``/``image_embeddings`` and optional ``caption_embeddings``/``text_embeddings``)
    plus ``<prefix>_metadata.json``::

        {"image_ids": [N ids],                     # required (or "image_ids" in the .pt dict)
         "file_names": [N paths],                  # optional ("image_paths" also accepted)
         "captions": [[str, ...], ...]             # N lists aligned with image_ids, or COCO style:
                   | [{"image_id": id, "caption": str, "id": caption id (optional)}, ...],
         "caption_embeddings": [[float] * Dc] * M} # optional, else a tensor file/dict key
    Caption embeddings (M, Dc), M = number of captions in flattened order, come from
    ``<prefix>_caption_embeddings.pt`` / ``<prefix>_text_embeddings.pt``, the image file's dict, or the
    JSON. Caption ids: COCO ``id`` when every caption has one, else ``<image_id>#k``.

``parquet`` -- ``<model>/<dataset>/<split>/*.parquet`` directories with columns ``features`` (or
    ``embedding``), ``path`` and optional ``label``. Items are keyed by path (item_id = path) and keep
    ``label`` as a metadata column. Captions come from ``--captions DIR`` (same layout from a text model;
    rows matched to items by ``path``, else by ``label``; text from ``caption``/``text``, else the label).
    Without ``--captions`` the labels become the caption text and the caption embedding is the one-hot
    vector of the label over the sorted label set (encoder ``label-onehot``): class retrieval as a
    caption task.
"""

from __future__ import annotations

import os
from pathlib import Path

from e2i.errors import StoreError
from e2i.store.legacy_formats import read_coco_pt, read_parquet_layout, read_pt_pairs
from e2i.store.writer import write_split

FORMATS = ("pt-pairs", "coco-pt", "parquet")


def detect_format(src: str | os.PathLike) -> str:
    """Guess the legacy format of ``src`` (see module docstring)."""
    p = Path(src)
    if p.is_file():
        if p.name.endswith("_image_embeddings.pt"):
            return "coco-pt"
        raise StoreError(f"{p}: cannot tell the legacy format from this file (pass --format)")
    if not p.is_dir():
        raise StoreError(f"{p}: no such file or directory")
    if (p / "text_embeddings.pt").exists():
        return "pt-pairs"
    if any(p.glob("*_image_embeddings.pt")):
        return "coco-pt"
    if any(p.glob("*.parquet")):
        return "parquet"
    raise StoreError(f"{p}: no legacy cache found (text_embeddings.pt, *_image_embeddings.pt or *.parquet)")


def import_legacy(src: str | os.PathLike, out: str | os.PathLike, *, fmt: str = "auto", dataset: str | None = None,
                  split: str | None = None, captions: str | os.PathLike | None = None, modality: str = "audio",
                  overwrite: bool = False) -> dict:
    """Convert a legacy cache into the store split ``out`` (local or s3://); returns the manifest.

    ``dataset``/``split`` default to the last two components of ``out`` (``<root>/<dataset>/<split>``).
    """
    fmt = detect_format(src) if fmt == "auto" else fmt
    if fmt == "pt-pairs":
        data, encoders, info = read_pt_pairs(src)
    elif fmt == "coco-pt":
        data, encoders, info = read_coco_pt(src)
    elif fmt == "parquet":
        data, encoders, info = read_parquet_layout(src, captions, modality=modality)
    else:
        raise StoreError(f"unknown legacy format {fmt!r} (valid: auto, {', '.join(FORMATS)})")
    parts = os.fspath(out).rstrip("/").split("/")
    split = split or parts[-1]
    dataset = dataset or (parts[-2] if len(parts) > 1 and parts[-2] else split)
    return write_split(data, out, dataset, split, overwrite=overwrite, encoders=encoders, extra={"legacy": info})

