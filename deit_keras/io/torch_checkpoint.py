"""Reads PyTorch `.pth` state dicts without torch.

`torch.save` (PyTorch >= 1.6) writes a zip: `<name>/data.pkl` pickles the
object tree and refers to each tensor's storage by key, whose bytes are the
entry `<name>/data/<key>`. Only the few globals a state dict needs are
resolved (tensors, storages, `OrderedDict`); anything else in the pickle
becomes an inert placeholder, so no code from the file is ever run.
"""

import collections
import pickle
import zipfile

import numpy as np

from deit_keras.errors import UserInputError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.name = name


class _Placeholder:
    """Stands for any object a state dict does not need (e.g. `argparse.Namespace`)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _bfloat16_to_float32(raw: bytes) -> np.ndarray:
    halves = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32)
    return (halves << 16).view(np.float32)


def _rebuild_tensor(storage, offset, size, stride, *unused):
    if not size:
        return storage[offset].copy() if storage.size else storage.copy()
    itemsize = storage.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    ).copy()


def _rebuild_parameter(tensor, *unused):
    return tensor


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, handle, archive, prefix):
        super().__init__(handle)
        self._archive = archive
        self._prefix = prefix

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        return _Placeholder

    def persistent_load(self, pid):
        _, storage_type, key, _location, _numel = pid
        raw = self._archive.read(f"{self._prefix}data/{key}")
        dtype = _STORAGE_DTYPES.get(getattr(storage_type, "name", ""))
        if dtype is None:
            raise pickle.UnpicklingError(f"Unsupported tensor storage {storage_type!r}")
        if dtype == "bfloat16":
            return _bfloat16_to_float32(raw)
        return np.frombuffer(raw, dtype=dtype)


def is_torch_zip(path: str) -> bool:
    """Whether `path` is a zip-format `torch.save` file (the default since PyTorch 1.6)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("data.pkl") for name in archive.namelist())


def read_torch_zip(path: str):
    """The object saved by `torch.save` at `path`, with tensors as numpy arrays.

    Raises:
        ValueError: the file is not a zip-format torch file.
        pickle.UnpicklingError, KeyError: the file is corrupt.
    """
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
        if not pickles:
            raise UserInputError(f"{path} is not a zip-format torch file (no data.pkl).")
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as handle:
            return _StateDictUnpickler(handle, archive, prefix).load()
