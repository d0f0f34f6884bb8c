"""The shipped ImageNet-1k class names and the rule naming a model's classes (data/labels.py)."""

import os
import re
from importlib import resources

import pytest

from deit_keras.data import labels


def test_imagenet_classes_file_has_the_1000_classes_in_index_order():
    text = resources.files("deit_keras.data").joinpath("imagenet_classes.txt").read_text("utf-8")
    lines = text.splitlines()
    assert len(lines) == 1000 and text.endswith("\n")
    assert all(re.fullmatch(r"n\d{8}\t[^\t]+", line) for line in lines)
    synsets, names = labels.imagenet_synsets(), labels.imagenet_class_names()
    assert len(synsets) == len(set(synsets)) == len(names) == 1000
    assert synsets == sorted(synsets)  # the standard index order is the sorted synset ids
    assert (synsets[0], names[0]) == ("n01440764", "tench, Tinca tinca")
    assert (synsets[281], names[281]) == ("n02123045", "tabby, tabby cat")
    assert (synsets[999], names[999]) == (
        "n15075141",
        "toilet tissue, toilet paper, bathroom tissue",
    )
    assert names[134] == names[517] == "crane"  # WordNet's lemma for both synsets
    assert all(name == name.strip() and name for name in names)


def test_imagenet_synsets_are_tfds_imagenet2012_label_order():
    tfds = pytest.importorskip("tensorflow_datasets")
    path = os.path.join(os.path.dirname(tfds.__file__), "datasets", "imagenet2012", "labels.txt")
    if not os.path.exists(path):
        pytest.skip(f"{path} is not in this tensorflow_datasets version")
    with open(path, encoding="utf-8") as handle:
        assert labels.imagenet_synsets() == handle.read().split()


def test_lists_are_fresh_copies_of_the_cached_table():
    names = labels.imagenet_class_names()
    names[0] = "changed"
    assert labels.imagenet_class_names()[0] == "tench, Tinca tinca"


def test_saved_names_win_then_imagenet_for_1000_classes_then_class_index():
    assert labels.resolve_class_names(1000) == (labels.imagenet_class_names(), labels.IMAGENET)
    saved = [f"mine {i}" for i in range(1000)]
    assert labels.resolve_class_names(1000, saved) == (saved, labels.SAVED)
    assert labels.resolve_class_names(3) == (["class_0", "class_1", "class_2"], labels.INDEX)
    assert labels.resolve_class_names(3, ("a", "b", "c")) == (["a", "b", "c"], labels.SAVED)
    assert labels.resolve_class_names(0) == ([], labels.INDEX)
    assert labels.default_class_names(1000) == labels.imagenet_class_names()
    assert labels.default_class_names(10) == labels.index_class_names(10)


def test_saved_imagenet_synsets_are_shown_as_their_lemmas():
    # A model trained on tfds imagenet2012 or an ImageNet folder saves synset ids.
    names, source = labels.resolve_class_names(1000, labels.imagenet_synsets())
    assert names == labels.imagenet_class_names() and source == labels.SAVED
    # A subset (e.g. Imagenette) too; a list that is not all synsets is kept as it is.
    subset = ["n01440764", "n02123045"]
    assert labels.resolve_class_names(2, subset)[0] == ["tench, Tinca tinca", "tabby, tabby cat"]
    assert labels.resolve_class_names(2, ["n01440764", "cat"])[0] == ["n01440764", "cat"]


def test_wrong_number_of_saved_names_is_a_one_line_error():
    with pytest.raises(ValueError, match="num_classes=1000 .* Received: 3") as info:
        labels.resolve_class_names(1000, ["a", "b", "c"])
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="Received: num_classes=-1"):
        labels.resolve_class_names(-1)
