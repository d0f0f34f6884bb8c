import keras
import numpy as np
import pytest

from deit_keras.data.constants import IMAGENET_MEAN, IMAGENET_STD
from deit_keras.distill import regnet, teachers
from deit_keras.errors import UserEnvironmentError, UserInputError
from deit_keras.testing_server import closed_port_url

PIXELS = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")
NORMALISED = ((PIXELS / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype("float32")


def mean_pixel_teacher():
    """A 'teacher' whose logits are the mean of each input channel: shows what it was fed."""
    return keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D()])


def test_pixels_convention_undoes_the_student_normalisation():
    adapter = teachers.TeacherAdapter(mean_pixel_teacher(), "pixels")
    np.testing.assert_allclose(adapter(NORMALISED), PIXELS.mean(axis=(1, 2)), rtol=1e-4)


def test_the_students_own_normalisation_is_undone_and_a_mismatch_refused(tmp_path):
    """The adapter undid ImageNet's mean/std whatever the student's: a student normalising
    with 0.5/0.5 had its teacher see pixel 200 as (157, 149, 136)."""
    from deit_keras.data.preprocessing import Preprocessing
    from deit_keras.testing import tiny_model

    halves = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3)
    normalised = ((PIXELS / 255.0 - 0.5) / 0.5).astype("float32")
    adapter = teachers.TeacherAdapter(
        keras.Sequential([mean_pixel_teacher(), keras.layers.Dense(10)]),
        "pixels",
        student_preprocessing=halves,
    )
    pixels_seen = adapter.teacher.layers[0](adapter.teacher_input(normalised))
    np.testing.assert_allclose(pixels_seen, PIXELS.mean(axis=(1, 2)), rtol=1e-4)
    adapter.save(tmp_path / "adapter.keras")
    loaded = keras.models.load_model(tmp_path / "adapter.keras")
    assert loaded.student_preprocessing == halves

    student = tiny_model(preprocessing=halves)
    student.compile(teacher=loaded, distillation="hard")  # its own mean/std: taken
    imagenet_adapter = teachers.TeacherAdapter(loaded.teacher, "pixels")
    with pytest.raises(UserInputError, match=r"mean \(0.485.*student_preprocessing="):
        student.compile(teacher=imagenet_adapter, distillation="hard")
    normalized = teachers.TeacherAdapter(loaded.teacher, "normalized")  # no pixels: any
    student.compile(teacher=normalized, distillation="hard")
    # Values that went through float32 are the same mean/std.
    rounded = Preprocessing(mean=tuple(np.float32(halves.mean)), std=tuple(np.float32((0.5,) * 3)))
    student.compile(
        teacher=teachers.TeacherAdapter(loaded.teacher, "pixels", student_preprocessing=rounded),
        distillation="hard",
    )
    # The builders deit-train uses pass the student's on (--finetune of such a file).
    built = (
        teachers.build_teacher("mobilenetv3small", 10, 32, student_preprocessing=halves),
        teachers.build_finetune_teacher(
            "mobilenetv3small", 10, 32, weights=None, student_preprocessing=halves
        ),
    )
    assert [adapter.student_preprocessing for adapter in built] == [halves, halves]


def test_normalized_convention_passes_input_through():
    adapter = teachers.TeacherAdapter(mean_pixel_teacher(), "normalized")
    np.testing.assert_allclose(adapter(NORMALISED), NORMALISED.mean(axis=(1, 2)), rtol=1e-5)


def test_keras_applications_convention_applies_its_preprocessing():
    adapter = teachers.TeacherAdapter(
        mean_pixel_teacher(), "keras_applications", application="resnet"
    )
    expected = keras.applications.resnet.preprocess_input(PIXELS.copy()).mean(axis=(1, 2))
    np.testing.assert_allclose(adapter(NORMALISED), expected, rtol=1e-4, atol=1e-3)


def test_probabilities_become_log_probabilities():
    probs = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Softmax()]
    )
    adapter = teachers.TeacherAdapter(probs, outputs="probabilities")
    np.testing.assert_allclose(np.exp(adapter(NORMALISED)), probs(NORMALISED), rtol=1e-5)


def test_a_confident_teachers_small_probabilities_keep_their_logs():
    """A 1000-class teacher spreads most classes below 1e-4: their logs are kept, not floored."""
    confident = keras.Sequential([mean_pixel_teacher(), keras.layers.Rescaling(60.0)])
    probs = keras.Sequential([confident, keras.layers.Softmax()])
    expected = keras.ops.log_softmax(confident(NORMALISED)).numpy()
    assert expected.min() < np.log(1e-6)
    adapter = teachers.TeacherAdapter(probs, outputs="probabilities")
    np.testing.assert_allclose(adapter(NORMALISED), expected, rtol=1e-4, atol=1e-4)


