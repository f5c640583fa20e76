"""Contrastive losses on (item, caption) embedding pairs, positives decided by item id.

Every loss is an ``nn.Module`` with its distributed behaviour passed in (``rank=0, world_size=1``,
as open_clip) and the same call:

    loss_fn = build_loss(LossConfig(type="sigmoid_infonce"), dim=256, world_size=1)
    loss = loss_fn(item_z, cap_z, ids, model.logit_scale, model.bias)   # scalar

* ``item_z`` (B, D), ``cap_z`` (B, D): L2-normalised embeddings of row-aligned pairs (row b is a
  caption and the item it describes; an item may appear in several rows).
* ``ids`` (B,) int64: the item id of each row. Rows with equal ids are positives of each other, so
  several captions of one item in a batch never push each other apart.
* ``logit_scale``: the inverse temperature (a scalar tensor, learnable on the model);
  ``logit_bias``: SigLIP's bias, used only by the sigmoid loss (``uses_bias``).

Data parallel (``world_size > 1``): embeddings and ids are all-gathered from every worker *with
gradient* (``torch.distributed.nn.functional.all_gather``), and each worker computes the loss over
the global batch. The loss value is then identical on all workers and equal to the single-process
loss on the concatenated batch. The all-gather backward sums the gradients of all workers, so each
worker's input gradients are ``world_size`` x the single-process ones; DDP's averaging of parameter
gradients divides that out, so parameter updates equal single-process training on the global batch.
Workers may hold different batch sizes (a short last batch): tensors are padded for the collective.

Pure torch: no ray import here.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn

from e2i.config import LossConfig
from e2i.errors import ConfigError

# --------------------------------------------------------------------------------------------------
# Pure loss functions on a (global) batch


def positive_mask(ids: torch.Tensor, other_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, B') bool: True where the item ids are equal (the diagonal is always positive)."""
    other_ids = ids if other_ids is None else other_ids
    return ids[:, None] == other_ids[None, :]


