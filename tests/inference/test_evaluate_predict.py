"""Evaluation metrics, image loading and top-k prediction (evaluate.py, predict.py)."""

import json
import re
import types

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deit_keras.data import labels
from deit_keras.data.preprocessing import Preprocessing, preprocess
from deit_keras.deploy import saved_model, saving
from deit_keras.errors import UserInputError
from deit_keras.inference import evaluate, predict
from deit_keras.io import images as images_io
from deit_keras.testing import assert_one_line_error, run_cli, tiny_model

CLASS_NAMES = [f"digit {i}" for i in range(10)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny_model()
    path = str(tmp_path_factory.mktemp("evaluate") / "tiny.keras")
    saving.save_model(model, path, class_names=CLASS_NAMES)
    return model, path


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Images of awkward kinds: `{kind: path}`."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.RandomState(0)
    pictures = {
        "rgb.jpg": Image.fromarray(rng.randint(0, 256, (40, 60, 3), dtype=np.uint8)),
        "gray.png": Image.fromarray(rng.randint(0, 256, (17, 9), dtype=np.uint8)),
        "rgba.png": Image.fromarray(rng.randint(0, 256, (20, 20, 4), dtype=np.uint8)),
        "gray16.png": Image.fromarray((rng.randint(0, 256, (12, 30)) * 257).astype(np.uint16)),
        "one_pixel.png": Image.fromarray(np.array([[[255, 0, 0]]], dtype=np.uint8)),
        "palette.png": Image.fromarray(rng.randint(0, 256, (20, 20, 3), dtype=np.uint8)).convert(
            "P"
        ),
    }
    paths = {}
    for name, picture in pictures.items():
        paths[name] = str(root / name)
        picture.save(paths[name])
    paths["text.jpg"] = str(root / "text.jpg")
    with open(paths["text.jpg"], "w") as handle:
        handle.write("this is not a JPEG\n")
    paths["empty.png"] = str(root / "empty.png")
    open(paths["empty.png"], "w").close()
    return paths


# === evaluate ===


def _labelled_batches(model, num=20, batch_size=8, seed=0):
    rng = np.random.RandomState(seed)
    images = rng.randn(num, 32, 32, 3).astype("float32")
    labels = rng.randint(0, model.num_classes, num)
    dataset = tf.data.Dataset.from_tensor_slices(
        (images, tf.one_hot(labels, model.num_classes))
    ).batch(batch_size)
    return images, labels, dataset


def _top_k(logits, labels, k):
    top = np.argsort(-logits, axis=-1)[:, :k]
    return np.mean(np.any(top == labels[:, None], axis=-1))  # a fraction, as Keras


def test_evaluate_model_matches_numpy(saved):
    model, _ = saved
    images, labels, dataset = _labelled_batches(model)
    results = evaluate.evaluate_model(model, dataset)
    cls_logits, dist_logits = (t.numpy() for t in model.call_heads(images))
    averaged = model(images).numpy()
    np.testing.assert_allclose(averaged, (cls_logits + dist_logits) / 2, atol=1e-6)
    for prefix, logits in (("", averaged), ("cls_", cls_logits), ("dist_", dist_logits)):
        for k in (1, 5):
            assert results[f"{prefix}top{k}"] == pytest.approx(_top_k(logits, labels, k))
    log_probs = tf.nn.log_softmax(averaged).numpy()
    assert results["loss"] == pytest.approx(-log_probs[np.arange(20), labels].mean(), rel=1e-5)
    assert results["num_examples"] == 20 and results["images_per_second"] > 0

    # Integer labels give the same numbers; max_batches stops early.
    sparse = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    again = evaluate.evaluate_model(model, sparse)
    assert again["top1"] == results["top1"] and again["dist_top5"] == results["dist_top5"]
    assert evaluate.evaluate_model(model, sparse, max_batches=1)["num_examples"] == 8


def test_evaluate_model_plain_model_and_errors(saved):
    plain = tiny_model(distilled=False)
    images, labels, dataset = _labelled_batches(plain, num=6)
    results = evaluate.evaluate_model(plain, dataset)
    assert "dist_top1" not in results
    assert (
        results["top1"]
        == results["cls_top1"]
        == pytest.approx(_top_k(plain(images).numpy(), labels, 1))
    )
    with pytest.raises(ValueError, match="no examples"):
        evaluate.evaluate_model(plain, dataset.take(0))
    # The first index past the classes, and an unlabelled split's -1 (its loss term read
    # the last class's probability, by numpy's negative indexing).
    for label in (plain.num_classes, -1):
        with pytest.raises(ValueError, match=f"Label {label} out of range"):
            evaluate.evaluate_model(plain, [(images, np.full(6, label))])
    with pytest.raises(ValueError, match="32x32"):
        evaluate.evaluate_model(plain, [(np.zeros((1, 16, 16, 3), "float32"), np.zeros(1))])


class _Relabelled:
    """`model`, but the next class wins on images whose first pixel is positive (about half)."""

    def __init__(self, model):
        self.model = model
        self.image_size, self.num_classes = model.image_size, model.num_classes
        self.preprocessing = model.preprocessing

    def call_heads(self, images, training=False):
        cls_logits, dist_logits = (np.asarray(t) for t in self.model.call_heads(images))
        winner = (cls_logits + dist_logits).argmax(-1)
        moved = np.asarray(images)[:, 0, 0, 0] > 0
        bump = 100.0 * np.eye(self.num_classes)[(winner + 1) % self.num_classes] * moved[:, None]
        return cls_logits + bump, dist_logits + bump


def test_evaluate_model_against_a_reference_model(saved):
    model, _ = saved
    reference = _Relabelled(model)
    images, labels, dataset = _labelled_batches(model, num=40, seed=3)
    ours = model(images).numpy().argmax(-1)
    theirs = np.add(*reference.call_heads(images)).argmax(-1)
    assert 0 < np.mean(ours == theirs) < 1  # the check below can tell a wrong count

    results = evaluate.evaluate_model(model, dataset, reference=reference)
    assert results["agreement_with_reference"] == pytest.approx(np.mean(ours == theirs))
    assert results["reference_top1"] == pytest.approx(np.mean(theirs == labels))
    assert results["top1"] == pytest.approx(np.mean(ours == labels))
    itself = evaluate.evaluate_model(model, dataset, reference=model)
    assert itself["agreement_with_reference"] == 1.0 and itself["reference_top1"] == itself["top1"]
    assert "agreement_with_reference" not in evaluate.evaluate_model(model, dataset)


def test_check_reference_needs_the_same_crops_and_classes(saved):
    model, _ = saved
    evaluate.check_reference(model, tiny_model())
    sizes = r"same images and classes.*\(32, 10\). Received: \(32, 5\)"
    with pytest.raises(ValueError, match=sizes):
        evaluate.check_reference(model, tiny_model(num_classes=5))
    halves = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    inception_style = types.SimpleNamespace(image_size=32, num_classes=10, preprocessing=halves)
    with pytest.raises(ValueError, match="normalises images otherwise"):
        evaluate.check_reference(model, inception_style)
    with pytest.raises(ValueError, match="same images and classes"):  # the library checks too
        evaluate.evaluate_model(model, [], reference=tiny_model(num_classes=5))


def test_class_names_mismatch_compares_through_the_naming_rule():
    digits = [str(i) for i in range(10)]
    assert evaluate.class_names_mismatch(digits, digits, 10) is None
    assert evaluate.class_names_mismatch(None, digits, 10) is None  # class_<index>: unknown
    message = evaluate.class_names_mismatch(digits[::-1], digits, 10)
    assert "index 0" in message and "'9' vs '0'" in message and "\n" not in message
    reference = evaluate.class_names_mismatch(
        digits[::-1], digits, 10, other="--reference_model's", measure="agreement"
    )  # deit-evaluate --reference_model's warning
    assert "differ from --reference_model's" in reference and "agreement assumes" in reference
    # A 1000-class model without names is ImageNet's: tfds imagenet2012 labels are synset ids.
    assert evaluate.class_names_mismatch(None, labels.imagenet_synsets(), 1000) is None
    assert "index 0" in evaluate.class_names_mismatch(None, [f"c{i}" for i in range(1000)], 1000)
    # Folders named by class index (ImageNet-V2's 0..999) name no class: not compared.
    index_folders = [str(i) for i in range(1000)]
    assert evaluate.class_names_mismatch(None, index_folders, 1000) is None
    assert evaluate.class_names_mismatch(labels.imagenet_synsets(), index_folders, 1000) is None


def test_a_mismatch_names_the_class_that_differs_as_it_was_saved():
    """Synset names against folders named by synset, one of them not ImageNet's: it named
    index 0 ('tench, Tinca tinca' vs 'n01440764', the same class) instead of index 3."""
    synsets = labels.imagenet_synsets()[:4]
    folders = [*synsets[:3], "n09999999"]
    message = evaluate.class_names_mismatch(synsets, folders, 4)
    assert f"index 3: '{synsets[3]}' vs 'n09999999'" in message, message


def _info(names):
    return types.SimpleNamespace(class_names=tuple(names), num_classes=len(names))


def test_a_dataset_of_the_models_classes_in_another_order_or_fewer_is_scored_by_name():
    """Class folders in another order (or a few of them) were scored by index, with a
    warning: the top-1 of other classes' labels."""
    names = ["cat", "dog", "eel", "fox"]
    subset = evaluate.class_subset_of("folder:x", _info(["eel", "cat"]), 4, names)
    assert subset.columns == (2, 0) and list(subset.positions) == [0, 1]
    logits = np.eye(4)[[2, 0, 1]]  # the model says eel, cat, dog
    columns, places = subset.select(logits, np.array([0, 1, 1]))
    assert list(columns.argmax(-1) == places) == [True, True, False]
    same = evaluate.class_subset_of("folder:x", _info(names), 4, names)
    other = evaluate.class_subset_of("folder:x", _info(["uno", "dog", "eel", "fox"]), 4, names)
    assert same is None and other is None  # as they are; a name not the model's: by index
    # ImageNet classes named by index (ImageNet-V2's folders), fewer than 1000.
    numbered = evaluate.class_subset_of("folder:v2", _info(["0", "1", "10", "5"]), 1000)
    assert numbered.columns == (0, 1, 10, 5)


def test_a_tfds_datasets_numbered_classes_are_not_imagenet_indices():
    """`digits` on an ImageNet model was scored over ImageNet's classes 0-9 (tench,
    goldfish...): a number that means nothing, where the class counts differ."""
    assert evaluate.class_subset_of("digits", _info([str(i) for i in range(10)]), 1000) is None


def test_evaluate_cli_on_image_folder(saved, tmp_path):
    pytest.importorskip("deit_keras.data.pipeline")
    model, path = saved
    rng = np.random.RandomState(1)
    for split in ("train", "val"):
        for label in range(10):
            folder = tmp_path / "data" / split / f"c{label}"
            folder.mkdir(parents=True)
            Image.fromarray(rng.randint(0, 256, (24, 36, 3), dtype=np.uint8)).save(folder / "0.png")
    output = tmp_path / "data" / "results.json"  # at the dataset's top: never read as an image
    process = run_cli(
        "evaluate",
        f"--model_path={path}",
        f"--dataset=folder:{tmp_path / 'data'}",
        "--batch_size=4",
        f"--output={output}",
    )
    assert process.returncode == 0, process.stderr
    results = json.loads(output.read_text())
    assert results["num_examples"] == 10 and "--dataset=folder:" in results["flags"]
    # Same numbers as predicting each file through the serving preprocessing.
    paths = sorted((tmp_path / "data" / "val").glob("c*/0.png"))
    top = predict.predict_images(model, [images_io.load_image(p) for p in paths], top_k=5)
    expected_top1 = np.mean([row[0][1] == i for i, row in enumerate(top)])
    expected_top5 = np.mean([i in [c[1] for c in row] for i, row in enumerate(top)])
    assert results["top1"] == pytest.approx(expected_top1)
    assert results["top5"] == pytest.approx(expected_top5)
    # An --output among the dataset's images: it replaced the image with the JSON.
    image = tmp_path / "data" / "val" / "c0" / "0.png"
    before = image.read_bytes()
    process = run_cli(
        "evaluate",
        f"--model_path={path}",
        f"--dataset=folder:{tmp_path / 'data'}",
        f"--output={image}",
    )
    assert_one_line_error(process, "--output lies among the dataset's images")
    assert image.read_bytes() == before


def test_evaluate_cli_reads_the_split_crop_pct_and_max_batches_it_is_given(saved, tmp_path):
    pytest.importorskip("deit_keras.data.pipeline")
    _, path = saved
    rng = np.random.RandomState(2)
    for split, per_class in (("train", 2), ("val", 1)):  # 20 training images, 10 validation
        for label in range(10):
            folder = tmp_path / "data" / split / f"c{label}"
            folder.mkdir(parents=True)
            for index in range(per_class):
                picture = rng.randint(0, 256, (24, 36, 3), dtype=np.uint8)
                Image.fromarray(picture).save(folder / f"{index}.png")
    output = tmp_path / "results.json"
    process = run_cli(
        "evaluate",
        f"--model_path={path}",
        f"--dataset=folder:{tmp_path / 'data'}",
        "--split=train",
        "--crop_pct=1.0",
        "--batch_size=4",
        "--max_batches=3",
        f"--output={output}",
    )
    assert process.returncode == 0, process.stderr
    results = json.loads(output.read_text())
    assert (results["split"], results["crop_pct"], results["num_examples"]) == ("train", 1.0, 12)


# === predict ===


def test_load_image_converts_to_rgb_uint8(image_files):
    shapes = {
        "rgb.jpg": (40, 60, 3),
        "gray.png": (17, 9, 3),
        "rgba.png": (20, 20, 3),
        "gray16.png": (12, 30, 3),
        "one_pixel.png": (1, 1, 3),
        "palette.png": (20, 20, 3),
    }
    for name, shape in shapes.items():
        image = images_io.load_image(image_files[name])
        assert image.shape == shape and image.dtype == np.uint8, name
    gray = np.asarray(Image.open(image_files["gray.png"]))
    np.testing.assert_array_equal(images_io.load_image(image_files["gray.png"])[..., 1], gray)
    sixteen = np.asarray(Image.open(image_files["gray16.png"])).astype(np.int64)
    np.testing.assert_array_equal(
        images_io.load_image(image_files["gray16.png"])[..., 0], sixteen // 257
    )
    rgba = np.asarray(Image.open(image_files["rgba.png"]))
    np.testing.assert_array_equal(images_io.load_image(image_files["rgba.png"]), rgba[..., :3])


def test_16_bit_grayscale_reads_as_the_training_pipeline_decodes_it(tmp_path):
    from deit_keras.data.transforms import decode_image

    path = tmp_path / "dark16.png"  # every value below 256: the scale must not depend on them
    Image.fromarray(np.arange(0, 65536, 37, dtype=np.uint16)[:1600].reshape(40, 40)).save(path)
    np.testing.assert_array_equal(
        images_io.load_image(str(path)), decode_image(path.read_bytes()).numpy()
    )
    path = tmp_path / "darker16.png"
    Image.fromarray(np.arange(0, 250, dtype=np.uint16).reshape(10, 25)).save(path)
    np.testing.assert_array_equal(
        images_io.load_image(str(path)), decode_image(path.read_bytes()).numpy()
    )


def test_large_images_read_and_too_large_ones_are_one_line(tmp_path, monkeypatch):
    import warnings

    path = tmp_path / "large.png"
    Image.fromarray(np.zeros((10, 15, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 150 pixels: Pillow warns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert images_io.load_image(str(path)).shape == (10, 15, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # beyond twice the limit: Pillow refuses
    with pytest.raises(ValueError, match="too large for Pillow") as info:
        images_io.load_image(str(path))
    assert "\n" not in str(info.value)


def test_load_image_errors(image_files, tmp_path):
    for path, fragment in (
        (image_files["text.jpg"], "as an image"),
        (image_files["empty.png"], "is empty"),
        (str(tmp_path / "missing.png"), "not found"),
        (str(tmp_path), "is a folder"),
    ):
        with pytest.raises(ValueError, match=fragment) as info:
            images_io.load_image(path)
        assert "\n" not in str(info.value)


def test_predict_images_matches_saved_model(saved, image_files, tmp_path):
    model, _ = saved
    names = ["rgb.jpg", "gray16.png", "one_pixel.png"]
    images = [images_io.load_image(image_files[n]) for n in names]
    top = predict.predict_images(model, images, CLASS_NAMES, top_k=5)
    saved_model.export_saved_model(model, str(tmp_path / "sm"))
    with open(tmp_path / "sm" / saved_model.SERVING_CONFIG) as handle:
        serving = json.load(handle)  # no names given, 10 classes: class_<index>
    assert serving["class_names"] == [f"class_{i}" for i in range(10)]
    assert serving["class_names_source"] == "index"
    serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    for image, row in zip(images, top, strict=True):
        probabilities = serve(images=tf.constant(image[None]))["probabilities"].numpy()[0]
        order = np.argsort(-probabilities)[:5]
        assert [index for _, index, _ in row] == list(order)
        np.testing.assert_allclose([p for _, _, p in row], probabilities[order], atol=1e-5)
        assert [name for name, _, _ in row] == [CLASS_NAMES[i] for i in order]
    unnamed = predict.predict_images(model, images[:1], top_k=20)
    assert len(unnamed[0]) == 10 and unnamed[0][0][0].startswith("class_")
    assert sum(p for _, _, p in unnamed[0]) == pytest.approx(1.0, abs=1e-5)


def test_predict_images_crops_with_the_given_crop_pct(saved):
    """`crop_pct` (the predict CLI's --crop_pct) replaces the model's crop fraction: on a
    non-square image the probabilities are the model's on that crop, not on its own."""
    model, _ = saved
    image = np.random.RandomState(4).randint(0, 256, (40, 56, 3)).astype(np.uint8)

    def probabilities(preprocessing):
        crop = preprocess(image, model.image_size, preprocessing)[None]
        return tf.nn.softmax(model(crop, training=False)).numpy()[0]

    whole = probabilities(model.preprocessing.replace(crop_pct=1.0))
    # The crops differ; an untrained tiny model's probabilities by ~3e-3 (0.1 each).
    assert np.abs(whole - probabilities(model.preprocessing)).max() > 2e-4
    [top] = predict.predict_images(model, [image], CLASS_NAMES, crop_pct=1.0, top_k=10)
    got = np.zeros(model.num_classes)
    for _, index, probability in top:
        got[index] = probability
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-6)


class _BatchRecorder:
    """`model` for `predict_images`, recording each forward pass's batch size."""

    def __init__(self, model):
        self.model, self.batches = model, []
        self.num_classes, self.image_size = model.num_classes, model.image_size
        self.preprocessing = model.preprocessing

    def __call__(self, images, training=False):
        self.batches.append(len(images))
        return self.model(images, training=training)


def test_predict_images_runs_batches_of_at_most_batch_size(saved, image_files):
    model, _ = saved
    names = ["rgb.jpg", "gray.png", "rgba.png", "gray16.png", "palette.png"]
    paths = [image_files[n] for n in names]
    images = predict.read_images(paths, batch_size=2)
    assert not isinstance(images, list)  # more than one batch: read again one by one
    recorder = _BatchRecorder(model)
    batched = predict.predict_images(recorder, images, CLASS_NAMES, batch_size=2)
    assert recorder.batches == [2, 2, 1]
    whole = predict.predict_images(model, predict.read_images(paths), CLASS_NAMES)
    assert [[name for name, _, _ in top] for top in batched] == [
        [name for name, _, _ in top] for top in whole
    ]
    np.testing.assert_allclose(
        [[p for _, _, p in top] for top in batched],
        [[p for _, _, p in top] for top in whole],
        atol=1e-6,
    )


def test_read_images_checks_every_file_before_any_batch(image_files):
    paths = [image_files["rgb.jpg"], image_files["gray.png"], image_files["text.jpg"]]
    with pytest.raises(UserInputError, match="text.jpg"):
        predict.read_images(paths, batch_size=1)


def test_predict_cli(saved, image_files, tmp_path):
    model, path = saved
    output = tmp_path / "predictions.json"
    process = run_cli(
        "predict",
        f"--model_path={path}",
        f"--output={output}",
        image_files["rgb.jpg"],
        image_files["one_pixel.png"],
        image_files["gray16.png"],
    )
    assert process.returncode == 0, process.stderr
    records = json.loads(output.read_text())
    assert [len(r["predictions"]) for r in records] == [5, 5, 5]
    assert records[0]["file"] == image_files["rgb.jpg"]
    lines = process.stdout.splitlines()
    assert lines[0] == image_files["rgb.jpg"] and len(lines) == 3 * 6
    expected = predict.predict_images(
        model, [images_io.load_image(image_files["rgb.jpg"])], CLASS_NAMES
    )[0]
    # Saved names win; text lines are `  <name> <probability, 2 decimals>`.
    shown = [line.rsplit(" ", 1) for line in lines[1:6]]
    assert [name for name, _ in shown] == [f"  {name}" for name, _, _ in expected]
    assert all(re.fullmatch(r"\d\.\d\d", p) for _, p in shown)
    np.testing.assert_allclose([float(p) for _, p in shown], [p for _, _, p in expected], atol=6e-3)
    top = records[0]["predictions"]
    assert [t["class_name"] for t in top] == [name for name, _, _ in expected]
    assert [t["class_index"] for t in top] == [index for _, index, _ in expected]
    probabilities = [t["probability"] for t in top]
    np.testing.assert_allclose(probabilities, [p for _, _, p in expected], atol=1e-5)


def test_predict_cli_batches_give_the_same_predictions(saved, image_files, tmp_path):
    _, path = saved
    paths = [image_files[n] for n in ("rgb.jpg", "one_pixel.png", "gray16.png")]
    documents = []
    for batch_size in (1, 32):
        process = run_cli(
            "predict", f"--model_path={path}", f"--batch_size={batch_size}", "--json", *paths
        )
        assert process.returncode == 0, process.stderr
        documents.append(json.loads(process.stdout))
    assert [r["file"] for r in documents[0]] == paths
    for one, whole in zip(*documents, strict=True):
        assert [t["class_index"] for t in one["predictions"]] == [
            t["class_index"] for t in whole["predictions"]
        ]
        np.testing.assert_allclose(
            [t["probability"] for t in one["predictions"]],
            [t["probability"] for t in whole["predictions"]],
            atol=1e-6,
        )


def test_predict_cli_text_file_named_jpg_is_one_line_error(saved, image_files):
    _, path = saved
    process = run_cli("predict", f"--model_path={path}", image_files["text.jpg"])
    assert_one_line_error(process, "text.jpg")


@pytest.mark.parametrize("suffix", ["gif", "png"])
def test_transparent_palette_images_read_as_the_training_decoder_reads_them(tmp_path, suffix):
    """TensorFlow leaves a GIF's transparent pixels black and keeps a PNG's palette colour."""
    from deit_keras.data.transforms import decode_image

    image = Image.new("P", (8, 6))
    image.putpalette([255, 255, 255, 200, 30, 60] + [0] * 762)
    pixels = np.zeros((6, 8), np.uint8)
    pixels[2:4, 2:6] = 1
    image.putdata(pixels.flatten())
    path = tmp_path / f"logo.{suffix}"
    image.save(path, transparency=0)
    read = images_io.load_image(str(path))
    np.testing.assert_array_equal(read, decode_image(path.read_bytes()).numpy())
    assert tuple(read[0, 0]) == ((0, 0, 0) if suffix == "gif" else (255, 255, 255))


def test_integer_labels_of_shape_b_by_1_are_indices_not_one_hot():
    """keras.datasets' `y` is `[B, 1]`: read as one-hot it scored every image as class 0."""
    model = tiny_model(num_classes=10)
    for head in (model.head, model.head_dist):  # every image class 3, not 0
        head.bias.assign(head.bias.numpy() + 10.0 * (np.arange(10) == 3))
    images = np.random.default_rng(4).normal(size=(8, 32, 32, 3)).astype("float32")
    predicted = np.argmax(np.asarray(model.predict_on_batch(images)), axis=-1)
    assert set(predicted) == {3}
    for targets in (predicted, predicted[:, None]):
        results = evaluate.evaluate_model(model, [(images, targets)])
        assert results["top1"] == 1.0, targets.shape


def test_each_file_is_read_once_however_its_path_is_spelt(tmp_path):
    """`a.png ./a.png` (or a folder and `folder//a.png`) predicted the file twice."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    spellings = [
        str(tmp_path),
        f"{tmp_path}/./a.png",
        f"{tmp_path}//a.png",
        str(tmp_path / "a.png"),
    ]
    assert images_io.image_files(spellings) == [str(tmp_path / "a.png")]
