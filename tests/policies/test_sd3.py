"""SD3 policy on the tiny random pipeline: conventions against diffusers, LoRA vs reference, CFG,
GRPO's on-policy ratio and KL, caching, decoding, export to diffusers' LoRA format."""
import subprocess
import sys

import pytest
import torch

from flowrl.algorithms.grpo import GRPO, step_log_prob
from flowrl.batch import Batch
from flowrl.cache import cache_dir
from flowrl.policies import sd3 as sd3_module
from flowrl.policies.sd3 import TINY_NAME, ensure_tiny_sd3, sd3
from flowrl.protocols import Runtime
from flowrl.registry import POLICIES
from flowrl.sampling.rollout import RolloutSettings, ode_sample, rollout
from flowrl.sampling.schedule import step_masks
from flowrl.sampling.sde import kl_same_std, sde_mean_std, step_kl

RES, SEQ = 32, 16                     # 32 px -> 4x4 latents -> 2x2 patches: milliseconds per pass
PROMPTS = ["a photo of a red cat", "a dog on the grass", "a photo of a red cat"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    return ensure_tiny_sd3(cache_dir() / TINY_NAME)


def make(tiny, dtype=torch.float32, **kw):
    opts = dict(path=str(tiny), resolution=RES, max_sequence_length=SEQ, lora_rank=4, lora_alpha=8)
    return sd3(Runtime(torch.device("cpu"), dtype, cache_dir(), seed=0), **{**opts, **kw})


def perturb(policy, scale=0.3, seed=1):
    """Non-zero lora_B so the adapter changes the output (a fresh LoRA is exactly zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.net.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return policy


def inputs(policy, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *policy.sample_shape), generator=g)
    return x, torch.rand(n, generator=g), policy.encode(PROMPTS[:n])


def base_transformer(tiny, x, sigma, cond):
    from diffusers import SD3Transformer2DModel

    net = SD3Transformer2DModel.from_pretrained(str(tiny / "transformer")).eval()
    with torch.no_grad():
        return net(hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=cond["prompt_embeds"],
                   pooled_projections=cond["pooled"], return_dict=False)[0]


def diffusers_pipe(tiny):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(tiny))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipe_latents(pipe, noise, prompt, steps=4, guidance=4.5, output_type="latent"):
    return pipe(prompt, height=RES, width=RES, num_inference_steps=steps, guidance_scale=guidance,
                latents=noise.clone(), max_sequence_length=SEQ, output_type=output_type).images


def test_import_is_cheap_and_the_policy_is_registered():
    code = "import sys, flowrl.policies.sd3; bad = {'diffusers', 'transformers', 'peft'} & set(sys.modules); " \
           "assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert "sd3" in POLICIES.names()


def test_shapes_dtypes_and_only_lora_trains(tiny):
    policy = make(tiny)
    x, s, cond = inputs(policy)
    assert policy.sample_shape == (16, RES // 8, RES // 8) and policy.model is policy.net
    assert cond["prompt_embeds"].shape == (3, 77 + SEQ, 32) and cond["pooled"].shape == (3, 32)
    v = policy.velocity(x, s, cond)
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    trainable = {k: p for k, p in policy.net.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in k and p.dtype == torch.float32 for k, p in trainable.items())
    assert {k.split(".")[-4] for k in trainable} <= {"to_q", "to_k", "to_v", "0", "add_q_proj", "add_k_proj",
                                                      "add_v_proj", "to_add_out"}


def test_mixed_precision_keeps_lora_fp32_and_returns_fp32(tiny):
    policy = make(tiny, dtype=torch.bfloat16)
    frozen = [p for p in policy.net.parameters() if not p.requires_grad]
    assert all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for p in policy.net.parameters() if p.requires_grad)
    assert policy.pipe.vae.dtype == torch.float32
    x, s, cond = inputs(policy)
    assert policy.velocity(x, s, cond, guidance=4.5).dtype == torch.float32


def test_sigmas_are_the_schedulers(tiny):
    from diffusers import FlowMatchEulerDiscreteScheduler

    policy = make(tiny)
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(str(tiny / "scheduler"))
    sched.set_timesteps(10)
    s = policy.sigmas(10)
    assert s.dtype == torch.float32 and s.device.type == "cpu" and s.shape == (11,)
    assert torch.equal(s, sched.sigmas.float()) and s[0] == 1 and s[-1] == 0 and (s.diff() < 0).all()
    assert torch.equal(sched.timesteps, s[:-1] * 1000)   # the transformer's timestep is sigma * 1000


def test_ode_sampler_and_decode_reproduce_the_diffusers_pipeline(tiny):
    """Same noise, same schedule, CFG 4.5: our Euler ODE with velocity() gives the pipeline's latents,
    so velocity() is dx/dsigma = eps - x0 in the project's convention, and decode() its images."""
    policy, pipe = make(tiny), diffusers_pipe(tiny)
    noise = torch.randn((1, *policy.sample_shape), generator=torch.Generator().manual_seed(3))
    cond = policy.encode([PROMPTS[0]])
    ours = ode_sample(lambda x, s: policy.velocity(x, s, cond, guidance=4.5), noise, policy.sigmas(4))
    torch.testing.assert_close(ours, pipe_latents(pipe, noise, PROMPTS[0]), atol=1e-5, rtol=1e-5)
    images = pipe_latents(pipe, noise, PROMPTS[0], output_type="pt")
    torch.testing.assert_close(policy.decode(ours), images, atol=1e-4, rtol=1e-4)


def test_lora_changes_velocity_and_reference_is_exactly_the_base(tiny):
    policy = perturb(make(tiny))
    x, s, cond = inputs(policy)
    v = policy.velocity(x, s, cond)
    with policy.reference():
        v_ref = policy.velocity(x, s, cond)
    assert (v - v_ref).abs().max() > 1e-3
    assert torch.equal(v_ref, base_transformer(tiny, x, s, cond))
    assert torch.equal(policy.velocity(x, s, cond), v)           # adapter back on
    assert all(p.requires_grad == ("lora_" in k) for k, p in policy.net.named_parameters())


def _means(policy, x, s, s_next, cond):
    mean, std = sde_mean_std(x, policy.velocity(x, s, cond, guidance=4.5), s, s_next, 0.7, 0.9)
    with torch.no_grad(), policy.reference():
        mean_ref, _ = sde_mean_std(x, policy.velocity(x, s, cond, guidance=4.5), s, s_next, 0.7, 0.9)
    return mean, mean_ref, std


def test_kl_to_the_reference_is_exactly_zero_for_zero_lora_and_positive_otherwise(tiny):
    policy = make(tiny)
    x, s, cond = inputs(policy)
    s, s_next = s * 0.5 + 0.4, s * 0.5 + 0.3
    with torch.no_grad():
        mean, mean_ref, std = _means(policy, x, s, s_next, cond)
        assert torch.equal(kl_same_std(mean, mean_ref, std), torch.zeros(3))
        perturb(policy)
        mean, mean_ref, std = _means(policy, x, s, s_next, cond)
        kl = kl_same_std(mean, mean_ref, std)
        assert (kl > 0).all()
        # outside reference: torch's Gaussian KL per element, averaged over C, H, W
        sd = std.view(-1, 1, 1, 1).expand_as(mean)
        ref_kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean, sd),
                                                   torch.distributions.Normal(mean_ref, sd)).mean(dim=(1, 2, 3))
        assert torch.allclose(kl, ref_kl, rtol=1e-4)
        # Flow-GRPO's form = the exact KL x |d sigma| (here 0.1)
        flow = step_kl(mean, mean_ref, std, s, s_next, "sde", "flow_grpo")
        assert torch.allclose(flow, kl * (s - s_next), rtol=1e-4)
        with policy.reference():
            mean, mean_ref, std = _means(policy, x, s, s_next, cond)
        assert torch.equal(kl_same_std(mean, mean_ref, std), torch.zeros(3))


