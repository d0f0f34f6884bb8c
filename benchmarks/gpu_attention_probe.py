"""The H100 run's fused-attention rows measured the library's path: a check of that claim.

The rows `keras-jax-fused-attention` in
`results/gpu_h100_keras_fused_probe_bf16.json` (2026-12-05) were timed by the
`gpu_throughput.py` of that hour with `--attention fused`, an option (since
replaced) that patched `PROBE_CALL` below, copied from it, into
`MultiHeadSelfAttention.call` before the library ran
`keras.ops.dot_product_attention` itself; the GPU was not lent again to time
the library's path. This lowers both (JAX, bf16, DeiT-Ti⚗ and
DeiT-B⚗, inference and training with drop-path) and compares the programs
with source locations stripped; exit 1 if any differs.

    KERAS_BACKEND=jax python benchmarks/gpu_attention_probe.py
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from deit_keras.layers import attention, onednn_form  # noqa: E402
from deit_keras.models import build_model  # noqa: E402


def PROBE_CALL(self, x, return_attention_scores=False):  # noqa: N802 (as it was patched in)
    if return_attention_scores:
        raise ValueError("the fused-attention probe returns no attention scores")
    batch, tokens = ops.shape(x)[0], ops.shape(x)[1]
    qkv = onednn_form.token_dense(self.qkv, x)
    qkv = ops.reshape(qkv, (batch, tokens, 3, self.num_heads, self.head_dim))
    out = ops.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    return onednn_form.token_dense(self.proj, ops.reshape(out, (batch, tokens, self.embed_dim)))


def lowered(name, training):
    keras.utils.set_random_seed(0)
    model = build_model(name, num_classes=1000, drop_path_rate=0.1 if training else 0.0)
    trainable = [v.value for v in model.trainable_variables]
    fixed = [v.value for v in model.non_trainable_variables]
    images = np.random.default_rng(0).normal(size=(8, 224, 224, 3)).astype("float32")

    def forward(trainable, fixed, images):
        return model.stateless_call(trainable, fixed, images, training=training)[0]

    text = jax.jit(forward).lower(trainable, fixed, images).as_text()
    return re.sub(r"loc\([^)]*\)|#loc\d*( = .*)?", "", text)


def main():
    if keras.backend.backend() != "jax":
        raise SystemExit("error: run with KERAS_BACKEND=jax")
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    library_call = attention.MultiHeadSelfAttention.call
    differ = []
    for name in ("deit_tiny_distilled_patch16_224", "deit_base_distilled_patch16_224"):
        for training in (False, True):
            attention.MultiHeadSelfAttention.call = library_call
            library = lowered(name, training)
            attention.MultiHeadSelfAttention.call = PROBE_CALL
            probe = lowered(name, training)
            same = library == probe
            print(f"{name} training={training}: identical programs {same} ({len(library)} chars)")
            differ += [] if same else [(name, training)]
    attention.MultiHeadSelfAttention.call = library_call
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
