"""The experiments' metrics against brute-force references on small data."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoencoders import metrics


def brute_force_neighbors(q, items, k, metric):
    out = []
    for v in q:
        if metric == "cosine":
            d = [1 - v @ w / (np.linalg.norm(v) * np.linalg.norm(w)) for w in items]
        else:
            d = [np.sum((v - w) ** 2) for w in items]
        out.append(np.argsort(d, kind="stable")[:k])
    return np.array(out)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_q=st.integers(1, 30), n_items=st.integers(10, 60),
       dim=st.integers(1, 8), k=st.integers(1, 10), metric=st.sampled_from(["cosine", "euclidean"]),
       chunk=st.integers(1, 16))
def test_nearest_neighbors_match_brute_force(seed, n_q, n_items, dim, k, metric, chunk):
    rng = np.random.default_rng(seed)
    q, items = rng.standard_normal((n_q, dim)), rng.standard_normal((n_items, dim))
    got = metrics.nearest_neighbors(q, items, k, metric=metric, chunk=chunk)
    ref = brute_force_neighbors(q, items, k, metric)

    def dist(i, j):
        v, w = q[i], items[j]
        if metric == "cosine":
            return 1 - v @ w / (np.linalg.norm(v) * np.linalg.norm(w))
        return np.sum((v - w) ** 2)

    # compare distances, not indices: tied items may come in either order
    for i in range(n_q):
        got_d = [dist(i, j) for j in got[i]]
        ref_d = [dist(i, j) for j in ref[i]]
        np.testing.assert_allclose(got_d, ref_d, rtol=1e-4, atol=1e-5)
        assert len(set(got[i])) == k


def test_precision_at_k_brute_force():
    rng = np.random.default_rng(3)
    items, item_labels = rng.standard_normal((80, 5)), rng.integers(0, 3, 80)
    q, q_labels = rng.standard_normal((25, 5)), rng.integers(0, 3, 25)
    got = metrics.precision_at_k(q, q_labels, items, item_labels, ks=(1, 4, 10))
    ref = brute_force_neighbors(q, items, 10, "cosine")
    for k in (1, 4, 10):
        expected = np.mean([[item_labels[j] == q_labels[i] for j in ref[i, :k]]
                            for i in range(25)])
        assert got[k] == pytest.approx(expected)


def test_precision_is_one_for_perfectly_separated_classes():
    labels = np.repeat(np.arange(4), 10)
    codes = np.eye(4)[labels] + 0.01 * np.random.default_rng(0).random((40, 4))
    assert metrics.precision_at_k(codes, labels, codes, labels, ks=(1, 4))[4] == 1.0


def test_pca_matches_svd_reference():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6))
    pca = metrics.PCA(3).fit(X)
    centered = X - X.mean(axis=0)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    for got, ref in zip(pca.components_, vt[:3]):
        assert abs(abs(got @ ref) - 1) < 1e-9  # same direction up to sign
    np.testing.assert_allclose(pca.explained_variance_, s[:3] ** 2 / 199, rtol=1e-9)
    full = metrics.PCA(6).fit(X)
    np.testing.assert_allclose(full.inverse_transform(full.transform(X)), X, atol=1e-9)
    with pytest.raises(ValueError, match="exceeds the 6 features"):
        metrics.PCA(7).fit(X)


def test_iou_and_psnr():
    a = np.zeros((2, 4, 4)); b = np.zeros((2, 4, 4))
    a[0, :2, :2] = 1; b[0, :2, :] = 1          # 4 / 8
    assert metrics.iou(a, b) == pytest.approx((0.5 + 1.0) / 2)  # both empty counts as 1
    x = np.full((3, 10), 0.5)
    assert metrics.psnr(x + 0.1, x) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="shape"):
        metrics.iou(a, b[:1])


def test_knn_r2_reads_back_a_smooth_function_and_not_noise():
    rng = np.random.default_rng(0)
    codes = rng.random((2000, 2))
    target = np.stack([codes[:, 0] * 10, codes[:, 1] ** 2], axis=1)
    assert metrics.knn_r2(codes[:1500], target[:1500], codes[1500:], target[1500:]) > 0.98
    noise = rng.random((2000, 1))
    assert metrics.knn_r2(codes[:1500], noise[:1500], codes[1500:], noise[1500:]) < 0.1
