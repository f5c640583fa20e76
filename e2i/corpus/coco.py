"""The ``coco`` reader: COCO captions JSON + image folder -> :class:`~e2i.corpus.rows.Corpus`.

``annotations/captions_<split>.json`` (``images [{id, file_name}]``, ``annotations [{image_id, caption,
id}]``) + images in ``<root>/<split>/``, ``<root>/images/<split>/`` or ``<root>/images/``.
``split="val"`` finds ``captions_val2017.json`` when it is the only match. Items are images
(``item_id`` = file_name, ``meta["image_id"]``), captions grouped per image in file order.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from e2i.corpus.curate import Captions
from e2i.corpus.files import check_file, load_json
from e2i.corpus.fspath import corpus_path
from e2i.corpus.rows import Corpus, Item, Rejected
from e2i.errors import CorpusError


def _find_coco_json(path: Path, split: str | None) -> tuple[Path, str]:
    if path.is_file():
        m = re.fullmatch(r"captions_(.+)\.json", path.name)
        return path, (m[1] if m else split or path.stem)
    folder = path / "annotations" if (path / "annotations").is_dir() else path
    exact = folder / f"captions_{split}.json"
    if split is not None and exact.is_file():
        return exact, split
    found = sorted(folder.glob(f"captions_{split or ''}*.json"))
    if len(found) != 1:
        splits = (
            ", ".join(p.stem[len("captions_") :] for p in sorted(folder.glob("captions_*.json"))) or "none"
        )
        wanted = f"one captions_{split}*.json" if split else "a split"
        raise CorpusError(f"{folder}: need {wanted} (captions_<split>.json found: {splits})")
    return found[0], found[0].stem[len("captions_") :]


def _find_coco_images(json_path: Path, split: str) -> Path:
    root = json_path.parent.parent if json_path.parent.name == "annotations" else json_path.parent
    tried = [root / split, root / "images" / split, root / "images"]
    for folder in tried:
        if folder.is_dir():
            return folder
    raise CorpusError(
        f"{json_path}: no image folder for split {split!r} (tried {', '.join(map(str, tried))})"
    )


def read_coco(path: str | os.PathLike, *, split: str | None = None, curate: bool = False) -> Corpus:
    """COCO captions JSON + image folder -> Corpus, one item per image (captions in file order)."""
    json_path, split = _find_coco_json(corpus_path(path), split)
    data = load_json(json_path)
    missing = [k for k in ("images", "annotations") if not isinstance(data, dict) or k not in data]
    if missing:
        raise CorpusError(f"{json_path}: missing key(s) {', '.join(missing)}")
    image_dir, corpus, name = _find_coco_images(json_path, split), Corpus("coco", split, []), json_path.name
    images: dict[Any, tuple[str, str]] = {}  # image id -> (file_name, source)
    for i, img in enumerate(data["images"]):
        source = f"{name}:images[{i}]"
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            corpus.rejected.append(
                Rejected(
                    source,
                    str(img.get("id", "")) if isinstance(img, dict) else "",
                    "image record without id/file_name",
                )
            )
        elif img["id"] in images:
            corpus.rejected.append(Rejected(source, img["file_name"], f"duplicate image id {img['id']}"))
        else:
            images[img["id"]] = (img["file_name"], source)
    captions: dict[Any, list[str]] = {k: [] for k in images}
    for i, ann in enumerate(data["annotations"]):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id not in captions:
            ann_id = str(ann.get("id", "")) if isinstance(ann, dict) else ""
            corpus.rejected.append(
                Rejected(f"{name}:annotations[{i}]", ann_id, f"unknown image_id {image_id!r}")
            )
        else:
            captions[image_id].append(ann.get("caption"))
    for image_id, (file_name, source) in images.items():
        caps = Captions(file_name, source, corpus, curate)
        for k, text in enumerate(captions[image_id], start=1):
            caps.add(k, text, f"caption {k}")
        reason = check_file(image_dir / file_name, "image")
        if reason:
            corpus.rejected.append(Rejected(source, file_name, reason))
        elif caps.finish():
            corpus.items.append(
                Item(
                    file_name,
                    str((image_dir / file_name).absolute()),
                    caps.texts,
                    "image",
                    {"image_id": image_id},
                    caps.ids,
                )
            )
    return corpus
