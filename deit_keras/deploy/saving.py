"""Saving and loading DeiT models as `.keras` files.

`.keras` files are written atomically; class names, when known, go to
`<path>.classes.json` beside the model. A model's preprocessing (mean, std,
crop_pct, interpolation) is part of its own config.
"""

import json
import os

import keras

from deit_keras.deploy.export_options import classes_path
from deit_keras.errors import UserInputError
from deit_keras.io import atomic, paths
from deit_keras.models.classifier import TokenClassifier


def check_class_names(class_names: list, num_classes: int, source: str = "") -> list[str]:
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes:
        raise UserInputError(
            f"Got {len(class_names)} class names{f' in {source}' if source else ''} for a "
            f"model with num_classes={num_classes}."
        )
    return class_names


def save_model(model: TokenClassifier, path: str, class_names: list[str] | None = None) -> None:
    """Writes `model` to the `.keras` file `path` atomically.

    Args:
        model: a `DeiT` (compiled or not; the optimizer state is kept).
        path: str. Must end in ".keras".
        class_names: list of str or None. Saved to `<path>.classes.json`;
            when None, a stale classes file from an earlier save is removed.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise UserInputError(f"The model path must end in '.keras'. Received: {path}")
    if class_names is not None:
        class_names = check_class_names(class_names, model.num_classes)
    with atomic.atomic_output(path) as temporary:
        model.save(temporary)
    if class_names is not None:
        write_class_names(path, class_names)
    elif os.path.exists(classes_path(path)):
        os.remove(classes_path(path))


def write_class_names(path: str, class_names: list) -> None:
    """Writes the class names of the model saved at `path` beside it (`classes_path`)."""
    names = [str(name) for name in class_names]
    atomic.write_text_atomic(classes_path(path), json.dumps(names, indent=1) + "\n")


def read_class_names(path: str, num_classes: int | None = None) -> list[str] | None:
    """The class names saved beside the model at `path`, or None when there are none.

    Raises:
        UserInputError: the file is unreadable, not a JSON list, or (with
            `num_classes`) of another length.
    """
    sidecar = classes_path(path)
    if not os.path.exists(sidecar):
        return None
    try:
        with open(sidecar, encoding="utf-8") as handle:
            names = json.load(handle)
    except (OSError, ValueError) as error:
        raise UserInputError(f"Could not read class names {sidecar}: {error}") from error
    if not isinstance(names, list):
        raise UserInputError(f"{sidecar} must hold a JSON list of class names.")
    if num_classes is None:
        return [str(name) for name in names]
    return check_class_names(names, num_classes, sidecar)


def check_takes_rgb(model, path: str) -> None:
    """Raises a one-line `UserInputError` unless `model` takes 3-channel images, which
    the commands' readers (predict, evaluate, export, visualize) always give."""
    channels = getattr(model, "in_channels", 3)
    if channels != 3:
        raise UserInputError(
            f"{path} takes {channels}-channel images; the commands read RGB (3-channel) "
            "images. Call the model from Python with inputs of its own kind."
        )


def load_model(path: str, compile: bool = True) -> tuple[TokenClassifier, list[str] | None]:
    """Loads a `.keras` DeiT and its class names.

    Args:
        path: str. A `.keras` file written by `save_model` (or `model.save`).
        compile: bool. Restore the optimizer and loss when the model was
            saved compiled. Defaults to True.

    Returns:
        `(model, class_names)`; `class_names` is None when none were saved.

    Raises:
        ValueError: with a one-line message when the file is missing, empty,
            not a `.keras` archive, corrupt, or not a DeiT model.
    """
    path = os.fspath(path)
    problem = paths.keras_file_problem(path)
    if problem:
        raise UserInputError(problem)
    try:
        model = keras.saving.load_model(path, compile=compile)
    except Exception as error:  # Keras raises many types for corrupt archives.
        message = " ".join(str(error).split())[:300]
        raise UserInputError(f"Could not load {path}: {type(error).__name__}: {message}") from error
    if not isinstance(model, TokenClassifier):
        raise UserInputError(
            f"{path} holds a {type(model).__name__}, not a deit_keras model (DeiT, CaiT)."
        )
    return model, read_class_names(path, model.num_classes)
