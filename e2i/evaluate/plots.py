"""Plots people look at after training: learning curves and 2-D maps of the shared embedding space.

Matplotlib with the Agg backend (no display needed); every function writes one PNG and returns its path.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

CURVE_METRICS = ("val/recall@1", "val/recall@5", "val/recall@10", "val/mAP@10", "val/item_to_text/recall@1")


def plot_training_curves(history: list[dict], path: str | os.PathLike, *, title: str = "") -> Path:
    """Three panels over epochs: train/val loss, learning rate, validation retrieval metrics."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key, style in (("train/loss", "-o"), ("val/loss", "--s")):
        if any(key in h for h in history):
            axes[0].plot(epochs, [h.get(key, np.nan) for h in history], style, label=key, markersize=3)
    axes[0].set(title="loss", xlabel="epoch")
    axes[1].plot(epochs, [h.get("lr", np.nan) for h in history], "-o", markersize=3)
    axes[1].set(title="learning rate (end of epoch)", xlabel="epoch")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for key in CURVE_METRICS:
        if any(key in h for h in history):
            axes[2].plot(epochs, [h.get(key, np.nan) for h in history], "-o", label=key, markersize=3)
    axes[2].set(title="validation (text->item unless named)", xlabel="epoch", ylim=(0, 1))
    for ax in (axes[0], axes[2]):
        ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def project_2d(x: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """(n, D) -> (n, 2) with PCA or t-SNE (sklearn; perplexity capped for small n, deterministic by seed)."""
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        # exact gradients are faster than Barnes-Hut below ~2000 points (and single-threaded);
        # 500 iterations settle a map of this size
        method = "exact" if len(x) <= 2000 else "barnes_hut"
        tsne = TSNE(
            n_components=2, perplexity=perplexity, init="pca", random_state=seed, method=method, max_iter=500
        )
        return tsne.fit_transform(x)
    raise ValueError(f"unknown projection {method!r} (valid: pca, tsne)")


def plot_embedding_map(
    item_z: np.ndarray,
    cap_z: np.ndarray,
    cap_item: np.ndarray,
    path: str | os.PathLike,
    *,
    method: str = "tsne",
    max_items: int = 300,
    highlight: int = 8,
    seed: int = 0,
    title: str = "",
) -> Path:
    """Items (circles) and captions (crosses) of up to ``max_items`` items projected together.

    Both modalities are projected jointly, so a good shared space puts each item next to its captions;
    ``highlight`` items and their captions get colours and lines to their item, the rest are grey.
    """
    rng = np.random.default_rng(seed)
    n = len(item_z)
    items = np.sort(rng.choice(n, size=min(n, max_items), replace=False))  # (n',) subsample of item rows
    caps = np.flatnonzero(np.isin(cap_item, items))  # (m',) their captions
    xy = project_2d(np.concatenate([item_z[items], cap_z[caps]]).astype(np.float64), method, seed)
    item_xy, cap_xy = xy[: len(items)], xy[len(items) :]
    row_of = {int(i): r for r, i in enumerate(items)}  # item row -> position in `items`

    fig, ax = plt.subplots(figsize=(7, 7))
    ax.scatter(item_xy[:, 0], item_xy[:, 1], s=14, c="lightgray", marker="o", label="items")
    ax.scatter(cap_xy[:, 0], cap_xy[:, 1], s=10, c="silver", marker="x", label="captions")
    colors = plt.get_cmap("tab10")
    for k, item in enumerate(items[:highlight]):
        color = colors(k % 10)
        ix, iy = item_xy[row_of[int(item)]]
        mine = np.flatnonzero(cap_item[caps] == item)
        for cx, cy in cap_xy[mine]:
            ax.plot([ix, cx], [iy, cy], color=color, alpha=0.4, linewidth=0.8)
        ax.scatter(cap_xy[mine, 0], cap_xy[mine, 1], s=30, color=color, marker="x")
        ax.scatter([ix], [iy], s=70, color=color, marker="o", edgecolors="black")
    ax.set(
        title=title or f"{method.upper()} of the shared space ({len(items)} items, {len(caps)} captions)",
        xticks=[],
        yticks=[],
    )
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_best_so_far(
    seconds: list[float],
    values: list[float],
    path: str | os.PathLike,
    *,
    complete: list[bool] | None = None,
    mode: str = "max",
    metric: str = "objective",
    baseline: tuple[str, float] | None = None,
    title: str = "",
) -> Path:
    """Best objective so far of the complete trials against wall-clock seconds (a step line); every trial
    a marker at its end (o complete, x stopped early: its partial value is not in the line); the best
    closed-form baseline ``(label, value)`` as a horizontal dashed line."""
    xs, ys = np.asarray(seconds, dtype=np.float64), np.asarray(values, dtype=np.float64)
    done = np.ones(len(xs), bool) if complete is None else np.asarray(complete, bool)
    order = np.argsort(xs, kind="stable")
    xs, ys, done = xs[order], ys[order], done[order]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.scatter(xs[done], ys[done], s=18, color="tab:blue", label="complete trial (at its end)", zorder=3)
    if (~done).any():
        ax.scatter(xs[~done], ys[~done], s=22, color="tab:orange", marker="x", label="stopped early", zorder=3)
    if done.any():
        bx, by = xs[done], ys[done]
        best = np.maximum.accumulate(by) if mode == "max" else np.minimum.accumulate(by)  # (T,)
        end = max(xs.max(), bx[-1])
        ax.step(np.r_[bx, end], np.r_[best, best[-1]], where="post", color="tab:green", label="best so far")
    else:
        ax.text(0.5, 0.5, "no complete trials yet", ha="center", va="center", transform=ax.transAxes)
    if baseline is not None:
        ax.axhline(baseline[1], color="tab:red", linestyle="--", label=f"baseline {baseline[0]}: {baseline[1]:.4f}")
    ax.set(xlabel="wall-clock seconds since the first trial started", ylabel=metric,
           title=title or "best so far against wall time")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
