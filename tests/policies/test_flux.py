"""FLUX policy on the tiny random FluxPipeline: packing, schedule and velocity against diffusers' own
sampler, guidance as an input, LoRA vs reference, export loadable by FluxPipeline.load_lora_weights."""
import subprocess
import sys

import pytest
import torch

from flowrl.cache import cache_dir
from flowrl.policies.flux import FLUX_TARGETS, TINY_NAME, ensure_tiny_flux, flux, pack, unpack
from flowrl.protocols import Runtime
from flowrl.registry import POLICIES
from flowrl.sampling.rollout import ode_sample

RES, SEQ = 32, 16                     # 32 px -> 4x4 latents -> 2x2 packed tokens
PROMPTS = ["a photo of a red cat", "a dog on the grass"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    return ensure_tiny_flux(cache_dir() / TINY_NAME)


def make(tiny, **kw):
    opts = dict(path=str(tiny), resolution=RES, max_sequence_length=SEQ, lora_rank=4, lora_alpha=8)
    return flux(Runtime(torch.device("cpu"), torch.float32, cache_dir(), seed=0), **{**opts, **kw})


def perturb(policy, scale=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.net.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return policy


def pipeline(tiny):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(tiny))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipe_latents(pipe, noise, prompt, steps=4, guidance=3.5):
    """FluxPipeline's final PACKED latents from our unpacked noise."""
    return pipe(prompt, height=RES, width=RES, num_inference_steps=steps, guidance_scale=guidance,
                latents=pack(noise.clone()), max_sequence_length=SEQ, output_type="latent").images


def test_import_is_cheap_pack_inverts_and_the_policy_is_registered():
    code = "import sys, flowrl.policies.flux; bad = {'diffusers', 'transformers', 'peft'} & set(sys.modules); " \
           "assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert "flux" in POLICIES.names()
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    p = pack(x)
    assert p.shape == (2, 6, 12) and torch.equal(unpack(p, 4, 6), x)
    assert torch.equal(p[0, 1, :4], x[0, 0, 0:2, 2:4].reshape(-1))   # token 1 = the 2nd 2x2 patch, row-major


def test_ode_sampler_and_decode_reproduce_the_flux_pipeline(tiny):
    """Same noise, FLUX's shifted schedule, distilled guidance 3.5 as input: our Euler ODE gives the
    pipeline's latents (velocity = eps - x0 after unpacking) and decode() its images."""
    policy, pipe = make(tiny), pipeline(tiny)
    assert policy.sample_shape == (16, RES // 8, RES // 8)
    noise = torch.randn((1, *policy.sample_shape), generator=torch.Generator().manual_seed(3))
    cond = policy.encode([PROMPTS[0]])
    sig = policy.sigmas(4)
    assert sig.shape == (5,) and sig[0] == 1 and sig[-1] == 0 and (sig.diff() < 0).all()
    ours = ode_sample(lambda x, s: policy.velocity(x, s, cond), noise, sig)
    torch.testing.assert_close(pack(ours), pipe_latents(pipe, noise, PROMPTS[0]), atol=1e-5, rtol=1e-5)
    images = pipe(PROMPTS[0], height=RES, width=RES, num_inference_steps=4, guidance_scale=3.5,
                  latents=pack(noise.clone()), max_sequence_length=SEQ, output_type="pt").images
    torch.testing.assert_close(policy.decode(ours), images, atol=1e-4, rtol=1e-4)


def test_guidance_is_an_input_not_cfg(tiny):
    policy = make(tiny)
    x = torch.randn((2, *policy.sample_shape), generator=torch.Generator().manual_seed(0))
    s, cond = torch.tensor([0.3, 0.8]), policy.encode(PROMPTS)
    v = policy.velocity(x, s, cond)
    assert torch.equal(policy.velocity(x, s, cond, guidance=4.5), v)   # a CFG scale is not used
    policy.guidance = 1.0
    assert not torch.allclose(policy.velocity(x, s, cond), v)          # the embedded guidance is


def test_lora_targets_reference_export_and_pipeline_load(tiny, tmp_path):
    policy = perturb(make(tiny))
    names = list(policy.trainable_state_dict())
    assert any(".ff_context.net.2." in k for k in names) and any("single_transformer_blocks" in k for k in names)
    x = torch.randn((2, *policy.sample_shape), generator=torch.Generator().manual_seed(0))
    s, cond = torch.tensor([0.3, 0.8]), policy.encode(PROMPTS)
    with policy.reference():
        v_ref = policy.velocity(x, s, cond)
    assert (policy.velocity(x, s, cond) - v_ref).abs().max() > 1e-3
    policy.export(tmp_path / "ckpt")
    pipe = pipeline(tiny)
    noise = torch.randn((1, *policy.sample_shape), generator=torch.Generator().manual_seed(4))
    before = pipe_latents(pipe, noise, PROMPTS[0])
    pipe.load_lora_weights(str(tmp_path / "ckpt"))
    after = pipe_latents(pipe, noise, PROMPTS[0])
    assert (after - before).abs().max() > 1e-3
    ours = ode_sample(lambda z, t: policy.velocity(z, t, policy.encode([PROMPTS[0]])), noise, policy.sigmas(4))
    torch.testing.assert_close(pack(ours), after, atol=1e-5, rtol=1e-5)   # alpha / rank survived


def test_flux_configs_fit_the_factory_and_flow_grpo_defaults():
    import inspect

    from flowrl.config import load_config, plan_batches
    from flowrl.trainer import options

    for name in ("tiny_flux", "flux_pickscore"):
        c = load_config(f"grpo.py:{name}")
        inspect.signature(POLICIES.get(c.model.name)).bind(None, **options(c.model))
        assert c.model.name == "flux" and c.sample.guidance_scale == 1.0 and c.model.guidance == 3.5
    assert (c.sample.num_steps, c.sample.noise_level, c.model.resolution, c.mixed_precision) == (6, 0.9, 512, "bf16")
    assert tuple(c.model.lora_targets) == FLUX_TARGETS and plan_batches(c, 8).groups_per_epoch == 48


def test_bad_resolution_says_what_to_set(tiny):
    with pytest.raises(ValueError, match="model.resolution"):
        make(tiny, resolution=40)


def test_cli_init_tiny_flux_writes_a_folder_flux_pipeline_loads(tmp_path):
    from diffusers import FluxPipeline
    from typer.testing import CliRunner

    from flowrl.cli import app

    result = CliRunner().invoke(app, ["init", "tiny-flux", str(tmp_path / "flux")])
    assert result.exit_code == 0, result.output
    pipe = FluxPipeline.from_pretrained(str(tmp_path / "flux"))
    assert pipe.transformer.config.guidance_embeds and pipe.transformer.config.in_channels == 64
    again = CliRunner().invoke(app, ["init", "tiny-flux", str(tmp_path / "flux")])
    assert again.exit_code == 2 and "not an empty folder" in again.output
