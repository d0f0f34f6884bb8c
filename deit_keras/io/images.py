"""Reading image files as RGB uint8 arrays, whatever their mode."""

import os
import warnings

import numpy as np

from deit_keras.errors import UserInputError

# The files a folder of images is read for (training's `folder:` datasets, deit-predict).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def image_files(paths: list[str]) -> list[str]:
    """`paths` with each folder replaced by its image files (by extension, in its
    subfolders too, sorted by path; hidden files and folders left out, as training's
    `folder:` datasets do: macOS's `._photo.jpg`, `.thumbnails/`); files as they are, each
    path once.

    Raises:
        UserInputError: a folder without image files.
    """
    found = []
    for path in map(os.fspath, paths):
        if not os.path.isdir(path):
            found.append(path)
            continue
        inside = _visible_images(path)
        if not inside:
            raise UserInputError(
                f"{path} is a folder without image files ({', '.join(IMAGE_EXTENSIONS)})."
            )
        found.extend(inside)
    # Once per file however it is spelt (`a.jpg`, `./a.jpg`, a folder and a file in it),
    # as first given.
    first = {}
    for path in found:
        first.setdefault(os.path.normpath(path), path)
    return list(first.values())


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden (`.DS_Store`, macOS's `._photo.jpg`,
    `.ipynb_checkpoints/`): left out wherever a folder is read for images."""
    return name.startswith(".")


def visible_files(folder: str, walk=os.walk) -> list[str]:
    """The files below `folder`, sorted by path; hidden files and folders left out.

    Args:
        folder: the folder to walk.
        walk: an `os.walk`-like function (`tf.io.gfile.walk` for remote storage).
            Links to folders are not followed by `os.walk`'s default.
    """
    found = []
    for parent, folders, names in walk(folder):
        folders[:] = [name for name in folders if not is_hidden(name)]
        found += [os.path.join(parent, name) for name in names if not is_hidden(name)]
    return sorted(found)


def _visible_images(folder: str) -> list[str]:
    return [path for path in visible_files(folder) if path.lower().endswith(IMAGE_EXTENSIONS)]


def load_image(path: str) -> np.ndarray:
    """Reads a JPEG/PNG/... file as RGB uint8 `[H, W, 3]`.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images are
    converted; EXIF orientation is applied.

    Raises:
        ValueError: one line, when the file is missing, empty or not an image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserInputError(f"{path} is a folder; give its image files.")
    if not os.path.isfile(path):
        raise UserInputError(f"Image file not found: {path}")
    if os.path.getsize(path) == 0:
        raise UserInputError(f"Image file {path} is empty.")
    try:
        with warnings.catch_warnings():
            # Large photos (Pillow warns from 89 megapixels) decode, as in training.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                # TensorFlow's GIF decoder leaves a GIF's transparent pixels black.
                clear_is_black = image.format == "GIF" and "transparency" in image.info
                image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as error:
        raise UserInputError(
            f"{path} is too large for Pillow ({error}); downscale it first."
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UserInputError(f"Could not read {path} as an image: {error}") from error
    return _to_rgb_uint8(image, clear_is_black)


def _to_rgb_uint8(image, clear_is_black=False):
    if image.mode.startswith("I;16"):  # 16-bit grayscale: the high byte, as TensorFlow decodes it
        pixels = (np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8)
        return np.repeat(pixels[..., None], 3, axis=-1)
    if image.mode in ("I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        if image.mode == "I" and pixels.max(initial=0) > 255:  # 16-bit values in 32 bits
            pixels = pixels / 257.0
        elif image.mode == "F" and pixels.max(initial=0) <= 1.0:
            pixels = pixels * 255.0
        pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
        return np.repeat(pixels[..., None], 3, axis=-1)
    if image.mode == "P":
        image = image.convert("RGBA")
    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if clear_is_black and image.mode == "RGBA":
        pixels = np.where(np.asarray(image)[..., 3:] == 0, 0, pixels).astype(np.uint8)
    return pixels
