"""``model.warm_start``: a closed-form baseline as "epoch 0" of the best-val model selection.

The closed-form baselines of ``e2i baseline`` (:mod:`e2i.evaluate.baselines`: CCA, PLS, ridge,
Procrustes, centred cosine) are fitted on the train split in seconds, and on the quality benchmark's
real stores a trained head sometimes ends below them. With ``warm_start`` set, each head of the model
is a :class:`e2i.model.heads.SkipHead`, ``z(x) = head(x) + ((x - mean) / std) @ W + b``, and
:func:`warm_start_` computes the weights in which ``(mean, std, W, b)`` hold a baseline's map and the
head's last layer is zero: that model ranks exactly as the baseline. The loop validates it before the
first step and keeps it as the run's result when no trained epoch beats it on ``metric`` (val).
``warm_start_init: true`` also starts training from it; ``false`` (the shipped configs) trains cold,
exactly as without warm_start (the skip branch frozen at zero), so the baseline only replaces a
trained model that is worse on val. Measured: starting from the baseline overfits the 210-item toy
store within one epoch (every shipped config fell back to CCA, 0.387 instead of 0.43-0.50).

Every baseline's projection ``g`` of a side is affine in the raw features (standardisation, then a
matrix; PCA's centring and whitening too), so it is recovered *exactly* from the fitted baseline by
probing: ``b_raw = g(0)``, ``W_raw[j] = g(e_j) - g(0)`` (``D + 1`` evaluations, no need to know which
matrices the method keeps). In the standardised coordinates ``u = (x - mu) / sd`` of the train pairs
(items weighted by their number of captions, as the baselines do): ``x = mu + sd * u``, so
``g(x) = u @ (sd[:, None] * W_raw) + (mu @ W_raw + b_raw)`` = ``u @ W + b``. A feature constant on
train (``sd`` ~ 0) gets weight 0 and std 1 (the baseline would multiply a test value there by 1e8).
A map of ``k > output_dim`` columns (ridge keeps the item side's ``Di`` dims, cosine ``D``) is reduced
to the top ``output_dim`` right singular vectors ``P`` (k, output_dim) of the stacked train projections
``[Z_item; Z_cap]`` (the directions that carry most of both sides' dot products): ``W P``, ``b P``.

``warm_start: best`` fits every method and keeps the one with the highest text->item R@1 (then
mAP@10) on the **val** split, as it will be represented in the model (after the reduction); never on
test. At most ``MAX_FIT_PAIRS`` train pairs (items sampled by seed) and ``MAX_VAL_PAIRS`` val pairs are
used, so a store of millions of pairs takes seconds. Deterministic, so every worker of a multi-worker
run computes the same map (the loop broadcasts rank 0's weights anyway).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from e2i.store import SplitData, subset_split

MAX_FIT_PAIRS = 200_000  # as e2i baseline (run_baselines' max_train_pairs)
MAX_VAL_PAIRS = 50_000  # captions scored per candidate when picking the method on val
COMPONENTS = 16  # CCA/PLS components, as e2i baseline
CONSTANT_SD = 1e-6  # a feature whose train sd is below this (after baselines' +1e-8) is treated as constant


def _sample(split: SplitData, max_pairs: int, seed: int) -> SplitData:
    """At most ~max_pairs captions: a seeded sample of whole items (all their captions)."""
    if split.num_captions <= max_pairs:
        return split
    n_keep = max(2, int(max_pairs * split.num_items / split.num_captions))
    rows = np.sort(np.random.default_rng(seed).permutation(split.num_items)[:n_keep])
    return subset_split(split, rows)


def _affine(project, di: int, dc: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((W_item (Di, k), b_item (k,)), (W_cap (Dc, k), b_cap (k,))) of a baseline's affine ``project``,
    probed at the origin and the unit vectors of each side (module docstring)."""
    from e2i.evaluate.baseline_fits import _Pairs

    probe = _Pairs(np.vstack([np.zeros((1, di)), np.eye(di)]), np.vstack([np.zeros((1, dc)), np.eye(dc)]),
                   np.zeros(dc + 1, np.int64))
    item_z, cap_z = (np.asarray(z, np.float64) for z in project(probe))  # (Di + 1, k), (Dc + 1, k)
    return (item_z[1:] - item_z[0], item_z[0]), (cap_z[1:] - cap_z[0], cap_z[0])


