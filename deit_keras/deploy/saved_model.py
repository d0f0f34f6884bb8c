"""SavedModel export with a uint8, any-size `serving_default` signature.

The signature does the model's own eval resize/crop/normalisation inside
(`deit_keras.data.preprocessing.preprocess`), in the style of the TF Model
Garden `export_saved_model` binary/library pair (the binary is
`deit_keras.cli.export`). A second signature, `serving_crops`, takes the
uint8 eval crops the other formats take: `deit-predict` / `deit-evaluate`
run an export through it (`deploy.runtimes`).
"""

import json
import os
import re

import keras

from deit_keras.deploy.export_options import SAVED_MODEL_FILE
from deit_keras.deploy.signatures import (
    SERVING_CONFIG,
    any_size_function,
    fixed_size_function,
    serving_config,
)
from deit_keras.errors import UserInputError
from deit_keras.io import atomic

serving_function = any_size_function  # the name this module has always exported
CROPS_SIGNATURE = "serving_crops"


def is_saved_model(path: str) -> bool:
    """Whether `path` is a SavedModel directory (it holds saved_model.pb)."""
    return os.path.isfile(os.path.join(os.fspath(path), SAVED_MODEL_FILE))


def read_saved_model_config(path: str) -> dict:
    """The `deit_serving.json` of a SavedModel written by `export_saved_model`.

    Raises:
        UserInputError: a SavedModel without it (not exported by deit_keras).
    """
    config_path = os.path.join(path, SERVING_CONFIG)
    try:
        with open(config_path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise UserInputError(
            f"{path} is a SavedModel without {SERVING_CONFIG}: export it with "
            "`python -m deit_keras.export`."
        ) from None
    except (OSError, ValueError) as error:
        raise UserInputError(f"Could not read {config_path}: {error}") from error


def check_saved_model_weights(path: str) -> None:
    """Raises `UserInputError` when the SavedModel's `variables/` (its weights) is missing
    or half there, as after copying `saved_model.pb` alone: TensorFlow's error then said
    to set `experimental_io_device`, which is not the problem.
    """
    variables = os.path.join(path, "variables")
    index = os.path.join(variables, "variables.index")
    shards = [_SHARD.fullmatch(name) for name in _listed(variables)]
    counts = {int(shard[2]) for shard in shards if shard}
    present = {(int(shard[1]), int(shard[2])) for shard in shards if shard}
    every_shard = len(counts) == 1 and present == {(i, *counts) for i in range(*counts)}
    if not os.path.isfile(index) or not every_shard:
        raise UserInputError(
            f"{path} is a SavedModel without its weights ({index} and its "
            "variables.data-* files): copy the whole directory, or export it again."
        )


_SHARD = re.compile(r"variables\.data-(\d+)-of-(\d+)")


def _listed(folder: str) -> list[str]:
    return os.listdir(folder) if os.path.isdir(folder) else []


def export_saved_model(
    model: keras.Model,
    out_dir: str,
    crop_pct: float | None = None,
    class_names: list[str] | None = None,
    extra_files: dict[str, str] | None = None,
) -> dict:
    """Exports `model` as a SavedModel with a uint8 `serving_default` signature.

    Signature `serving_default`: `images` uint8 `[B, H, W, 3]` (any H, W) ->
    float32 `[B, C]` `probabilities`, `logits`, `cls_logits` and, for a
    distilled model, `dist_logits` (`deploy.signatures`); `serving_crops`:
    uint8 `[B, S, S, 3]` eval crops -> the same (the other formats'). The
    directory also holds `deit_serving.json` (image size, crop_pct, class
    names and where they come from, `class_names_source`). It is written
    atomically: on failure `out_dir` is left as it was.

    Args:
        model: a `DeiT` with a classification head.
        out_dir: str. Output directory. An earlier SavedModel there (a
            directory holding saved_model.pb) is replaced; any other
            existing directory or file raises `UserInputError` before the export.
        crop_pct: float in [0.1, 1] or None. Eval crop fraction; defaults to
            the model's (`model.preprocessing.crop_pct`).
        class_names: list of str or None. The model's saved names, recorded
            in `deit_serving.json`; without them a 1000-class model records
            the ImageNet-1k names and any other `class_<index>`
            (`data.labels.resolve_class_names`).
        extra_files: dict of file name -> text to write into `out_dir`
            (e.g. the command's flags).

    Returns:
        The `deit_serving.json` config.
    """
    serve = any_size_function(model, crop_pct)
    config = serving_config(model, "saved_model", crop_pct=crop_pct, class_names=class_names)
    with atomic.atomic_output(out_dir, directory_marker=SAVED_MODEL_FILE) as temporary:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serve)
        archive.add_endpoint(CROPS_SIGNATURE, fixed_size_function(model))
        archive.write_out(temporary, verbose=False)
        files = {SERVING_CONFIG: json.dumps(config, indent=1) + "\n"}
        files.update(extra_files or {})
        for name, text in files.items():
            with open(os.path.join(temporary, name), "w", encoding="utf-8") as handle:
                handle.write(text)
    return config
