"""EXIF orientation: read from encoded image bytes, applied to the decoded image in TensorFlow.

Cameras and phones store a photo as the sensor read it and record how to
turn it upright in the EXIF Orientation tag (1-8). Pillow's
`ImageOps.exif_transpose`, which `deit-predict` applies (`io/images.py`),
honours it; TensorFlow's decoders do not. Training and evaluation decode in
TensorFlow (`data/transforms.py`), so they read the tag here and turn the
image the same way, and all three see a photo upright.

The EXIF block is JPEG's `Exif` APP1 segment, PNG's `eXIf` chunk or WebP's
`EXIF` chunk; the tag is looked up in the first directory of its TIFF
structure. Anything malformed or absent reads as 1 (as stored); a file the
decoder cannot read fails there, with the decoder's reason.
"""

import re
import zlib
from typing import NamedTuple

import numpy as np
import tensorflow as tf

ORIENTATION_TAG = 0x0112
GATE_BYTES = 1024  # where a JPEG's metadata is looked at before parsing
_MAX_SEGMENTS = 100_000  # JPEG segments, PNG or WebP chunks walked (each a few bytes read)
_MAX_ENTRIES = 512


def orientation(encoded):
    """The EXIF orientation (int32 scalar, 1-8) of encoded image bytes; 1 when absent.

    JPEGs that `needs_no_parse` skip the parse; others are parsed in Python
    (`orientation_of`), tens of microseconds next to milliseconds of decoding.
    """
    return tf.cond(
        needs_no_parse(encoded), lambda: tf.constant(1, tf.int32), lambda: _parsed(encoded)
    )


def needs_no_parse(encoded):
    """Whether `encoded` is a JPEG stored upright for certain (bool scalar): its first
    `GATE_BYTES` hold no APP1 segment and reach the quantization table (the metadata
    ended without EXIF: most training sets' files)."""
    prefix = tf.io.decode_raw(tf.strings.substr(encoded, 0, GATE_BYTES), tf.uint8)
    marker = tf.equal(prefix[:-1], 0xFF)
    following = prefix[1:]
    return tf.logical_and(
        tf.logical_and(
            tf.io.is_jpeg(encoded),
            tf.logical_not(tf.reduce_any(tf.logical_and(marker, tf.equal(following, 0xE1)))),
        ),
        tf.reduce_any(tf.logical_and(marker, tf.equal(following, 0xDB))),
    )


def _parsed(encoded):
    value = tf.numpy_function(
        _orientation_of_padded,
        [encoded, tf.strings.length(encoded)],
        tf.int32,
        stateful=False,
    )
    value.set_shape([])
    return value


def _orientation_of_padded(data, length):
    # In a graph (tf.data, tf.function) the bytes come over as numpy's `bytes_`, which
    # drops trailing NUL bytes: a WebP's EXIF chunk, last in the file, often ends in them
    # and read as cut short. The length puts them back.
    data = np.asarray(data).item()  # a 0-d array of bytes
    return np.int32(orientation_of(data.ljust(int(length), b"\0")))


def apply_orientation(image, orientation_value):
    """uint8 `image` `[H, W, 3]` turned as EXIF `orientation_value` says, as Pillow's
    `ImageOps.exif_transpose` does (5-8 swap height and width)."""
    orientation_value = tf.convert_to_tensor(orientation_value, tf.int32)
    return tf.cond(
        tf.equal(orientation_value, 1), lambda: image, lambda: _turned(image, orientation_value)
    )


