"""Saving, loading and SavedModel export (deit_keras.export)."""

import io
import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import deit_keras
from deit_keras.data import preprocessing
from deit_keras.deploy import saved_model, saving
from deit_keras.testing import assert_one_line_error, op_by_op, run_cli, tiny_model

CLASS_NAMES = [f"class {i}" for i in range(10)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny distilled model saved with class names: `(model, path)`."""
    model = tiny_model()
    path = str(tmp_path_factory.mktemp("export") / "tiny.keras")
    saving.save_model(model, path, class_names=CLASS_NAMES)
    return model, path


def random_images(shape, seed=0):
    return np.random.RandomState(seed).randint(0, 256, shape).astype(np.uint8)


def test_save_load_round_trip_keeps_outputs_and_class_names(saved, tmp_path):
    model, path = saved
    loaded, names = saving.load_model(path)
    assert isinstance(loaded, deit_keras.DeiT)
    assert names == CLASS_NAMES
    images = np.random.RandomState(1).randn(2, 32, 32, 3).astype("float32")
    np.testing.assert_allclose(loaded(images), model(images), atol=1e-6)
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.startswith(".")]

    # Saving again without names drops the stale classes file.
    other = str(tmp_path / "other.keras")
    saving.save_model(model, other, class_names=CLASS_NAMES)
    saving.save_model(model, other)
    assert not os.path.exists(saving.classes_path(other))
    assert saving.load_model(other)[1] is None


def test_save_model_rejects_bad_arguments(saved, tmp_path):
    model, _ = saved
    with pytest.raises(ValueError, match="end in '.keras'"):
        saving.save_model(model, str(tmp_path / "model.h5"))
    with pytest.raises(ValueError, match="3 class names"):
        saving.save_model(model, str(tmp_path / "m.keras"), class_names=["a", "b", "c"])


def _write_bad_files(directory):
    paths = {}
    paths["missing"] = os.path.join(directory, "missing.keras")
    paths["empty"] = os.path.join(directory, "empty.keras")
    open(paths["empty"], "w").close()
    paths["text"] = os.path.join(directory, "text.keras")
    with open(paths["text"], "w") as handle:
        handle.write("not a model\n")
    paths["garbage_zip"] = os.path.join(directory, "garbage.keras")
    with zipfile.ZipFile(paths["garbage_zip"], "w") as archive:
        archive.writestr("config.json", "{not json")
        archive.writestr("model.weights.h5", b"\x00" * 64)
    paths["directory"] = directory
    paths["sequential"] = os.path.join(directory, "sequential.keras")
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(paths["sequential"])
    return paths


def test_load_model_errors_are_one_line_value_errors(saved, tmp_path):
    _, good = saved
    paths = _write_bad_files(str(tmp_path))
    # A truncated copy of a good model.
    paths["truncated"] = str(tmp_path / "truncated.keras")
    with open(good, "rb") as source, open(paths["truncated"], "wb") as target:
        target.write(source.read()[: os.path.getsize(good) // 2])
    expected = {
        "missing": "not found",
        "empty": "is empty",
        "text": "not a .keras model file",
        "garbage_zip": "Could not load",
        "directory": "is a directory",
        "sequential": "not a deit_keras model",
        "truncated": "not a .keras model file",
    }
    for kind, path in paths.items():
        with pytest.raises(ValueError, match=expected[kind]) as info:
            saving.load_model(path)
        assert "\n" not in str(info.value), kind


def test_saved_model_matches_keras_model(saved, tmp_path):
    model, path = saved
    loaded, names = saving.load_model(path)
    out_dir = str(tmp_path / "saved_model")
    saved_model.export_saved_model(loaded, out_dir, class_names=names)
    with open(os.path.join(out_dir, saved_model.SERVING_CONFIG)) as handle:
        config = json.load(handle)
    assert config["image_size"] == 32 and config["class_names"] == CLASS_NAMES

    restored = tf.saved_model.load(out_dir)
    signature = restored.signatures["serving_default"]
    layer = keras.layers.TFSMLayer(out_dir, call_endpoint="serving_default")
    for shape in [(2, 50, 70, 3), (1, 1, 1, 3), (3, 224, 200, 3)]:
        images = random_images(shape, seed=shape[1])
        expected = op_by_op(model, preprocessing.preprocess(images, 32)).numpy()
        from_signature = signature(images=tf.constant(images))
        from_layer = layer(images)
        for outputs in (from_signature, from_layer):
            np.testing.assert_allclose(outputs["logits"], expected, atol=1e-5)
            np.testing.assert_allclose(outputs["probabilities"], tf.nn.softmax(expected), atol=1e-5)
            assert outputs["logits"].shape == (shape[0], 10)

    # Exporting again replaces the directory atomically (no temporaries left).
    saved_model.export_saved_model(loaded, out_dir)
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith(".")) == []
    with pytest.raises(ValueError, match="crop_pct"):
        saved_model.export_saved_model(loaded, str(tmp_path / "bad"), crop_pct=1.5)
    assert not os.path.exists(tmp_path / "bad")


def test_saved_model_serves_with_the_exported_crop_pct(saved, tmp_path):
    """`export_saved_model(crop_pct=...)` (the export CLI's --crop_pct) is the crop of the
    any-size `serving_default`, not the model's own: on a non-square image the logits are
    the model's on that crop."""
    model, _ = saved
    images = random_images((1, 40, 56, 3), seed=4)
    whole = model.preprocessing.replace(crop_pct=1.0)
    expected = op_by_op(model, preprocessing.preprocess(images, 32, whole)).numpy()
    own = op_by_op(model, preprocessing.preprocess(images, 32, model.preprocessing)).numpy()
    assert np.abs(expected - own).max() > 5e-4  # other crops, other logits (by ~0.03)
    config = saved_model.export_saved_model(model, str(tmp_path / "sm"), crop_pct=1.0)
    assert config["crop_pct"] == 1.0
    serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    np.testing.assert_allclose(serve(images=tf.constant(images))["logits"], expected, atol=1e-5)


def test_training_resumes_with_optimizer_state(tmp_path):
    model = tiny_model(distilled=False)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=0.05),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.RandomState(0)
    images = rng.randn(4, 32, 32, 3).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.randint(0, 10, 4)]
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    path = str(tmp_path / "trained.keras")
    saving.save_model(model, path)

    loaded, _ = saving.load_model(path)
    assert int(loaded.optimizer.iterations.numpy()) == 1
    assert isinstance(loaded.optimizer, keras.optimizers.AdamW)
    before = {v.path: v.numpy() for v in model.optimizer.variables}
    after = {v.path: v.numpy() for v in loaded.optimizer.variables}
    assert before.keys() == after.keys() and len(before) > 2
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    moments = [key for key in before if "momentum" in key and np.any(before[key])]
    assert moments, "expected non-zero Adam moments after one step"
    loaded.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations.numpy()) == 2


