"""Flow log-likelihood and entropy against Gaussian and Gaussian-mixture closed forms.

Convention: sigma = 1 noise, sigma = 0 data, x = (1 - sigma) x0 + sigma eps, v = dx/dsigma.
For x0 ~ sum_k w_k N(mu_k, s^2 I) the exact field is the posterior mean of eps - x0:
    V = (1 - sigma)^2 s^2 + sigma^2,  r_k = x - (1 - sigma) mu_k,
    E_k[eps - x0 | x] = (sigma - (1 - sigma) s^2) / V * r_k - mu_k
(for mu = 0 this is c(sigma) x with c = (sigma - (1 - sigma) s^2) / ((1 - sigma)^2 s^2 + sigma^2)).
"""
import math

import pytest
import torch

from flowrl.metrics.entropy import (flow_entropy, flow_log_likelihood, sample_with_log_prob,
                                    standard_normal_log_prob)


def sobol_normal(n, d, seed=0):
    """Quasi-Monte Carlo N(0, I) noise (n, d): the Monte Carlo error of the entropy is ~1e-3, not
    sqrt(d / 2n), so the test checks the integrator, and stays fast."""
    u = torch.quasirandom.SobolEngine(d, scramble=True, seed=seed).draw(n, dtype=torch.float64)
    return math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)


def gaussian_velocity(s):
    def v(x, sigma):
        c = (sigma - (1 - sigma) * s ** 2) / ((1 - sigma) ** 2 * s ** 2 + sigma ** 2)
        return c.view(-1, *[1] * (x.dim() - 1)) * x
    return v


def gaussian_log_prob(x, s):
    d = x[0].numel()
    return standard_normal_log_prob(x / s) - d * math.log(s)


def gmm(mus, s, weights):
    """(velocity, log p0) of the mixture sum_k w_k N(mu_k, s^2 I); mus (K, D), x (B, D)."""
    logw = torch.log(torch.tensor(weights, dtype=torch.float64))

    def velocity(x, sigma):
        sig = sigma[:, None, None]
        var = (1 - sig) ** 2 * s ** 2 + sig ** 2
        r = x[:, None, :] - (1 - sig) * mus[None]
        logits = logw - 0.5 * (r ** 2).sum(-1) / var[..., 0] - 0.5 * x.shape[1] * var[..., 0].log()
        post = torch.softmax(logits, dim=1)[..., None]
        return (post * ((sig - (1 - sig) * s ** 2) / var * r - mus[None])).sum(1)

    def log_p0(x):
        d = x.shape[1]
        lp = (logw - 0.5 * ((x[:, None] - mus[None]) ** 2).sum(-1) / s ** 2
              - d * math.log(s) - 0.5 * d * math.log(2 * math.pi))
        return torch.logsumexp(lp, 1)

    return velocity, log_p0


@pytest.mark.parametrize("s", [0.3, 1.0, 2.5])
def test_gaussian_entropy_100_steps(s):
    d = 2
    exact = 0.5 * d * math.log(2 * math.pi * math.e * s ** 2)
    noise = sobol_normal(4096, d)
    same_noise = (-standard_normal_log_prob(noise)).mean().item() + d * math.log(s)
    for method in ("midpoint", "euler"):
        h, se = flow_entropy(gaussian_velocity(s), noise, num_steps=100, method=method)
        assert h.dtype == torch.float64 and h.dim() == 0
        assert abs(h.item() - exact) < 0.02  # the demand: Monte Carlo + discretisation
        assert abs(h.item() - same_noise) < 2e-3  # discretisation alone
        assert se.item() == pytest.approx(math.sqrt(d / 2 / 4096), rel=0.05)


