"""Using a trained DeiT: prediction, top-k classes, accuracy, the paper's test sets, speed.

The names below load on first use (PEP 562), so `deit_keras.inference.timing`
and `deit_keras.inference.host` import without TensorFlow: the `benchmarks/`
drivers and PyTorch-only workers time with them and stay small.
"""

from deit_keras.backend import lazy_exports

_EXPORTS = {
    "evaluate_benchmarks": "deit_keras.inference.imagenet_test_sets",
    "evaluate_file": "deit_keras.inference.evaluate",
    "evaluate_model": "deit_keras.inference.evaluate",
    "evaluate_on_dataset": "deit_keras.inference.evaluate",
    "predict_files": "deit_keras.inference.predict",
    "predict_function": "deit_keras.inference.predict",
    "predict_images": "deit_keras.inference.predict",
    "run_benchmark": "deit_keras.inference.benchmark",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
