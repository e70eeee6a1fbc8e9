"""Memory estimate (hand-checked), gradient checkpointing changes nothing but memory, and the
estimate's activation term against what autograd really saves on the tiny SD3.5 and FLUX."""
import pytest
import torch

from flowrl.cache import cache_dir
from flowrl.memory import TransformerShape, describe, estimate_memory, measure_saved_activations, transformer_shape
from flowrl.protocols import Runtime


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_estimate_by_hand():
    shape = TransformerShape(frozen_params=1000, trainable_params=10, hidden=8, blocks=3)
    m = estimate_memory(shape, batch=2, tokens=5, weight_bytes=2, checkpointing=False, ema=True, act_per_token=16)
    # weights 1000 x 2; LoRA 10 x (4 weights + 4 grads + 8 Adam + 4 EMA); activations 2 x 5 x 8 x 2 B x 16 x 3
    assert m == {"weights": 2000.0, "trainable": 40.0, "gradients": 40.0, "optimizer": 80.0, "ema": 40.0,
                 "activations": 7680.0, "total": 9880.0}
    ck = estimate_memory(shape, 2, 5, 2, checkpointing=True, ema=False, act_per_token=16)
    assert ck["activations"] == 160 * (3 + 16) and ck["ema"] == 0.0
    assert describe(m) == ("0.01 MiB = weights 0.00 + trainable 0.00 + gradients 0.00 + optimizer 0.00 + ema 0.00 "
                           "+ activations 0.01")
    assert describe({"weights": 2.0 * 2 ** 30, "total": 2.0 * 2 ** 30}) == "2.00 GiB = weights 2.00"


def _policy(name, **kw):
    from flowrl.policies.flux import flux
    from flowrl.policies.sd3 import sd3
    factory, path = {"sd35": (sd3, "tiny-sd35"), "flux": (flux, "")}[name]
    return factory(Runtime(torch.device("cpu"), torch.float32, cache_dir(), seed=0), path=path, resolution=64,
                   max_sequence_length=16, lora_rank=4, lora_alpha=8, **kw)


def _loss_and_grads(policy):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k, p in policy.net.named_parameters():
            if "lora_B" in k:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    x = torch.randn((2, *policy.sample_shape), generator=g)
    cond = policy.encode(["a red cat", "a dog"])
    policy.net.train()
    nbytes, loss = measure_saved_activations(lambda: policy.velocity(x, torch.tensor([0.3, 0.8]), cond).square().mean())
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in policy.net.named_parameters() if p.requires_grad}, nbytes


@pytest.mark.parametrize("name", ["sd35", "flux"])
def test_gradient_checkpointing_changes_only_memory_and_the_estimate_tracks_activations(name):
    loss, grads, saved = _loss_and_grads(_policy(name))
    policy = _policy(name, gradient_checkpointing=True)
    loss_ck, grads_ck, saved_ck = _loss_and_grads(policy)
    torch.testing.assert_close(loss_ck, loss, rtol=1e-6, atol=1e-7)
    assert grads.keys() == grads_ck.keys()
    for k in grads:
        torch.testing.assert_close(grads_ck[k], grads[k], rtol=1e-5, atol=1e-7)
    assert saved_ck < 0.7 * saved                                # checkpointing keeps less for backward
    est = estimate_memory(transformer_shape(policy.net), 2, policy.memory_tokens(), 4)["activations"]
    assert 0.5 < est / saved < 2, (est, saved)                   # measured: 0.95 (SD3.5), 0.66 (FLUX)
