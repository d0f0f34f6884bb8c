"""`deit-benchmark`'s runtime names, without TensorFlow: its flags list them before
TensorFlow loads (`inference.bench_runtimes` builds each; a test keeps the two lists equal)."""

ALL = "all"  # every installed runtime
REFERENCE = "torch"
REFERENCES = ("none", REFERENCE)
DEPLOY_RUNTIMES = (
    "eager",
    "keras",
    "keras_bf16",
    "xla",
    "saved_model",
    "onnx",
    "onnx_int8",
    "litert",
    "litert_fp16",
    "litert_dynamic_int8",
    "litert_int8",
    "openvino",
    "openvino_bf16",
    "openvino_int8",
)
