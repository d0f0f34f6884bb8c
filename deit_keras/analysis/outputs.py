"""The files `deit-visualize` writes, named without TensorFlow (its flags load before it)."""

import os


def default_similarity_path(output: str) -> str:
    """`attn.png` -> `attn_similarity.png`."""
    stem, _ = os.path.splitext(os.fspath(output))
    return stem + "_similarity.png"
