"""The closed-form fits of ``e2i baseline`` (the methods and their maths: :mod:`e2i.evaluate.baselines`)
and :func:`fit_method`, which computes each fit once per process.

Pure numpy / scikit-learn / scipy. A fit returns ``(project, params)``: ``project(split)`` maps a
split's items and captions into the method's shared space; it holds the train statistics and (D, k)
matrices only, so a kept fit is small whatever the size of the train split.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import Counter, OrderedDict

import numpy as np

DEFAULT_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


class _Pairs:
    """One split as standardisation-ready arrays: items (N, Di), captions (M, Dc), caption_item (M,)."""

    def __init__(self, items: np.ndarray, caps: np.ndarray, cap_item: np.ndarray):
        self.items = np.asarray(items, np.float64)
        self.caps = np.asarray(caps, np.float64)
        self.cap_item = np.asarray(cap_item, np.int64)

    @classmethod
    def of(cls, split) -> _Pairs:
        return cls(split.item_emb, split.caption_emb, split.caption_item)

    def subset(self, item_rows: np.ndarray) -> _Pairs:
        """The items ``item_rows`` and all their captions, re-indexed."""
        new_row = np.full(len(self.items), -1, np.int64)
        new_row[item_rows] = np.arange(len(item_rows))
        keep = new_row[self.cap_item] >= 0
        return _Pairs(self.items[item_rows], self.caps[keep], new_row[self.cap_item[keep]])

    @property
    def paired_items(self) -> np.ndarray:  # (M, Di): each caption's item
        return self.items[self.cap_item]

    def digest(self) -> str:
        """A hash of the arrays' contents (shapes, dtypes, bytes): the key of :func:`fit_method`'s cache."""
        if getattr(self, "_digest", None) is None:
            h = hashlib.blake2b(digest_size=20)
            for a in (self.items, self.caps, self.cap_item):
                a = np.ascontiguousarray(a)
                h.update(f"{a.shape}{a.dtype.str};".encode())
                h.update(a.reshape(-1).view(np.uint8))
            self._digest = h.hexdigest()
        return self._digest


def _stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return a.mean(0), a.std(0) + 1e-8


def _score(item_z: np.ndarray, cap_z: np.ndarray, cap_item: np.ndarray, relevance=None) -> dict:
    from e2i.evaluate.metrics import retrieval_metrics

    def unit(z):
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    extra = {"relevance": relevance} if relevance is not None else {}  # text->item with the head's lists
    return retrieval_metrics(unit(item_z).astype(np.float32), unit(cap_z).astype(np.float32), cap_item, ci=False, **extra)


class _Scaler:
    """The train pair statistics of both sides: what a fitted map standardises any split with (held by
    the ``project`` closures instead of the standardised train pairs, so a kept fit is small)."""

    def __init__(self, mx: np.ndarray, sx: np.ndarray, my: np.ndarray, sy: np.ndarray):
        self.mx, self.sx, self.my, self.sy = mx, sx, my, sy

    def std(self, split: _Pairs) -> tuple[np.ndarray, np.ndarray]:
        """(items (N, Di), captions (M, Dc)) of ``split``, standardised."""
        return (split.items - self.my) / self.sy, (split.caps - self.mx) / self.sx


class _Fitted:
    """Standardisation of both sides with train pair statistics, shared by the fitted methods."""

    def __init__(self, train: _Pairs):
        mx, sx = _stats(train.caps)
        my, sy = _stats(train.paired_items)
        self.scaler = _Scaler(mx, sx, my, sy)
        self.X = (train.caps - mx) / sx  # (M, Dc)
        self.Y = (train.paired_items - my) / sy  # (M, Di)


def _fit_cosine(train: _Pairs, _):
    mu_i, mu_c = train.items.mean(0), train.caps.mean(0)
    return lambda s: (s.items - mu_i, s.caps - mu_c), {}


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
    """C^{-1/2} of a symmetric positive definite (D, D) matrix via its eigendecomposition."""
    w, v = np.linalg.eigh(c)
    return (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T


def _fit_cca(train: _Pairs, k: int, reg: float = 1e-3):
    f = _Fitted(train)
    m = len(f.X)
    cxx, cyy, cxy = f.X.T @ f.X / (m - 1), f.Y.T @ f.Y / (m - 1), f.X.T @ f.Y / (m - 1)
    cxx += reg * np.trace(cxx) / len(cxx) * np.eye(len(cxx))  # ridge: collinear dims stay invertible
    cyy += reg * np.trace(cyy) / len(cyy) * np.eye(len(cyy))
    wx, wy = _inv_sqrt(cxx), _inv_sqrt(cyy)
    u, rho, vt = np.linalg.svd(wx @ cxy @ wy)  # canonical correlations rho, descending
    k = min(k, len(rho))
    A, B = wx @ u[:, :k] * rho[:k], wy @ vt.T[:, :k] * rho[:k]  # (Dc, k), (Di, k), variates scaled by rho
    return _linear_maps(f, B, A), {"components": k, "reg": reg, "rho": [round(float(r), 4) for r in rho[:k]]}


def _linear_maps(f: _Fitted, item_map: np.ndarray, cap_map: np.ndarray):
    """project(split) -> (standardised items @ item_map (N, k), standardised captions @ cap_map (M, k))."""

    scaler = f.scaler

    def project(s):
        yi, xc = scaler.std(s)
        return yi @ item_map, xc @ cap_map

    return project


def _fit_pls(train: _Pairs, k: int):
    from sklearn.cross_decomposition import PLSSVD

    f = _Fitted(train)
    pls = PLSSVD(n_components=k, scale=False).fit(f.X, f.Y)
    U, V = pls.x_weights_, pls.y_weights_  # (Dc, k), (Di, k)
    return _linear_maps(f, V, U), {"components": k}


def _ridge_map(train: _Pairs, alpha: float):
    from sklearn.linear_model import Ridge

    f = _Fitted(train)
    reg = Ridge(alpha=alpha, fit_intercept=False).fit(f.X, f.Y)  # X~ (M, Dc) -> Y~ (M, Di)
    scaler = f.scaler

    def project(s):
        yi, xc = scaler.std(s)
        return yi, reg.predict(xc)

    return project


def _fit_ridge(train: _Pairs, _, *, val: _Pairs | None = None, alphas=DEFAULT_ALPHAS, seed: int = 0):
    selected_on = "val"
    fit_on, held = train, val
    if held is None:  # hold out 20 % of the train items (with all their captions)
        rows = np.random.default_rng(seed).permutation(len(train.items))
        n_held = max(1, len(rows) // 5)
        if len(rows) - n_held < 2:
            fit_on, held, selected_on = train, train, "train"  # too small to hold out: in-sample pick
        else:
            fit_on, held, selected_on = train.subset(np.sort(rows[n_held:])), train.subset(np.sort(rows[:n_held])), \
                "train holdout"
    scores = {}
    for alpha in alphas:
        item_z, cap_z = _ridge_map(fit_on, alpha)(held)
        scores[float(alpha)] = _score(item_z, cap_z, held.cap_item)["text_to_item/recall@1"]
    best = max(scores, key=lambda a: (scores[a], a))  # ties: the stronger regulariser
    return _ridge_map(train, best), {"alpha": best, "selected_on": selected_on, "alpha_r@1": scores}


def _fit_procrustes(train: _Pairs, k: int, *, pca_dim: int | None = None):
    from scipy.linalg import orthogonal_procrustes
    from sklearn.decomposition import PCA

    f = _Fitted(train)
    d = max(1, min(pca_dim or k, f.X.shape[1], f.Y.shape[1], len(f.X) - 1))
    pca_x = PCA(n_components=d, whiten=True, random_state=0).fit(f.X)
    pca_y = PCA(n_components=d, whiten=True, random_state=0).fit(f.Y)
    R, _ = orthogonal_procrustes(pca_x.transform(f.X), pca_y.transform(f.Y))  # (d, d), P_X R ~ P_Y
    scaler = f.scaler

    def project(s):
        yi, xc = scaler.std(s)
        return pca_y.transform(yi), pca_x.transform(xc) @ R

    return project, {"pca_dim": d}


_FITTERS = {"cosine": _fit_cosine, "cca": _fit_cca, "pls": _fit_pls, "ridge": _fit_ridge, "procrustes": _fit_procrustes}
FIT_CACHE_SIZE = 16  # fitted maps kept per process (a few per store: each holds (D, k) matrices, no data)
_fit_cache: OrderedDict = OrderedDict()  # key -> (project, params), least recently used first
_fit_lock = threading.Lock()
fit_counts: Counter = Counter()  # fits really computed in this process, by method (cache hits not counted)


def fit_method(name: str, train: _Pairs, k: int, *, val: _Pairs | None = None, alphas=DEFAULT_ALPHAS,
               pca_dim: int | None = None, seed: int = 0):
    """``(project, params)`` of baseline ``name`` fitted on ``train`` (``project(split) -> (item_z,
    cap_z)``), computed once per process for the same inputs.

    One ``e2i train`` fits the same methods on the same train split for the warm start
    (:mod:`e2i.train.warm_start`), for its test evaluation's baseline line and, in ``e2i demo``, for the
    tune report and the retrained best config: each fit is kept, keyed by the contents of ``train``
    (hash of its arrays), ``k`` and what the method depends on (ridge: ``val``'s contents, or ``seed``
    for its train hold-out, and ``alphas``; procrustes: ``pca_dim``), and handed out again instead of
    refitted. Every fit is deterministic, so a kept one equals a refit; the maps hold only the train
    statistics and (D, k) matrices, not the data."""
    if name == "ridge":
        options = {"val": val, "alphas": alphas, "seed": seed}
        extra = (val.digest() if val is not None else ("holdout", seed), tuple(float(a) for a in alphas))
    elif name == "procrustes":
        options, extra = {"pca_dim": pca_dim}, (pca_dim,)
    else:
        options, extra = {}, ()
    key = (train.digest(), name, k, extra)
    with _fit_lock:
        hit = _fit_cache.get(key)
        if hit is not None:
            _fit_cache.move_to_end(key)
    if hit is None:
        hit = _FITTERS[name](train, k, **options)
        with _fit_lock:
            fit_counts[name] += 1
            _fit_cache[key] = hit
            while len(_fit_cache) > FIT_CACHE_SIZE:
                _fit_cache.popitem(last=False)
    project, params = hit
    return project, copy.deepcopy(params)


def clear_fit_cache() -> None:
    """Forget the kept fits and the fit counts (tests)."""
    with _fit_lock:
        _fit_cache.clear()
        fit_counts.clear()
