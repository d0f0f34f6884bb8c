"""EXIF orientation: training and evaluation see a photo upright, as `deit-predict` does.

Phones store photos as the sensor read them and record the turn in the EXIF
Orientation tag; Pillow's `ImageOps.exif_transpose` (predict) applies it,
TensorFlow's decoders do not, so `data.exif` does it for them.
"""

import io
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from deit_keras.data import exif
from deit_keras.data.augment_config import AugmentConfig
from deit_keras.data.pipeline import make_dataset
from deit_keras.data.preprocessing import preprocess
from deit_keras.data.transforms import decode_image, random_resized_crop
from deit_keras.io.images import load_image

PIXELS = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
FORMATS = {"PNG": {}, "WEBP": {"lossless": True}, "JPEG": {"quality": 95}}


def _encode(pixels, image_format, value, **options):
    image = Image.fromarray(pixels)
    tags = image.getexif()
    tags[exif.ORIENTATION_TAG] = value
    tags[0x010F] = "A phone"  # another tag before it in the directory
    buffer = io.BytesIO()
    image.save(buffer, image_format, exif=tags.tobytes(), **{**FORMATS[image_format], **options})
    return buffer.getvalue()


def _upright(data):
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@pytest.mark.parametrize("image_format", list(FORMATS))
@pytest.mark.parametrize("value", range(1, 9))
def test_each_orientation_is_read_and_applied_as_pillow_does(image_format, value):
    data = _encode(PIXELS, image_format, value)
    assert exif.orientation_of(data) == value
    assert int(exif.orientation(tf.constant(data))) == value
    decoded = decode_image(data).numpy()
    expected = _upright(data)
    assert decoded.shape == expected.shape == ((30, 50, 3) if value < 5 else (50, 30, 3))
    if image_format == "JPEG":  # two JPEG decoders: equal up to their rounding
        assert np.abs(decoded.astype(int) - expected).max() <= 8
    else:
        np.testing.assert_array_equal(decoded, expected)


def test_webp_exif_after_the_image_data_is_found():
    """WebP keeps its EXIF chunk after the image data, far from the file's start."""
    noise = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    data = _encode(noise, "WEBP", 6)
    assert data.index(b"EXIF") > 20_000
    assert int(exif.orientation(tf.constant(data))) == 6

    # In a graph, as training and deit-evaluate read it: numpy's bytes dropped the
    # chunk's trailing NUL bytes (here the directory's last, its next-directory offset
    # 0), and the file read as stored where deit-predict turned it.
    only_orientation = Image.Exif()
    only_orientation[exif.ORIENTATION_TAG] = 6
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "WEBP", exif=only_orientation.tobytes())
    data = buffer.getvalue()
    assert data.endswith(b"\0\0\0\0")
    assert int(tf.function(exif.orientation)(tf.constant(data))) == 6
    mapped = tf.data.Dataset.from_tensors(tf.constant(data)).map(exif.orientation)
    assert int(mapped.get_single_element()) == 6


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8",
        b"\xff\xd8\xff\xe1\x00\x08Exif\x00\x00",  # a block cut short
        b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM\x00*\xff\xff\xff\xff",  # directory far away
        b"RIFF\x00\x00\x00\x00WEBPEXIF\xff\xff\xff\xff",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x04eXIfII*\x00",
        b"GIF89a",
    ],
)
def test_malformed_or_absent_blocks_read_as_stored(data):
    assert exif.orientation_of(data) == 1
    assert int(exif.orientation(tf.constant(data))) == 1


def test_a_jpeg_without_exif_is_not_parsed(monkeypatch):
    buffer = io.BytesIO()
    Image.fromarray(PIXELS).save(buffer, "JPEG")
    monkeypatch.setattr(exif, "orientation_of", lambda data: pytest.fail("parsed"))
    assert int(exif.orientation(tf.constant(buffer.getvalue()))) == 1


