"""Pictures of the class and distillation tokens' attention and their similarity.

Drawing with PIL only; the numbers come from `deit_keras.analysis.attention`:
    overlay(image, heat, alpha=0.55) -> PIL.Image
    attention_figure(image, maps, tile=128) -> PIL.Image
    similarity_plot(similarities) -> PIL.Image
    visualize_file(model_path, image_path, output, similarity_output=None,
                   crop_pct=None) -> dict

`visualize_file` writes `attn.png` (rows: cls / dist token; columns: the
eval crop, the attention rollout, each last-layer head) and, for distilled
models, `attn_similarity.png` (cosine similarity of the two tokens per
layer). The command line is `deit_keras.cli.visualize`.
"""

import contextlib
import os

import numpy as np

from deit_keras.analysis import attention
from deit_keras.analysis.outputs import default_similarity_path
from deit_keras.data.preprocessing import normalize, resize_and_center_crop
from deit_keras.deploy.saving import check_takes_rgb, load_model
from deit_keras.errors import UserInputError
from deit_keras.io.atomic import atomic_output
from deit_keras.io.images import load_image

# A perceptually ordered dark-blue -> red colour ramp (approximately "turbo").
_RAMP = np.array(
    [
        [48, 18, 59],
        [70, 107, 227],
        [40, 188, 235],
        [50, 241, 152],
        [164, 252, 60],
        [239, 205, 58],
        [251, 128, 34],
        [205, 45, 5],
        [122, 4, 3],
    ],
    dtype=np.float64,
)
_BACKGROUND = (255, 255, 255)
_INK = (30, 30, 30)


def colorize(values) -> np.ndarray:
    """Maps `[H, W]` values in [0, 1] to uint8 RGB `[H, W, 3]` with the ramp."""
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    position = values * (len(_RAMP) - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(_RAMP) - 1)
    fraction = (position - low)[..., None]
    colors = _RAMP[low] * (1 - fraction) + _RAMP[high] * fraction
    return np.round(colors).astype(np.uint8)


def overlay(image: np.ndarray, heat, alpha: float = 0.55):
    """Blends a coloured heat map over an image.

    Args:
        image: uint8 `[H, W, 3]`.
        heat: `[h, w]` attention map (any scale; min-max normalised here),
            upsampled bilinearly to `[H, W]`.
        alpha: float in [0, 1]. Opacity of the heat map. Defaults to 0.55.

    Returns:
        RGB `PIL.Image` of size `(W, H)`.
    """
    from PIL import Image

    heat = np.asarray(heat, dtype=np.float64)
    span = heat.max() - heat.min()
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    height, width = image.shape[:2]
    heat = Image.fromarray(np.uint8(np.round(heat * 255))).resize((width, height), Image.BILINEAR)
    colored = Image.fromarray(colorize(np.asarray(heat) / 255.0))
    return Image.blend(Image.fromarray(np.asarray(image, dtype=np.uint8)), colored, alpha)


def attention_figure(image: np.ndarray, maps: dict, tile: int = 128):
    """A grid of overlays: one row per token, columns crop / rollout / heads.

    Args:
        image: uint8 `[S, S, 3]`, the eval crop the model saw.
        maps: output of `attention.attention_maps`.
        tile: int. Side of each tile in pixels. Defaults to 128.

    Returns:
        RGB `PIL.Image`.
    """
    from PIL import Image, ImageDraw

    label_height, pad = 16, 4
    base = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((tile, tile), Image.BICUBIC)
    base_pixels = np.asarray(base)
    rows = []
    for token, token_maps in maps.items():
        tiles = [(f"{token}: input", base)]
        tiles.append((f"{token}: rollout", overlay(base_pixels, token_maps["rollout"])))
        for head, heat in enumerate(token_maps["heads"]):
            tiles.append((f"{token}: head {head}", overlay(base_pixels, heat)))
        rows.append(tiles)
    columns = max(len(row) for row in rows)
    figure = Image.new(
        "RGB",
        (columns * (tile + pad) + pad, len(rows) * (tile + label_height + pad) + pad),
        _BACKGROUND,
    )
    draw = ImageDraw.Draw(figure)
    for row_index, row in enumerate(rows):
        top = pad + row_index * (tile + label_height + pad)
        for column, (label, picture) in enumerate(row):
            left = pad + column * (tile + pad)
            draw.text((left, top + 2), label, fill=_INK)
            figure.paste(picture, (left, top + label_height))
    return figure