def test_adapter_round_trips(tmp_path):
    adapter = teachers.TeacherAdapter(teachers.build_small_cnn(10, 32), "pixels")
    path = str(tmp_path / "teacher.keras")
    adapter.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(NORMALISED), adapter(NORMALISED), atol=1e-6)


def test_build_teacher_from_file_and_application(tmp_path):
    path = str(tmp_path / "cnn.keras")
    teachers.build_small_cnn(5, 32).save(path)
    assert teachers.build_teacher(path, 5, 32).num_classes == 5
    with pytest.raises(ValueError, match="predicts 5 classes but the dataset has 10"):
        teachers.build_teacher(path, 10, 32)
    application = teachers.build_teacher("mobilenetv3small", 10, 32, weights=None)
    assert tuple(application(NORMALISED).shape) == (2, 10) and not application.trainable
    with pytest.raises(ValueError, match="Unknown teacher"):
        teachers.build_teacher("resnet9000", 10, 32)
    with pytest.raises(ValueError, match="not found"):
        teachers.build_teacher(str(tmp_path / "missing.keras"), 10, 32)
    (tmp_path / "bad.keras").write_text("not a model")
    with pytest.raises(ValueError, match=r"bad.keras is not a .keras model file"):
        teachers.build_teacher(str(tmp_path / "bad.keras"), 10, 32)
    # A truncated copy (an interrupted download): Keras said 'File not found'.
    data = (tmp_path / "cnn.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"^Teacher: .*cut.keras is not a .keras model file"):
        teachers.build_teacher(str(tmp_path / "cut.keras"), 10, 32)


@pytest.mark.parametrize("inputs", [(32, 32, 1), (4,)], ids=["one channel", "not an image"])
def test_a_teacher_file_that_takes_no_rgb_images_is_refused(tmp_path, inputs):
    """A one-channel teacher (natural for digits) was an internal error in the train step."""
    flat = keras.layers.Flatten() if len(inputs) > 1 else keras.layers.Identity()
    teacher = keras.Sequential([keras.Input(inputs), flat, keras.layers.Dense(10)])
    path = str(tmp_path / "gray.keras")
    teacher.save(path)
    with pytest.raises(UserInputError, match=r"takes inputs of shape .* RGB images"):
        teachers.build_teacher(path, 10, 32)


def test_teacher_with_another_input_size_gets_a_resized_batch(tmp_path):
    path = str(tmp_path / "cnn48.keras")
    teachers.build_small_cnn(10, 48).save(path)
    adapter = teachers.build_teacher(path, 10, 32)
    assert adapter.image_size == 48
    assert tuple(adapter(NORMALISED).shape) == (2, 10)


def test_adapter_with_an_image_size_round_trips(tmp_path):
    adapter = teachers.TeacherAdapter(teachers.build_small_cnn(10, 48, width=4), image_size=48)
    adapter(NORMALISED)
    adapter.save(tmp_path / "teacher.keras")
    loaded = keras.models.load_model(tmp_path / "teacher.keras")
    assert loaded.image_size == 48
    np.testing.assert_allclose(loaded(NORMALISED), adapter(NORMALISED), atol=1e-6)


def test_a_teacher_file_takes_the_given_convention_and_outputs(tmp_path):
    mean_path, probs_path = str(tmp_path / "mean.keras"), str(tmp_path / "probs.keras")
    mean_pixel_teacher().save(mean_path)
    adapter = teachers.build_teacher(mean_path, 3, 32, input_convention="pixels")
    np.testing.assert_allclose(adapter(NORMALISED), PIXELS.mean(axis=(1, 2)), rtol=1e-4)
    probs = keras.Sequential([mean_pixel_teacher(), keras.layers.Softmax()])
    probs.save(probs_path)
    adapter = teachers.build_teacher(probs_path, 3, 32, outputs="probabilities")
    np.testing.assert_allclose(np.exp(adapter(NORMALISED)), probs(NORMALISED), rtol=1e-5)


def test_a_saved_adapter_is_the_teacher_as_saved_and_frozen(tmp_path):
    """A fine-tuned teacher (saved as a TeacherAdapter) keeps its convention, frozen."""
    adapter = teachers.TeacherAdapter(teachers.build_small_cnn(10, 32, width=4), "pixels")
    adapter(NORMALISED)
    adapter.save(tmp_path / "tuned.keras")
    teacher = teachers.build_teacher(str(tmp_path / "tuned.keras"), 10, 32)
    assert isinstance(teacher, teachers.TeacherAdapter) and teacher.input_convention == "pixels"
    assert not teacher.trainable and not teacher.trainable_weights


def test_application_below_its_minimum_size_is_refused_before_building():
    with pytest.raises(UserInputError, match="at least 32x32") as caught:
        teachers.build_teacher("mobilenetv2", 10, 16, weights=None)
    assert "--image_size" in str(caught.value) and "teacher=mobilenetv2" in str(caught.value)
    with pytest.raises(UserInputError, match="at least 71x71.*teacher_base=xception"):
        teachers.build_finetune_teacher("xception", 10, 64, weights=None)


def test_failed_weights_download_is_an_environment_error(monkeypatch, tmp_path, capfd):
    def downloading_application(**kwargs):  # its weights are on a closed 127.0.0.1 port
        return keras.utils.get_file("w.h5", closed_port_url() + "/w.h5", cache_dir=tmp_path)

    monkeypatch.setattr(keras.applications, "ResNet50", downloading_application)
    with pytest.raises(UserEnvironmentError, match="Cannot download the imagenet weights"):
        teachers.build_teacher("resnet50", 10, 32, weights="imagenet")
    with pytest.raises(UserEnvironmentError, match="--teacher_weights=PATH"):
        teachers.build_finetune_teacher("resnet50", 10, 32, weights="imagenet")
    out, err = capfd.readouterr()
    assert "Downloading data from" in err and not out  # stdout is for a command's results


def test_other_application_errors_stay_internal(monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(keras.applications, "ResNet50", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        teachers.build_teacher("resnet50", 10, 32, weights="imagenet")


def test_regnety160_the_default_teacher_is_our_regnet():
    """keras.applications has no RegNet: the paper's teacher is `distill.regnet`'s."""
    adapter = teachers.build_teacher("regnety160", 10, 32)
    assert adapter.teacher.name == "regnety_160" and adapter.input_convention == "normalized"
    assert tuple(adapter(NORMALISED).shape) == (2, 10) and not adapter.trainable


def test_regnet_teacher_takes_a_timm_state_dict():
    model = regnet.regnety("regnety_002", num_classes=5)
    state = {}
    for layer in model.layers:  # timm's keys and layouts of the Keras weights
        module = layer.name.replace("_", ".")
        if isinstance(layer, keras.layers.BatchNormalization):
            names = ("weight", "bias", "running_mean", "running_var")
            values = [np.asarray(w) for w in layer.weights]
        elif isinstance(layer, keras.layers.Dense):
            names, values = ("weight", "bias"), [layer.kernel.numpy().T, layer.bias.numpy()]
        elif layer.weights:
            values = [np.transpose(layer.kernel.numpy(), (3, 2, 0, 1))]
            values += [layer.bias.numpy()] if layer.use_bias else []
            names = ("weight", "bias")[: len(values)]
        else:
            continue
        state.update({f"{module}.{n}": v for n, v in zip(names, values, strict=True)})
    adapter = teachers.build_teacher("regnety_002", 5, 32, weights=state)
    np.testing.assert_allclose(adapter(NORMALISED), model(NORMALISED), atol=1e-5)
    with pytest.raises(ValueError, match="predicts 5 classes but the dataset has 10"):
        teachers.build_teacher("regnety_002", 10, 32, weights=state)


def test_keras_applications_convention_needs_an_application():
    with pytest.raises(UserInputError, match="'keras_applications' is for keras.applications"):
        teachers.build_teacher("regnety_002", 10, 32, input_convention="keras_applications")


def test_small_cnn_teacher_drops_apart_on_each_replica_and_round_trips(tmp_path):
    """Its dropout is `ReplicaDropout` (`keras.layers.Dropout` gives every replica one
    mask); a saved teacher loads with the same outputs."""
    from deit_keras.layers import ReplicaDropout

    teacher = teachers.build_small_cnn(10, 32, width=4)
    dropouts = [layer for layer in teacher.layers if "dropout" in type(layer).__name__.lower()]
    assert [type(layer) for layer in dropouts] == [ReplicaDropout], dropouts
    teacher.save(tmp_path / "teacher.keras")
    loaded = keras.models.load_model(tmp_path / "teacher.keras")
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(loaded.predict_on_batch(images), teacher.predict_on_batch(images))


def test_small_cnn_predicts_in_inference_mode_after_few_updates():
    """40 updates (20 epochs of 184 images in batches of 64): with Keras' BatchNorm
    momentum of 0.99 the moving statistics were still mostly their start (0 and 1), and
    the fitted teacher predicted 0.48 in inference mode against 1.0 on batch statistics."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 184)
    images = rng.normal(size=(184, 32, 32, 3)).astype("float32") * 0.5
    images += labels[:, None, None, None] * 0.7 - 1.0  # brightness says the class
    cnn = teachers.build_small_cnn(4, 32)
    cnn.compile(
        optimizer=keras.optimizers.AdamW(4e-3),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    cnn.fit(images, keras.utils.to_categorical(labels, 4), batch_size=64, epochs=20, verbose=0)
    batch_statistics = np.mean(np.argmax(cnn(images, training=True), -1) == labels)
    inference = np.mean(np.argmax(cnn.predict(images, verbose=0), -1) == labels)
    assert batch_statistics > 0.9 and inference > batch_statistics - 0.05


def test_soft_distillation_refuses_a_teacher_that_ends_in_a_softmax():
    """keras.applications' default top (and a Dense(..., activation="softmax")) gives
    probabilities, which soft distillation read as logits and softened again: a wrong
    target, no error. Hard distillation's argmax is the same, so it takes them."""
    from deit_keras.testing import tiny_model

    def head(*top):
        return keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), *top])

    inputs = keras.Input((32, 32, 3))
    softmax_tops = [
        head(keras.layers.Dense(10, activation="softmax")),
        head(keras.layers.Dense(10), keras.layers.Softmax()),
        keras.Model(inputs, keras.ops.softmax(keras.layers.Dense(10)(inputs))),
        keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=10),
    ]
    for teacher in softmax_tops + [teachers.TeacherAdapter(softmax_tops[0], "pixels")]:
        with pytest.raises(UserInputError, match="ends in a softmax.*outputs='probabilities'"):
            tiny_model().compile(teacher=teacher, distillation="soft")
        tiny_model().compile(teacher=teacher, distillation="hard")
    logits_tops = [
        head(keras.layers.Dense(10)),
        teachers.TeacherAdapter(softmax_tops[0], outputs="probabilities"),
        keras.applications.MobileNetV3Small(
            input_shape=(32, 32, 3), weights=None, classes=10, classifier_activation=None
        ),
    ]
    for teacher in logits_tops:
        tiny_model().compile(teacher=teacher, distillation="soft")


