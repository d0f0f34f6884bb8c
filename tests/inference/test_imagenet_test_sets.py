"""The paper's Table 5 evaluation (inference/ and data/imagenet_test_sets.py) on tiny tfds
datasets of the catalogue's own layouts (`testing.write_benchmark_datasets`)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from deit_keras.data import imagenet_test_set_names
from deit_keras.data import imagenet_test_sets as data_benchmarks
from deit_keras.data.sources import DatasetNotFoundError
from deit_keras.errors import UserInputError
from deit_keras.inference import imagenet_test_sets as benchmarks
from deit_keras.testing import (
    TINY_BENCHMARK_EXPECTED,
    TINY_REAL_WITHOUT_LABELS,
    jpeg_bytes,
    own_predictions,
    tiny_model,
    write_benchmark_datasets,
    write_tfds_dataset,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A 1000-class tiny DeiT and tiny imagenet2012_real / imagenet_v2 labelled from it."""
    model = tiny_model(num_classes=1000)
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    write_benchmark_datasets(data_dir, model)
    return model, data_dir


def test_real_correct_hand_computed():
    predictions = np.array([3, 5, 7, 2, 9])
    pad = data_benchmarks.NO_LABEL
    label_sets = np.array(
        [
            [3, pad, pad],  # right
            [1, 2, pad],  # wrong
            [pad, pad, pad],  # no ReaL labels: left out
            [0, 4, 2],  # right, last of three
            [pad, pad, pad],  # left out, though 9 is no label at all
        ]
    )
    assert benchmarks.real_correct(predictions, label_sets) == (2, 3)
    # A padding value is never a right answer, even when predicted.
    assert benchmarks.real_correct(np.array([pad]), np.array([[pad]])) == (0, 0)
    assert benchmarks.real_correct(np.array([4, 4]), np.zeros((2, 0), int)) == (0, 0)


def test_parse_benchmarks_orders_and_refuses():
    assert imagenet_test_set_names.parse_benchmarks("v2, REAL") == ("real", "v2")
    assert imagenet_test_set_names.parse_benchmarks(["imagenet"]) == ("imagenet",)
    for bad in ("", "imagenet,reall", None):
        with pytest.raises(UserInputError, match="subset of imagenet,real,v2"):
            imagenet_test_set_names.parse_benchmarks(bad)
    with pytest.raises(UserInputError, match="Received: benchmarks=foo,real$"):
        imagenet_test_set_names.parse_benchmarks(["foo", "real"])  # as typed, not ['foo', ...]


def test_imagenet_shares_the_real_pass_unless_real_is_left_out():
    passes = data_benchmarks.evaluation_passes(("imagenet", "real", "v2"))
    assert [(p.tfds_name, p.split, p.benchmarks) for p in passes] == [
        ("imagenet2012_real", "validation", ("imagenet", "real")),
        ("imagenet_v2/matched-frequency", "test", ("v2",)),
    ]
    (alone,) = data_benchmarks.evaluation_passes(("imagenet",))
    assert (alone.tfds_name, alone.label_key, alone.label_set_key) == (
        "imagenet2012",
        "label",
        None,
    )
    with pytest.raises(UserInputError, match="v2_variant=.matched"):
        data_benchmarks.evaluation_passes(("v2",), "matched")


def _readme_numbers(data_dir, model):
    """Top-1s as the tfds imagenet2012_real page computes ReaL: one image at a time."""
    real = list(
        tfds.as_numpy(
            tfds.builder("imagenet2012_real", data_dir=data_dir).as_dataset(
                split="validation", decoders={"image": tfds.decode.SkipDecoding()}
            )
        )
    )
    predictions = own_predictions(model, [x["image"] for x in real])
    real_labels = [list(x["real_label"]) for x in real]
    is_correct = [pred in real_labels[i] for i, pred in enumerate(predictions) if real_labels[i]]
    imagenet = np.mean(predictions == np.array([x["original_label"] for x in real]))
    v2 = list(
        tfds.as_numpy(
            tfds.builder("imagenet_v2", data_dir=data_dir).as_dataset(
                split="test", decoders={"image": tfds.decode.SkipDecoding()}
            )
        )
    )
    v2_top1 = np.mean(own_predictions(model, [x["image"] for x in v2]) == [x["label"] for x in v2])
    return {"imagenet": imagenet, "real": np.mean(is_correct), "v2": v2_top1}


