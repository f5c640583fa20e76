"""The bar a person sets with a short script: two MLP heads + symmetric InfoNCE, AdamW, 300 epochs of
batch 256, scored on the test split with e2i's metrics (the quality benchmark's "reference" row).

    python benchmarks/reference_infonce.py stores/quality/digits-halves
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from e2i.evaluate.metrics import retrieval_metrics
from e2i.store import load_split


def mlp(d_in: int, d_out: int = 256, hidden: int = 512) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, d_out))


def reference_run(store: str, epochs: int = 300, batch: int = 256, lr: float = 1e-3, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    tr, te = load_split(f"{store}/train", with_text=False), load_split(f"{store}/test", with_text=False)
    items, caps = torch.from_numpy(tr.item_emb), torch.from_numpy(tr.caption_emb)
    cap_item = torch.from_numpy(tr.caption_item)
    f_item, f_cap = mlp(items.shape[1]), mlp(caps.shape[1])
    log_scale = torch.nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), learned as in CLIP
    params = [*f_item.parameters(), *f_cap.parameters(), log_scale]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    for _ in range(epochs):
        for rows in torch.randperm(len(caps)).split(batch):  # one caption per row, its item as positive
            zi = F.normalize(f_item(items[cap_item[rows]]), dim=-1)
            zc = F.normalize(f_cap(caps[rows]), dim=-1)
            logits = zc @ zi.T * log_scale.exp().clamp(max=100)  # (B, B)
            target = torch.arange(len(rows))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        zi = F.normalize(f_item(torch.from_numpy(te.item_emb)), dim=-1)
        zc = F.normalize(f_cap(torch.from_numpy(te.caption_emb)), dim=-1)
    return retrieval_metrics(zi, zc, te.caption_item, ci=True)


if __name__ == "__main__":
    m = reference_run(sys.argv[1])
    print(f"reference MLP+InfoNCE: test text->item R@1 {m['text_to_item/recall@1']:.4f} "
          f"{m['text_to_item/recall@1/ci95']}")
