"""Small generated image-folder datasets where a CNN wins and a ViT from scratch struggles.

Each dataset is a few classes of objects drawn at random positions, sizes,
rotations and colours on clutter or texture, written as
`<root>/train/<class>/<i>.png` and `<root>/val/<class>/<i>.png` (the
`folder:` layout of `deit_keras.data.sources`). A small CNN's local filters
and pooling find such objects wherever they are; a ViT trained from scratch
on ~1,000 images has to learn translation invariance from the data, which
is the regime where a CNN teacher's labels are worth the most (DeiT's
claim). Everything is a function of `seed`: the same call writes the same
bytes.

- `shapes` (32 px): one bright circle, square, triangle or cross on a dark
  background crossed by dim lines.
- `glyphs` (32 px): 2-3 bright copies of one glyph (L, T, X, O) scattered
  over a dark noisy background, with dim glyph-sized strokes as distractors.
- `objects` (48 px): star, ring, arrow, crescent in a contrasting colour on
  stripe, checker or smooth-noise textures.

Objects are brighter than their background in `shapes` and `glyphs`: with
random colours on both sides the 32-px ViT of `experiments/small_data.cfg`
(60 epochs) reached 0.52 top-1 on `shapes` alone and 0.36-0.52 with a
0.92 CNN teacher (its linear patch embedding sees colour before shape);
bright on dark: 0.70 alone, 0.78 with a 1.00 teacher.

    from deit_keras.data import synthetic
    synthetic.write_dataset("shapes", "/tmp/shapes")  # then --dataset=folder:/tmp/shapes
"""

import math
import os

import numpy as np
from PIL import Image, ImageDraw

from deit_keras.errors import UserInputError

# name: (classes, image side, train images per class, val images per class)
DATASETS = {
    "shapes": (("circle", "square", "triangle", "cross"), 32, 250, 75),
    "glyphs": (("L", "T", "X", "O"), 32, 250, 75),
    "objects": (("star", "ring", "arrow", "crescent"), 48, 250, 75),
}


def _colour(rng, low=0, high=256):
    return tuple(int(v) for v in rng.integers(low, high, 3))


def _contrasting(rng, background):
    """A colour at least ~120 away (L1 over channels / 3) from `background`."""
    for _ in range(20):
        colour = _colour(rng)
        if sum(abs(a - b) for a, b in zip(colour, background, strict=True)) / 3 > 120:
            return colour
    return tuple(255 - v for v in background)


def _rotated(points, centre, angle):
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = centre
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def _polygon(kind, radius):
    """Outline points of a shape of `radius` around (0, 0)."""
    if kind == "square":
        r = radius * 0.8
        return [(-r, -r), (r, -r), (r, r), (-r, r)]
    if kind == "triangle":
        return [(radius * math.cos(a), radius * math.sin(a)) for a in (-math.pi / 2, 0.52, 2.62)]
    if kind == "cross":
        w, r = radius * 0.35, radius
        return [
            (-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w),
            (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w),
        ]  # fmt: skip
    if kind == "star":
        return [
            (
                (radius if i % 2 == 0 else radius * 0.45) * math.cos(math.pi * i / 5 - math.pi / 2),
                (radius if i % 2 == 0 else radius * 0.45) * math.sin(math.pi * i / 5 - math.pi / 2),
            )
            for i in range(10)
        ]
    if kind == "arrow":
        r, w = radius, radius * 0.25
        return [(-r, -w), (0, -w), (0, -2.2 * w), (r, 0), (0, 2.2 * w), (0, w), (-r, w)]
    raise UserInputError(f"Unknown polygon {kind!r}")


def _draw_shape(draw, rng, kind, centre, radius, colour, background):
    x, y = centre
    angle = float(rng.uniform(0, 2 * math.pi))
    if kind in ("circle", "O"):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
        if kind == "O":
            inner = radius * 0.5
            draw.ellipse([x - inner, y - inner, x + inner, y + inner], fill=background)
    elif kind == "ring":
        width = max(2, int(radius * 0.35))
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=colour, width=width)
    elif kind == "crescent":  # a disc minus an offset disc, over whatever is below
        mask = Image.new("L", draw.im.size, 0)
        cut = ImageDraw.Draw(mask)
        cut.ellipse([x - radius, y - radius, x + radius, y + radius], fill=255)
        dx, dy = _rotated([(radius * 0.55, 0)], (0, 0), angle)[0]
        r = radius * 0.85
        cut.ellipse([x + dx - r, y + dy - r, x + dx + r, y + dy + r], fill=0)
        draw.bitmap((0, 0), mask, fill=colour)
    elif kind in ("L", "T", "X"):
        strokes = {
            "L": [((-1, -1), (-1, 1)), ((-1, 1), (1, 1))],
            "T": [((-1, -1), (1, -1)), ((0, -1), (0, 1))],
            "X": [((-1, -1), (1, 1)), ((-1, 1), (1, -1))],
        }[kind]
        width = max(1, int(round(radius * 0.45)))
        for start, end in strokes:
            points = _rotated([(start[0] * radius, start[1] * radius)], centre, angle)
            points += _rotated([(end[0] * radius, end[1] * radius)], centre, angle)
            draw.line(points, fill=colour, width=width)
    else:
        draw.polygon(_rotated(_polygon(kind, radius), centre, angle), fill=colour)


