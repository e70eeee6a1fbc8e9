"""Kernel diversity scores: Vendi (Friedman & Dieng, 2023) and RKE mode count (Jalali et al., 2023).

Pure tensor maths, no configs. Samples / features are (N, *) tensors (flattened to (N, D)); kernel
matrices are (N, N), symmetric positive semi-definite with unit diagonal, returned in float64.

    Vendi_q(K) = exp(H_q(lambda)),  lambda = eigenvalues of K / n (those <= 1e-12 dropped)
        H_1   = -sum lambda log lambda            (Shannon / von Neumann entropy, q = 1)
        H_q   = log(sum lambda^q) / (1 - q)        (Renyi, q != 1)
        H_inf = -log max lambda
    RKE(K)     = 1 / sum_ij (K_ij / n)^2 = Vendi_2(K)   ("effective number of modes")

Both equal 1 for n identical samples and n for n mutually orthogonal (K = I) samples.
Memory is O(N^2) float64: fine for N up to a few thousand.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

EIG_EPS = 1e-12  # eigenvalues of K/n at or below this are treated as zero


def _flat64(x: torch.Tensor) -> torch.Tensor:
    """(N, *) -> (N, D) float64."""
    if x.dim() < 1:
        raise ValueError("expected a batch of samples (N, *), got a scalar")
    return x.reshape(x.shape[0], -1).to(torch.float64)


def pairwise_sq_dists(x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Squared Euclidean distances ||x_i - y_j||^2, shape (N, M), float64, >= 0.

    x: (N, *), y: (M, *), same trailing size (default y = x: then the diagonal is exactly 0).
    """
    xf = _flat64(x)
    yf = xf if y is None else _flat64(y)
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(f"x has {xf.shape[1]} features per sample but y has {yf.shape[1]}")
    mu = xf.mean(0)  # centre first: less cancellation in the expansion below
    xf, yf = xf - mu, yf - mu
    d2 = (xf * xf).sum(1)[:, None] + (yf * yf).sum(1)[None, :] - 2.0 * xf @ yf.T
    d2 = d2.clamp_min(0.0)
    if y is None:
        d2.fill_diagonal_(0.0)
    return d2


def median_bandwidth(x: torch.Tensor) -> float:
    """Median-heuristic bandwidth s for the Gaussian kernel exp(-||x-y||^2 / (2 s^2)).

    Rule: s = sqrt(median_{i<j} ||x_i - x_j||^2 / 2), so a pair at the median distance has kernel
    value exp(-1) (torch's lower median for an even count). If the median is 0 (more than half the
    pairs coincide) the mean of the positive squared distances is used instead; with fewer than 2
    distinct samples s = 1.
    x: (N, *). Returns a python float > 0.
    Caveat: with m well separated clusters most pairs are between clusters, so the median is a
    between-cluster distance and the RKE/Vendi mode count is underestimated; pass a bandwidth there.
    """
    n = x.shape[0]
    if n < 2:
        return 1.0
    i, j = torch.triu_indices(n, n, offset=1, device=x.device)
    d2 = pairwise_sq_dists(x)[i, j]
    med = d2.median()
    if med <= 0:
        pos = d2[d2 > 0]
        if pos.numel() == 0:
            return 1.0
        med = pos.mean()
    return math.sqrt(float(med) / 2.0)


def gaussian_kernel(x: torch.Tensor, y: Optional[torch.Tensor] = None,
                    bandwidth: Optional[float] = None) -> torch.Tensor:
    """K_ij = exp(-||x_i - y_j||^2 / (2 s^2)), shape (N, M), float64, values in (0, 1].

    x: (N, *), y: (M, *) or None (then y = x and K has a unit diagonal).
    bandwidth: s > 0; None -> median_bandwidth of x (and y, when given, pooled).
    """
    if bandwidth is None:
        bandwidth = median_bandwidth(x if y is None else torch.cat([_flat64(x), _flat64(y)]))
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    return torch.exp(-pairwise_sq_dists(x, y) / (2.0 * float(bandwidth) ** 2))


