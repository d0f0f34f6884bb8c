"""A model's copy in another Keras dtype policy, with the same weights.

`deit-benchmark`'s `keras_bf16` runtime times a `mixed_bfloat16` copy, and
the exports convert a float32 copy of a model trained in mixed precision
(`--precision=mixed_bfloat16`): tf2onnx kept its bfloat16 casts in a file no
runtime loads, and the LiteRT and OpenVINO converters failed on them.
"""


def with_dtype_policy(model, policy: str):
    """A new model of `model`'s class and config in dtype `policy`, holding its weights.

    Args:
        model: a token classifier (`DeiT`, `CaiT`).
        policy: str. A Keras dtype policy name ("float32", "mixed_bfloat16", ...).
    """
    copy = type(model).from_config({**model.get_config(), "dtype": policy})
    copy.set_weights(model.get_weights())
    return copy


def computes_in_float32(model) -> bool:
    return model.dtype_policy.compute_dtype == "float32"
