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

import numpy as np
import tensorflow as tf

ORIENTATION_TAG = 0x0112
GATE_BYTES = 1024  # where a JPEG's metadata is looked at before parsing
_MAX_SEGMENTS = 100_000  # JPEG segments, PNG or WebP chunks walked (each a few bytes read)
_MAX_ENTRIES = 512


def orientation(encoded):
    """The EXIF orientation (int32 scalar, 1-8) of encoded image bytes; 1 when absent.

    JPEGs whose first `GATE_BYTES` hold no APP1 segment and reach the
    quantization table (the metadata ended without EXIF: most training
    sets' files) skip the parse; others are parsed in Python
    (`orientation_of`), tens of microseconds next to milliseconds of decoding.
    """
    prefix = tf.io.decode_raw(tf.strings.substr(encoded, 0, GATE_BYTES), tf.uint8)
    marker = tf.equal(prefix[:-1], 0xFF)
    following = prefix[1:]
    no_exif_jpeg = tf.logical_and(
        tf.logical_and(
            tf.io.is_jpeg(encoded),
            tf.logical_not(tf.reduce_any(tf.logical_and(marker, tf.equal(following, 0xE1)))),
        ),
        tf.reduce_any(tf.logical_and(marker, tf.equal(following, 0xDB))),
    )
    return tf.cond(no_exif_jpeg, lambda: tf.constant(1, tf.int32), lambda: _parsed(encoded))


def _parsed(encoded):
    value = tf.numpy_function(
        lambda data: np.int32(orientation_of(np.asarray(data).item())),  # a 0-d array of bytes
        [encoded],
        tf.int32,
        stateful=False,
    )
    value.set_shape([])
    return value


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
    """The EXIF orientation (1-8) of a JPEG, PNG or WebP file's bytes; 1 when absent."""
    block = _exif_block(data)
    return 1 if block is None else _tiff_orientation(block)


def _exif_block(data: bytes) -> bytes | None:
    if data.startswith(b"\xff\xd8"):
        return _jpeg_exif(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _chunk(data, 8, b"eXIf", "big", length_first=True)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        block = _chunk(data, 12, b"EXIF", "little", length_first=False)
        return block[6:] if block is not None and block.startswith(b"Exif\0\0") else block
    return None


def _jpeg_exif(data: bytes) -> bytes | None:
    position = 2
    for _ in range(_MAX_SEGMENTS):
        if position + 4 > len(data) or data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more metadata
            return None
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xE1 and data[position + 4 : position + 10] == b"Exif\0\0":
            return data[position + 10 : position + 2 + length]
        position += 2 + length
    return None


def _chunk(data: bytes, position: int, kind: bytes, order: str, length_first: bool):
    """The data of the first chunk of `kind` from `position`: PNG's (length, type, data,
    CRC) or RIFF's (type, little-endian size, data, a pad byte after odd sizes)."""
    for _ in range(_MAX_SEGMENTS):
        if position + 8 > len(data):
            return None
        if length_first:
            size, found = (
                int.from_bytes(data[position : position + 4], order),
                data[position + 4 : position + 8],
            )
        else:
            found, size = (
                data[position : position + 4],
                int.from_bytes(data[position + 4 : position + 8], order),
            )
        if found == kind:
            return data[position + 8 : position + 8 + size]
        position += 8 + size + (4 if length_first else size % 2)
    return None


def _tiff_orientation(block: bytes) -> int:
    order = {b"II": "little", b"MM": "big"}.get(block[:2])
    if order is None or len(block) < 8:
        return 1
    directory = int.from_bytes(block[4:8], order)
    count = int.from_bytes(block[directory : directory + 2], order)
    for index in range(min(count, _MAX_ENTRIES)):
        entry = directory + 2 + 12 * index
        if entry + 12 > len(block):
            break
        if int.from_bytes(block[entry : entry + 2], order) == ORIENTATION_TAG:
            value = int.from_bytes(block[entry + 8 : entry + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1
