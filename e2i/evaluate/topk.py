"""Per-query top-K lists for error analysis: the ``--dump-topk`` parquet and the report's browser.

``topk_table`` (one row per query and rank position, both directions)::

    direction      "text_to_item" (caption queries over items) | "item_to_text" (items over captions)
    query_id       caption_id / item_id of the query
    rank           1..K, position in the ranking (score desc, ties by ascending index as top_k gives)
    retrieved_id   item_id / caption_id at that position
    score          dot product of the two shared-space embeddings (cosine for normalised heads)
    relevant       text->item: the retrieved item is relevant to the caption (its own item, or for a
                   caption listed in the relevance file, one of its listed items); item->text: the retrieved caption belongs to the item

``browser_entries`` picks the queries the HTML report shows: a seeded random sample of captions and
the worst-ranked ones (largest rank of their own item, computed in chunks of ``chunk_size`` captions:
rank = 1 + #items scoring strictly higher than the own item), each with its top-``k`` items.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from e2i.evaluate.ranking import top_k
from e2i.store.reader import SplitData

DIRECTIONS = ("text_to_item", "item_to_text")


def _relevant_sets(data: SplitData, relevance) -> list[set[int]]:
    """(M,) per caption: its relevant item rows. A caption listed in the relevance file has exactly its
    listed items with grade > 0 (the annotations replace the own item, as in DCASE 2025, see
    :mod:`e2i.evaluate.relevance`); any other caption has its own item."""
    sets = [{int(i)} for i in data.caption_item]
    if relevance is not None:
        grade = relevance.grade if relevance.grade is not None else np.ones(len(relevance.query))
        for q in set(relevance.query.tolist()):
            sets[q] = set()
        for q, i, g in zip(relevance.query.tolist(), relevance.item.tolist(), grade.tolist()):
            if g > 0:
                sets[q].add(i)
    return sets


def topk_table(item_z, cap_z, data: SplitData, k: int, *, relevance=None) -> pa.Table:
    """Both directions' top-``k`` lists as one Arrow table (columns in the module docstring)."""
    k_items, k_caps = min(k, data.num_items), min(k, data.num_captions)
    rel = _relevant_sets(data, relevance)
    idx, score = top_k(item_z, cap_z, k_items, direction="text_to_item")  # (M, k) item rows
    idx, score = np.asarray(idx), np.asarray(score)
    t2i_rel = np.array([[int(j) in rel[q] for j in row] for q, row in enumerate(idx)], bool).reshape(idx.shape)
    idx2, score2 = top_k(item_z, cap_z, k_caps, direction="item_to_text")  # (N, k) caption rows
    idx2, score2 = np.asarray(idx2), np.asarray(score2)
    i2t_rel = data.caption_item[idx2] == np.arange(data.num_items)[:, None]  # (N, k)
    m, n = data.num_captions, data.num_items
    cols = {
        "direction": ["text_to_item"] * (m * k_items) + ["item_to_text"] * (n * k_caps),
        "query_id": np.concatenate([np.repeat(data.caption_ids, k_items), np.repeat(data.item_ids, k_caps)]),
        "rank": np.concatenate([np.tile(np.arange(1, k_items + 1), m), np.tile(np.arange(1, k_caps + 1), n)]),
        "retrieved_id": np.concatenate([data.item_ids[idx.reshape(-1)], data.caption_ids[idx2.reshape(-1)]]),
        "score": np.concatenate([score.reshape(-1), score2.reshape(-1)]).astype(np.float32),
        "relevant": np.concatenate([t2i_rel.reshape(-1), i2t_rel.reshape(-1)]),
    }
    return pa.table({
        "direction": pa.array(cols["direction"], pa.string()),
        "query_id": pa.array(cols["query_id"].astype(object), pa.string()),
        "rank": pa.array(cols["rank"].astype(np.int32)),
        "retrieved_id": pa.array(cols["retrieved_id"].astype(object), pa.string()),
        "score": pa.array(cols["score"]),
        "relevant": pa.array(cols["relevant"]),
    })


def own_item_ranks(item_z, cap_z, cap_item, chunk_size: int = 1024) -> np.ndarray:
    """(M,) 1-based rank of each caption's own item: 1 + #items with a strictly higher score."""
    item_z, cap_z = torch.as_tensor(np.asarray(item_z)), torch.as_tensor(np.asarray(cap_z))
    cap_item = torch.as_tensor(np.asarray(cap_item, np.int64))
    out = []
    for lo in range(0, len(cap_z), chunk_size):
        scores = cap_z[lo:lo + chunk_size] @ item_z.T  # (chunk, N)
        own = scores.gather(1, cap_item[lo:lo + chunk_size, None])  # (chunk, 1)
        out.append((scores > own).sum(dim=1) + 1)
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def browser_entries(item_z, cap_z, data: SplitData, *, relevance=None, n_sample: int = 12, n_worst: int = 8,
                    k: int = 5, seed: int = 0) -> list[dict]:
    """Queries for the report's retrieval browser (module docstring); each entry::

        {group: "sample" | "worst", caption_id, text, own_item, own_rank,
         results: [{rank, item_id, path, score, relevant}] * k}
    """
    ranks = own_item_ranks(item_z, cap_z, data.caption_item)
    m = data.num_captions
    sample = np.sort(np.random.default_rng(seed).choice(m, size=min(n_sample, m), replace=False))
    rest = np.setdiff1d(np.arange(m), sample)
    worst = rest[np.argsort(-ranks[rest], kind="stable")[:n_worst]]  # largest own rank first
    queries = np.concatenate([sample, worst]).astype(np.int64)
    k = min(k, data.num_items)
    idx, score = top_k(item_z, np.asarray(cap_z)[queries], k, direction="text_to_item")
    idx, score = np.asarray(idx), np.asarray(score)
    rel = _relevant_sets(data, relevance)
    paths = data.item_paths if data.item_paths is not None else np.full(data.num_items, "", object)
    entries = []
    for pos, q in enumerate(queries.tolist()):
        entries.append({
            "group": "sample" if pos < len(sample) else "worst",
            "caption_id": str(data.caption_ids[q]),
            "text": "" if data.caption_text is None else str(data.caption_text[q]),
            "own_item": str(data.item_ids[data.caption_item[q]]),
            "own_rank": int(ranks[q]),
            "results": [{"rank": r + 1, "item_id": str(data.item_ids[j]), "path": str(paths[j]),
                         "score": float(score[pos, r]), "relevant": int(j) in rel[q]}
                        for r, j in enumerate(idx[pos].tolist())],
        })
    return entries
