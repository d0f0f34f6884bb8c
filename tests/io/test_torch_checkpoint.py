"""The torch-free `.pth` reader gives torch's own tensors back, bit for bit."""

import argparse
import collections
import os
import pickle
import zipfile

import numpy as np
import pytest

from deit_keras.io.torch_checkpoint import is_torch_zip, read_torch_zip

torch = pytest.importorskip("torch")


def test_reads_what_torch_save_wrote(tmp_path):
    generator = torch.Generator().manual_seed(0)
    state = collections.OrderedDict(
        weight=torch.randn(3, 4, generator=generator),
        transposed=torch.randn(5, 6, generator=generator).t(),
        sliced=torch.randn(2, 3, 4, generator=generator)[:, 1],
        half=torch.randn(4, generator=generator).half(),
        bfloat=torch.randn(4, generator=generator).bfloat16(),
        scalar=torch.tensor(3.0),
        parameter=torch.nn.Parameter(torch.randn(2, generator=generator)),
        index=torch.arange(5),
    )
    path = tmp_path / "checkpoint.pth"
    # The official files wrap the weights in "model" next to other objects.
    torch.save({"model": state, "args": argparse.Namespace(lr=1.0), "epoch": 3}, path)

    assert is_torch_zip(str(path))
    loaded = read_torch_zip(str(path))
    assert loaded["epoch"] == 3
    assert list(loaded["model"]) == list(state)
    for key, tensor in state.items():
        expected = tensor.detach().float() if tensor.dtype == torch.bfloat16 else tensor.detach()
        np.testing.assert_array_equal(loaded["model"][key], expected.numpy(), err_msg=key)


def test_other_files_are_not_torch_zips(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    assert not is_torch_zip(str(text))
    keras_file = tmp_path / "model.keras"  # a zip, without data.pkl
    with zipfile.ZipFile(keras_file, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", b"")
    assert not is_torch_zip(str(keras_file))
    with pytest.raises(ValueError, match="no data.pkl"):
        read_torch_zip(str(keras_file))


class _MakesAFolder:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_pickle_that_calls_a_function_runs_no_code(tmp_path):
    """Only a state dict's globals are resolved: anything else is an inert placeholder."""
    made = tmp_path / "made_by_the_file"
    path = tmp_path / "hostile.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hostile/data.pkl", pickle.dumps({"model": _MakesAFolder(str(made))}))
    assert is_torch_zip(str(path))
    loaded = read_torch_zip(str(path))
    assert set(loaded) == {"model"} and not made.exists()