def _turn(image, orientation_value):
    def swapped():
        # TensorFlow's oneDNN transpose logs an error line for integer types (then falls
        # back), and grappler moves a transpose between casts onto the uint8. So each
        # pixel's RGB and a pad byte of 0x40 are bitcast to one float32 (little-endian:
        # the pad is the exponent's high bits, a normal number whatever the colour, which
        # no denormal flushing changes) and the floats are transposed.
        padded = tf.pad(image, [[0, 0], [0, 0], [0, 1]], constant_values=0x40)
        return tf.bitcast(tf.transpose(tf.bitcast(padded, tf.float32)), tf.uint8)[..., :3]

    branches = [
        lambda: image,
        lambda: tf.reverse(image, [1]),  # 2: mirrored
        lambda: tf.reverse(image, [0, 1]),  # 3: upside down
        lambda: tf.reverse(image, [0]),  # 4: mirrored upside down
        swapped,  # 5: transposed
        lambda: tf.reverse(swapped(), [1]),  # 6: turned a quarter left
        lambda: tf.reverse(swapped(), [0, 1]),  # 7: transversed
        lambda: tf.reverse(swapped(), [0]),  # 8: turned a quarter right
    ]
    return tf.switch_case(orientation_value - 1, branches)


# Out of line: inlined into a `tf.data` map, a skipped branch's ops are each still
# scheduled (as dead); called, the skipped branch is one op.
_turned = tf.function(
    _turn,
    input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32)],
    experimental_attributes={"_noinline": True},
)


# === The parse, in Python ===


def orientation_of(data: bytes) -> int:
    """The orientation (1-8) of a JPEG, PNG or WebP file's bytes; 1 when absent.

    Read where Pillow's `Image.getexif` reads it: the EXIF block (for PNG,
    else ImageMagick's hex copy of it in a text chunk), and when that has no
    Orientation tag, XMP's `tiff:Orientation`.
    """
    metadata = _metadata(data)
    found = None if metadata.exif is None else _tiff_orientation(metadata.exif)
    if found is None and metadata.xmp is not None:
        match = _XMP_ORIENTATION.search(metadata.xmp)
        found = None if match is None else int(match[2])
    return found if found is not None and 1 <= found <= 8 else 1


_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # Pillow's pattern
_XMP_JPEG_HEADER = b"http://ns.adobe.com/xap/1.0/\0"
_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_MAX_TEXT_BYTES = 1 << 24  # a decompressed PNG text chunk (Pillow: 1 MiB per chunk by default)


class _Metadata(NamedTuple):
    exif: bytes | None  # the TIFF structure
    xmp: bytes | None


