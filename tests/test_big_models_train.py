"""The one trainer on the tiny FLUX and the tiny SD3.5-medium-shaped pipelines: LoRA trains, the
memory estimate is printed, text encoders are freed after caching (FLUX config), checkpoints export a
LoRA the matching diffusers pipeline loads and that changes its output."""
import pytest
import torch

from flowrl.config import load_config
from flowrl.trainer import Trainer

TINY = ["num_epochs=1", "model.resolution=32", "model.max_sequence_length=16", "sample.num_steps=2",
        "sample.eval_num_steps=2", "sample.batch_size=4", "sample.num_batches_per_epoch=1",
        "sample.group_size=4", "train.batch_size=4", "eval.num_samples=2", "eval.batch_size=2",
        "logging.progress=False", "eval.diversity=False"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name,pipeline", [("tiny_flux", "FluxPipeline"),
                                           ("tiny_sd35", "StableDiffusion3Pipeline")])
def test_tiny_model_trains_and_its_lora_loads_into_diffusers(tmp_path, capsys, name, pipeline):
    import diffusers

    trainer = Trainer(load_config(f"grpo.py:{name}", TINY), tmp_path / "run")
    out = capsys.readouterr().out
    assert "memory estimate (transformer" in out and "activations" in out
    if name == "tiny_flux":                      # offload_text_encoders: encoders gone, prompts cached
        assert trainer.policy.pipe.text_encoder is None and trainer.policy.pipe.text_encoder_2 is None
        assert len(trainer.policy._cache) == len(set(trainer.prompts.prompts + trainer.test_prompts.prompts))
        with pytest.raises(RuntimeError, match="offload_text_encoders"):
            trainer.policy.encode(["a prompt nobody cached"])
    else:                                        # SD3.5 layout: dual attention and QK-norm, attn2 untouched
        cfg = trainer.policy.net.config
        assert cfg.qk_norm == "rms_norm" and len(cfg.dual_attention_layers) == 3 and cfg.pos_embed_max_size == 96
        assert not any(".attn2." in k for k in trainer.policy.trainable_state_dict())
    lora0 = trainer.policy.trainable_state_dict()
    trainer.train()
    lora1 = trainer.policy.trainable_state_dict()
    assert any(not torch.equal(lora0[k], lora1[k]) for k in lora0)
    folder = trainer.policy.pipe.config._name_or_path
    pipe = getattr(diffusers, pipeline).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    gen = lambda: pipe("a red cat", height=32, width=32, num_inference_steps=2, max_sequence_length=16,
                       generator=torch.Generator().manual_seed(0), output_type="latent").images
    before = gen()
    pipe.load_lora_weights(str(tmp_path / "run" / "checkpoints" / "step_1"))
    assert (gen() - before).abs().max() > 0