def _standardised(w_raw: np.ndarray, b_raw: np.ndarray, mu: np.ndarray, sd: np.ndarray):
    """(mean, std, W, b) with ``((x - mean) / std) @ W + b == x @ w_raw + b_raw`` (constant features: W row 0)."""
    const = sd < CONSTANT_SD
    std = np.where(const, 1.0, sd)
    w = np.where(const[:, None], 0.0, std[:, None] * w_raw)  # (D, k)
    return mu, std, w, mu @ w_raw + b_raw  # b: the map at x = mu


def _apply(side, x: np.ndarray) -> np.ndarray:
    mean, std, w, b = side
    return ((x - mean) / std) @ w + b  # (n, k)


def _reduce(item, cap, train: SplitData, output_dim: int):
    """Both sides' maps with at most ``output_dim`` columns (the top right singular vectors of the
    stacked train projections when there are more)."""
    k = item[2].shape[1]
    if k <= output_dim:
        return item, cap
    z = np.vstack([_apply(item, train.item_emb[train.caption_item]), _apply(cap, train.caption_emb)])
    p = np.linalg.svd(z, full_matrices=False)[2][:output_dim].T  # (k, output_dim)
    return tuple((m, s, w @ p, b @ p) for m, s, w, b in (item, cap))


def _rescale(side, x: np.ndarray, output_dim: int):
    """The map times ``c > 0`` with mean ``|z|^2 = output_dim`` over the train rows ``x`` (unit variance per
    output dim on average, the scale of a randomly initialised head's output). Cosines, hence the
    ranking, do not change; Adam moves every weight by ~lr per step whatever its size, so the scale
    sets how fast training leaves the baseline: CCA's variates (|z|^2 = sum rho_j^2, ~1-4) would be
    swamped within the warmup by the zero-initialised head's growing output."""
    mean, std, w, b = side
    c = np.sqrt(output_dim / max(float(np.mean(np.sum(_apply(side, x) ** 2, axis=1))), 1e-12))
    return mean, std, c * w, c * b


def fit_linear_maps(train: SplitData, val: SplitData, *, method: str = "best", output_dim: int,
                    seed: int = 0) -> dict:
    """The baseline map of each side in the model's form: ``{"method", "item": (mean, std, W, b),
    "caption": (...), "val": {method: val text->item R@1}, "seconds"}`` (float64 numpy; W (D, <= output_dim))."""
    from e2i.evaluate import baseline_fits as bl

    start = time.perf_counter()
    fit_split = _sample(train, MAX_FIT_PAIRS, seed)
    fit_on, val_pairs = bl._Pairs.of(fit_split), bl._Pairs.of(_sample(val, MAX_VAL_PAIRS, seed))
    di, dc = fit_on.items.shape[1], fit_on.caps.shape[1]
    k = max(1, min(COMPONENTS, di, dc, len(fit_on.caps) - 1))
    names = [m for m in ("cca", "pls", "procrustes", "ridge", "cosine")
             if method in ("best", m) and not (m == "cosine" and di != dc)]
    if not names:
        raise ValueError(f"model.warm_start: {method!r} needs item and caption embeddings of one dim "
                         f"(have {di} and {dc})")
    mu_i, sd_i = bl._stats(fit_on.paired_items)  # the statistics the fitted methods standardise with
    mu_c, sd_c = bl._stats(fit_on.caps)
    found: dict[str, tuple] = {}
    scores: dict[str, tuple[float, float]] = {}
    for name in names:
        project, _ = bl.fit_method(name, fit_on, k, val=val_pairs, seed=seed)  # kept for the evaluation's baseline
        (wi, bi), (wc, bc) = _affine(project, di, dc)
        item, cap = _reduce(_standardised(wi, bi, mu_i, sd_i), _standardised(wc, bc, mu_c, sd_c), fit_split,
                            output_dim)
        item, cap = _rescale(item, fit_split.item_emb[fit_split.caption_item], output_dim), \
            _rescale(cap, fit_split.caption_emb, output_dim)
        found[name] = (item, cap)
        if len(names) > 1:
            m = bl._score(_apply(item, val_pairs.items), _apply(cap, val_pairs.caps), val_pairs.cap_item)
            scores[name] = (m["text_to_item/recall@1"], m["text_to_item/mAP@10"])
    best = max(scores, key=scores.get) if scores else names[0]
    return {"method": best, "item": found[best][0], "caption": found[best][1],
            "val": {n: round(s[0], 4) for n, s in scores.items()}, "seconds": time.perf_counter() - start}


