"""A tiny text-to-image world (GenEval in miniature) that trains and learns on a laptop CPU.

    generator         captioned scenes: coloured squares / circles / triangles on a light background,
                      in GenEval's six categories (single object, colour, count, two objects, position,
                      colour attribution); image (3, H, W) in [0, 1] + caption + attributes, from a seed
    promptsets        the train / held-out test prompt sets (flowrl/data/prompts/scenes/{train,test}.jsonl)
    shape_classifier  the reward's tiny shape classifier (logistic regression on a blob's crop)
    t2i_parts         the model's components: frozen random tiny CLIP/T5 + scene-word tokenizers,
                      AutoencoderKL, SD3Transformer2DModel, FlowMatchEulerDiscreteScheduler
    train_t2i         trains them on the scenes (VAE, then flow matching) and saves a
                      StableDiffusion3Pipeline folder (`flowrl init tiny-t2i`, cached)
    evaluate          GenEval-style scores (mean reward, strict accuracy per tag) and sample grids:
                      `python -m flowrl.scenes.evaluate [DIR] --grid /tmp/grid.png`

The matching reward is `scene_geneval` (flowrl/rewards/scene.py): it reads the objects back from the
pixels and scores the fraction of the prompt's attributes that hold; `grpo.py:tiny_geneval` fine-tunes
the model with it.
"""