def _clutter(rng, size):
    """A dark flat colour crossed by a few dim random lines."""
    background = _colour(rng, 0, 90)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 5))):
        points = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(2)]
        draw.line(points, fill=_colour(rng, 0, 140), width=1)
    return image, background


def _texture(rng, size):
    """Stripes, a checkerboard or smooth noise in two random colours."""
    a = np.array(_colour(rng, 50, 206))
    b = np.clip(a + rng.integers(-50, 51, 3), 0, 255)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = int(rng.integers(3))
    period = float(rng.uniform(4, 10))
    if kind == 0:
        angle = rng.uniform(0, math.pi)
        mix = 0.5 + 0.5 * np.sin(
            2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period
        )
    elif kind == 1:
        mix = ((xx // period + yy // period) % 2).astype(np.float32)
    else:
        coarse = rng.random((size // 6 + 2, size // 6 + 2)).astype(np.float32)
        mix = np.asarray(
            Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
            np.float32,
        )
        mix /= 255.0
    pixels = a[None, None] * mix[..., None] + b[None, None] * (1 - mix[..., None])
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image, tuple(int(v) for v in (a + b) // 2)


def _noisy(image, rng, amount):
    pixels = np.asarray(image, np.int16) + rng.integers(-amount, amount + 1, (*image.size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def draw_image(name: str, label: int, rng: np.random.Generator) -> Image.Image:
    """One image of class `label` of dataset `name`, drawn with `rng`."""
    classes, size, _, _ = DATASETS[name]
    kind = classes[label]
    if name == "shapes":
        image, background = _clutter(rng, size)
        draw = ImageDraw.Draw(image)
        radius = float(rng.uniform(0.2, 0.32) * size)
        centre = tuple(float(v) for v in rng.uniform(radius, size - radius, 2))
        _draw_shape(draw, rng, kind, centre, radius, _colour(rng, 170, 256), background)
        return _noisy(image, rng, 8)
    if name == "glyphs":
        background = _colour(rng, 0, 90)
        image = Image.new("RGB", (size, size), background)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4))):  # distractor strokes of glyph size
            start = rng.uniform(0, size, 2)
            end = start + rng.uniform(-5, 5, 2)
            draw.line([tuple(start), tuple(end)], fill=_colour(rng, 0, 140), width=1)
        colour = _colour(rng, 170, 256)
        for _ in range(int(rng.integers(2, 4))):
            radius = float(rng.uniform(4.0, 6.0))
            centre = tuple(float(v) for v in rng.uniform(radius + 1, size - radius - 1, 2))
            _draw_shape(draw, rng, kind, centre, radius, colour, background)
        return _noisy(image, rng, 10)
    image, background = _texture(rng, size)
    draw = ImageDraw.Draw(image)
    radius = float(rng.uniform(0.22, 0.33) * size)
    centre = tuple(float(v) for v in rng.uniform(radius, size - radius, 2))
    _draw_shape(draw, rng, kind, centre, radius, _contrasting(rng, background), background)
    return _noisy(image, rng, 10)


def write_dataset(
    name: str,
    root: str,
    seed: int = 0,
    train_per_class: int | None = None,
    val_per_class: int | None = None,
) -> str:
    """Writes dataset `name` under `root` (`train/<class>/*.png`, `val/<class>/*.png`).

    Args:
        name: str. One of `DATASETS`: "shapes", "glyphs", "objects".
        root: str. Output directory (created; existing files are overwritten).
        seed: int. Everything drawn is a function of it (and the counts).
        train_per_class: int. Defaults to the dataset's (250).
        val_per_class: int. Defaults to the dataset's (75).

    Returns:
        str: the `--dataset` value, `"folder:<root>"`.
    """
    if name not in DATASETS:
        raise UserInputError(f"name must be one of {tuple(DATASETS)}. Received: name={name!r}")
    classes, _, default_train, default_val = DATASETS[name]
    counts = {"train": train_per_class or default_train, "val": val_per_class or default_val}
    for split_index, (split, count) in enumerate(counts.items()):
        for label, class_name in enumerate(classes):
            directory = os.path.join(root, split, class_name)
            os.makedirs(directory, exist_ok=True)
            for index in range(count):
                # One stream per image: counts and splits never shift another image.
                rng = np.random.default_rng([seed, split_index, label, index])
                image = draw_image(name, label, rng)
                image.save(os.path.join(directory, f"{index:05d}.png"), optimize=False)
    return f"folder:{root}"