def test_a_softmax_at_the_end_of_a_nested_model_is_found():
    """A teacher whose last layer is a whole model (a backbone and head wrapped in one)."""
    for top in ([], [keras.layers.Softmax()]):
        head = [keras.layers.Flatten(), keras.layers.Dense(10)]
        nested = keras.Sequential([keras.Input((32, 32, 3)), *head, *top])
        inputs = keras.Input((32, 32, 3))
        wrapped = keras.Model(inputs, nested(inputs))
        if top:
            with pytest.raises(UserInputError, match="ends in a softmax"):
                teachers.check_teacher_outputs(wrapped, "soft")
        else:
            teachers.check_teacher_outputs(wrapped, "soft")


def test_every_pixel_convention_and_both_of_mean_and_std_are_checked(tmp_path):
    """keras_applications adapters undo the mean/std too; a std alone that differs shifts
    the teacher's colours; float32-rounded ImageNet values are ImageNet's."""
    from deit_keras.data.preprocessing import Preprocessing
    from deit_keras.testing import tiny_model

    teacher = keras.Sequential([mean_pixel_teacher(), keras.layers.Dense(10)])
    halves = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3)
    applications = teachers.TeacherAdapter(teacher, "keras_applications", application="resnet")
    with pytest.raises(UserInputError, match="student_preprocessing="):
        tiny_model(preprocessing=halves).compile(teacher=applications, distillation="hard")
    other_std = Preprocessing(mean=IMAGENET_MEAN, std=(0.5,) * 3)
    with pytest.raises(UserInputError, match="student_preprocessing="):
        tiny_model(preprocessing=other_std).compile(
            teacher=teachers.TeacherAdapter(teacher, "pixels"), distillation="hard"
        )
    rounded = Preprocessing(
        mean=tuple(np.float32(IMAGENET_MEAN)), std=tuple(np.float32(IMAGENET_STD))
    )
    assert rounded.mean != IMAGENET_MEAN  # not the same floats: compared to 1e-6
    tiny_model(preprocessing=rounded).compile(
        teacher=teachers.TeacherAdapter(teacher, "pixels"), distillation="hard"
    )
    # A .keras teacher file read with the pixels convention gets the student's too.
    teachers.build_small_cnn(10, 32).save(tmp_path / "cnn.keras")
    from_file = teachers.build_teacher(
        str(tmp_path / "cnn.keras"), 10, 32, input_convention="pixels", student_preprocessing=halves
    )
    assert from_file.student_preprocessing == halves
