"""Synthetic-latent stores: two "modalities" that share a hidden latent, for tests and benchmarks.

    root = make_synthetic_store("stores/syn", n_items=1000, difficulty=0.5, seed=0)
    # -> stores/syn/{train,val,test,train_subset}, readable by e2i.store.load_split

Generative model (all random draws come from ``numpy.random.default_rng`` streams derived from
``seed``, so the same arguments give the same bytes):

- item ``i`` has a latent ``z_i ~ N(0, I_L)`` (L = ``latent_dim``);
- two different random non-linear maps, one per modality, each a 2-layer MLP with tanh:
  ``f(x) = tanh(x @ W1 * gain / sqrt(L) + b1) @ W2 / sqrt(H)`` (W ~ N(0, 1), H = ``hidden``),
  standardised to zero mean / unit variance per output dim;
- the item embedding is ``f_item(z_i + s * e_i) + s * n_i`` and caption ``k`` of item ``i`` is
  ``f_caption(z_i + s * e_ik) + s * n_ik``, with independent standard normal noise e, n and
  ``s = difficulty``. The latent noise ``e`` is the "paraphrase" of a caption (each caption of an item
  is a different noisy view of the same latent), the output noise ``n`` is encoder noise.

``difficulty`` is the noise level: 0 means captions are deterministic functions of their item's
latent (perfect retrieval is possible), ~0.5 is a realistic middle (a small head reaches R@1 far
above chance but not 1), >= 1.5 buries most of the signal. Chance text->item R@1 is 1 / n_items of
the split. The maps do not depend on ``n_items`` or the split sizes, only on ``seed``, ``latent_dim``,
``hidden`` and the dims: a bigger store has the same "encoders".

Splits are item-level and disjoint (captions follow their item); ``train_subset`` is the first items
of ``train`` (the same convention as ``DataConfig.train_subset``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from e2i.store.reader import SplitData
from e2i.store.writer import write_split

DEFAULT_SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}
_STREAMS = ("item_map", "caption_map", "latent", "item_noise", "caption_noise")


def _random_mlp(rng: np.random.Generator, in_dim: int, hidden: int, out_dim: int, gain: float):
    """A fixed random 2-layer tanh MLP, returned as a function (n, in_dim) -> (n, out_dim) float64."""
    w1 = rng.standard_normal((in_dim, hidden)) * gain / np.sqrt(in_dim)  # (L, H)
    b1 = rng.standard_normal(hidden) * 0.5  # (H,) offsets make the tanh units non-symmetric
    w2 = rng.standard_normal((hidden, out_dim)) / np.sqrt(hidden)  # (H, D)
    return lambda x: np.tanh(x @ w1 + b1) @ w2


def _standardise(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column, with statistics of ``ref`` (the noise-free map outputs)."""
    return (x - ref.mean(0)) / (ref.std(0) + 1e-8)


def _split_sizes(n_items: int, splits: dict[str, float | int]) -> dict[str, int]:
    """Item counts per split: ints are counts, floats are fractions of n_items (rounded down)."""
    sizes = {
        name: int(v) if isinstance(v, (int, np.integer)) else int(np.floor(float(v) * n_items))
        for name, v in splits.items()
    }
    if any(s <= 0 for s in sizes.values()):
        raise ValueError(f"every split needs at least one item, got {sizes}")
    if sum(sizes.values()) > n_items:
        raise ValueError(f"splits need {sum(sizes.values())} items but n_items={n_items}")
    return sizes


