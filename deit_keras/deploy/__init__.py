"""Getting models in and out: published-checkpoint import, `.keras` saving, SavedModel export."""

from deit_keras.deploy.checkpoints import CheckpointError, convert_checkpoint, load_checkpoint
from deit_keras.deploy.pretrained import PretrainedWeightsError, create_model, load_published
from deit_keras.deploy.saved_model import export_saved_model, serving_function
from deit_keras.deploy.saving import load_model, save_model

__all__ = [
    "CheckpointError",
    "PretrainedWeightsError",
    "convert_checkpoint",
    "create_model",
    "export_saved_model",
    "load_checkpoint",
    "load_model",
    "load_published",
    "save_model",
    "serving_function",
]