def test_grpo_ratio_is_exactly_one_on_a_fresh_rollout_and_only_lora_gets_gradients(tiny):
    policy = perturb(make(tiny))
    cond = policy.encode(PROMPTS)
    sde, train = step_masks(4, 1.0)
    st = RolloutSettings(policy.sigmas(4), sde, train, 0.7, "sde", 4.5)
    noise = torch.randn((3, *policy.sample_shape), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        traj = rollout(lambda x, s: policy.velocity(x, s, cond, guidance=4.5), noise, st.sigmas,
                       st.sde_mask, st.noise_level, st.kind, torch.Generator().manual_seed(6))
    batch = Batch({"latents": traj.latents, "log_probs": traj.log_probs, "advantages": torch.tensor([1., -1., .5]),
                   "weights": torch.ones(3), **{f"cond.{k}": v for k, v in cond.items()}})
    for j in st.train_steps:
        assert torch.equal(step_log_prob(policy, batch, j, st).log_prob, traj.log_probs[:, j])
    terms = list(GRPO(clip_range=1e-4, beta=0.01).loss_terms(policy, batch, st))
    assert len(terms) == 4 and all(m["ratio"] == 1.0 and m["clipfrac"] == 0.0 for _, m in terms)
    # at ratio 1 the surrogate is -mean(A) = -(1 - 1 + 0.5) / 3; the loss adds beta * KL
    assert all(m["policy_loss"] == pytest.approx(-0.5 / 3, rel=1e-6) for _, m in terms)
    assert all(t.item() == pytest.approx(m["policy_loss"] + 0.01 * m["kl"], rel=1e-5) for t, m in terms)
    terms[0][0].backward()
    grads = {k: p.grad for k, p in policy.net.named_parameters()}
    assert all(g is None for k, g in grads.items() if "lora_" not in k)
    assert any(g is not None and g.abs().sum() > 0 for k, g in grads.items() if "lora_" in k)


def test_cfg_is_uncond_plus_g_times_the_difference(tiny):
    policy = perturb(make(tiny))
    x, s, cond = inputs(policy)
    with torch.no_grad():
        v_c = policy.velocity(x, s, cond, guidance=1.0)
        v_u = policy.velocity(x, s, policy.encode([""] * 3), guidance=1.0)
        for g in (2.0, 4.5):
            torch.testing.assert_close(policy.velocity(x, s, cond, guidance=g), v_u + g * (v_c - v_u),
                                       atol=1e-5, rtol=1e-5)
    assert torch.equal(policy.velocity(x, s, cond), v_c)        # default guidance 1.0 = no CFG
    policy.guidance = 4.5                                       # the factory's `guidance` option
    assert torch.equal(policy.velocity(x, s, cond), policy.velocity(x, s, cond, guidance=4.5))


def test_encode_computes_each_prompt_once_and_the_cache_is_bounded(tiny, monkeypatch):
    policy = make(tiny, prompt_cache_size=2)
    seen = []
    real = policy._encode_text
    monkeypatch.setattr(policy, "_encode_text", lambda ps: (seen.extend(ps), real(ps))[1])
    a = policy.encode(PROMPTS)
    assert seen == PROMPTS[:2] and torch.equal(a["prompt_embeds"][0], a["prompt_embeds"][2])
    b = policy.encode(PROMPTS[::-1])
    assert seen == PROMPTS[:2] and torch.equal(b["pooled"], a["pooled"].flip(0))
    policy.encode(["a cat", "a dog", "a bird"])
    assert len(policy._cache) == 2


def test_decode_range_shape_and_gradient(tiny):
    policy = make(tiny)
    z = torch.randn((2, *policy.sample_shape), requires_grad=True)
    img = policy.decode(z)
    assert img.shape == (2, 3, RES, RES) and img.dtype == torch.float32
    assert img.min() >= 0 and img.max() <= 1
    img.mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    with torch.no_grad():
        assert not policy.decode(z).requires_grad


def test_trainable_state_round_trip_and_mismatch(tiny):
    a, b = perturb(make(tiny)), make(tiny)
    x, s, cond = inputs(a)
    state = a.trainable_state_dict()
    assert state and all("lora_" in k for k in state)
    b.load_trainable_state_dict(state)
    assert torch.equal(a.velocity(x, s, cond), b.velocity(x, s, cond))
    with pytest.raises(KeyError, match="lora_rank"):
        make(tiny, lora_rank=2, lora_targets=("attn.to_q",)).load_trainable_state_dict(state)


def test_export_loads_into_a_diffusers_pipeline_and_reproduces_the_policy(tiny, tmp_path):
    policy = perturb(make(tiny))
    policy.export(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "pytorch_lora_weights.safetensors").exists()
    pipe = diffusers_pipe(tiny)
    noise = torch.randn((1, *policy.sample_shape), generator=torch.Generator().manual_seed(4))
    before = pipe_latents(pipe, noise, PROMPTS[0])
    pipe.load_lora_weights(str(tmp_path / "ckpt"))
    after = pipe_latents(pipe, noise, PROMPTS[0])
    assert (after - before).abs().max() > 1e-3
    cond = policy.encode([PROMPTS[0]])
    ours = ode_sample(lambda x, s: policy.velocity(x, s, cond, guidance=4.5), noise, policy.sigmas(4))
    torch.testing.assert_close(ours, after, atol=1e-5, rtol=1e-5)   # alpha / rank survived the export


def test_gradient_checkpointing_option(tiny):
    policy = perturb(make(tiny, gradient_checkpointing=True))
    assert policy.net.is_gradient_checkpointing
    policy.net.train()
    x, s, cond = inputs(policy)
    policy.velocity(x, s, cond, guidance=4.5).square().mean().backward()
    assert any(p.grad is not None for k, p in policy.net.named_parameters() if "lora_" in k)


def test_bad_paths_and_sizes_say_what_to_set(tiny, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="model.path"):
        make(tiny, path=str(tmp_path / "missing"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        sd3_module.resolve_pipeline_path("nobody-xyz/no-such-model", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        make(tiny, path=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="model.resolution"):
        make(tiny, resolution=40)
    with pytest.raises(ValueError, match="lora_targets"):
        make(tiny, lora_targets=("no_such_layer",))


def test_empty_path_builds_the_tiny_pipeline_once_atomically(tmp_path, monkeypatch):
    calls = []

    def fake_build(out, seed=0):
        calls.append(out)
        (out / "model_index.json").write_text("{}")
        return out
    monkeypatch.setattr("flowrl.policies.tiny_sd3.build_tiny_sd3", fake_build)
    path = sd3_module.resolve_pipeline_path("", tmp_path)
    assert path == tmp_path / TINY_NAME and (path / "model_index.json").exists()
    assert calls and calls[0] != path                   # built elsewhere, then renamed into place
    assert sd3_module.resolve_pipeline_path("", tmp_path) == path and len(calls) == 1
    (path / sd3_module.STAMP_FILE).write_text("{}")     # built by another builder version: rebuilt
    assert sd3_module.resolve_pipeline_path("", tmp_path) == path and len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [TINY_NAME]   # no temp folders left


def test_cli_init_tiny_sd3_writes_a_folder_and_refuses_a_full_one(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flowrl.cli import app

    def fake_build(out, seed=0):
        (out / "model_index.json").write_text(f'{{"seed": {seed}}}')
        return out
    monkeypatch.setattr("flowrl.policies.tiny_sd3.build_tiny_sd3", fake_build)
    result = CliRunner().invoke(app, ["init", "tiny-sd3", str(tmp_path / "sd3"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sd3" / "model_index.json").read_text() == '{"seed": 3}'
    again = CliRunner().invoke(app, ["init", "tiny-sd3", str(tmp_path / "sd3")])
    assert again.exit_code == 2 and "not an empty folder" in again.output


@pytest.mark.parametrize("name", ["tiny_sd3", "tiny_sd3_ocr", "tiny_sd3_full", "pickscore", "pickscore_fast",
                                  "pickscore_nocfg", "clipscore", "aesthetic", "ocr", "jpeg"])
def test_sd3_configs_fit_the_factories_and_1_to_32_gpus(name):
    import inspect

    from flowrl.config import load_config, plan_batches
    from flowrl.registry import REWARDS
    from flowrl.trainer import options

    c = load_config(f"grpo.py:{name}")
    inspect.signature(POLICIES.get(c.model.name)).bind(None, **options(c.model))
    for reward in c.reward.weights:
        inspect.signature(REWARDS.get(reward)).bind(None, **c.reward.options.to_dict().get(reward, {}))
    for procs in ((1,) if name.startswith("tiny") else (1, 8)):
        plan = plan_batches(c, procs)
        assert plan.samples_per_epoch % c.sample.group_size == 0
    if not name.startswith("tiny"):
        assert c.model.path == "stabilityai/stable-diffusion-3.5-medium" and c.sample.group_size == 24
        assert plan_batches(c, 8).groups_per_epoch == 48 and plan_batches(c, 8).optimizer_steps_per_epoch == 2
        c32 = load_config(f"grpo.py:{name}", ["sample.num_batches_per_epoch=4",
                                              "train.gradient_accumulation_steps=2"])
        assert plan_batches(c32, 32).groups_per_epoch == 48 and plan_batches(c32, 32).optimizer_steps_per_epoch == 2


def test_sd35_style_transformer_leaves_attn2_alone(tmp_path):
    """SD3.5 adds qk-norm and a second image attention (attn2); Flow-GRPO's targets skip attn2."""
    from flowrl.policies.tiny_sd3 import build_tiny_sd3

    folder = build_tiny_sd3(tmp_path / "sd35", qk_norm="rms_norm", dual_attention_layers=(0,))
    policy = perturb(make(folder))
    names = list(policy.trainable_state_dict())
    assert names and not any(".attn2." in k for k in names) and any(".attn.add_q_proj." in k for k in names)
    x, s, cond = inputs(policy)
    with policy.reference():
        v_ref = policy.velocity(x, s, cond)
    assert torch.equal(v_ref, base_transformer(folder, x, s, cond))
    assert not torch.equal(policy.velocity(x, s, cond), v_ref)