def synthetic_splits(
    *,
    n_items: int,
    captions_per_item: int = 5,
    item_dim: int = 64,
    caption_dim: int = 48,
    latent_dim: int = 16,
    hidden: int = 128,
    gain: float = 2.0,
    splits: dict[str, float | int] | None = None,
    train_subset: float = 0.25,
    difficulty: float = 0.5,
    seed: int = 0,
) -> dict[str, SplitData]:
    """The synthetic splits in memory: ``{split: SplitData}`` incl. ``train_subset`` (see module doc).

    Item ids are ``syn_000000``...; caption ids ``f"{item_id}#{k}"`` (k = 1..captions_per_item);
    ``item_meta["split"]`` names the split. ``train_subset`` is a count (int) or a fraction of train.
    """
    if difficulty < 0:
        raise ValueError(f"difficulty must be >= 0, got {difficulty}")
    rng = dict(zip(_STREAMS, (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))))
    f_item = _random_mlp(rng["item_map"], latent_dim, hidden, item_dim, gain)
    f_cap = _random_mlp(rng["caption_map"], latent_dim, hidden, caption_dim, gain)

    z = rng["latent"].standard_normal((n_items, latent_dim))  # (N, L)
    k = captions_per_item
    z_cap = np.repeat(z, k, axis=0)  # (N*k, L): caption j*k + c belongs to item j
    s = float(difficulty)
    item_clean, cap_clean = f_item(z), f_cap(z)  # reference statistics for standardisation
    item_emb = f_item(z + s * rng["item_noise"].standard_normal(z.shape))
    item_emb = _standardise(item_emb, item_clean) + s * rng["item_noise"].standard_normal(item_emb.shape)
    cap_emb = f_cap(z_cap + s * rng["caption_noise"].standard_normal(z_cap.shape))
    cap_emb = _standardise(cap_emb, cap_clean) + s * rng["caption_noise"].standard_normal(cap_emb.shape)

    item_ids = np.array([f"syn_{i:06d}" for i in range(n_items)], dtype=object)
    caption_ids = np.array([f"{item_ids[i]}#{c + 1}" for i in range(n_items) for c in range(k)], dtype=object)
    texts = np.array(
        [f"synthetic caption {c + 1} of item {i}" for i in range(n_items) for c in range(k)], dtype=object
    )

    sizes = _split_sizes(n_items, splits or DEFAULT_SPLITS)
    out: dict[str, SplitData] = {}
    start = 0
    for name, size in sizes.items():
        items = np.arange(start, start + size)  # (n,) contiguous block of iid items
        start += size
        out[name] = _make_split(name, items, k, item_ids, item_emb, caption_ids, cap_emb, texts)
    if "train" in out:
        n_train = sizes["train"]
        n_sub = (
            int(train_subset)
            if isinstance(train_subset, (int, np.integer))
            else max(1, int(np.floor(float(train_subset) * n_train)))
        )
        first = int(np.flatnonzero(item_ids == out["train"].item_ids[0])[0])
        out["train_subset"] = _make_split(
            "train_subset",
            np.arange(first, first + min(n_sub, n_train)),
            k,
            item_ids,
            item_emb,
            caption_ids,
            cap_emb,
            texts,
        )
    return out


def _make_split(name, items, k, item_ids, item_emb, caption_ids, cap_emb, texts) -> SplitData:
    rows = (items[:, None] * k + np.arange(k)).reshape(-1)  # (n*k,) caption rows of these items
    return SplitData(
        path=f"<synthetic>/{name}",
        item_ids=item_ids[items],
        item_emb=np.ascontiguousarray(item_emb[items], dtype=np.float32),
        caption_ids=caption_ids[rows],
        caption_item=np.repeat(np.arange(len(items), dtype=np.int64), k),
        caption_emb=np.ascontiguousarray(cap_emb[rows], dtype=np.float32),
        caption_text=texts[rows],
        manifest=None,
        item_paths=np.array([f"synthetic://{i}" for i in item_ids[items]], dtype=object),
        item_meta={"split": np.full(len(items), name, dtype=object)},
    )


def make_synthetic_store(
    root: str | os.PathLike,
    *,
    n_items: int,
    captions_per_item: int = 5,
    item_dim: int = 64,
    caption_dim: int = 48,
    splits: dict[str, float | int] | None = None,
    train_subset: float = 0.25,
    difficulty: float = 0.5,
    seed: int = 0,
    latent_dim: int = 16,
    hidden: int = 128,
    dataset: str = "synthetic",
) -> Path:
    """Write ``<root>/{train,val,test,train_subset}`` (or the split names given) with e2i.store.write_split.

    ``splits`` maps split name -> item count (int) or fraction of ``n_items`` (float); default
    70/15/15 %. The manifest records the generator's parameters under ``synthetic`` and declares
    encoders ``{"audio": synthetic-item, "text": synthetic-caption}``. Existing splits are replaced.
    Returns ``Path(root)`` (``root`` may also be ``s3://...``; the return value is then only a label).
    """
    params = {
        "n_items": n_items,
        "captions_per_item": captions_per_item,
        "item_dim": item_dim,
        "caption_dim": caption_dim,
        "latent_dim": latent_dim,
        "hidden": hidden,
        "splits": splits or DEFAULT_SPLITS,
        "train_subset": train_subset,
        "difficulty": difficulty,
        "seed": seed,
    }
    data = synthetic_splits(**params)
    encoders = {
        "audio": {"name": "synthetic-item", "dim": item_dim, "latent_dim": latent_dim},
        "text": {"name": "synthetic-caption", "dim": caption_dim, "latent_dim": latent_dim},
    }
    base = os.fspath(root).rstrip("/")
    for name, split in data.items():
        write_split(split, f"{base}/{name}", dataset, name, encoders=encoders, extra={"synthetic": params})
    return Path(root)
