"""Exports a `.keras` DeiT as a SavedModel with a uint8, any-size serving signature.

python -m deit_keras.export --model_path model.keras --output exported/
python -m deit_keras.export --model deit_base_patch16_384 --pretrained --output exported/
"""

import os

from absl import flags

from deit_keras import cli
from deit_keras.cli import model_source
from deit_keras.deploy.saved_model import export_saved_model

_OUTPUT = flags.DEFINE_string("output", None, "SavedModel directory to write (replaced).")
_CROP_PCT = flags.DEFINE_float(
    "crop_pct",
    None,
    "Eval crop fraction: the shorter side is resized to image_size / crop_pct. "
    "Defaults to the model's own (saved in its config).",
)


def main(argv: list[str]) -> None:
    cli.check_no_arguments(argv)
    model, class_names = model_source.load_model_from_flags()
    export_saved_model(
        model,
        _OUTPUT.value,
        crop_pct=_CROP_PCT.value,
        class_names=class_names,
        extra_files={"flags.txt": flags.FLAGS.flags_into_string()},
    )
    print(
        f"Exported {model_source.model_description()} to {os.path.abspath(_OUTPUT.value)} "
        "(serving_default: uint8 [B, H, W, 3] -> probabilities, logits)"
    )


def run() -> None:
    flags.mark_flags_as_required(["output"])
    cli.run(main)


if __name__ == "__main__":
    run()