def sigmoid_loss(
    item_z: torch.Tensor,
    cap_z: torch.Tensor,
    ids: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """SigLIP pairwise sigmoid loss with multiple positives.

    Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023 (arXiv:2303.15343).
    Every (item, caption) pair of the batch is an independent binary problem:
    ``z_ij = +1`` if ids[i] == ids[j] else -1, logit ``t * <x_i, y_j> + b`` and
    ``L = -1/B * sum_ij log sigmoid(z_ij * (t * <x_i, y_j> + b))`` (the paper's normalisation by |B|).
    Symmetric in the two modalities. Paper init: t = 10, b = -10.
    """
    logits = logit_scale * item_z @ cap_z.T  # (B, B): rows items, columns captions
    if logit_bias is not None:
        logits = logits + logit_bias
    labels = positive_mask(ids).to(logits.dtype) * 2 - 1  # (B, B): +1 positives, -1 negatives
    return -F.logsigmoid(labels * logits).sum() / item_z.shape[0]


def multi_positive_nce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log softmax(logits, dim=1)`` over all positive entries (rows are queries).

    Entries of ``logits`` set to -inf are excluded from the softmax (never negatives).
    """
    log_prob = torch.log_softmax(logits, dim=1)  # (B, C)
    return -log_prob[positives].mean()


def softmax_loss(
    item_z: torch.Tensor,
    cap_z: torch.Tensor,
    ids: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE with multiple positives (DCASE PaSST baseline form).

    Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", 2021;
    multi-positive form as in the DCASE 2024/2025 language-based audio retrieval baseline
    (Primus et al., PaSST + RoBERTa): with ``C = t * X Y^T`` (items x captions) and ``P_ij`` =
    [ids[i] == ids[j]],

        L = -1/2 * ( mean_{(i,j): P_ij} log softmax_i(C)[i, j]      # text -> item (over items)
                   + mean_{(i,j): P_ij} log softmax_j(C)[i, j] )    # item -> text (over captions)

    i.e. every caption of the same item in the batch is a positive and the loss averages
    ``-log p`` over all positive pairs. With unique ids this is exactly CLIP's loss. (It equals a
    cross-entropy against the row-normalised positive mask when every query has the same number
    of positives; otherwise queries weigh by their number of positives, as in the baseline.)
    ``logit_bias`` is ignored.
    """
    logits = logit_scale * item_z @ cap_z.T  # (B, B): rows items, columns captions
    pos = positive_mask(ids)  # (B, B), symmetric
    item_to_text = multi_positive_nce(logits, pos)  # each item row is a query over captions
    text_to_item = multi_positive_nce(logits.T, pos.T)  # each caption row is a query over items
    return 0.5 * (item_to_text + text_to_item)


# --------------------------------------------------------------------------------------------------
# Distributed gathering


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    return F.pad(x, (0, 0) * (x.dim() - 1) + (0, rows - x.shape[0]))


def gather_batch(
    item_z: torch.Tensor, cap_z: torch.Tensor, ids: torch.Tensor, world_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All-gather (item_z, cap_z, ids) from every worker, rank order; embeddings keep their gradient.

    Ranks may hold different batch sizes: sizes are exchanged first and rows padded to the largest,
    then trimmed after the gather.
    """
    if world_size == 1:
        return item_z, cap_z, ids
    size = torch.tensor([item_z.shape[0]], device=ids.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    rows = max(counts)

    def gather(x: torch.Tensor, with_grad: bool) -> torch.Tensor:
        x = _pad_rows(x, rows)
        if with_grad:
            parts = dist_fn.all_gather(x)  # backward: sum of every worker's gradient for our rows
        else:
            parts = [torch.empty_like(x) for _ in range(world_size)]
            dist.all_gather(parts, x.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, counts)])

    return gather(item_z, True), gather(cap_z, True), gather(ids, False)  # (sum B_r, D), ..., (sum B_r,)


# --------------------------------------------------------------------------------------------------
# Modules


class ContrastiveLoss(nn.Module):
    """Base: gathers the global batch, then calls :meth:`compute_loss` on it."""

    uses_bias = False  # True for losses that use the SigLIP logit bias

    def __init__(self, *, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.rank, self.world_size = rank, world_size

    @classmethod
    def from_config(cls, cfg: LossConfig, *, dim: int, rank: int = 0, world_size: int = 1) -> ContrastiveLoss:
        return cls(rank=rank, world_size=world_size)

    def forward(
        self,
        item_z: torch.Tensor,
        cap_z: torch.Tensor,
        ids: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        item_z, cap_z, ids = gather_batch(item_z, cap_z, ids, self.world_size)  # global batch
        return self.compute_loss(item_z, cap_z, ids, logit_scale, logit_bias)

    def compute_loss(self, item_z, cap_z, ids, logit_scale, logit_bias=None) -> torch.Tensor:
        raise NotImplementedError


class SigmoidInfoNCELoss(ContrastiveLoss):
    """SigLIP pairwise sigmoid loss (see :func:`sigmoid_loss`); pass ``logit_bias=model.bias``."""

    uses_bias = True

    def compute_loss(self, item_z, cap_z, ids, logit_scale, logit_bias=None) -> torch.Tensor:
        return sigmoid_loss(item_z, cap_z, ids, logit_scale, logit_bias)


class SoftmaxInfoNCELoss(ContrastiveLoss):
    """CLIP symmetric cross-entropy with multiple positives (see :func:`softmax_loss`)."""

    def compute_loss(self, item_z, cap_z, ids, logit_scale, logit_bias=None) -> torch.Tensor:
        return softmax_loss(item_z, cap_z, ids, logit_scale)


class QueueInfoNCELoss(ContrastiveLoss):
    """Multi-positive symmetric InfoNCE with a FIFO memory queue of past embeddings as extra negatives.

    After He et al., "Momentum Contrast for Unsupervised Visual Representation Learning" (MoCo),
    CVPR 2020, without a momentum encoder (the queue holds the heads' own past outputs, detached),
    applied to both directions:

    * text -> item: each caption scores the batch items and the queued items,
      ``logits: B x (B + K)``; item -> text: each item scores batch and queued captions.
    * positives are batch entries with the same item id (as :func:`softmax_loss`); queue entries
      with the query's own item id are masked out, so an item is never its own negative.
    * with an empty queue the loss equals :func:`softmax_loss`.

    The queue is first-in first-out: after the loss is computed (and only in ``train()`` mode) the
    (global) batch is written at ``ptr`` with wrap-around, overwriting the oldest entries; batches
    of any size work (a batch larger than the queue keeps its last ``queue_size`` rows). The state
    is registered buffers (moves with ``.to(device)``, saved in ``state_dict()``):
    ``queue_items``/``queue_captions`` (K, D), ``queue_ids`` (K,), ``ptr`` and ``count`` (filled
    slots, which are always ``[0, count)``). Every worker enqueues the same global batch, so the
    queues stay identical across workers.
    """

    def __init__(self, *, dim: int, queue_size: int = 4096, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(rank=rank, world_size=world_size)
        self.queue_size = queue_size
        self.register_buffer("queue_items", torch.zeros(queue_size, dim))  # (K, D)
        self.register_buffer("queue_captions", torch.zeros(queue_size, dim))  # (K, D)
        self.register_buffer("queue_ids", torch.full((queue_size,), -1, dtype=torch.long))  # (K,)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next slot to write
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # filled slots

    @classmethod
    def from_config(
        cls, cfg: LossConfig, *, dim: int, rank: int = 0, world_size: int = 1
    ) -> QueueInfoNCELoss:
        return cls(dim=dim, queue_size=cfg.queue_size, rank=rank, world_size=world_size)

    def compute_loss(self, item_z, cap_z, ids, logit_scale, logit_bias=None) -> torch.Tensor:
        n = int(self.count)
        # Snapshot (clone): autograd keeps the queue operands for backward, which runs after the
        # in-place enqueue below.
        q_items, q_caps = self.queue_items[:n].clone(), self.queue_captions[:n].clone()  # (K, D)
        q_ids = self.queue_ids[:n].clone()  # (K,)
        pos = positive_mask(ids)  # (B, B), positives within the batch
        own = positive_mask(ids, q_ids)  # (B, K): queue entries of the query's own item
        pos_ext = torch.cat([pos, torch.zeros_like(own)], dim=1)  # (B, B + K), queue never positive

        # item -> text: items query batch captions + queued captions; logits: B x (B + K)
        logits_it = logit_scale * torch.cat([item_z @ cap_z.T, item_z @ q_caps.to(item_z.dtype).T], dim=1)
        # text -> item: captions query batch items + queued items; logits: B x (B + K)
        logits_ti = logit_scale * torch.cat([cap_z @ item_z.T, cap_z @ q_items.to(cap_z.dtype).T], dim=1)
        mask = torch.cat([torch.zeros_like(pos), own], dim=1)  # (B, B + K): own item in the queue
        logits_it = logits_it.masked_fill(mask, float("-inf"))
        logits_ti = logits_ti.masked_fill(mask, float("-inf"))
        loss = 0.5 * (multi_positive_nce(logits_it, pos_ext) + multi_positive_nce(logits_ti, pos_ext))

        if self.training:
            self.enqueue(item_z, cap_z, ids)
        return loss

    @torch.no_grad()
    def enqueue(self, item_z: torch.Tensor, cap_z: torch.Tensor, ids: torch.Tensor) -> None:
        """FIFO write of a batch at ``ptr`` with wrap-around (detached)."""
        k = self.queue_size
        item_z, cap_z, ids = item_z[-k:], cap_z[-k:], ids[-k:]  # a batch larger than K keeps its last K
        slots = (self.ptr + torch.arange(ids.shape[0], device=self.ptr.device)) % k  # (B,)
        self.queue_items[slots] = item_z.detach().to(self.queue_items.dtype)
        self.queue_captions[slots] = cap_z.detach().to(self.queue_captions.dtype)
        self.queue_ids[slots] = ids.to(self.queue_ids.device)
        self.ptr.copy_((self.ptr + ids.shape[0]) % k)
        self.count.clamp_(max=k - ids.shape[0]).add_(ids.shape[0])  # min(count + B, K)

    def reset(self) -> None:
        """Empty the queue (e.g. between independent runs)."""
        self.ptr.zero_()
        self.count.zero_()
        self.queue_ids.fill_(-1)


LOSSES: dict[str, type[ContrastiveLoss]] = {
    "sigmoid_infonce": SigmoidInfoNCELoss,
    "softmax_infonce": SoftmaxInfoNCELoss,
    "queue_infonce": QueueInfoNCELoss,
}


def build_loss(cfg: LossConfig, *, dim: int, rank: int = 0, world_size: int = 1) -> ContrastiveLoss:
    """The loss named by ``cfg.type``; ``dim`` is the shared embedding size (model output_dim)."""
    if cfg.type not in LOSSES:
        raise ConfigError(f"loss.type: unknown loss {cfg.type!r} (valid: {', '.join(LOSSES)})")
    return LOSSES[cfg.type].from_config(cfg, dim=dim, rank=rank, world_size=world_size)
