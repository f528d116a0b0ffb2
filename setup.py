"""Install megatron_polar and data_tools.

The ranges are the tested ones and admit NVIDIA's PyTorch container as it is: in
nvcr.io/nvidia/pytorch:25.09-py3, `pip install -e .` keeps the image's torch (a pre-release,
2.9.0a0+..., hence the `a0` in the lower bound), Transformer Engine and apex
(tests/install/test_container_install.py runs pip's resolver to check it; docs/cluster.md, "Container
recipe"). megatron-core: 0.16.1 (requirements-dev.txt, Python 3.11) to 0.19.2 (requirements-compat.txt,
Python 3.12, `make test-compat`).
"""

from setuptools import find_packages, setup

setup(
    name="megatron_polar",
    version="0.1.0",
    description="Pre-train and fine-tune POLAR reward models on megatron-core",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_polar*", "data_tools*"]),
    install_requires=[
        "torch>=2.7.0a0",
        "megatron-core>=0.16.1,<=0.19.2",
        "numpy>=1.26",
        "hydra-core>=1.3.2,<1.4",
        "sentencepiece>=0.2.0",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "psutil>=5.9",
        "zstandard>=0.22",
        "tqdm>=4.66",
        "jinja2>=3.1",  # the reward server reads policies' chat templates
        "tensorboard>=2.15",
        "wandb>=0.17",
    ],
    extras_require={
        # Transformer Engine for PyTorch; NVIDIA's PyTorch container already ships it (and apex).
        "gpu": ["transformer-engine[pytorch]>=2.3"],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "ruff>=0.6",
            "transformers>=4.45",
            "matplotlib>=3.8",
        ],
    },
    entry_points={
        "console_scripts": [
            "polar-train=megatron_polar.train:main",
            "polar-data=data_tools.__main__:main",
        ]
    },
)
