from pathlib import Path

from setuptools import find_packages, setup

version = {}
for line in Path("lite_controlnet/__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        exec(line, version)

setup(
    name="lite-controlnet",
    version=version["__version__"],
    description="A lightweight ControlNet-style control module for Stable Diffusion 1.5 that trains on a free Colab GPU.",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["lite_controlnet", "lite_controlnet.*"]),
    # the shipped proxy bases (a few MB of safetensors each): --base proxy and proxy-shapes work offline
    package_data={"lite_controlnet": ["assets/proxy-base/*", "assets/proxy-base/*/*",
                                     "assets/proxy-shapes/*", "assets/proxy-shapes/*/*"]},
    python_requires=">=3.10",
    # torch is required but never pinned upward: install it first (Colab has it already);
    # a lower bound that any recent install satisfies keeps pip from replacing it.
    install_requires=[
        "torch>=2.1",
        "diffusers>=0.30",
        "transformers>=4.40",
        "accelerate>=0.30",
        "safetensors>=0.4",
        "pillow>=9",
        "numpy>=1.24",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "ipywidgets>=7.6,<9",
    ],
    extras_require={
        # opencv: the canny condition (lite_controlnet.conditions.canny), which is optional to use;
        # datasets (Hub and local HF datasets as --data), tensorboard (--report-to tensorboard) and
        # peft (the pipeline's LoRA loaders) are optional too, detected where they are used
        # the browser tests (tests/browser/) also serve the notebooks with Notebook 7 and drive
        # Debian's Chromium with Playwright (no browser download: `apt-get install chromium`)
        "dev": ["pytest>=7", "opencv-python-headless>=4.5", "datasets>=2.18", "tensorboard>=2.14", "peft>=0.10", "nbclient>=0.9", "nbformat>=5.9", "ipykernel>=6", "notebook>=7,<8", "playwright>=1.40"],
        "colab": ["bitsandbytes>=0.43"],
    },
    entry_points={"console_scripts": ["lite-controlnet=lite_controlnet.cli:main"]},
)
