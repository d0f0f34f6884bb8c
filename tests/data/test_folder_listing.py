"""Listing a `folder:` dataset: what is a class, what is skipped, and listings that end."""

import os

import numpy as np
import pytest
from PIL import Image

from deit_keras.data import image_check, sources
from deit_keras.data.pipeline import dataset_info
from deit_keras.errors import UserInputError


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(path)


@pytest.fixture
def root(tmp_path):
    for split in ("train", "val"):
        for name in ("ant", "bee"):
            _image(tmp_path / split / name / "0.png")
    return tmp_path


def test_hidden_folders_are_not_classes(root):
    _image(root / "train" / ".ipynb_checkpoints" / "0.png")  # a notebook's, with an image
    (root / "val" / ".cache").mkdir()
    info = dataset_info(f"folder:{root}")
    assert info.class_names == ("ant", "bee") and info.num_train_examples == 2


def test_links_to_parent_folders_are_listed_once_and_the_listing_ends(root):
    ant = root / "train" / "ant"
    os.symlink("..", ant / "up1")
    os.symlink("..", ant / "up2")
    skipped = dict(dataset_info(f"folder:{root}").skipped)
    assert str(ant / "up1" / "ant" / "0.png") in skipped  # the linked folder's own files
    assert not any("up1/ant/up1" in path or "up1/ant/up2" in path for path in skipped)
    assert set(skipped.values()) == {sources.IN_SUB_FOLDER}


@pytest.mark.skipif(os.uname().sysname == "Darwin", reason="macOS file names are UTF-8")
def test_a_file_name_that_is_not_utf8_is_skipped_with_its_reason(root):
    ant = os.path.join(os.fsencode(root), b"train", b"ant")
    with open(os.path.join(ant, b"0.png"), "rb") as source:
        data = source.read()
    with open(os.path.join(ant, b"\xff\xfe.png"), "wb") as target:
        target.write(data)
    info = dataset_info(f"folder:{root}")
    assert info.num_train_examples == 2
    assert [reason for _, reason in info.skipped] == [sources.NOT_UTF8]
    assert info.skipped[0][0].endswith("\\xff\\xfe.png")  # printable, as the run's list writes it
    from deit_keras.training.runner import report_skipped

    listed = report_skipped(info, str(root))
    with open(listed, encoding="utf-8") as handle:
        assert handle.read().count(sources.NOT_UTF8) == 1


def test_tiff_and_heic_files_are_skipped_as_formats_tensorflow_does_not_decode(root, caplog):
    from deit_keras.training.runner import report_skipped

    ant = root / "train" / "ant"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(ant / "scan.tif")
    (ant / "photo.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    (ant / "notes.txt").write_text("not an image")
    info = dataset_info(f"folder:{root}")
    assert info.num_train_examples == 2
    assert dict(info.skipped) == {
        str(ant / "notes.txt"): sources.NOT_AN_IMAGE,
        str(ant / "photo.HEIC"): sources.UNDECODED_FORMAT,
        str(ant / "scan.tif"): sources.UNDECODED_FORMAT,
    }
    with caplog.at_level("WARNING"):
        report_skipped(info, str(root))
    assert "0 file(s) that do not decode, 2 in image formats TensorFlow does not decode" in (
        caplog.text
    )
    assert "and 1 that are not images" in caplog.text


def test_a_class_folder_whose_name_is_not_utf8_is_one_line_error(root):
    os.makedirs(os.path.join(os.fsencode(root), b"train", b"c\xff"))
    with pytest.raises(UserInputError, match="not UTF-8") as caught:
        dataset_info(f"folder:{root}")
    assert "\n" not in str(caught.value)


def test_evaluating_reads_only_the_eval_split(root):
    from deit_keras.inference.evaluate import evaluate_on_dataset
    from deit_keras.testing import tiny_model

    (root / "train" / "ant" / "cut.png").write_bytes(
        (root / "train" / "ant" / "0.png").read_bytes()[:20]
    )
    with pytest.raises(image_check.BadImageError, match="cut.png"):
        dataset_info(f"folder:{root}", bad_images="fail")
    info = dataset_info(f"folder:{root}", bad_images="fail", splits=("eval",))
    assert (info.num_train_examples, info.num_eval_examples, info.skipped) == (None, 2, ())
    model = tiny_model(num_classes=2, image_size=16, patch_size=8)
    summary = evaluate_on_dataset(model, f"folder:{root}", batch_size=2, bad_images="fail")
    assert summary["num_examples"] == 2 and "skipped" not in summary


def test_an_eval_split_without_a_readable_image_is_one_line(root):
    from deit_keras.inference.evaluate import evaluate_on_dataset
    from deit_keras.testing import tiny_model

    for label in ("ant", "bee"):
        (root / "val" / label / "0.png").write_bytes(b"not a png")
    model = tiny_model(num_classes=2, image_size=16, patch_size=8)
    with pytest.raises(UserInputError, match="no readable image in its eval split") as caught:
        evaluate_on_dataset(model, f"folder:{root}", batch_size=2)
    assert "\n" not in str(caught.value) and "0.png" in str(caught.value)
