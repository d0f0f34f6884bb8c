"""What a DeiT attends to: attention maps, rollout, cls/dist token similarity, pictures.

The names below load on first use (PEP 562), so that `analysis.outputs` (the
visualize command's output names) imports without Keras or TensorFlow."""

from deit_keras.backend import lazy_exports

_EXPORTS = {
    "attention_maps": "deit_keras.analysis.attention",
    "attention_rollout": "deit_keras.analysis.attention",
    "batch_attention_maps": "deit_keras.analysis.attention",
    "token_cosine_similarity": "deit_keras.analysis.attention",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
