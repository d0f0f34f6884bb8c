"""deit_keras: DeiT (Touvron et al., 2021) in Keras 3 on the TensorFlow backend."""

from setuptools import find_packages, setup

setup(
    name="deit_keras",
    version="0.1.0",
    description=(
        "Data-efficient image Transformers (DeiT) with distillation through "
        "attention, in Keras 3 / TensorFlow."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["deit_keras", "deit_keras.*"]),
    include_package_data=True,
    package_data={"deit_keras.data": ["*.txt"]},  # imagenet_classes.txt
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<4",
        "keras-cv==0.9.0",
        "tensorflow-datasets>=4.9.10",
        "importlib_resources",  # tfds 4.9.10 imports it but does not declare it
        "absl-py",
        "tensorboard",
        "scikit-learn",
        "numpy",
        "pillow",
        "safetensors",
        "huggingface_hub>=1.0",  # pretrained="hf" / "hf-hub:..." weights
    ],
    extras_require={
        "test": [
            "pytest",
            # The CPU wheel of torch 2.13.0 is what the reference needs; an
            # unpinned torch resolves to a multi-GB CUDA build.
            "torch==2.13.0",
            "transformers==5.23.0",
            "ruff==0.17.6",  # `make lint`; pinned so the rules do not move under CI
        ],
    },
    entry_points={
        "console_scripts": [
            f"deit-{command}=deit_keras.cli.{command}:run"
            for command in (
                "train",
                "convert",
                "export",
                "evaluate",
                "predict",
                "visualize",
                "ablate",
            )
        ],
    },
)
