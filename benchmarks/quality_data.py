"""Real paired data sets for the quality benchmark, built on this machine without downloads.

Each builder writes an e2i store ``<root>/<name>/{train,val,test}`` (items 70/10/20 %, split by item
with :func:`e2i.store.splits.assign_splits`, seed 0) from data that installed packages ship or that
lies on this machine -- recordings and pictures nobody here made, never the synthetic store:

* ``digits-halves``: scikit-learn's 1,797 handwritten digits (UCI optdigits, 8x8 pixels of 16 grey
  levels). Item = the bottom half (32 pixels), caption = the top half (32 pixels): the task is to
  find the other half of the same written digit among all digits of the split (instance retrieval,
  not class retrieval: ~180 other digits of the same class compete). 1 caption per item.
* ``image-context``: every 8x8 colour tile of the photographs scikit-learn ships (``china.jpg``,
  ``flower.jpg``, 427x640). Item = the tile (8x8x3 = 192 values), captions = the four 4-pixel
  context strips around it (above, below, left, right; each rotated to the same orientation,
  8x4x3 = 96 values, plus a one-hot of the side): find the tile a strip of context belongs to.
  4 captions per item, ~7,000 items.
* ``cancer-views``: scikit-learn's Wisconsin breast cancer table (569 tumours, 30 cell-nucleus
  features measured on a real image each). Item = the 10 "mean" features, caption = the 20
  "standard error" and "worst" features of the same tumour, each standardised. 1 caption per item.
* ``code-docs``: functions of the Python standard library on this machine with a docstring. Item =
  the function's source without its docstring, caption = the docstring's first paragraph, both
  embedded with e2i's built-in ``ngram-hash`` text encoder (512-d, different hash seeds so the two
  sides do not share buckets). 1 caption per item, ~4,000 items (capped).

``build_all(root)`` builds the ones missing and returns ``{name: dataset dir}``.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np

from e2i.store.reader import SplitData
from e2i.store.splits import assign_splits
from e2i.store.writer import write_split

SPEC = {"train": 0.7, "val": 0.1, "test": 0.2}


def _write(root: Path, name: str, item_emb, cap_emb, cap_item, *, item_paths=None, texts=None,
           item_dim_name="item", cap_dim_name="caption") -> Path:
    """Split items (with all their captions) and write train/val/test of one store."""
    item_emb, cap_emb = np.asarray(item_emb, np.float32), np.asarray(cap_emb, np.float32)
    cap_item = np.asarray(cap_item, np.int64)
    n = len(item_emb)
    item_ids = np.array([f"{name}-{i:06d}" for i in range(n)], dtype=object)
    paths = np.asarray(item_paths if item_paths is not None else [""] * n, dtype=object)
    texts = np.asarray(texts if texts is not None else [""] * len(cap_emb), dtype=object)
    encoders = {"audio": {"name": item_dim_name, "dim": item_emb.shape[1]},
                "text": {"name": cap_dim_name, "dim": cap_emb.shape[1]}}
    for split, rows in assign_splits(item_ids, SPEC, seed=0).items():
        new_row = np.full(n, -1, np.int64)
        new_row[rows] = np.arange(len(rows))
        caps = np.nonzero(new_row[cap_item] >= 0)[0]  # captions of this split's items, in order
        data = SplitData(
            path=f"<{name}>/{split}", item_ids=item_ids[rows], item_emb=item_emb[rows],
            caption_ids=np.array([f"{name}-c{j:07d}" for j in caps], dtype=object),
            caption_item=new_row[cap_item[caps]], caption_emb=cap_emb[caps], caption_text=texts[caps],
            item_paths=paths[rows],
        )
        write_split(data, root / name / split, name, split, encoders=encoders)
    return root / name


def digits_halves(root: Path) -> Path:
    from sklearn.datasets import load_digits

    images = load_digits().images / 16.0  # (1797, 8, 8) in [0, 1]
    top, bottom = images[:, :4].reshape(len(images), -1), images[:, 4:].reshape(len(images), -1)
    return _write(root, "digits-halves", bottom, top, np.arange(len(images)), item_dim_name="bottom-half",
                  cap_dim_name="top-half")


def image_context(root: Path, tile: int = 8, strip: int = 4) -> Path:
    from sklearn.datasets import load_sample_images

    items, caps, cap_item, paths = [], [], [], []
    for name, img in zip(("china.jpg", "flower.jpg"), load_sample_images().images):
        x = img.astype(np.float32) / 255.0  # (H, W, 3)
        h, w = x.shape[:2]
        for r in range(strip, h - tile - strip + 1, tile):
            for c in range(strip, w - tile - strip + 1, tile):
                row = len(items)
                items.append(x[r:r + tile, c:c + tile].reshape(-1))  # (192,)
                sides = (x[r - strip:r, c:c + tile],  # above (4, 8, 3)
                         np.rot90(x[r + tile:r + tile + strip, c:c + tile], 2),  # below, turned to face the tile
                         np.rot90(x[r:r + tile, c - strip:c], -1),  # left
                         np.rot90(x[r:r + tile, c + tile:c + tile + strip], 1))  # right
                for k, s in enumerate(sides):
                    caps.append(np.concatenate([s.reshape(-1), np.eye(4, dtype=np.float32)[k]]))  # (100,)
                    cap_item.append(row)
                paths.append(f"sklearn:{name}#{r},{c}")
    return _write(root, "image-context", np.stack(items), np.stack(caps), cap_item, item_paths=paths,
                  item_dim_name="tile-8x8", cap_dim_name="context-strip")


def cancer_views(root: Path) -> Path:
    from sklearn.datasets import load_breast_cancer

    x = load_breast_cancer().data  # (569, 30): 10 means, 10 standard errors, 10 worst values
    x = (x - x.mean(0)) / x.std(0)
    return _write(root, "cancer-views", x[:, :10], x[:, 10:], np.arange(len(x)), item_dim_name="mean-features",
                  cap_dim_name="se-and-worst-features")


def _stdlib_functions(limit: int) -> list[tuple[str, str, str]]:
    """[(qualified name, source without docstring, first docstring paragraph)] from the stdlib."""
    import importlib
    import pkgutil
    import sysconfig
    import warnings

    stdlib = sysconfig.get_paths()["stdlib"]
    out, seen = [], set()
    names = sorted(m.name for m in pkgutil.iter_modules([stdlib]) if not m.name.startswith(("_", "test", "idlelib")))
    for mod_name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(mod_name)
        except Exception:  # noqa: BLE001 - platform modules that do not import here
            continue
        for fname, fn in sorted(vars(mod).items()):
            if not inspect.isfunction(fn) or fn.__module__ != mod_name or fname.startswith("_"):
                continue
            doc = inspect.getdoc(fn)
            try:
                src = inspect.getsource(fn)
            except (OSError, TypeError):
                continue
            if not doc or len(doc) < 20 or src in seen:
                continue
            seen.add(src)
            first = doc.split("\n\n")[0].replace("\n", " ")
            raw = fn.__doc__ or ""
            body = src.replace(raw, "", 1) if raw else src  # drop the docstring itself from the code side
            out.append((f"{mod_name}.{fname}", body, first))
            if len(out) >= limit:
                return out
    return out


def code_docs(root: Path, limit: int = 4000) -> Path:
    from e2i.encoders.ngram_hash import NgramOptions, hash_text

    funcs = _stdlib_functions(limit)
    code_opts, doc_opts = NgramOptions(seed=1), NgramOptions(seed=2)
    items = np.stack([hash_text(body, code_opts) for _, body, _ in funcs])
    caps = np.stack([hash_text(doc, doc_opts) for _, _, doc in funcs])
    return _write(root, "code-docs", items, caps, np.arange(len(funcs)), item_paths=[q for q, _, _ in funcs],
                  texts=[d for _, _, d in funcs], item_dim_name="ngram-hash(code)", cap_dim_name="ngram-hash(doc)")


BUILDERS = {"digits-halves": digits_halves, "image-context": image_context, "cancer-views": cancer_views,
            "code-docs": code_docs}


def build_all(root: str | os.PathLike, names=tuple(BUILDERS)) -> dict[str, Path]:
    root = Path(root)
    out = {}
    for name in names:
        out[name] = root / name if (root / name / "test" / "manifest.json").is_file() else BUILDERS[name](root)
    return out


if __name__ == "__main__":
    import sys

    for name, path in build_all(sys.argv[1] if len(sys.argv) > 1 else "stores/quality").items():
        print(name, path)
