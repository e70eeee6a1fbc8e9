"""A tiny text-to-image world (GenEval in miniature) that trains and learns on a laptop CPU.

    generator    captioned scenes: coloured squares / circles / triangles on a light background, in
                 GenEval's six categories (single object, colour, count, two objects, position,
                 colour attribution); image (3, H, W) in [0, 1] + caption + attributes, from a seed
    promptsets   the train / held-out test prompt sets (flowrl/data/prompts/scenes/{train,test}.jsonl)
    train_t2i    a real AutoencoderKL + SD3Transformer2DModel (+ frozen tiny CLIP/T5) trained on the
                 scenes by flow matching, saved as a StableDiffusion3Pipeline folder
                 (`flowrl init tiny-t2i DIR`)

The matching reward is `scene_geneval` (flowrl/rewards/scene.py): it reads the objects back from the
pixels and scores the fraction of the prompt's attributes that hold.
"""
