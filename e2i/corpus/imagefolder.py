"""The ``imagefolder`` reader: ``<root>[/<split>]/<class>/**/<image>`` -> Corpus, one item per image.

``item_id`` = ``<class>/<file>``, ``meta["label"]`` = the class folder, caption =
``template.format(class name with underscores as spaces)`` (``template="{}"`` keeps the raw class name:
``golden_retriever`` -> ``golden retriever``). Hidden files are skipped; stray files beside the class
folders and non-image files are rejected rows.
"""

from __future__ import annotations

import os

from e2i.corpus.curate import Captions
from e2i.corpus.files import check_file, modality_of, rel_path
from e2i.corpus.fspath import corpus_path
from e2i.corpus.rows import Corpus, Item, Rejected
from e2i.errors import CorpusError


def read_imagefolder(
    path: str | os.PathLike, *, split: str | None = None, curate: bool = False, template: str = "{}"
) -> Corpus:
    """``<root>[/<split>]/<class>/**/<image>`` -> one item per image, caption from the class name."""
    root = corpus_path(path) / split if split else corpus_path(path)  # local, or s3://... (FsPath)
    if not root.is_dir():
        raise CorpusError(f"{root}: not a directory")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise CorpusError(f"{root}: no class sub-folders")
    corpus = Corpus("imagefolder", split or "all", [])
    for stray in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")):
        corpus.rejected.append(Rejected(stray.name, stray.name, "file not inside a class folder"))
    for folder in classes:
        label = folder.name
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            item_id = rel_path(file, root)
            if any(part.startswith(".") for part in file.relative_to(root).parts):
                continue  # hidden files (.DS_Store, ._foo.jpg) are not data
            reason = "" if modality_of(file.name) == "image" else "not an image file (extension)"
            reason = reason or check_file(file, "image")
            if reason:
                corpus.rejected.append(Rejected(item_id, item_id, reason))
                continue
            caps = Captions(item_id, item_id, corpus, curate)
            caps.add(1, template.format(label.replace("_", " ")), "class name")
            if caps.finish():
                corpus.items.append(
                    Item(item_id, str(file.absolute()), caps.texts, "image", {"label": label}, caps.ids)
                )
    return corpus
