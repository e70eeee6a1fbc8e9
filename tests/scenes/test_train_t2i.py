"""The tiny text-to-image trainer: a smoke build loads with StableDiffusion3Pipeline and samples, and
the flow-matching convention is the one diffusers' SD3 pipeline / scheduler integrate."""
import json

import pytest
import torch

from flowrl.scenes.t2i_parts import T2IConfig
from flowrl.scenes.train_t2i import STAMP_FILE, ensure_tiny_t2i, is_current


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return ensure_tiny_t2i(tmp_path_factory.mktemp("t2i") / "tiny-t2i", T2IConfig.smoke(), progress=False)


def test_smoke_build_loads_and_samples(built):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(built), local_files_only=True)
    assert pipe.vae_scale_factor == 4 and pipe.tokenizer_max_length == 16
    assert pipe.scheduler.config.shift == T2IConfig.smoke().shift
    record = json.loads((built / STAMP_FILE).read_text())
    assert record["vae_loss"] > 0 and record["flow_matching_loss"] > 0 and record["seconds"]["total_s"] > 0
    assert pipe.vae.config.scaling_factor != 1.0              # measured on the latents
    out = pipe(["a red square", "three circles"], num_inference_steps=2, guidance_scale=4.5,
               max_sequence_length=16, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1


def test_cached_build_is_reused(built):
    mtime = (built / STAMP_FILE).stat().st_mtime_ns
    assert is_current(built, T2IConfig.smoke())
    assert not is_current(built, T2IConfig.smoke(seed=1))
    assert ensure_tiny_t2i(built, T2IConfig.smoke(), progress=False) == built
    assert (built / STAMP_FILE).stat().st_mtime_ns == mtime


def test_training_target_matches_the_sd3_scheduler():
    """With one data point x0 the exact velocity of x_s = (1 - s) x0 + s eps is v = eps - x0 =
    (x_s - x0) / s (what flow_matching_loss regresses); diffusers' Euler scheduler, fed timesteps =
    sigma x 1000, must carry pure noise onto x0 with it."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from flowrl.scenes.train_t2i import flow_matching_loss

    sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
    sched.set_timesteps(8)
    assert torch.allclose(sched.timesteps, sched.sigmas[:-1] * 1000)
    x0, x = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    for t in sched.timesteps:
        x = sched.step((x - x0) / (t / 1000), t, x).prev_sample
    assert torch.allclose(x, x0, atol=1e-4)

    class Oracle(torch.nn.Module):   # returns the exact velocity if timestep = sigma x 1000
        def forward(self, hidden_states, timestep, encoder_hidden_states, pooled_projections, return_dict):
            return ((hidden_states - x0) / (timestep / 1000).view(-1, 1, 1, 1),)
    loss = flow_matching_loss(Oracle(), x0.expand(16, -1, -1, -1), None, None, 1.0, torch.Generator().manual_seed(0))
    assert loss < 1e-8


def test_cli_init_tiny_t2i_is_registered_and_refuses_a_full_folder(tmp_path):
    from typer.testing import CliRunner

    from flowrl.cli import app

    res = CliRunner().invoke(app, ["init", "tiny-t2i", "--help"])
    assert res.exit_code == 0 and "--threads" in res.output
    (tmp_path / "x").write_text("taken")
    res = CliRunner().invoke(app, ["init", "tiny-t2i", str(tmp_path)])
    assert res.exit_code == 2 and "not an empty folder" in res.output