def cosine_kernel(x: torch.Tensor) -> torch.Tensor:
    """K_ij = <x_i, x_j> / (||x_i|| ||x_j||), (N, N) float64, clamped to [-1, 1], unit diagonal.

    x: (N, *) features (e.g. embeddings). An all-zero row counts as orthogonal to every other row.
    """
    xn = torch.nn.functional.normalize(_flat64(x), dim=1, eps=1e-12)
    k = (xn @ xn.T).clamp(-1.0, 1.0)
    k.fill_diagonal_(1.0)
    return k


def _check_square(k: torch.Tensor) -> None:
    if k.dim() != 2 or k.shape[0] != k.shape[1] or k.shape[0] == 0:
        raise ValueError(f"expected a non-empty square kernel matrix (N, N), got {tuple(k.shape)}")


def _q_entropy(lam: torch.Tensor, q: float) -> torch.Tensor:
    """Renyi entropy of order q of the non-negative weights lam (K), float64 scalar tensor."""
    if q == 1:
        return -(lam * lam.log()).sum()
    if math.isinf(q) and q > 0:
        return -lam.max().log()
    if q < 0:
        raise ValueError(f"order q must be >= 0 (or inf), got {q}")
    return (lam ** q).sum().log() / (1.0 - q)


def vendi_from_eigenvalues(lam: torch.Tensor, q: float = 1.0) -> torch.Tensor:
    """exp(H_q(lam)) for eigenvalues lam (K,) of K/n; entries <= 1e-12 dropped. 0-dim float64."""
    lam = lam.to(torch.float64)
    lam = lam[lam > EIG_EPS]
    return _q_entropy(lam, float(q)).exp()


def vendi_score(K: torch.Tensor, q: float = 1.0) -> torch.Tensor:
    """Vendi score of order q of a kernel matrix: exp of the entropy of the eigenvalues of K/n.

    K: (N, N) symmetric PSD similarity matrix with unit diagonal (any float dtype).
    q: 1 (Shannon, default), float('inf') (-log max eigenvalue) or any other q >= 0 (Renyi).
    Returns a 0-dim float64 tensor in [1, N]: the effective number of distinct samples.
    """
    _check_square(K)
    n = K.shape[0]
    lam = torch.linalg.eigvalsh(K.to(torch.float64) / n)
    return vendi_from_eigenvalues(lam, q)


def rke_score(K: torch.Tensor) -> torch.Tensor:
    """Order-2 Renyi kernel entropy mode count 1 / sum_ij (K_ij / n)^2 = 1 / ||K/n||_F^2.

    K: (N, N) kernel matrix with unit diagonal (usually Gaussian). Equals vendi_score(K, q=2)
    without an eigendecomposition. Returns a 0-dim float64 tensor in [1, N].
    """
    _check_square(K)
    n = K.shape[0]
    return 1.0 / ((K.to(torch.float64) / n) ** 2).sum()


def vendi_from_features(x: torch.Tensor, kernel: str = "cosine", q: float = 1.0,
                        bandwidth: Optional[float] = None) -> torch.Tensor:
    """Vendi score of samples / features x: (N, *) -> 0-dim float64 tensor in [1, N].

    kernel="cosine": cosine similarity of the flattened rows (the Vendi paper's embedding kernel);
        when D < N (and no row is zero) it uses the dual (D, D) matrix X^T X / n, which has the same
        non-zero eigenvalues, so N may be large.
    kernel="gaussian": gaussian_kernel(x, bandwidth=bandwidth) (median rule when bandwidth is None).
    """
    if kernel == "cosine":
        xf = _flat64(x)
        n, d = xf.shape
        if d < n and bool((xf.norm(dim=1) > 0).all()):
            xn = torch.nn.functional.normalize(xf, dim=1)
            return vendi_from_eigenvalues(torch.linalg.eigvalsh(xn.T @ xn / n), q)
        return vendi_score(cosine_kernel(xf), q)
    if kernel == "gaussian":
        return vendi_score(gaussian_kernel(x, bandwidth=bandwidth), q)
    raise ValueError(f"unknown kernel {kernel!r}; expected 'cosine' or 'gaussian'")


def rke_from_features(x: torch.Tensor, bandwidth: Optional[float] = None) -> torch.Tensor:
    """RKE mode count of samples x: (N, *), Gaussian kernel of bandwidth s (median rule if None).

    Returns a 0-dim float64 tensor in [1, N].
    """
    return rke_score(gaussian_kernel(x, bandwidth=bandwidth))
