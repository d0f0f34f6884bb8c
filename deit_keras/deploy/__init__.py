"""Getting models in and out: published-checkpoint import, `.keras` saving, and export
as a SavedModel, LiteRT or ONNX file (`export_model`) that `ExportedModel` runs back."""

from deit_keras.deploy.checkpoints import CheckpointError, convert_checkpoint, load_checkpoint
from deit_keras.deploy.export_formats import FORMATS, export_model
from deit_keras.deploy.litert_export import QUANTIZATIONS
from deit_keras.deploy.pretrained import PretrainedWeightsError, create_model, load_published
from deit_keras.deploy.runtimes import ExportedModel, load_exported, load_for_inference
from deit_keras.deploy.saved_model import export_saved_model, serving_function
from deit_keras.deploy.saving import load_model, save_model

__all__ = [
    "FORMATS",
    "QUANTIZATIONS",
    "CheckpointError",
    "ExportedModel",
    "PretrainedWeightsError",
    "convert_checkpoint",
    "create_model",
    "export_model",
    "export_saved_model",
    "load_checkpoint",
    "load_exported",
    "load_for_inference",
    "load_model",
    "load_published",
    "save_model",
    "serving_function",
]
