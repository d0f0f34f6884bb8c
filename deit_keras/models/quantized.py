"""Which layers of a model `Model.quantize` changed, recorded in its config and redone on load.

The token classifiers build their layers in `__init__` from their own config,
so a `.keras` file of a quantized model (`model.quantize("int8")`) came back
with float layers that cannot take the saved int8 weights. The model's config
records each quantized layer's mode (`quantized_layers`), and `from_config`
quantizes those layers again before Keras loads the saved weights into them.
Modes that need calibration data to quantize ("gptq", "awq") are refused.
"""

# `Model.quantize(mode)` alone makes layers of these modes (no calibration).
REDOABLE_MODES = ("int8", "int4", "float8")


def relative_path(model, layer):
    """`layer`'s path under `model` (its name left out): the same in a model rebuilt
    from its config."""
    return layer.path.removeprefix(f"{model.name}/")


def quantized_layers(model):
    """`{layer path under the model: quantization mode}` of its quantized layers."""
    return {
        relative_path(model, layer): layer.quantization_mode
        for layer in model._flatten_layers(include_self=False)
        if getattr(layer, "quantization_mode", None)
    }


def requantize(model, layers):
    """Quantizes `model`'s `layers` (from `quantized_layers`) in their modes.

    Args:
        model: a built `keras.Model` with the layers of the saved one.
        layers: dict `{layer path under the model: mode}`.
    """
    for mode in sorted(set(layers.values())):
        if mode not in REDOABLE_MODES:
            raise ValueError(
                f"Layers quantized with mode {mode!r} cannot be rebuilt from a config (their "
                f"quantization needs calibration data); save the weights instead. Received: "
                f"quantized_layers={layers}"
            )
        paths = {path for path, layer_mode in layers.items() if layer_mode == mode}
        model.quantize(
            mode, filters=lambda layer, paths=paths: relative_path(model, layer) in paths
        )
