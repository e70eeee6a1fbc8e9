"""model.finetune="full" for the image policies (flowrl.policies.full): every transformer weight trains
and nothing else, the reference is the untouched base bit for bit, the state round-trips, and the
exported transformer/ folder loads with from_pretrained and reproduces the policy in the pipeline."""
import pytest
import torch

from flowrl.cache import cache_dir
from flowrl.policies.flux import TINY_NAME as FLUX_NAME, ensure_tiny_flux, flux, pack
from flowrl.policies.sd3 import TINY_NAME, ensure_tiny_sd3, sd3
from flowrl.protocols import Runtime
from flowrl.sampling.rollout import ode_sample

RES, SEQ = 32, 16
PROMPTS = ["a photo of a red cat", "a dog on the grass"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(factory, folder, dtype=torch.float32, **kw):
    opts = dict(path=str(folder), resolution=RES, max_sequence_length=SEQ, finetune="full")
    return factory(Runtime(torch.device("cpu"), dtype, cache_dir(), seed=0), **{**opts, **kw})


def inputs(policy, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, *policy.sample_shape), generator=g)
    return x, torch.rand(2, generator=g), policy.encode(PROMPTS)


def frozen_parts(policy):
    return {f"{name}.{k}": p.detach().clone() for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae")
            if getattr(policy.pipe, name, None) is not None for k, p in getattr(policy.pipe, name).named_parameters()}


def adam_step(policy, seed=0):
    """One AdamW step (no weight decay) on a random-target loss over both CFG branches."""
    x, s, cond = inputs(policy, seed)
    opt = torch.optim.AdamW([p for p in policy.net.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    policy.net.train()
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 7))
    (policy.velocity(x, s, cond, guidance=4.5) - target).square().mean().backward()
    opt.step()
    policy.net.eval()


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_full_trains_every_transformer_weight_and_nothing_else_reference_is_the_base(name):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    factory, folder, cls = ((sd3, ensure_tiny_sd3(cache_dir() / TINY_NAME), SD3Transformer2DModel) if name == "sd3"
                            else (flux, ensure_tiny_flux(cache_dir() / FLUX_NAME), FluxTransformer2DModel))
    policy = make(factory, folder)
    params = dict(policy.net.named_parameters())
    assert all(p.requires_grad and p.dtype == torch.float32 for p in params.values())
    assert not any(p.requires_grad for p in policy.base.parameters())
    from flowrl.memory import model_memory_line   # the reference copy counts as (fp32 here) weights
    assert f"weights {sum(p.numel() for p in policy.base.parameters()) * 4 / 2 ** 20:.2f}" in \
        model_memory_line(policy, 2, False, False, False)
    x, s, cond = inputs(policy)
    v0 = policy.velocity(x, s, cond)
    before, frozen = {k: p.detach().clone() for k, p in params.items()}, frozen_parts(policy)
    adam_step(policy)
    assert all(p.grad is not None for p in params.values())   # every weight is in the graph and trains
    unchanged = {k for k, p in params.items() if torch.equal(p, before[k])}
    # ... and moves, except where the gradient is exactly zero: SD3's last block computes text queries
    # (add_q_proj) whose only use, the text stream's output, that block drops (context_pre_only)
    assert unchanged == {k for k, p in params.items() if not p.grad.any()}
    assert all(".add_q_proj." in k for k in unchanged) and len(unchanged) <= 2
    assert all(torch.equal(p, frozen[k]) for k, p in frozen_parts(policy).items())
    assert (policy.velocity(x, s, cond) - v0).abs().max() > 1e-4
    with policy.reference():
        v_ref = policy.velocity(x, s, cond)
    assert policy.model is policy.net   # restored
    untouched = make(factory, folder, finetune="lora")   # a fresh LoRA is exactly zero
    fresh = cls.from_pretrained(str(folder / "transformer")).eval()
    untouched.model = untouched.net = fresh
    assert torch.equal(v_ref, v0) and torch.equal(v_ref, untouched.velocity(x, s, cond))


def test_state_round_trip_export_loads_and_reproduces_the_policy_in_the_pipeline(tmp_path):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    folder = ensure_tiny_sd3(cache_dir() / TINY_NAME)
    policy = make(sd3, folder)
    adam_step(policy)
    state = policy.trainable_state_dict()
    assert set(state) == {k for k, _ in policy.net.named_parameters()}
    other = make(sd3, folder)
    other.load_trainable_state_dict(state)
    x, s, cond = inputs(policy)
    assert torch.equal(other.velocity(x, s, cond), policy.velocity(x, s, cond))
    with pytest.raises(KeyError):
        make(sd3, folder, finetune="lora", lora_rank=2).load_trainable_state_dict(state)
    policy.export(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "pytorch_lora_weights.safetensors").exists()
    net = SD3Transformer2DModel.from_pretrained(str(tmp_path / "ckpt" / "transformer")).eval()
    pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), transformer=net)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn((1, *policy.sample_shape), generator=torch.Generator().manual_seed(4))
    theirs = pipe(PROMPTS[0], height=RES, width=RES, num_inference_steps=4, guidance_scale=4.5,
                  latents=noise.clone(), max_sequence_length=SEQ, output_type="latent").images
    c0 = policy.encode([PROMPTS[0]])
    ours = ode_sample(lambda z, t: policy.velocity(z, t, c0, guidance=4.5), noise, policy.sigmas(4))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_flux_export_loads_with_from_pretrained_and_mixed_precision_keeps_a_bf16_reference(tmp_path):
    from diffusers import FluxTransformer2DModel

    folder = ensure_tiny_flux(cache_dir() / FLUX_NAME)
    policy = make(flux, folder, dtype=torch.bfloat16)
    assert policy.base.dtype == torch.bfloat16 and policy.net.dtype == torch.float32
    x, s, cond = inputs(policy)
    v = policy.velocity(x, s, cond)   # fp32 weights, autocast to bf16
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    policy.export(tmp_path)
    net = FluxTransformer2DModel.from_pretrained(str(tmp_path / "transformer"))
    assert net.dtype == torch.float32 and type(net).__name__ == "FluxTransformer2DModel"
    got = {k: p for k, p in net.named_parameters()}
    assert all(torch.equal(got[k], p) for k, p in policy.net.named_parameters())


def test_bad_finetune_says_what_to_set():
    with pytest.raises(ValueError, match="model.finetune='qlora' must be one of"):
        make(sd3, ensure_tiny_sd3(cache_dir() / TINY_NAME), finetune="qlora")