@pytest.mark.parametrize("s", [0.1, 0.5, 3.0])
def test_gaussian_log_likelihood_per_sample(s):
    g = torch.Generator().manual_seed(1)
    x0 = s * torch.randn(64, 2, generator=g, dtype=torch.float64)
    ll = flow_log_likelihood(gaussian_velocity(s), x0, num_steps=100)
    assert ll.shape == (64,) and ll.dtype == torch.float64
    assert (ll - gaussian_log_prob(x0, s)).abs().max() < 0.02


def test_log_likelihood_sign_and_image_shapes():
    """A (B, C, H, W) batch works, and a narrow target is denser than N(0, I) at the origin."""
    s = 0.7
    g = torch.Generator().manual_seed(2)
    x0 = s * torch.randn(5, 1, 2, 2, generator=g, dtype=torch.float64)
    ll = flow_log_likelihood(gaussian_velocity(s), x0, num_steps=100)
    assert torch.allclose(ll, gaussian_log_prob(x0, s), atol=0.02)
    # narrower target (s < 1) means higher density at the origin than N(0, I): sign check
    origin = torch.zeros(1, 2, dtype=torch.float64)
    assert flow_log_likelihood(gaussian_velocity(0.5), origin).item() > \
        standard_normal_log_prob(origin).item()


def test_gmm_log_likelihood_nonlinear_field():
    mus = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], dtype=torch.float64)
    velocity, log_p0 = gmm(mus, 0.5, [0.5, 0.3, 0.2])
    g = torch.Generator().manual_seed(3)
    k = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), 128, replacement=True, generator=g)
    x0 = mus[k] + 0.5 * torch.randn(128, 2, generator=g, dtype=torch.float64)
    ll = flow_log_likelihood(velocity, x0, num_steps=100)
    assert (ll - log_p0(x0)).abs().max() < 0.02
    # the ODE log-prob of the model's own samples matches the true density there
    noise = torch.randn(256, 2, generator=g, dtype=torch.float64)
    x, lp = sample_with_log_prob(velocity, noise, num_steps=100)
    assert (lp - log_p0(x)).abs().max() < 0.02


def test_hutchinson_log_likelihood_unbiased():
    mus = torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    velocity, log_p0 = gmm(mus, 0.5, [0.5, 0.5])
    x0 = torch.tensor([[-2.0, 0.3], [1.5, 1.0], [0.0, 0.0]], dtype=torch.float64).repeat(200, 1)
    exact = flow_log_likelihood(velocity, x0, num_steps=50)
    est = flow_log_likelihood(velocity, x0, num_steps=50, divergence="hutchinson",
                              generator=torch.Generator().manual_seed(4))
    err = (est - exact).view(200, 3)
    z = err.mean(0) / (err.std(0) / math.sqrt(200))
    assert z.abs().max() < 4.0
    assert err.std(0).max() > 1e-3  # it really is stochastic


def test_hutchinson_entropy_of_a_gaussian_within_its_standard_error():
    # data N(0, 0.5^2 I_2): entropy = log(2 pi e 0.25) = 1.4516. log p0 = -|x|^2/(2 s^2) + c has
    # variance d/2 = 1, so the standard error is >= 1/sqrt(400) = 0.05 (plus Hutchinson noise)
    g = torch.Generator().manual_seed(5)
    h, se = flow_entropy(gaussian_velocity(0.5), torch.randn(400, 2, generator=g, dtype=torch.float64),
                         num_steps=20, divergence="hutchinson", probe="gaussian", num_probes=2)
    assert 0.045 < se.item() < 0.15
    assert abs(h.item() - math.log(2 * math.pi * math.e * 0.25)) < 4 * se.item()


def test_bad_arguments():
    v = gaussian_velocity(1.0)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError):
        flow_log_likelihood(v, x, num_steps=0)
    with pytest.raises(ValueError):
        flow_log_likelihood(v, x, num_steps=2, divergence="skilling")
    with pytest.raises(ValueError):
        flow_log_likelihood(v, x, num_steps=2, method="rk4")
    with pytest.raises(ValueError):
        flow_entropy(v, x[:1], num_steps=2)
