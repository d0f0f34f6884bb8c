"""Top-k predictions of a DeiT for image files.

python -m deit_keras.predict --model_path model.keras cat.jpg dog.png
"""

import json

from absl import flags

from deit_keras import cli
from deit_keras.inference.predict import predict_files
from deit_keras.io.atomic import write_text_atomic

_MODEL_PATH = flags.DEFINE_string("model_path", None, "The .keras model.")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Classes to show per image.")
_CROP_PCT = flags.DEFINE_float(
    "crop_pct",
    None,
    "Eval crop fraction: the shorter side is resized to image_size / crop_pct. "
    "Defaults to the model's own (saved in its config).",
)
_OUTPUT = flags.DEFINE_string("output", None, "Also write the predictions as JSON here.")


def format_predictions(paths: list[str], predictions: list) -> str:
    """Text for people: the path, then one `probability  name` line per class."""
    lines = []
    for path, top in zip(paths, predictions, strict=True):
        lines.append(path)
        lines.extend(f"  {probability:.4f}  {name}" for name, _, probability in top)
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    paths = argv[1:]
    predictions, named = predict_files(
        _MODEL_PATH.value, paths, crop_pct=_CROP_PCT.value, top_k=_TOP_K.value
    )
    print(format_predictions(paths, predictions))
    if not named:
        print("(no class names stored with the model: classes shown as class_<index>)")
    if _OUTPUT.value:
        records = [
            {"image": path, "top": [{"class": n, "index": i, "probability": p} for n, i, p in top]}
            for path, top in zip(paths, predictions, strict=True)
        ]
        write_text_atomic(_OUTPUT.value, json.dumps(records, indent=1) + "\n")


def run() -> None:
    flags.mark_flags_as_required(["model_path"])
    cli.run(main)


if __name__ == "__main__":
    run()
