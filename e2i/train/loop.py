"""The per-worker training loop of projection heads (no Ray import: Ray Train / Tune call it).

:func:`run_training` runs unchanged inside a ``TorchTrainer`` worker (``e2i.train.driver.fit``), inside a
Ray Tune function trainable (``e2i.tune.trial``) or in a plain process (tests). It calls
``report(metrics, checkpoint_dir)`` once per epoch; ``checkpoint_dir`` (rank 0 only, on the epochs
that need one, else None) is a temporary directory removed after the call, unless ``report`` returns
True: then it owns the directory (moves it, or hands it to Ray's asynchronous upload, which deletes it).

Conventions of the loop:

- Data: the train and val splits are loaded once per worker as contiguous tensors. An epoch is a
  shuffled permutation of **caption rows**; a global batch is ``optim.batch_size`` consecutive rows of
  it, worker ``r`` of ``W`` takes rows ``[r*B/W, (r+1)*B/W)`` of each global batch (an incomplete last
  global batch is dropped). An *epoch* is one such pass, or, on a split too small to give
  ``optim.min_steps_per_epoch`` optimizer steps in one pass, exactly that many steps running on into
  the next passes (:func:`e2i.train.schedule.epoch_plan`): training length, validation, early stopping
  and ASHA rungs count in epochs of >= 100 steps whatever the store's size. The item of a caption is ``item_emb[caption_item[row]]`` and the ids given
  to the loss are item row indices, so every caption of the same item in the global batch is a
  positive (multi-positive). With W > 1 the loss all-gathers embeddings, so the negatives are the
  global batch and gradients are averaged over workers.
- Reproducibility: the model is initialised from ``seed`` (identical on all workers) and the torch
  RNG (dropout) is re-seeded from ``(seed, rank, epoch)`` at the start of every epoch, and the
  permutation of pass p from ``(seed, p)``; a resumed run therefore repeats an uninterrupted one.
- Schedule: AdamW (no weight decay on biases, norms and the temperature/bias scalars), warmup over
  ``warmup_epochs`` then ``optim.schedule`` (cosine to 0 by default; :func:`e2i.train.schedule.lr_at`),
  updated per optimizer step; gradient clipping by
  global norm; ``accumulate_grad_batches`` micro-batches per step (each micro-batch is its own
  contrastive batch).
- Validation every epoch with :func:`e2i.evaluate.metrics.retrieval_metrics` on the val split. Metric names:
  ``val/<m>`` is text->item (caption queries; ``val/recall@1`` = text_to_item R@1, ``val/mAP@10`` =
  text_to_item mAP@10, ``val/median_rank`` ...), ``val/item_to_text/<m>`` the other direction, and
  ``val/loss`` the loss on the val split (softmax_infonce in place of queue_infonce, whose queue
  would otherwise leak between batches). Also ``train/loss``, ``lr``, ``logit_scale``, ``epoch``,
  ``step``, ``passes`` (over the train captions), ``time/epoch_s`` (training), ``time/val_s`` (validation), ``train/pairs_per_s``.
- Early stopping on ``cfg.metric`` after ``early_stopping_patience`` epochs without improvement.
- Checkpoints (:func:`checkpoint_due`): the epoch that is the best so far, every
  ``checkpoint.every_n_epochs`` epochs, and the last epoch (the end or an early stop); other epochs
  only report metrics (no model serialisation). A caller may pass its own ``checkpoint_when``.
- Mixed precision ``16-mixed`` (GradScaler): gradients are averaged over workers *before*
  ``unscale_``, so every rank sees the same gradients and takes the same skip-or-step decision.
- After each optimizer step ``model.clamp_parameters_()`` runs when the model has it (e.g. the
  logit scale capped at 100 as open_clip does).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from e2i.config import LossConfig, TrainConfig
from e2i.store import SplitData
from e2i.store.mix import load_train_val
from e2i.train.checkpoint import checkpoint_due, load_checkpoint, report_epoch
from e2i.train.distributed import agree, average_gradients, broadcast_parameters, dist_info
from e2i.train.schedule import PassPermutations, epoch_plan, global_batches, lr_at
from e2i.train.warm_start import announce, beats_baseline, copy_state, warm_start_

Report = Callable[[dict, str | None], bool | None]
# checkpoint_when(epoch, improved, last) -> write a checkpoint after this (1-based) epoch?
CheckpointWhen = Callable[[int, bool, bool], bool]
EVAL_CHUNK = 4096  # rows per forward pass when embedding a whole split


# --------------------------------------------------------------------------------------------------
# Data


def load_data(cfg: TrainConfig) -> tuple[SplitData, SplitData]:
    """(train, val) splits of ``cfg.data`` (:func:`e2i.store.mix.load_train_val`)."""
    return load_train_val(cfg.data, seed=cfg.seed)


class SplitTensors:
    """A split as device tensors: item_emb (N, Di), caption_emb (M, Dc), caption_item (M,) int64."""

    def __init__(self, data: SplitData, device: torch.device) -> None:
        self.item_emb = torch.from_numpy(data.item_emb).to(device)
        self.caption_emb = torch.from_numpy(data.caption_emb).to(device)
        self.caption_item = torch.from_numpy(data.caption_item).to(device)

    @property
    def num_captions(self) -> int:
        return int(self.caption_emb.shape[0])

    def embed(self, model) -> tuple[torch.Tensor, torch.Tensor]:  # as e2i.evaluate.chunked.DiskSplit.embed
        return embed_split(model, self)


# --------------------------------------------------------------------------------------------------
# Pieces of the loop


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(cfg: TrainConfig) -> torch.device:
    """cuda (Ray sets CUDA_VISIBLE_DEVICES per worker) when asked for and available, else CPU."""
    if cfg.scaling.use_gpu and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def autocast_context(precision: str, device: torch.device):
    """bf16/fp16 autocast where the device supports it; '16-mixed' on CPU falls back to fp32."""
    if precision == "bf16-mixed":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            warnings.warn("bf16 not supported on this GPU; training in fp32")
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        if device.type != "cuda":
            warnings.warn("16-mixed needs a GPU; training in fp32 on CPU (use bf16-mixed)")
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices (not biases, norms, positional/temperature scalars)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.optim.lr)


@torch.no_grad()
def embed_split(model, data: SplitTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """(item_z (N, D), caption_z (M, D)) in eval mode, in chunks, as float32."""
    model.eval()
    items = [
        model.encode_items(data.item_emb[i : i + EVAL_CHUNK]).float()
        for i in range(0, len(data.item_emb), EVAL_CHUNK)
    ]
    caps = [
        model.encode_captions(data.caption_emb[i : i + EVAL_CHUNK]).float()
        for i in range(0, data.num_captions, EVAL_CHUNK)
    ]
    return torch.cat(items), torch.cat(caps)


def val_metric_name(key: str) -> str:
    """Reported name: text_to_item/x -> val/x, item_to_text/x -> val/item_to_text/x."""
    direction, _, metric = key.partition("/")
    return f"val/{metric}" if direction == "text_to_item" else f"val/{key}"


@torch.no_grad()
def validate(model, loss_fn, data, batch_size: int, bias_used: bool, per_query: bool = False):
    """(metrics, per-query values): retrieval metrics (no CIs) and the mean loss over fixed batches of the
    val split (``data``: a SplitTensors, or a DiskSplit read in chunks); the per-query values
    (``retrieval_metrics(per_query=True)``'s) only with ``per_query``, else None."""
    from e2i.evaluate.metrics import retrieval_metrics

    item_z, cap_z = data.embed(model)
    raw = retrieval_metrics(item_z.cpu(), cap_z.cpu(), data.caption_item.cpu(), ci=False, per_query=per_query)
    raw, pq = raw if per_query else (raw, None)
    out = {val_metric_name(k): float(v) for k, v in raw.items() if not k.endswith(("/ci95", "/num_queries"))}
    order = torch.randperm(data.num_captions, generator=torch.Generator().manual_seed(0)).to(cap_z.device)
    n_batches, size = global_batches(data.num_captions, batch_size, 1)
    losses = []
    for b in range(n_batches):
        rows = order[b * size : (b + 1) * size]
        ids = data.caption_item[rows]
        losses.append(
            float(
                loss_fn(item_z[ids], cap_z[rows], ids, model.logit_scale, model.bias if bias_used else None)
            )
        )
    out["val/loss"] = float(np.mean(losses))
    return out, pq


def _improved(value: float, best: float | None, mode: str) -> bool:
    if best is None or not math.isfinite(best):
        return math.isfinite(value)
    return value > best if mode == "max" else value < best


# --------------------------------------------------------------------------------------------------
# The per-worker loop


def run_training(
    cfg: TrainConfig,
    *,
    report: Report,
    resume_from: str | None = None,
    data: tuple[SplitData, SplitData] | None = None,
    checkpoint_when: CheckpointWhen | None = None,
    stream=None,
) -> dict:
    """Train ``cfg`` on this worker; returns {history, best, best_epoch, best_metric, epochs, stopped_early}.

    ``report(metrics, checkpoint_dir)`` is called once per epoch on every worker (checkpoint_dir is
    None on ranks > 0). ``resume_from`` is a checkpoint directory written by this loop: training
    continues after its epoch with its optimizer, loss (queue) state and history. ``data`` =
    (train, val) SplitData skips loading from ``cfg.data.store``. ``checkpoint_when(epoch, improved,
    last)`` replaces :func:`checkpoint_due` (every rank must give the same answer). ``stream`` (a Ray
    Data Dataset, or this worker's DataIterator shard) streams the train captions of ``cfg.data.store``
    instead of loading them; items stay in memory (:mod:`e2i.train.stream`), the val split too unless it
    exceeds the budget as well (then it is read in chunks every epoch: :func:`e2i.evaluate.chunked.val_split`).
    """
    from e2i.model.heads import build_model
    from e2i.model.losses import build_loss

    rank, world = dist_info()
    device = pick_device(cfg)
    captions = None  # the streamed train captions (e2i.train.stream)
    if stream is not None:
        from e2i.train.stream import CaptionStream

        captions = CaptionStream(stream, cfg, world=world, device=device)
        train_data = captions.items  # items only
        from e2i.evaluate.chunked import val_split  # val in memory, or read in chunks over the budget

        val_data, val = val_split(cfg, device, announce=rank == 0)
    else:
        train_data, val_data = data if data is not None else load_data(cfg)
        val = SplitTensors(val_data, device)
    train = SplitTensors(train_data, device)

    seed_everything(cfg.seed)  # same initial weights on every worker
    model = build_model(cfg.model, train_data.item_dim, train_data.caption_dim).to(device)
    started = None if resume_from else warm_start_(model, cfg, train_data, val_data)  # None: off or resumed
    loss_fn = build_loss(cfg.loss, dim=cfg.model.output_dim, rank=rank, world_size=world).to(device)
    val_cfg = LossConfig(type="softmax_infonce") if cfg.loss.type == "queue_infonce" else cfg.loss
    val_loss_fn = build_loss(val_cfg, dim=cfg.model.output_dim).to(device)
    bias_used = bool(getattr(loss_fn, "uses_bias", True))
    if not bias_used:
        model.bias.requires_grad_(False)
    optimizer = build_optimizer(model, cfg)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    broadcast_parameters(model, world)

    progress = {"epoch": 0, "step": 0, "best_metric": None, "best_epoch": 0, "bad_epochs": 0, "history": []}
    if resume_from:
        saved = load_checkpoint(resume_from, model=model, optimizer=optimizer, loss_fn=loss_fn)
        progress.update({k: saved[k] for k in progress})
    initial, own_best = None, progress["best_metric"]  # the baseline is "epoch 0" of the selection only
    if started:  # (val metrics, weights) of the baseline; rank 0 says which baseline it is
        start = copy_state(model)  # the baseline (warm_start_init) or the cold initialisation
        model.load_state_dict(started["state"])
        initial = (*validate(model, val_loss_fn, val, cfg.optim.batch_size, bias_used, True), started["state"])
        model.load_state_dict(start)
        progress["best_metric"] = initial[0][cfg.metric]
        announce(cfg, started, initial[0], rank)

    n_batches, local = global_batches(captions.num_captions if captions else train.num_captions,
                                      cfg.optim.batch_size, world)
    accum = cfg.optim.accumulate_grad_batches
    steps_per_epoch, micro_per_epoch = epoch_plan(n_batches, accum, cfg.optim.min_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.optim.epochs
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    scaler = (
        torch.amp.GradScaler("cuda") if cfg.optim.precision == "16-mixed" and device.type == "cuda" else None
    )
    stopped_early = False
    perms = PassPermutations(train.num_captions, cfg.seed, device)
    batches = captions.micro_batches(progress["epoch"] * micro_per_epoch, n_batches, local) if captions else None

    for epoch in range(progress["epoch"], cfg.optim.epochs):
        start = time.perf_counter()
        model.train()
        torch.manual_seed(cfg.seed * 1_000_003 + rank * 10_007 + epoch)  # dropout stream of this epoch
        losses = []
        for j in range(micro_per_epoch):
            if batches is None:
                g = epoch * micro_per_epoch + j  # micro-batch index of the run: batch b of data pass p
                perm, b = perms[g // n_batches], g % n_batches
                rows = perm[b * local * world + rank * local : b * local * world + (rank + 1) * local]  # (B/W,)
                ids, caps = train.caption_item[rows], train.caption_emb[rows]  # (B/W,) item row = positive id
            else:  # streamed: batch g % n_batches of pass g // n_batches of this worker's shard
                ids, caps = next(batches)  # (B/W,) item rows, (B/W, Dc)
            with autocast_context(cfg.optim.precision, device):
                item_z, cap_z = model(train.item_emb[ids], caps)  # (B/W, D) each
            loss = loss_fn(
                item_z.float(), cap_z.float(), ids, model.logit_scale, model.bias if bias_used else None
            )
            scaled = loss / accum
            (scaler.scale(scaled) if scaler else scaled).backward()
            losses.append(float(loss.detach()))
            if (j + 1) % accum == 0 or j + 1 == micro_per_epoch:
                progress["step"] = _optimizer_step(
                    optimizer, params, scaler, cfg, world, progress["step"], warmup_steps, total_steps,
                    model=model,
                )
        seconds = time.perf_counter() - start
        # per-query values only when a warm-start baseline needs the paired comparison (beats_baseline)
        val_metrics, val_pq = validate(model, val_loss_fn, val, cfg.optim.batch_size, bias_used,
                                       per_query=initial is not None)
        metrics = {
            "epoch": epoch + 1,
            "step": progress["step"],
            "train/loss": float(np.mean(losses)),
            "lr": optimizer.param_groups[0]["lr"],
            "logit_scale": float(model.logit_scale.detach()),
            **val_metrics,
            "time/epoch_s": seconds,
            "time/val_s": time.perf_counter() - start - seconds,
            "passes": (epoch + 1) * micro_per_epoch / n_batches,  # passes over the train captions so far
            "train/pairs_per_s": micro_per_epoch * local * world / seconds,
        }
        value = metrics.get(cfg.metric)
        if value is None:
            raise KeyError(f"metric {cfg.metric!r} is not computed (have: {', '.join(sorted(metrics))})")
        improved = _improved(value, progress["best_metric"], cfg.metric_mode) and (  # the selection (baseline:
            initial is None or beats_baseline(val_pq, initial[1], cfg.metric, cfg.metric_mode,  # epoch 0,
                                              cfg.model.warm_start_margin))  # replaced only by a clear gain)
        own = _improved(value, own_best, cfg.metric_mode)  # patience: the trained epochs' own progress
        own_best = value if own else own_best
        if improved:
            progress.update(best_metric=value, best_epoch=epoch + 1)
        progress["bad_epochs"] = 0 if own else progress["bad_epochs"] + 1
        progress["epoch"] = epoch + 1
        progress["history"].append(metrics)
        patience = cfg.optim.early_stopping_patience
        stop = agree(patience > 0 and progress["bad_epochs"] >= patience, world)
        last = stop or epoch + 1 == cfg.optim.epochs
        if last and initial is not None and progress["best_epoch"] == 0:  # no epoch beat the baseline
            model.load_state_dict(initial[2])  # the last checkpoint is the baseline (its val metrics too)
            metrics.update(initial[0], warm_start_kept=1.0)
            progress.update(best_epoch=epoch + 1, bad_epochs=0)
            improved = True
        due = (checkpoint_when or partial(checkpoint_due, cfg))(epoch + 1, improved, last)
        report_epoch(report, metrics, write=due and rank == 0, model=model, optimizer=optimizer,
                     loss_fn=loss_fn, progress=progress, config=cfg.to_dict())
        if stop:
            stopped_early = progress["epoch"] < cfg.optim.epochs
            break

    if batches is not None:
        batches.close()  # ends the Ray Data pass in flight
    history = progress["history"]
    best = history[progress["best_epoch"] - 1] if progress["best_epoch"] else {}
    return {
        "history": history,
        "best": best,
        "best_epoch": progress["best_epoch"],
        "best_metric": progress["best_metric"],
        "epochs": progress["epoch"],
        "stopped_early": stopped_early,
    }


def _optimizer_step(
    optimizer, params, scaler, cfg: TrainConfig, world: int, step: int, warmup_steps: int, total_steps: int,
    *, model=None,
) -> int:
    """Average grads over workers, unscale (GradScaler), clip, set the scheduled lr, step, clamp the
    model's parameters; returns the new step count.

    With a GradScaler the (still scaled) gradients are averaged first: all workers use the same loss
    scale s, so mean_w(s * g_w) = s * mean_w(g_w), and ``unscale_`` then checks the *averaged*
    gradients for inf/NaN: an overflow on any worker makes the mean non-finite on every worker, so all
    ranks skip the step together (unscaling first lets each rank decide on its own gradients, and a
    rank whose own gradients are finite then steps with the averaged inf/NaN)."""
    average_gradients(params, world)
    if scaler:
        scaler.unscale_(optimizer)
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
    lr = lr_at(step, peak=cfg.optim.lr, warmup_steps=warmup_steps, total_steps=total_steps,
               schedule=cfg.optim.schedule)
    for group in optimizer.param_groups:
        group["lr"] = lr
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    clamp = getattr(model, "clamp_parameters_", None)
    if clamp is not None:
        clamp()
    return step + 1