def test_keras_load_model_in_fresh_process(saved, tmp_path):
    model, path = saved
    images = np.random.RandomState(3).randn(2, 32, 32, 3).astype("float32")
    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys, numpy as np, keras, deit_keras\n"
        "model = keras.models.load_model(sys.argv[1])\n"
        "assert type(model).__name__ == 'DeiT', type(model)\n"
        "np.save(sys.argv[3], model(np.load(sys.argv[2])).numpy())\n"
    )
    out = tmp_path / "logits.npy"
    process = subprocess.run(
        [sys.executable, "-c", script, path, str(tmp_path / "images.npy"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr
    np.testing.assert_allclose(np.load(out), model(images), atol=1e-6)


def test_export_cli(saved, tmp_path):
    model, path = saved
    out_dir = str(tmp_path / "served")
    process = run_cli("export", f"--model_path={path}", f"--output={out_dir}")
    assert process.returncode == 0, process.stderr
    assert "Exported" in process.stdout
    assert "--model_path" in open(os.path.join(out_dir, "flags.txt")).read()
    images = random_images((2, 40, 30, 3))
    outputs = tf.saved_model.load(out_dir).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(
        outputs["logits"], op_by_op(model, preprocessing.preprocess(images, 32)), atol=1e-5
    )


def test_export_cli_corrupt_model_is_one_line_error(tmp_path):
    bad = tmp_path / "corrupt.keras"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    process = run_cli("export", f"--model_path={bad}", f"--output={tmp_path / 'out'}")
    assert_one_line_error(process)
    assert not os.path.exists(tmp_path / "out")


FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")


def _stored_model_weights(keras_path):
    """Every model (not optimizer) variable stored in a `.keras` zip, read with h5py."""
    import h5py

    with zipfile.ZipFile(keras_path) as archive:
        weights = io.BytesIO(archive.read("model.weights.h5"))
    arrays = []
    with h5py.File(weights, "r") as stored:
        stored.visititems(
            lambda name, item: (
                arrays.append(item[()])
                if isinstance(item, h5py.Dataset) and not name.startswith("optimizer/")
                else None
            )
        )
    return arrays


def _sorted_bytes(arrays):
    """Layout-free exact identity: the multiset of (shape, bytes) of the arrays."""
    return sorted((tuple(np.shape(a)), np.asarray(a, "float32").tobytes()) for a in arrays)


def test_a_file_written_before_the_one_way_layout_still_loads():
    """`deit_c1e25b9.keras`: saved compiled by the code at c1e25b9 (make_c1e25b9_fixture.py)."""
    path = os.path.join(FIXTURES, "deit_c1e25b9.keras")
    expected = np.load(os.path.join(FIXTURES, "deit_c1e25b9_expected.npz"))
    loaded, names = saving.load_model(path)
    assert names == ["a", "b", "c"] and loaded.distilled and loaded.num_classes == 3
    assert _sorted_bytes(loaded.weights) == _sorted_bytes(_stored_model_weights(path))
    # The logits were stored on another CPU kind: float32 sums in another order differ in
    # the last bits (measured 1.1e-8 abs, 3.5e-7 rel on an AVX2 EPYC); the weights are exact.
    np.testing.assert_allclose(
        loaded(expected["images"]).numpy(), expected["logits"], rtol=1e-5, atol=1e-6
    )
    assert int(loaded.optimizer.iterations.numpy()) == int(expected["iterations"])
    assert loaded.preprocessing == deit_keras.Preprocessing()  # the defaults of that time
    rng = np.random.default_rng(0)
    labels = np.eye(3, dtype="float32")[rng.integers(0, 3, 4)]
    loaded.fit(expected["images"][:1].repeat(4, axis=0), labels, batch_size=4, verbose=0)
    assert int(loaded.optimizer.iterations.numpy()) == int(expected["iterations"]) + 1


def test_eval_pipeline_and_serving_signature_give_the_same_input(tmp_path):
    """One transform: the tf.data eval split and the SavedModel see the same tensor for an image."""
    import tensorflow as tf
    from PIL import Image

    from deit_keras.data import pipeline

    model = tiny_model(preprocessing=deit_keras.Preprocessing(crop_pct=0.8))
    root = tmp_path / "folder"
    rng = np.random.default_rng(3)
    for split in ("train", "val"):
        for name in ("only", "other"):  # the second class has no val image
            os.makedirs(root / split / name)
    pixels = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "val" / "only" / "a.png")
    Image.fromarray(pixels).save(root / "train" / "only" / "a.png")
    Image.fromarray(pixels).save(root / "train" / "other" / "a.png")
    dataset = pipeline.make_dataset(
        f"folder:{root}",
        "eval",
        image_size=32,
        batch_size=1,
        training=False,
        preprocessing=model.preprocessing,
    )
    from_pipeline = next(iter(dataset))[0].numpy()
    serve = saved_model.serving_function(model)
    seen = []
    original_call = model.call_heads

    def recording_call(images, training=None):
        seen.append(images)
        return original_call(images, training=training)

    model.call_heads = recording_call  # the serving outputs read both heads through it
    serve.python_function(tf.constant(pixels[None]))
    model.call_heads = original_call
    np.testing.assert_array_equal(np.asarray(seen[0]), from_pipeline)


def test_a_distilled_students_files_hold_no_teacher(tmp_path):
    """Keras' saving walks `dir(model)`: the `teacher` property put the teacher and its
    optimizer state into the student's `.keras`, weights and backups (96% of a tiny
    student's file), and loaded them back into a later run's teacher."""
    import h5py

    from deit_keras.distill import teachers
    from deit_keras.testing import batches, compiled

    images, labels = batches(count=1, batch=8)
    cnn = teachers.build_small_cnn(10, 32, width=64)
    cnn.compile(optimizer="adam", loss="mse")
    cnn.fit(images, labels, verbose=0)  # optimizer state of its own
    student = compiled(tiny_model(), teachers.TeacherAdapter(cnn, "normalized"))
    student.fit(images, labels, batch_size=8, verbose=0)
    student.save(tmp_path / "student.keras")
    student.save_weights(tmp_path / "student.weights.h5")
    with zipfile.ZipFile(tmp_path / "student.keras") as archive:
        in_file = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
        assert "teacher" not in in_file and "optimizer" in in_file
    with h5py.File(tmp_path / "student.weights.h5", "r") as weights:
        assert "teacher" not in weights and "blocks" in weights
    assert student.teacher is not None
    loaded = keras.models.load_model(tmp_path / "student.keras")
    np.testing.assert_array_equal(np.asarray(loaded(images)), np.asarray(student(images)))
