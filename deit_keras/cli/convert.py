r"""Converts a published DeiT checkpoint (official/timm or Hugging Face) to `.keras`.

    python -m deit_keras.convert --checkpoint deit_tiny_distilled_patch16_224-b40b3cf7.pth \
        --model deit_tiny_distilled_patch16_224 --output saved_models/deit_tiny_distilled.keras
"""

import sys

from absl import flags

from deit_keras import cli
from deit_keras.cli import launch
from deit_keras.models.variants import accepted_names
from deit_keras.schema import NON_NEGATIVE, POSITIVE

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint",
    None,
    "PyTorch checkpoint: .pth/.pt/.bin (torch only for pre-1.6 files), .safetensors or .npz; "
    "official DeiT/timm or Hugging Face keys (detected).",
)
_MODEL = flags.DEFINE_enum(
    "model", None, accepted_names(), "The model the checkpoint holds (a create_model name)."
)
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the .keras model.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size",
    None,
    "Input size of the converted model; position embeddings are resampled "
    "(PyTorch bicubic) when it differs from the checkpoint's. Defaults to the variant's.",
)
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes",
    None,
    "Classes of the heads. Defaults to the checkpoint's; another value "
    "keeps freshly initialised heads (for fine-tuning); 0: no heads, the model "
    "outputs the class token's features (timm's num_classes=0).",
)

cli.check_path("checkpoint", "input_file")
cli.check_path("output", "output_file")
cli.check_range("image_size", POSITIVE)
cli.check_range("num_classes", NON_NEGATIVE)


def main(argv: list[str]) -> None:
    cli.check_no_arguments(argv)
    launch.quiet_tensorflow_start(sys.argv[1:])  # once the flags are accepted
    from deit_keras.deploy.checkpoints import convert_checkpoint

    model = convert_checkpoint(
        _CHECKPOINT.value, _MODEL.value, _OUTPUT.value, _IMAGE_SIZE.value, _NUM_CLASSES.value
    )
    outputs = f"{model.num_classes} classes" if model.num_classes else "no heads (features)"
    print(
        f"Wrote {_OUTPUT.value}: {model.name}, {model.count_params():,} parameters, "
        f"{model.image_size} px, {outputs}"
    )


def run() -> None:
    flags.mark_flags_as_required(["checkpoint", "model", "output"])
    cli.run(main)


if __name__ == "__main__":
    run()