def _metadata(data: bytes) -> _Metadata:
    if data.startswith(b"\xff\xd8"):
        return _jpeg_metadata(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_metadata(data)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        chunks = {}
        for kind, chunk in _chunks(data, 12, length_first=False, wanted=(b"EXIF", b"XMP ")):
            chunks.setdefault(kind, chunk)  # libwebp's demuxer gives the first
        block = chunks.get(b"EXIF")
        return _Metadata(_without_exif_header(block), chunks.get(b"XMP "))
    return _Metadata(None, None)


def _without_exif_header(block):
    return block[6:] if block is not None and block.startswith(b"Exif\0\0") else block


def _jpeg_metadata(data: bytes) -> _Metadata:
    """The first `Exif` and last XMP APP1 segments before the image data. Bytes
    between segments that are no marker (fill bytes, junk) are stepped over, as
    Pillow does."""
    exif_block = xmp = None
    position = 2
    for _ in range(_MAX_SEGMENTS):
        position = data.find(b"\xff", position)
        while 0 <= position < len(data) - 1 and data[position + 1] in (0xFF, 0x00):
            position = data.find(b"\xff", position + 1)
        if position < 0 or position + 4 > len(data):
            break
        marker = data[position + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more metadata
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a segment
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        segment = data[position + 4 : position + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\0\0") and exif_block is None:
            exif_block = segment[6:]
        elif marker == 0xE1 and segment.startswith(_XMP_JPEG_HEADER):
            xmp = segment[len(_XMP_JPEG_HEADER) :]
        position += 2 + length
    return _Metadata(exif_block, xmp)


def _png_metadata(data: bytes) -> _Metadata:
    exif_block = raw_profile = xmp = None
    for kind, chunk in _chunks(data, 8, length_first=True, wanted=(b"eXIf", *_PNG_TEXT_CHUNKS)):
        if kind == b"eXIf":
            exif_block = _without_exif_header(chunk)
            continue
        key, text = _png_text(kind, chunk)
        if key == b"Raw profile type exif":
            raw_profile = text
        elif key == b"XML:com.adobe.xmp":
            xmp = text
    if exif_block is None and raw_profile is not None:
        # ImageMagick's form: "\nexif\n<length>\n" then the block in hex, in lines.
        try:
            exif_block = _without_exif_header(
                bytes.fromhex("".join(raw_profile.decode("latin-1").split("\n")[3:]))
            )
        except ValueError:
            exif_block = None
    return _Metadata(exif_block, xmp)


def _png_text(kind: bytes, chunk: bytes) -> tuple[bytes | None, bytes | None]:
    """`(key, text)` of a PNG text chunk, `(None, None)` when it cannot be read."""
    key, separator, rest = chunk.partition(b"\0")
    if not separator:
        return None, None
    if kind == b"tEXt":
        return key, rest
    if kind == b"zTXt":
        return (key, _inflated(rest[1:])) if rest[:1] == b"\0" else (None, None)
    if len(rest) < 2:  # iTXt: compression flag and method, language, translated key, text
        return None, None
    compressed, method = rest[0], rest[1]
    parts = rest[2:].split(b"\0", 2)
    if len(parts) < 3:
        return None, None
    if not compressed:
        return key, parts[2]
    return (key, _inflated(parts[2])) if method == 0 else (None, None)


def _inflated(compressed: bytes) -> bytes | None:
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(compressed, _MAX_TEXT_BYTES)
    except zlib.error:
        return None
    return None if inflater.unconsumed_tail else text


def _chunks(data: bytes, position: int, length_first: bool, wanted):
    """`(type, data)` of each chunk whose type is in `wanted`, in file order: PNG's
    (length, type, data, CRC) or RIFF's (type, little-endian size, data, a pad byte
    after odd sizes)."""
    order = "big" if length_first else "little"
    for _ in range(_MAX_SEGMENTS):
        if position + 8 > len(data):
            return
        if length_first:
            size, kind = (
                int.from_bytes(data[position : position + 4], order),
                data[position + 4 : position + 8],
            )
        else:
            kind, size = (
                data[position : position + 4],
                int.from_bytes(data[position + 4 : position + 8], order),
            )
        if kind in wanted:
            yield kind, data[position + 8 : position + 8 + size]
        position += 8 + size + (4 if length_first else size % 2)


# Integer TIFF field types: byte size and signedness (BYTE, SHORT, LONG, SBYTE, SSHORT, SLONG).
_INTEGER_TYPES = {
    1: (1, False),
    3: (2, False),
    4: (4, False),
    6: (1, True),
    8: (2, True),
    9: (4, True),
}


def _tiff_orientation(block: bytes) -> int | None:
    """The Orientation tag's value in the first directory; None when there is none.
    Of several values the first counts, as in Pillow; a value that is no integer
    reads as 0 (the image is left as stored)."""
    order = {b"II": "little", b"MM": "big"}.get(block[:2])
    if order is None or len(block) < 8:
        return None
    directory = int.from_bytes(block[4:8], order)
    count = int.from_bytes(block[directory : directory + 2], order)
    for index in range(min(count, _MAX_ENTRIES)):
        entry = directory + 2 + 12 * index
        if entry + 12 > len(block):
            break
        if int.from_bytes(block[entry : entry + 2], order) != ORIENTATION_TAG:
            continue
        field_type = int.from_bytes(block[entry + 2 : entry + 4], order)
        values = int.from_bytes(block[entry + 4 : entry + 8], order)
        if field_type not in _INTEGER_TYPES or values == 0:
            return 0
        size, signed = _INTEGER_TYPES[field_type]
        start = entry + 8
        if size * values > 4:  # the values are stored elsewhere, at this offset
            start = int.from_bytes(block[entry + 8 : entry + 12], order)
        if start + size > len(block):
            return 0
        return int.from_bytes(block[start : start + size], order, signed=signed)
    return None
