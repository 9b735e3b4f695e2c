"""Metrics of the experiments, in plain NumPy.

* :func:`iou` -- intersection over union of binarised images (threshold 0.5);
* :func:`knn_r2` -- how well a quantity can be read back from codes: R^2 of a
  k-nearest-neighbour regression;
* :func:`precision_at_k` -- retrieval: the share of the k nearest training items
  (cosine distance) that carry the query's label;
* :class:`PCA` -- the linear baseline with the same number of components;
* :func:`psnr` -- peak signal-to-noise ratio of images in [0, 1].

Distances are computed in chunks of queries so that 10,000 queries against
60,000 items fit in memory.
"""
from __future__ import annotations

import numpy as np

__all__ = ["iou", "knn_r2", "nearest_neighbors", "precision_at_k", "PCA", "psnr",
           "r2_score"]


def _2d(name, a):
    a = np.asarray(a)
    if a.ndim < 2:
        raise ValueError(f"{name} must have a leading batch axis, got shape {a.shape}")
    return a.reshape(a.shape[0], -1)


def iou(pred, target, threshold=0.5):
    """Mean over images of |pred ∩ target| / |pred ∪ target| after thresholding.

    An image whose prediction and target are both empty counts as 1.
    """
    pred, target = _2d("pred", pred) > threshold, _2d("target", target) > threshold
    if pred.shape != target.shape:
        raise ValueError(f"iou: pred has shape {pred.shape} but target has {target.shape}")
    inter = (pred & target).sum(axis=1)
    union = (pred | target).sum(axis=1)
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


def psnr(pred, target, peak=1.0):
    """Mean over images of 10 log10(peak^2 / MSE) in dB (MSE floored at 1e-10)."""
    pred, target = _2d("pred", pred).astype(np.float64), _2d("target", target).astype(np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"psnr: pred has shape {pred.shape} but target has {target.shape}")
    mse = np.maximum(np.mean((pred - target) ** 2, axis=1), 1e-10)
    return float(np.mean(10 * np.log10(peak ** 2 / mse)))


def r2_score(y_true, y_pred):
    """1 - SSE / SST (per output column, averaged over columns)."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    sse = ((y_true - y_pred) ** 2).sum(axis=0)
    sst = ((y_true - y_true.mean(axis=0)) ** 2).sum(axis=0)
    return float(np.mean(1 - sse / np.maximum(sst, 1e-300)))


def nearest_neighbors(queries, items, k, metric="cosine", chunk=1024, exclude_self=False):
    """Indices (n_queries, k) of each query's k nearest items, nearest first.

    ``metric``: "cosine" (1 - cosine similarity; zero vectors are treated as
    orthogonal to everything) or "euclidean".  ``exclude_self`` drops the item
    with the query's own index (when queries and items are the same set).
    """
    queries = _2d("queries", queries).astype(np.float32)
    items = _2d("items", items).astype(np.float32)
    if queries.shape[1] != items.shape[1]:
        raise ValueError(f"nearest_neighbors: queries have {queries.shape[1]} features but "
                         f"items have {items.shape[1]}")
    extra = 1 if exclude_self else 0
    if not 1 <= k <= items.shape[0] - extra:
        raise ValueError(f"nearest_neighbors: k={k} must lie in 1..{items.shape[0] - extra}")
    if metric == "cosine":
        items_n = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
    elif metric == "euclidean":
        item_sq = (items.astype(np.float64) ** 2).sum(axis=1)
    else:
        raise ValueError(f"nearest_neighbors: metric={metric!r}; expected 'cosine' or 'euclidean'")
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], chunk):
        q = queries[start:start + chunk]
        if metric == "cosine":
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
            dist = 1.0 - q @ items_n.T
        else:
            dist = item_sq[None, :] - 2.0 * (q @ items.T)  # + |q|^2, same for every item
        if exclude_self:
            rows = np.arange(q.shape[0])
            dist[rows, start + rows] = np.inf
        part = np.argpartition(dist, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(dist, part, axis=1).argsort(axis=1, kind="stable")
        out[start:start + q.shape[0]] = np.take_along_axis(part, order, axis=1)
    return out


def precision_at_k(query_codes, query_labels, item_codes, item_labels, ks=(1, 4, 10),
                   metric="cosine"):
    """``{k: share of the k nearest items (by metric) that have the query's label}``."""
    query_labels, item_labels = np.asarray(query_labels), np.asarray(item_labels)
    if len(query_labels) != len(query_codes) or len(item_labels) != len(item_codes):
        raise ValueError("precision_at_k: every code needs exactly one label")
    neighbors = nearest_neighbors(query_codes, item_codes, max(ks), metric=metric)
    hits = item_labels[neighbors] == query_labels[:, None]
    return {int(k): float(hits[:, :k].mean()) for k in ks}


def knn_r2(train_codes, train_targets, test_codes, test_targets, k=10):
    """R^2 of predicting ``test_targets`` as the mean target of the k nearest
    training codes (Euclidean); targets may have several columns (averaged)."""
    neighbors = nearest_neighbors(test_codes, train_codes, k, metric="euclidean")
    train_targets = np.asarray(train_targets, dtype=np.float64).reshape(len(train_codes), -1)
    prediction = train_targets[neighbors].mean(axis=1)
    return r2_score(test_targets, prediction)


class PCA:
    """Principal component analysis by eigen-decomposition of the covariance."""

    def __init__(self, n_components):
        if int(n_components) <= 0:
            raise ValueError(f"PCA: n_components must be positive, got {n_components}")
        self.n_components = int(n_components)

    def fit(self, X):
        X = _2d("X", X).astype(np.float64)
        if self.n_components > X.shape[1]:
            raise ValueError(f"PCA: n_components={self.n_components} exceeds the "
                             f"{X.shape[1]} features")
        self.mean_ = X.mean(axis=0)
        centered = X - self.mean_
        cov = centered.T @ centered / max(len(X) - 1, 1)
        values, vectors = np.linalg.eigh(cov)
        order = np.argsort(values)[::-1][:self.n_components]
        self.components_ = vectors[:, order].T  # (n_components, n_features)
        # eigenvectors have an arbitrary sign: fix it so results are reproducible
        signs = np.sign(self.components_[np.arange(self.n_components),
                                         np.abs(self.components_).argmax(axis=1)])
        self.components_ *= signs[:, None]
        self.explained_variance_ = values[order]
        return self

    def transform(self, X):
        return (_2d("X", X).astype(np.float64) - self.mean_) @ self.components_.T

    def inverse_transform(self, codes):
        return np.asarray(codes) @ self.components_ + self.mean_

    def fit_transform(self, X):
        return self.fit(X).transform(X)
