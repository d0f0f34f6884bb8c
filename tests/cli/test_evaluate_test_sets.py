"""`python -m deit_keras.evaluate --benchmarks=...`: the paper's Table 5 as a user runs it."""

import io
import json

import numpy as np
import pytest
import tensorflow as tf

from deit_keras.deploy import saving
from deit_keras.testing import (
    TINY_BENCHMARK_EXPECTED,
    assert_one_line_error,
    jpeg_bytes,
    run_cli,
    tiny_model,
    write_benchmark_datasets,
    write_tfds_dataset,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    model = tiny_model(num_classes=1000)
    saving.save_model(model, str(root / "tiny.keras"))
    write_benchmark_datasets(root / "tfds", model)
    return root


def test_evaluate_cli_reports_table_5(prepared, tmp_path):
    output = tmp_path / "table5.json"
    process = run_cli(
        "evaluate",
        f"--model_path={prepared / 'tiny.keras'}",
        "--benchmarks=imagenet,real,v2",
        f"--data_dir={prepared / 'tfds'}",
        "--batch_size=4",
        f"--output={output}",
    )
    assert process.returncode == 0, process.stderr
    results = json.loads(output.read_text())
    for name, (right, counted) in TINY_BENCHMARK_EXPECTED.items():
        assert results["benchmarks"][name]["top1"] == pytest.approx(right / counted)
        assert results["benchmarks"][name]["num_examples"] == counted
    assert "--benchmarks=imagenet,real,v2" in results["flags"]
    lines = process.stdout.splitlines()
    assert lines[0].split() == ["benchmark", "top-1", "%", "images", "dataset"]
    assert lines[1].split()[:3] == ["ImageNet", "58.33", "12"]
    assert lines[2].split()[:3] == ["ImageNet-ReaL", "66.67", "9"]
    assert lines[3].split()[:3] == ["ImageNet-V2", "40.00", "10"]
    assert lines[4] == f"wrote {output}"


def test_evaluate_cli_benchmark_not_prepared_is_one_line(prepared, tmp_path):
    process = run_cli(
        "evaluate",
        f"--model_path={prepared / 'tiny.keras'}",
        "--benchmarks=v2",
        "--v2_variant=topimages",
        f"--data_dir={prepared / 'tfds'}",
    )
    assert_one_line_error(
        process, "tfds build imagenet_v2/topimages", f"--data_dir={prepared / 'tfds'}"
    )


def test_v2_variant_without_v2_is_one_line(prepared, tmp_path):
    process = run_cli(
        "evaluate",
        f"--model_path={prepared / 'tiny.keras'}",
        "--benchmarks=imagenet,real",
        "--v2_variant=topimages",
        f"--data_dir={prepared / 'tfds'}",
    )
    assert_one_line_error(process, "--v2_variant is for --benchmarks with v2")


def _logits(model, images):
    """The inference logits of JPEG `images` through the eval transform."""
    from deit_keras.data.preprocessing import preprocess
    from deit_keras.data.transforms import decode_image

    crops = [preprocess(decode_image(e), model.image_size, model.preprocessing) for e in images]
    return np.asarray(model(tf.stack(crops), training=False))


def _subset_predictions(model, images, columns):
    """The argmax over `columns` only of each image's logits, as model class indices."""
    return [columns[i] for i in np.argmax(_logits(model, images)[:, list(columns)], axis=-1)]


def test_imagenet_a_is_scored_over_its_200_classes(tmp_path):
    """tfds `imagenet_a` (1000-class labels): top-1 over the 200 classes' logits only, as
    the authors' code and timm's `--valid-labels`; the argmax over all 1000 is not it."""
    from deit_keras.data import labels
    from deit_keras.inference.evaluate import evaluate_on_dataset

    model = tiny_model(num_classes=1000)
    columns = labels.imagenet_subset_indices("imagenet_a")
    # A class outside the 200 tops every image's full argmax (random weights need not).
    outside = min(set(range(1000)) - set(columns))
    model(np.zeros((1, model.image_size, model.image_size, 3), "float32"))
    for head in (model.head, model.head_dist):
        head.bias.assign(head.bias.numpy() + 10.0 * (np.arange(1000) == outside))
    images = [jpeg_bytes(200 + i, (40, 40)) for i in range(8)]
    predicted = _subset_predictions(model, images, columns)
    # Images 0-4 labelled with the prediction among the 200, 5-7 with another of them.
    label_of = [
        p if i < 5 else columns[(columns.index(p) + 1) % 200] for i, p in enumerate(predicted)
    ]
    examples = [
        (f"{i}.jpg", {"file_name": f"{i}.jpg", "image": image, "label": label})
        for i, (image, label) in enumerate(zip(images, label_of, strict=True))
    ]
    write_tfds_dataset(tmp_path, "imagenet_a", {"test": examples})
    summary = evaluate_on_dataset(model, "imagenet_a", data_dir=str(tmp_path), batch_size=3)
    assert summary["top1"] == pytest.approx(5 / 8)
    assert summary["num_classes_scored"] == 200 and summary["num_examples"] == 8
    # The full argmax hits none of them: its top class is outside the 200.
    assert set(np.argmax(_logits(model, images), axis=-1)) == {outside}

    with pytest.raises(ValueError, match="needs an ImageNet-1k model"):
        evaluate_on_dataset(tiny_model(num_classes=10), "imagenet_a", data_dir=str(tmp_path))


def test_a_folder_of_imagenet_synsets_is_scored_over_its_classes(tmp_path):
    from PIL import Image

    from deit_keras.data import labels
    from deit_keras.inference.evaluate import evaluate_on_dataset

    model = tiny_model(num_classes=1000)
    synsets = labels.imagenet_synsets()
    chosen = [3, 400, 901]
    images = [jpeg_bytes(300 + i, (40, 40)) for i in range(6)]
    predicted = _subset_predictions(model, images, chosen)
    for split in ("train", "val"):
        for index in chosen:
            (tmp_path / split / synsets[index]).mkdir(parents=True)
    for i, (image, p) in enumerate(zip(images, predicted, strict=True)):
        label = p if i < 4 else chosen[(chosen.index(p) + 1) % 3]
        (tmp_path / "val" / synsets[label] / f"{i}.jpg").write_bytes(image)
    Image.open(io.BytesIO(images[0])).save(tmp_path / "train" / synsets[3] / "t.png")
    summary = evaluate_on_dataset(model, f"folder:{tmp_path}", batch_size=4)
    assert summary["top1"] == pytest.approx(4 / 6)
    assert summary["num_classes_scored"] == 3