def test_the_training_crop_is_drawn_on_the_upright_photo():
    """A 30x50 photo stored turned (orientation 6) is 50x30 upright: a crop of the whole
    image at its aspect (scale 1, ratio 30/50) is the whole upright photo."""
    data = _encode(PIXELS, "JPEG", 6)
    crop = random_resized_crop(tf.constant(data), 16, tf.constant([1, 2]), (1.0, 1.0), (0.6, 0.6))
    upright = tf.image.resize(
        tf.cast(_upright(data), tf.float32), [16, 16], method="bicubic", antialias=True
    )
    assert np.abs(crop.numpy() - upright.numpy()).mean() < 4.0
    stored = tf.image.resize(
        tf.cast(PIXELS, tf.float32), [16, 16], method="bicubic", antialias=True
    )
    assert np.abs(crop.numpy() - stored.numpy()).mean() > 20.0


def test_a_folder_of_turned_photos_evaluates_as_predict_reads_them(tmp_path):
    for split in ("train", "val"):
        for label, value in (("a", 6), ("b", 3)):
            directory = tmp_path / split / label
            directory.mkdir(parents=True)
            (directory / "photo.png").write_bytes(_encode(PIXELS, "PNG", value))
    dataset = make_dataset(
        f"folder:{tmp_path}",
        "eval",
        image_size=24,
        batch_size=2,
        training=False,
        augment=AugmentConfig(),
    )
    images, _ = next(iter(dataset))
    for index, label in enumerate("ab"):
        path = str(tmp_path / "val" / label / "photo.png")
        expected = preprocess(tf.constant(load_image(path)), 24).numpy()  # predict's
        np.testing.assert_allclose(images[index].numpy(), expected, atol=1e-4)


def test_exif_after_other_segments_and_after_many_chunks_is_found():
    data = _encode(PIXELS, "JPEG", 6)
    comment = b"\xff\xfe" + (2 + 3000).to_bytes(2, "big") + b"c" * 3000  # a 3 KB comment first
    moved = data[:2] + comment + data[2:]
    assert int(exif.orientation(tf.constant(moved))) == 6
    frames = [Image.fromarray(np.full((8, 8, 3), i * 3, np.uint8)) for i in range(80)]
    tags = frames[0].getexif()
    tags[exif.ORIENTATION_TAG] = 8
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], exif=tags.tobytes())
    assert exif.orientation_of(buffer.getvalue()) == 8  # after 80 frame chunks


def test_turning_logs_no_onednn_line():
    """oneDNN's transpose logs an error line for integer images (CLI runs show no such line)."""
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np, tensorflow as tf\n"
        "from deit_keras.data import exif\n"
        "image = tf.constant(np.zeros((4, 6, 3), np.uint8))\n"
        "turned = tf.data.Dataset.from_tensors(image).map(\n"
        "    lambda x: exif.apply_orientation(x, tf.constant(6)))\n"
        "print([tuple(x.shape) for x in turned])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    process = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert process.returncode == 0 and "[(6, 4, 3)]" in process.stdout, process.stderr
    assert "oneDNN supports" not in process.stderr


# === Where else Pillow finds the orientation ===


def _tiff(order, field_type, count, value_field):
    """A TIFF structure whose first directory holds only the Orientation tag."""
    endian = {"II": "little", "MM": "big"}[order]

    def number(value, size):
        return value.to_bytes(size, endian)

    header = order.encode() + number(42, 2) + number(8, 4)
    entry = number(exif.ORIENTATION_TAG, 2) + number(field_type, 2) + number(count, 4)
    return header + number(1, 2) + entry + value_field + number(0, 4)


def _png(pixels=PIXELS, **save):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", **save)
    return buffer.getvalue()


def _assert_read_as_pillow_does(data, expected):
    assert exif.orientation_of(data) == expected
    assert int(exif.orientation(tf.constant(data))) == expected
    decoded, upright = decode_image(data).numpy(), _upright(data)
    # JPEGs too: both decode with libjpeg's accurate integer IDCT.
    np.testing.assert_array_equal(decoded, upright)


