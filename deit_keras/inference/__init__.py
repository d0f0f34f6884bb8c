"""Using a trained DeiT: compiled prediction, top-k classes of images, accuracy on a dataset,
the paper's Table 5 (ImageNet, ReaL, V2)."""

from deit_keras.inference.benchmarks import evaluate_benchmarks
from deit_keras.inference.evaluate import evaluate_file, evaluate_model, evaluate_on_dataset
from deit_keras.inference.predict import predict_files, predict_function, predict_images

__all__ = [
    "evaluate_benchmarks",
    "evaluate_file",
    "evaluate_model",
    "evaluate_on_dataset",
    "predict_files",
    "predict_function",
    "predict_images",
]