def warm_start_(model: torch.nn.Module, cfg, train: SplitData, val: SplitData) -> dict | None:
    """Fit ``cfg.model.warm_start`` on ``train`` (picked on ``val``); returns :func:`fit_linear_maps`'
    summary plus ``state``, the model's state_dict with the baseline in its SkipHeads and the heads' last
    layers zeroed (ranks exactly as the baseline), or None when the model has no skip branch
    (warm_start none, or token-sequence inputs). With ``warm_start_init`` the model is left in that
    state (training starts from the baseline); without, it is left as built (cold) with the skip
    branches frozen at zero, so training is the same as without warm_start, and the loop keeps
    ``state`` only if no epoch beats it on val."""
    from e2i.model.heads import SkipHead

    heads = (model.item_head, model.caption_head)
    if cfg.model.warm_start == "none" or not all(isinstance(h, SkipHead) for h in heads):
        return None
    if train.num_captions < 2:  # e.g. captions streamed, not in memory: nothing to fit on here
        print(f"[{cfg.name}] warm start skipped: no train captions in memory to fit a baseline on", flush=True)
        return None
    fitted = fit_linear_maps(train, val, method=cfg.model.warm_start, output_dim=cfg.model.output_dim,
                             seed=cfg.seed)
    cold = copy_state(model)
    for head, side in zip(heads, (fitted["item"], fitted["caption"])):
        device = head.skip.weight.device
        head.set_linear_(*(torch.as_tensor(a, dtype=torch.float32, device=device) for a in side))
    out = {k: fitted[k] for k in ("method", "val", "seconds")}
    out["state"] = copy_state(model)  # the baseline as weights of this model: epoch 0 of the selection
    if not cfg.model.warm_start_init:  # train cold, as without warm_start: the skip branch stays at 0
        model.load_state_dict(cold)
        for head in heads:
            head.skip.requires_grad_(False)
    return out


def copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the state_dict (the warm-started weights, restored if no epoch beats them)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def announce(cfg, started: dict, val_metrics: dict, rank: int = 0) -> None:
    if rank == 0:
        print(f"[{cfg.name}] warm start: closed-form baseline {started['method']} (val t2i R@1 by method "
              f"{started['val'] or 'n/a'}; {started['seconds']:.1f}s), {cfg.metric} "
              f"{val_metrics[cfg.metric]:.4f} before training", flush=True)


def per_query_key(metric: str) -> str | None:
    """The per-query values of ``retrieval_metrics`` whose mean is the val ``metric`` (``val/mAP@10`` ->
    ``text_to_item/mAP@10``, ``val/item_to_text/recall@1`` -> ``item_to_text/recall@1``, ``val/mean_rank``
    -> the ranks), or None when it is not a mean over queries (``val/loss``, ``val/median_rank``)."""
    name = metric.removeprefix("val/")
    key = name if name.startswith("item_to_text/") else f"text_to_item/{name}"
    return None if name == "loss" or key.endswith("median_rank") else key


def paired_gain(epoch: np.ndarray, base: np.ndarray, clusters: np.ndarray, mode: str = "max") -> tuple[float, float]:
    """(mean gain of an epoch over the baseline on a mean-over-queries metric, its standard error).

    The gain is the mean of the paired per-query differences ``d`` (sign flipped for a metric to
    minimise). Queries of one item (its captions) are not independent, so the error is the
    cluster-robust one with items as clusters (the delta-method value of the item-level bootstrap of
    ``e2i evaluate``'s intervals): ``sqrt(C / (C - 1) * sum_c (D_c - mean * n_c)^2) / n`` with ``D_c``,
    ``n_c`` the sum and count of ``d`` over the captions of item ``c``; one caption per item gives the
    ordinary ``sd / sqrt(n)``."""
    d = np.asarray(epoch, np.float64) - np.asarray(base, np.float64)
    d = -d if mode == "min" else d
    _, code = np.unique(np.asarray(clusters), return_inverse=True)
    n_c, sum_c = np.bincount(code).astype(np.float64), np.bincount(code, weights=d)
    mean, c = float(d.mean()), len(n_c)
    if c < 2:
        return mean, float("inf")
    return mean, float(np.sqrt(c / (c - 1) * np.sum((sum_c - mean * n_c) ** 2)) / len(d))


def beats_baseline(epoch_pq: dict | None, base_pq: dict | None, metric: str, mode: str, margin: float) -> bool:
    """Whether a trained epoch may replace the warm-start baseline: its paired gain on ``metric`` over
    the val queries is above ``margin`` standard errors (:func:`paired_gain`). ``margin: 0`` (or a
    metric that is not a mean over queries) is the plain comparison the caller makes anyway."""
    key = per_query_key(metric)
    if margin <= 0 or key is None or epoch_pq is None or base_pq is None:
        return True
    direction = key.split("/")[0]
    gain, se = paired_gain(epoch_pq[key], base_pq[key], base_pq[f"{direction}/cluster"], mode)
    return gain > margin * se
