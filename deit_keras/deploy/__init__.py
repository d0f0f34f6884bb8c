"""Getting models in and out: published-checkpoint import, `.keras` saving, and export
as a SavedModel, LiteRT or ONNX file (`export_model`) that `ExportedModel` runs back.

The names below load on first use (PEP 562), so that `export_options` (the commands'
format and path checks) imports without Keras or TensorFlow."""

from deit_keras.backend import lazy_exports

_EXPORTS = {
    "FORMATS": "deit_keras.deploy.export_options",
    "QUANTIZATIONS": "deit_keras.deploy.litert_export",
    "CheckpointError": "deit_keras.deploy.checkpoints",
    "ExportedModel": "deit_keras.deploy.runtimes",
    "PretrainedWeightsError": "deit_keras.deploy.pretrained",
    "convert_checkpoint": "deit_keras.deploy.checkpoints",
    "create_model": "deit_keras.deploy.pretrained",
    "export_model": "deit_keras.deploy.export_formats",
    "export_saved_model": "deit_keras.deploy.saved_model",
    "load_checkpoint": "deit_keras.deploy.checkpoints",
    "load_exported": "deit_keras.deploy.runtimes",
    "load_for_inference": "deit_keras.deploy.runtimes",
    "load_model": "deit_keras.deploy.saving",
    "load_published": "deit_keras.deploy.pretrained",
    "save_model": "deit_keras.deploy.saving",
    "serving_function": "deit_keras.deploy.saved_model",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