def similarity_plot(similarities, size: tuple[int, int] = (480, 320)):
    """A line plot of per-layer cosine similarity (layer 0 = input tokens)."""
    from PIL import Image, ImageDraw

    values = np.asarray(similarities, dtype=np.float64)
    width, height = size
    left, right, top, bottom = 52, 16, 28, 40
    low = min(0.0, float(np.floor(values.min() * 4) / 4))
    figure = Image.new("RGB", size, _BACKGROUND)
    draw = ImageDraw.Draw(figure)

    def point(layer, value):
        x = left + (width - left - right) * layer / max(len(values) - 1, 1)
        y = top + (height - top - bottom) * (1.0 - (value - low) / (1.0 - low))
        return x, y

    draw.text((left, 8), "cosine similarity of cls and dist tokens", fill=_INK)
    draw.rectangle([left, top, width - right, height - bottom], outline=_INK)
    ticks = np.linspace(low, 1.0, 5)
    for tick in ticks:
        x, y = point(0, tick)
        draw.line([left - 4, y, left, y], fill=_INK)
        draw.text((6, y - 6), f"{tick:.2f}", fill=_INK)
    for layer in range(len(values)):
        x, y = point(layer, low)
        draw.line([x, y, x, y + 4], fill=_INK)
        draw.text((x - 3, y + 6), str(layer), fill=_INK)
    draw.text((width // 2 - 60, height - 16), "layer (0 = input tokens)", fill=_INK)
    points = [point(layer, value) for layer, value in enumerate(values)]
    if len(points) > 1:
        draw.line(points, fill=tuple(int(c) for c in _RAMP[1]), width=2)
    for x, y in points:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=tuple(int(c) for c in _RAMP[7]))
    return figure


def _save_pngs(pictures: dict):
    """Writes each `{path: picture}`, or none: all go to temporaries first, renamed once
    every one is written (a full disk at the second leaves the first file as it was)."""
    with contextlib.ExitStack() as stack:
        for path, picture in pictures.items():
            picture.save(stack.enter_context(atomic_output(path)), format="PNG")


def visualize_file(
    model_path: str,
    image_path: str,
    output: str,
    similarity_output: str | None = None,
    crop_pct: float | None = None,
    tile: int = 128,
) -> dict:
    """Draws the attention maps of `image_path` and the token similarity plot.

    Returns:
        dict with `"attention"` (the PNG path), `"similarity"` (PNG path or
        None for models without a distillation token) and `"similarities"`
        (per-layer cosine similarities, index 0 = input tokens, or None).
    """
    for flag, path in (("--output", output), ("--similarity_output", similarity_output)):
        if path is not None and not os.fspath(path).lower().endswith(".png"):
            raise UserInputError(f"{flag} must be a .png path. Received: {path}")
    if similarity_output is not None and os.path.abspath(similarity_output) == os.path.abspath(
        output
    ):  # the similarity plot would overwrite the attention maps
        raise UserInputError(
            f"output and similarity_output name one file: give two. Received: {output}"
        )
    image = load_image(image_path)
    model, _ = load_model(model_path, compile=False)
    check_takes_rgb(model, model_path)
    preprocessing = model.preprocessing.replace(crop_pct=crop_pct)
    crop = resize_and_center_crop(
        image, model.image_size, preprocessing.crop_pct, preprocessing.interpolation
    )
    inputs = normalize(crop, preprocessing)[None]
    maps = attention.attention_maps(model, inputs)
    pictures = {output: attention_figure(np.asarray(crop, dtype=np.uint8), maps, tile=tile)}
    result = {"attention": os.fspath(output), "similarity": None, "similarities": None}
    if model.distilled:
        similarities = attention.token_cosine_similarity(model, inputs)
        similarity_output = similarity_output or default_similarity_path(output)
        pictures[similarity_output] = similarity_plot(similarities)
        result.update(
            similarity=os.fspath(similarity_output),
            similarities=[float(value) for value in similarities],
        )
    _save_pngs(pictures)
    return result
