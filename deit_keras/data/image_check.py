"""Which image files the input pipeline can decode, found once, before training.

A folder dataset is checked up front with the pipeline's own decoder
(TensorFlow's, so what passes here decodes there): JPEGs at 1/8 scale
(`decode_jpeg(ratio=8)` still reads every byte, so truncation shows, at a
fraction of the cost), other formats fully. The checks run in a parallel
`tf.data` pipeline whose failures are dropped (`ignore_errors`); the files
that did not come through are bad, and only those are decoded again, one
by one, for the reason. Results are kept per process, keyed by each file's
path, size and modification time.

Policy (`bad_images`): "skip" leaves bad files out (the caller lists them);
"fail" raises `BadImageError` naming the first. Grayscale, palette, RGBA,
CMYK and 16-bit images, 1x1 and very large ones decode to RGB uint8 and are
kept.
"""

import os

from deit_keras.backend import tf
from deit_keras.errors import UserInputError
from deit_keras.io.quiet_stderr import quiet_stderr

BAD_IMAGES = ("skip", "fail")

# (path, size, mtime_ns) -> reason, or None for a good file.
_CHECKED: dict = {}


class BadImageError(UserInputError):
    """An image file the pipeline cannot decode, with `--bad_images=fail`."""


def check_policy(bad_images: str) -> None:
    if bad_images not in BAD_IMAGES:
        raise UserInputError(f"bad_images must be one of {BAD_IMAGES}. Received: {bad_images!r}")


def _probe(encoded):
    # Imported here: the train command reads `BAD_IMAGES` before TensorFlow loads.
    from deit_keras.data import transforms

    def jpeg():
        return tf.shape(tf.io.decode_jpeg(encoded, channels=3, ratio=8))

    def other():
        # Whether it decodes, not which way up it is: the EXIF orientation is not read.
        return tf.shape(transforms.decode_image(encoded, orientation=1))

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def _reason(path: str) -> str:
    """Why `path` does not decode (its TensorFlow error, first line)."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        _probe(tf.io.read_file(path))
    except OSError as error:
        return error.strerror or str(error)
    except tf.errors.OpError as error:
        message = error.message.split("\n")[0]
        return message.split("}} ")[-1].split(" [Op:")[0].strip() or type(error).__name__
    return "could not be decoded"  # failed in the pipeline, not alone: flaky storage


def _key(path: str):
    try:
        stat = os.stat(path)
    except OSError:
        return (path, -1, -1)
    return (path, stat.st_size, stat.st_mtime_ns)


def undecodable(paths: list[str]) -> dict[str, str]:
    """`{path: reason}` for the files of `paths` the input pipeline cannot decode."""
    keys = [_key(path) for path in paths]
    todo = [key[0] for key in keys if key not in _CHECKED]
    if todo:
        pending = set(todo)
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(todo, tf.string))
        ds = ds.map(
            lambda path: (path, _probe(tf.io.read_file(path))),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=False,
        ).ignore_errors()
        with quiet_stderr():
            decoded = {path.decode() for path, _ in ds.as_numpy_iterator()}
            for key in keys:
                if key[0] in pending:
                    _CHECKED[key] = None if key[0] in decoded else _reason(key[0])
    return {key[0]: _CHECKED[key] for key in keys if _CHECKED[key] is not None}


def apply_policy(
    paths: list[str], labels: list[int], bad_images: str
) -> tuple[list[str], list[int], dict[str, str]]:
    """`(paths, labels)` without undecodable files, and `{path: reason}` of those left out.

    Raises:
        BadImageError: with `bad_images="fail"`, naming the first bad file.
    """
    check_policy(bad_images)
    bad = undecodable(paths)
    if bad and bad_images == "fail":
        first = next(path for path in paths if path in bad)
        raise BadImageError(
            f"Cannot decode image {first}: {bad[first]} ({len(bad)} bad file(s) in all). "
            "Fix or remove it, or pass --bad_images=skip to leave such files out."
        )
    kept = [(path, label) for path, label in zip(paths, labels, strict=True) if path not in bad]
    return [p for p, _ in kept], [y for _, y in kept], bad


__all__ = ["BAD_IMAGES", "BadImageError", "apply_policy", "check_policy", "undecodable"]