@pytest.mark.parametrize("order", ["II", "MM"])
@pytest.mark.parametrize(
    "field_type, count, value, expected",
    [
        (4, 1, 6, 6),  # LONG: in big-endian files the value is in the field's last bytes
        (3, 1, 8, 8),  # SHORT
        (8, 1, 3, 3),  # SSHORT
        (3, 2, 6, 6),  # two values: the first counts (Pillow warns)
        (3, 1, 9, 1),  # out of range
    ],
)
def test_orientation_as_any_integer_type(order, field_type, count, value, expected):
    size = {3: 2, 4: 4, 8: 2}[field_type]
    endian = {"II": "little", "MM": "big"}[order]
    value_field = (value.to_bytes(size, endian) * count).ljust(4, b"\0")
    data = _png(exif=b"Exif\0\0" + _tiff(order, field_type, count, value_field))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow's on two values
        _assert_read_as_pillow_does(data, expected)


def test_several_values_stored_away_from_the_directory():
    """Two LONGs do not fit the entry's 4 bytes: the entry holds their offset (26, after
    the directory) and the first is the orientation."""
    values = (7).to_bytes(4, "big") + (2).to_bytes(4, "big")
    data = _png(exif=b"Exif\0\0" + _tiff("MM", 4, 2, (26).to_bytes(4, "big")) + values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _assert_read_as_pillow_does(data, 7)


def test_fill_bytes_and_junk_before_a_jpeg_segment():
    data = _encode(PIXELS, "JPEG", 6)
    app1 = data.index(b"\xff\xe1")
    padded = data[:app1] + b"\xff\xff\xff" + data[app1:]  # fill bytes before the marker
    _assert_read_as_pillow_does(padded, 6)
    assert exif.orientation_of(data[:app1] + b"\x00\x17" + data[app1:]) == 6  # junk


def test_imagemagick_png_text_copy_of_exif():
    """ImageMagick keeps a PNG's EXIF as hex in a compressed text chunk."""
    from PIL.PngImagePlugin import PngInfo

    block = b"Exif\0\0" + _tiff("MM", 3, 1, (8).to_bytes(2, "big") + b"\0\0")
    hexed = block.hex()
    lines = "\n".join(hexed[i : i + 72] for i in range(0, len(hexed), 72))
    text = PngInfo()
    text.add_text("Raw profile type exif", f"\nexif\n{len(block):8d}\n{lines}\n", zip=True)
    _assert_read_as_pillow_does(_png(pnginfo=text), 8)


XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
    'syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
    'tiff:Orientation="{}"/></rdf:RDF></x:xmpmeta>'
)


@pytest.mark.parametrize("image_format", list(FORMATS))
def test_xmp_orientation_when_exif_has_none(image_format):
    buffer = io.BytesIO()
    if image_format == "PNG":
        from PIL.PngImagePlugin import PngInfo

        text = PngInfo()
        text.add_itxt("XML:com.adobe.xmp", XMP.format(6), zip=True)
        Image.fromarray(PIXELS).save(buffer, "PNG", pnginfo=text)
    else:
        options = FORMATS[image_format]
        Image.fromarray(PIXELS).save(buffer, image_format, xmp=XMP.format(6).encode(), **options)
    _assert_read_as_pillow_does(buffer.getvalue(), 6)


def test_exif_orientation_wins_over_xmp():
    tags = Image.fromarray(PIXELS).getexif()
    tags[exif.ORIENTATION_TAG] = 1
    buffer = io.BytesIO()
    Image.fromarray(PIXELS).save(buffer, "JPEG", exif=tags.tobytes(), xmp=XMP.format(6).encode())
    _assert_read_as_pillow_does(buffer.getvalue(), 1)
    tags = Image.fromarray(PIXELS).getexif()
    tags[0x010F] = "A phone"  # EXIF without the tag: XMP decides
    buffer = io.BytesIO()
    Image.fromarray(PIXELS).save(buffer, "JPEG", exif=tags.tobytes(), xmp=XMP.format(3).encode())
    _assert_read_as_pillow_does(buffer.getvalue(), 3)