def test_evaluate_benchmarks_matches_a_hand_computation(prepared):
    model, data_dir = prepared
    report = benchmarks.evaluate_benchmarks(model, data_dir=data_dir, batch_size=5)
    assert list(report["benchmarks"]) == ["imagenet", "real", "v2"]
    expected = _readme_numbers(data_dir, model)
    for name, (right, counted) in TINY_BENCHMARK_EXPECTED.items():
        entry = report["benchmarks"][name]
        assert entry["top1"] == pytest.approx(right / counted) == pytest.approx(expected[name])
        assert entry["num_examples"] == counted
    real = report["benchmarks"]["real"]
    assert real["num_without_labels"] == TINY_REAL_WITHOUT_LABELS
    assert (real["dataset"], real["split"], real["labels"]) == (
        "imagenet2012_real",
        "validation",
        "real_label",
    )
    assert report["benchmarks"]["v2"]["dataset"] == "imagenet_v2/matched-frequency"
    assert report["distilled"] and report["crop_pct"] == model.preprocessing.crop_pct

    table = benchmarks.format_benchmarks(report).splitlines()
    assert table[2].split()[:3] == ["ImageNet-ReaL", "66.67", "9"]
    assert "3 without labels left out" in table[2]

    # One benchmark alone; max_batches stops each pass early.
    only_v2 = benchmarks.evaluate_benchmarks(
        model, "v2", data_dir=data_dir, max_batches=1, batch_size=3
    )
    assert list(only_v2["benchmarks"]) == ["v2"]
    assert only_v2["benchmarks"]["v2"]["num_examples"] == 3


def test_imagenet_alone_reads_imagenet2012(prepared, tmp_path):
    model, _ = prepared
    images = [jpeg_bytes(200 + i) for i in range(4)]
    predictions = own_predictions(model, images)
    labels = [int(p) if i < 3 else int(p + 1) % 1000 for i, p in enumerate(predictions)]
    examples = [
        (str(i), {"image": image, "label": label, "file_name": f"ILSVRC2012_val_{i:08}.JPEG"})
        for i, (image, label) in enumerate(zip(images, labels, strict=True))
    ]
    write_tfds_dataset(tmp_path, "imagenet2012", {"validation": examples})
    report = benchmarks.evaluate_benchmarks(model, "imagenet", data_dir=str(tmp_path))
    entry = report["benchmarks"]["imagenet"]
    assert (entry["top1"], entry["num_examples"], entry["dataset"]) == (0.75, 4, "imagenet2012")


def test_missing_datasets_name_the_tfds_command(prepared, tmp_path):
    model, data_dir = prepared
    with pytest.raises(DatasetNotFoundError) as error:
        benchmarks.evaluate_benchmarks(model, "real", data_dir=str(tmp_path))
    message = str(error.value)
    assert f"tfds build imagenet2012_real --data_dir={tmp_path}" in message
    assert "ILSVRC2012_img_val.tar" in message and "\n" not in message
    with pytest.raises(DatasetNotFoundError, match="tfds build imagenet2012 .*imagenet,real"):
        benchmarks.evaluate_benchmarks(model, "imagenet", data_dir=str(tmp_path))
    # V2 is looked for before the ReaL pass runs: its absence stops the evaluation at once.
    with pytest.raises(DatasetNotFoundError, match="tfds build imagenet_v2/threshold-0.7"):
        benchmarks.evaluate_benchmarks(model, data_dir=data_dir, v2_variant="threshold-0.7")


def test_a_model_of_other_classes_is_refused(prepared):
    _, data_dir = prepared
    with pytest.raises(UserInputError, match="1000 classes.*num_classes=10"):
        benchmarks.evaluate_benchmarks(tiny_model(num_classes=10), "v2", data_dir=data_dir)
