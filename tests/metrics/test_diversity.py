"""Closed-form checks of the Vendi and RKE diversity scores (and optional PyPI oracles)."""
import math

import numpy as np
import pytest
import torch

from flowrl.metrics.diversity import (cosine_kernel, gaussian_kernel, median_bandwidth,
                                      pairwise_sq_dists, rke_from_features, rke_score,
                                      vendi_from_eigenvalues, vendi_from_features, vendi_score)

K3 = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
# eigenvalues of K3 / 3: (1.9, 0.1, 1.0) / 3


def _clusters(m=5, per=20, spread=1e-3, sep=100.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = sep * torch.randn(m, 3, generator=g, dtype=torch.float64)
    x = centres.repeat_interleave(per, 0) + spread * torch.randn(m * per, 3, generator=g,
                                                                dtype=torch.float64)
    return x


def test_vendi_reference_matrix_all_orders():
    lam = torch.tensor([1.9, 0.1, 1.0], dtype=torch.float64) / 3
    assert vendi_score(K3, q=1).item() == pytest.approx(2.1573, abs=1e-4)
    assert vendi_score(K3, q=1).item() == pytest.approx(math.exp(-(lam * lam.log()).sum().item()))
    assert vendi_score(K3, q=2).item() == pytest.approx(9 / 4.62, rel=1e-10)  # 1.948052
    assert vendi_score(K3, q=float("inf")).item() == pytest.approx(3 / 1.9, rel=1e-10)  # 1.578947
    assert vendi_score(K3, q=0).item() == pytest.approx(3.0, rel=1e-10)  # rank
    assert vendi_score(K3).dtype == torch.float64


def test_vendi_is_monotone_in_q():
    vals = [vendi_score(K3, q=q).item() for q in (0.0, 0.5, 1.0, 2.0, 10.0, float("inf"))]
    assert all(a >= b - 1e-12 for a, b in zip(vals, vals[1:]))


def test_vendi_identical_samples_is_one():
    x = torch.randn(1, 7).repeat(10, 1)
    for q in (0.5, 1.0, 2.0, float("inf")):
        assert vendi_from_features(x, kernel="cosine", q=q).item() == pytest.approx(1.0, abs=1e-9)
        assert vendi_from_features(x, kernel="gaussian", q=q).item() == pytest.approx(1.0, abs=1e-9)
    assert vendi_score(torch.ones(6, 6)).item() == pytest.approx(1.0, abs=1e-9)


def test_vendi_orthonormal_features_is_n():
    n = 6
    q_mat, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    x = 3.0 * q_mat  # orthogonal rows, any norm: cosine kernel = I
    assert torch.allclose(cosine_kernel(x), torch.eye(n, dtype=torch.float64), atol=1e-12)
    for q in (0.5, 1.0, 2.0, float("inf")):
        assert vendi_from_features(x, kernel="cosine", q=q).item() == pytest.approx(n, rel=1e-9)
    assert vendi_score(torch.eye(n)).item() == pytest.approx(n, rel=1e-9)


def test_vendi_dual_matches_primal():
    x = torch.randn(50, 4, dtype=torch.float64)  # D < N: dual path
    lam = torch.linalg.eigvalsh(cosine_kernel(x) / 50)
    for q in (1.0, 2.0, float("inf")):
        assert vendi_from_features(x, q=q).item() == pytest.approx(
            vendi_from_eigenvalues(lam, q).item(), rel=1e-9)


def test_rke_identical_and_clusters():
    x = torch.randn(1, 3).repeat(12, 1)
    assert rke_from_features(x).item() == pytest.approx(1.0, abs=1e-12)
    assert rke_score(torch.ones(5, 5)).item() == pytest.approx(1.0)
    for m in (1, 3, 5):
        xc = _clusters(m=m)
        assert rke_from_features(xc, bandwidth=1.0).item() == pytest.approx(m, abs=1e-3)
        assert vendi_from_features(xc, kernel="gaussian", bandwidth=1.0).item() == pytest.approx(
            m, abs=1e-3)


def test_rke_equals_vendi_order_two():
    x = torch.randn(30, 5, dtype=torch.float64)
    k = gaussian_kernel(x)
    assert rke_score(k).item() == pytest.approx(vendi_score(k, q=2).item(), rel=1e-9)
    assert 1.0 <= rke_score(k).item() <= 30.0


def test_gaussian_kernel_and_median_rule():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    k = gaussian_kernel(x, bandwidth=5.0)
    assert torch.allclose(k, torch.tensor([[1.0, math.exp(-0.5)], [math.exp(-0.5), 1.0]],
                                          dtype=torch.float64))
    # median squared distance 25 -> s = sqrt(25 / 2): the median pair gets exp(-1)
    assert median_bandwidth(x) == pytest.approx(math.sqrt(12.5))
    assert gaussian_kernel(x)[0, 1].item() == pytest.approx(math.exp(-1.0))
    y = torch.randn(4, 2)
    assert gaussian_kernel(x, y, bandwidth=1.0).shape == (2, 4)
    assert median_bandwidth(torch.zeros(5, 2)) == 1.0  # degenerate: no positive distance
    d2 = pairwise_sq_dists(torch.randn(7, 2, 3))
    assert d2.shape == (7, 7) and (d2.diagonal() == 0).all() and (d2 >= 0).all()


def test_cosine_kernel_properties():
    x = torch.randn(10, 2, 4)  # any trailing shape is flattened
    k = cosine_kernel(x)
    assert k.shape == (10, 10) and torch.allclose(k, k.T)
    assert (k.diagonal() == 1).all() and k.abs().max() <= 1.0
    assert torch.allclose(cosine_kernel(5.0 * x), k, atol=1e-12)  # scale invariant


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        vendi_score(torch.ones(2, 3))
    with pytest.raises(ValueError):
        vendi_from_features(torch.randn(4, 2), kernel="laplace")
    with pytest.raises(ValueError):
        gaussian_kernel(torch.randn(4, 2), bandwidth=0.0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # vendi_score uses scipy.sparse.csr
def test_vendi_oracle_package():
    vendi = pytest.importorskip("vendi_score.vendi")
    x = torch.randn(40, 6, dtype=torch.float64)
    k = gaussian_kernel(x).numpy()
    for q in (1, 2, 0.5):
        assert vendi_score(torch.from_numpy(k), q=q).item() == pytest.approx(
            float(vendi.score_K(k, q=q)), rel=1e-8)
    assert vendi_score(torch.from_numpy(k), q=float("inf")).item() == pytest.approx(
        float(vendi.score_K(k, q="inf")), rel=1e-8)
    xn = x.numpy()
    assert vendi_from_features(x).item() == pytest.approx(float(vendi.score_dual(xn)), rel=1e-8)


def test_rke_oracle_package():
    rke = pytest.importorskip("rke_score")
    x = np.random.default_rng(0).normal(size=(25, 3))
    frob = rke.RKE(kernel_bandwidth=1.5).compute_rke_mc_frobenius_norm(x)[1.5]
    assert rke_from_features(torch.from_numpy(x), bandwidth=1.5).item() == pytest.approx(
        1.0 / frob, rel=1e-8)
