"""WebP images: decoded as Pillow decodes them, listed in folder datasets, bad ones skipped.

TensorFlow 2.21's own WebP decoder aborts the process on an animation without
the alpha flag (the files Pillow writes); `transforms.decode_image` must not.
"""

import io

import numpy as np
import pytest
from PIL import Image

from deit_keras.data import image_check
from deit_keras.data.augment_config import AugmentConfig
from deit_keras.data.pipeline import dataset_info, make_dataset
from deit_keras.data.transforms import decode_image, is_webp


def _webp(frames, **options):
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=len(frames) > 1, append_images=frames[1:], **options)
    return buffer.getvalue()


def _random(rng, mode="RGB", shape=(20, 30)):
    channels = len(mode)
    pixels = rng.integers(0, 256, (*shape, channels), dtype=np.uint8)
    if mode == "RGBA":
        pixels[..., 3] = rng.integers(1, 256, shape)  # no fully clear pixel: its RGB is dropped
    return Image.fromarray(pixels, mode)


def _as_pil_sees_it(encoded):
    with Image.open(io.BytesIO(encoded)) as image:
        return np.asarray(image.convert("RGB"))


def _cases():
    rng = np.random.default_rng(0)
    return {
        "lossless": _webp([_random(rng)], lossless=True),
        "lossy": _webp([_random(rng)], quality=80),
        "alpha": _webp([_random(rng, "RGBA")], lossless=True),
        "lossy alpha": _webp([_random(rng, "RGBA")], quality=60),
        "animation": _webp([_random(rng) for _ in range(3)], lossless=True),
        "lossy animation": _webp([_random(rng) for _ in range(3)], quality=70),
        "animation with alpha": _webp([_random(rng, "RGBA") for _ in range(2)], lossless=True),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_webp_decodes_as_pil_sees_it(name):
    encoded = _cases()[name]
    decoded = decode_image(encoded).numpy()
    expected = _as_pil_sees_it(encoded)
    assert decoded.shape == expected.shape == (20, 30, 3)
    np.testing.assert_array_equal(decoded, expected)


def test_animation_without_alpha_flag_is_the_case_tensorflow_cannot_decode():
    """The animation cases above reach the broken path: flag 0x02 set, alpha 0x10 not."""
    encoded = _cases()["animation"]
    assert encoded[12:16] == b"VP8X" and encoded[20] & 0x12 == 0x02


@pytest.mark.parametrize(
    "encoded, expected",
    [
        (_webp([Image.new("RGB", (4, 4))]), True),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", False),
        (b"\x89PNG\r\n\x1a\n", False),
        (b"RIFF", False),
        (b"", False),
    ],
)
def test_is_webp_reads_the_header_of_short_and_other_files(encoded, expected):
    assert bool(is_webp(encoded)) is expected


def test_a_short_or_non_webp_file_keeps_its_own_decoder_error():
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        decode_image(b"RIFF")


@pytest.fixture(scope="module")
def webp_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("webp")
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            directory = root / split / name
            directory.mkdir(parents=True)
            for index, encoded in enumerate(_cases().values()):
                (directory / f"{index}.webp").write_bytes(encoded)
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
                directory / "photo.jpg"
            )
    whole = _cases()["lossy"]
    (root / "train" / "cat" / "truncated.webp").write_bytes(whole[: len(whole) // 2])
    return root


def test_webp_files_are_listed_and_a_truncated_one_is_skipped(webp_folder):
    info = dataset_info(f"folder:{webp_folder}")
    per_class = len(_cases()) + 1
    assert info.num_train_examples == info.num_eval_examples == 2 * per_class
    truncated = str(webp_folder / "train" / "cat" / "truncated.webp")
    assert [path for path, _ in info.skipped] == [truncated]
    with pytest.raises(image_check.BadImageError, match="truncated.webp"):
        dataset_info(f"folder:{webp_folder}", bad_images="fail")


@pytest.mark.parametrize("training", [True, False])
def test_webp_folder_goes_through_the_pipeline(webp_folder, training):
    dataset = make_dataset(
        f"folder:{webp_folder}",
        "train" if training else "eval",
        image_size=16,
        batch_size=4,
        training=training,
        seed=0,
        augment=AugmentConfig(reprob=0.0, mixup_prob=0.0),
    )
    batches = [images.numpy() for images, _ in dataset]
    assert sum(len(images) for images in batches) == 16  # 2 classes x (7 WebP + 1 JPEG)
    assert all(images.shape[1:] == (16, 16, 3) and np.isfinite(images).all() for images in batches)
