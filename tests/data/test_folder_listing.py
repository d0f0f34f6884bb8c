"""Listing a `folder:` dataset: what is a class, what is skipped, and listings that end."""

import io
import os
import shutil
import types

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


def test_class_folders_named_by_numbers_take_their_number_as_label(tmp_path):
    """ImageNet-V2's layout: folders 0..999 are class indices (tfds' imagenet_v2 reads
    them so), not strings to sort as 0, 1, 10, 100, ..."""
    names = [str(number) for number in range(12)]
    for split in ("train", "val"):
        for number, name in enumerate(names):
            Image.fromarray(np.full((8, 8, 3), 20 * number, np.uint8)).save(
                _dir(tmp_path / split / name) / "0.png"
            )
    info = dataset_info(f"folder:{tmp_path}")
    assert info.class_names == tuple(names)
    source = sources.get_source(f"folder:{tmp_path}")
    for image_bytes, label in source.read("eval"):
        pixel = np.asarray(Image.open(io.BytesIO(image_bytes.numpy())))[0, 0, 0]
        assert pixel == 20 * int(label), (pixel, int(label))
    # Names not all numbers keep the order of strings (as torchvision's ImageFolder).
    _image(tmp_path / "train" / "x" / "0.png")
    _image(tmp_path / "val" / "x" / "0.png")
    assert dataset_info(f"folder:{tmp_path}").class_names[:4] == ("0", "1", "10", "11")


def _dir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_a_test_set_folder_without_train_is_evaluated_but_not_trained_on(root):
    from deit_keras.inference.evaluate import evaluate_on_dataset
    from deit_keras.testing import tiny_model

    shutil.rmtree(root / "train")
    info = dataset_info(f"folder:{root}", splits=("eval",))
    assert (info.class_names, info.num_train_examples, info.num_eval_examples) == (
        ("ant", "bee"),
        None,
        2,
    )
    model = tiny_model(num_classes=2, image_size=16, patch_size=8)
    assert evaluate_on_dataset(model, f"folder:{root}", batch_size=2)["num_examples"] == 2
    with pytest.raises(sources.DatasetNotFoundError, match="must contain 'train/' and 'val/'"):
        dataset_info(f"folder:{root}")
    # Was "must contain 'train/' and 'val/'" too, where a typo in the path is the problem.
    with pytest.raises(sources.DatasetNotFoundError, match="nowhere' does not exist"):
        dataset_info(f"folder:{root / 'nowhere'}", splits=("eval",))
    with pytest.raises(sources.DatasetNotFoundError, match="is a file, not a folder"):
        dataset_info(f"folder:{root / 'val' / 'ant' / os.listdir(root / 'val' / 'ant')[0]}")


def test_a_tfds_test_set_without_train_is_read_for_evaluation_only():
    split = types.SimpleNamespace(num_examples=5)
    label = types.SimpleNamespace(names=["a", "b"], num_classes=2)
    info = types.SimpleNamespace(
        supervised_keys=("image", "label"), splits={"test": split}, features={"label": label}
    )
    builder = types.SimpleNamespace(info=info)
    source = sources._tfds_source("imagenet_sketch", builder, "imagenet_sketch", ("eval",))
    assert (source.info.num_train_examples, source.info.num_eval_examples) == (None, 5)
    assert source.info.eval_split == "test"
    with pytest.raises(UserInputError, match="has no 'train' split"):
        sources._tfds_source("imagenet_sketch", builder, "imagenet_sketch")


@pytest.mark.parametrize("name", ["imagenet2012_real", "imagenet2012_real/1.0.0"])
def test_tfds_sets_not_scored_by_one_label_are_refused_in_one_line(name):
    with pytest.raises(UserInputError, match="not read as a one-label dataset") as caught:
        sources._tfds_source(name, None, name, ("eval",))
    assert "\n" not in str(caught.value)


def test_the_refusal_comes_before_the_not_prepared_error(tmp_path):
    """Unprepared, it was "prepare it first with tfds build ...", a manual ImageNet
    download that would end in this refusal."""
    from deit_keras.data.pipeline import dataset_info

    with pytest.raises(UserInputError, match="use deit-evaluate --benchmarks=real"):
        dataset_info("imagenet2012_real", data_dir=str(tmp_path))


def test_an_eval_split_without_a_readable_image_is_one_line(root):
    from deit_keras.inference.evaluate import evaluate_on_dataset
    from deit_keras.testing import tiny_model

    for label in ("ant", "bee"):
        (root / "val" / label / "0.png").write_bytes(b"not a png")
    model = tiny_model(num_classes=2, image_size=16, patch_size=8)
    with pytest.raises(UserInputError, match="no readable image in its eval split") as caught:
        evaluate_on_dataset(model, f"folder:{root}", batch_size=2)
    assert "\n" not in str(caught.value) and "0.png" in str(caught.value)
