"""deit_keras: DeiT (Touvron et al., 2021) in Keras 3 on the TensorFlow backend."""

import ast
import re

from setuptools import find_packages, setup


def _version() -> str:
    """`__version__` of deit_keras/__init__.py, its one home (read, not imported)."""
    with open("deit_keras/__init__.py", encoding="utf-8") as init:
        return re.search(r'^__version__ = "([^"]+)"', init.read(), re.MULTILINE).group(1)


def _commands() -> tuple[str, ...]:
    """`COMMANDS` of deit_keras/cli/launch.py, their one home (read, not imported)."""
    with open("deit_keras/cli/launch.py", encoding="utf-8") as launch:
        tree = ast.parse(launch.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMMANDS":
            return ast.literal_eval(node.value)
    raise RuntimeError("deit_keras/cli/launch.py defines no COMMANDS")


DEPLOY = [
    "ai-edge-litert==2.3.0",  # LiteRT runtime (tf.lite.Interpreter is deprecated)
    "onnxruntime==1.32.0",
    "tf2onnx==1.17.0",  # TF graph -> ONNX, as keras.export(format="onnx") uses
    "onnx==1.23.2",
    # OpenVINO IR export and runtime, NNCF int8. 2026.4.1 compiles and runs on the AMD EPYC
    # (Zen 4, AVX-512) test box; openvino issue #35943 (SIGFPE in compile_model on some
    # AMD EPYC VMs) was reported against 2025.3-2026.1.
    "openvino==2026.4.1",
    "nncf==3.4.0",
]

setup(
    name="deit_keras",
    version=_version(),
    description=(
        "Data-efficient image Transformers (DeiT) with distillation through "
        "attention, in Keras 3 / TensorFlow."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
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
        "matplotlib",  # the ablation's figures (deit_keras.training.ablation_plots)
        "safetensors",
        "huggingface_hub>=1.0",  # pretrained="hf" / "hf-hub:..." weights
    ],
    extras_require={
        # Runtimes and converters of the LiteRT / ONNX exports (deit_keras.deploy).
        "deploy": DEPLOY,
        "test": DEPLOY
        + [
            "pytest",
            "pytest-xdist==3.8.0",  # make test: two workers, one test file each at a time
            "pytest-timeout==2.4.0",  # make test: a hung test fails with its stacks
            "hypothesis==6.170.17",  # tests/cli/test_flag_matrix.py
            "h5py==3.14.0",  # tests read the weights inside a .keras file
            # The CPU wheel of torch 2.13.0 is what the reference needs; an
            # unpinned torch resolves to a multi-GB CUDA build.
            "torch==2.13.0",
            "transformers==5.23.0",
            # The DeiT III / CaiT reference. torchvision is imported by timm and
            # transformers; tests/conftest.py stubs its two op-registration
            # modules, which fail beside the CPU torch.
            "torchvision==0.28.0",
            "timm==1.0.31",
            # The models on Keras' JAX backend (tests/models/test_backends.py); 0.10.2 is
            # the last JAX for Python 3.11. PyTorch above is the other backend checked.
            "jax==0.10.2",
        ],
    },
    entry_points={
        "console_scripts": [
            f"deit-{command}=deit_keras.cli.launch:{command}" for command in _commands()
        ],
    },
)
