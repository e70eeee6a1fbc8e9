"""Exact and Hutchinson divergence against closed forms."""
import pytest
import torch

from flowrl.sampling.divergence import exact_divergence, hutchinson_divergence, sample_probe


def _nonlinear(w):
    """f(x) = tanh(x W) * x + sin(x): dense, non-symmetric Jacobian; x (B, D)."""
    return lambda x: torch.tanh(x @ w) * x + torch.sin(x)


def _nonlinear_div(w, x):
    """Closed-form divergence of _nonlinear(w): sum_i [(1 - t_i^2) W_ii x_i + t_i + cos x_i]."""
    t = torch.tanh(x @ w)
    return ((1 - t ** 2) * w.diagonal() * x + t + torch.cos(x)).sum(1)


def test_exact_divergence_linear_field_is_trace():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    div = exact_divergence(lambda z: z @ a.T, x)
    assert div.shape == (8,)
    assert torch.allclose(div, torch.full((8,), a.trace().item(), dtype=torch.float64))


def test_exact_divergence_image_shaped_and_nonlinear():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 6, generator=g, dtype=torch.float64) / 3
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    assert torch.allclose(exact_divergence(_nonlinear(w), x), _nonlinear_div(w, x))
    # (B, C, H, W) shapes: div of x -> x**2 is 2 * sum(x)
    xi = torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64)
    assert torch.allclose(exact_divergence(lambda z: z ** 2, xi), 2 * xi.flatten(1).sum(1))


def test_exact_divergence_no_grad_context_and_graph():
    a = torch.tensor([[2.0, 1.0], [0.0, -3.0]], requires_grad=True)
    x = torch.randn(3, 2)
    with torch.no_grad():
        div = exact_divergence(lambda z: z @ a.T, x)
    assert torch.allclose(div, torch.full((3,), -1.0)) and not div.requires_grad
    div = exact_divergence(lambda z: z @ a.T, x, create_graph=True)
    div.sum().backward()  # d trace(A) / dA = I, summed over the batch of 3
    assert torch.allclose(a.grad, 3 * torch.eye(2))
    assert torch.allclose(exact_divergence(lambda z: torch.ones_like(z), x), torch.zeros(3))


def test_hutchinson_rademacher_exact_for_diagonal_jacobian():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 10, generator=g, dtype=torch.float64)
    fn = lambda z: torch.sin(z) * 2.0 + z ** 3  # noqa: E731  diagonal Jacobian
    exact = (2 * torch.cos(x) + 3 * x ** 2).sum(1)
    mean, stderr = hutchinson_divergence(fn, x, num_probes=3, generator=g)
    assert torch.allclose(mean, exact) and torch.allclose(stderr, torch.zeros_like(stderr))
    mean1, stderr1 = hutchinson_divergence(fn, x, num_probes=1, generator=g)
    assert torch.allclose(mean1, exact) and torch.isnan(stderr1).all()


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_unbiased_within_standard_errors(probe):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 6, generator=g, dtype=torch.float64)
    x = torch.randn(32, 6, generator=g, dtype=torch.float64)
    exact = exact_divergence(_nonlinear(w), x)
    mean, stderr = hutchinson_divergence(_nonlinear(w), x, num_probes=64, probe=probe, generator=g)
    assert mean.shape == stderr.shape == (32,)
    assert (stderr > 0).all()
    z = (mean - exact) / stderr
    assert (z.abs() < 3.0).float().mean() > 0.9  # ~99.7% expected
    assert z.abs().max() < 4.0  # 32 samples: the max |z| of 32 normals is rarely > 4
    assert 0.5 < z.abs().mean() < 1.2  # E|N(0,1)| = 0.80: the stderr is neither too small nor too large


def test_hutchinson_reproducible_with_generator_and_probe_stats():
    x = torch.randn(4, 5)
    fn = _nonlinear(torch.randn(5, 5))
    a = hutchinson_divergence(fn, x, 2, generator=torch.Generator().manual_seed(7))
    b = hutchinson_divergence(fn, x, 2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0])
    z = sample_probe(torch.empty(20000, 3), "rademacher", torch.Generator().manual_seed(0))
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    zg = sample_probe(torch.empty(200000, 2, dtype=torch.float64), "gaussian")
    assert torch.allclose(zg.T @ zg / 200000, torch.eye(2, dtype=torch.float64), atol=0.02)
    with pytest.raises(ValueError):
        sample_probe(x, "uniform")
    with pytest.raises(ValueError):
        hutchinson_divergence(fn, x, num_probes=0)


def test_return_output_gives_fn_of_x_detached_unless_create_graph():
    a = torch.tensor([[2.0, 0.0], [0.0, -3.0]], requires_grad=True)
    x = torch.tensor([[1.0, 2.0]])
    fn = lambda z: z @ a.T   # noqa: E731   fn(x) = (2, -6); div = trace(A) = -1 (Rademacher: exact)
    for est in (lambda: exact_divergence(fn, x, return_output=True),
                lambda: hutchinson_divergence(fn, x, num_probes=2, return_output=True)[::2]):
        div, y = est()
        assert div.tolist() == pytest.approx([-1.0]) and y.tolist() == [[2.0, -6.0]]
        assert not div.requires_grad and not y.requires_grad
    div, y = exact_divergence(fn, x, create_graph=True, return_output=True)
    assert y.requires_grad and div.requires_grad
