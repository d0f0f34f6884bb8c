"""Attention maps of the class and distillation tokens, and their similarity, for one image.

python -m deit_keras.visualize --model_path model.keras cat.jpg --output attn.png
"""

import sys

from absl import flags

from deit_keras import cli
from deit_keras.analysis.outputs import default_similarity_path
from deit_keras.cli import launch
from deit_keras.schema import CROP_PCT, Range

_MODEL_PATH = flags.DEFINE_string("model_path", None, "The .keras model.")
_OUTPUT = flags.DEFINE_string("output", "attention.png", "PNG of the attention maps.")
_SIMILARITY_OUTPUT = flags.DEFINE_string(
    "similarity_output",
    None,
    "PNG of the token similarity plot (default: <output>_similarity.png).",
)
_CROP_PCT = flags.DEFINE_float(
    "crop_pct",
    None,
    "Eval crop fraction: the shorter side is resized to image_size / crop_pct. "
    "Defaults to the model's own (saved in its config).",
)
_TILE = flags.DEFINE_integer("tile", 128, "Side of each tile in pixels (at most 1024).")

cli.check_path("model_path", "input_file")
cli.check_path("output", "output_file")
cli.check_path("similarity_output", "output_file")
cli.check_range("crop_pct", CROP_PCT)
# A figure holds 2 rows of (heads + 2) tiles: 1024 px tiles make a ~30 MP DeiT-B figure.
cli.check_range("tile", Range(1, 1024))


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise cli.UsageError("Give exactly one image path.")
    cli.check_outputs_spare_inputs(
        {
            "--output": _OUTPUT.value,
            "--similarity_output": _SIMILARITY_OUTPUT.value
            or default_similarity_path(_OUTPUT.value),
        },
        {"--model_path": cli.model_files(_MODEL_PATH.value), "the image": argv[1]},
    )
    launch.quiet_tensorflow_start(sys.argv[1:])  # once the flags are accepted
    from deit_keras.analysis.drawing import visualize_file

    result = visualize_file(
        _MODEL_PATH.value,
        argv[1],
        _OUTPUT.value,
        similarity_output=_SIMILARITY_OUTPUT.value,
        crop_pct=_CROP_PCT.value,
        tile=_TILE.value,
    )
    print(f"attention maps: {result['attention']}")
    if result["similarities"] is None:
        print("not a distilled model: no distillation token to compare")
        return
    print(f"token similarity plot: {result['similarity']}")
    print("cosine similarity of the cls and dist tokens (layer 0 = input tokens):")
    for layer, value in enumerate(result["similarities"]):
        print(f"  layer {layer:2d}: {value:.4f}")


def run() -> None:
    flags.mark_flags_as_required(["model_path"])
    cli.run(main)


if __name__ == "__main__":
    run()
