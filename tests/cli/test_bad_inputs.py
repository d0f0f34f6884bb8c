"""Bad inputs: every CLI either works or exits non-zero with one line naming the problem.

Library-level faults (file kinds, image modes, names) are checked in-process;
one subprocess per CLI-specific behaviour (flag parsing, exit status, no
traceback) keeps this file to about a dozen TF imports.
"""

import numpy as np
import pytest
from PIL import Image

from deit_keras.deploy import saving
from deit_keras.errors import UserInputError
from deit_keras.io.images import load_image
from deit_keras.testing import (
    TINY_TRAIN_FLAGS,
    assert_one_line_error,
    run_cli,
    tiny_model,
    user_stderr,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    model = tiny_model(num_classes=3)
    saving.save_model(model, str(root / "good.keras"), class_names=["a", "b", "c"])
    data = (root / "good.keras").read_bytes()
    (root / "truncated.keras").write_bytes(data[: len(data) // 2])
    (root / "empty.keras").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    (root / "flags.cfg").write_text("--epochs=2\nthis line is not a flag\n")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8), "L").save(root / "gray.png")
    Image.fromarray(rng.integers(0, 255, (20, 30, 4), dtype=np.uint8), "RGBA").save(
        root / "rgba.png"
    )
    Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16)).save(root / "gray16.png")
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(root / "one.png")
    return root


# === In-process: library errors ===


@pytest.mark.parametrize(
    "name, words",
    [
        ("missing.keras", "not found"),
        ("empty.keras", "empty"),
        ("truncated.keras", "truncated.keras"),
        ("text.jpg", "not a .keras"),
    ],
)
def test_model_files_that_are_not_models(files, name, words):
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        saving.load_model(str(files / name))


@pytest.mark.parametrize("name", ["gray.png", "rgba.png", "gray16.png", "one.png"])
def test_odd_images_are_converted_to_rgb(files, name):
    image = np.asarray(load_image(str(files / name)))
    assert image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.uint8


def test_text_file_named_jpg_is_rejected(files):
    with pytest.raises(ValueError, match="text.jpg"):
        load_image(str(files / "text.jpg"))


def test_teacher_mismatches_and_non_models(files, tmp_path):
    from deit_keras.distill import teachers

    with pytest.raises(ValueError, match="truncated.keras is not a .keras model file"):
        teachers.build_teacher(str(files / "truncated.keras"), 3, 32)
    cnn = teachers.build_small_cnn(10, 32)
    cnn.save(tmp_path / "cnn10.keras")
    with pytest.raises(ValueError, match="predicts 10 classes but the dataset has 3"):
        teachers.build_teacher(str(tmp_path / "cnn10.keras"), 3, 32)


def test_finetune_from_another_architecture_fails_before_writing(files, tmp_path):
    from deit_keras.testing import digits_config
    from deit_keras.training.runner import run_training

    other = tiny_model(num_classes=10, embed_dim=48, num_heads=3)
    saving.save_model(other, str(tmp_path / "other.keras"))
    config = digits_config(
        tmp_path, distillation_type="none", teacher=None, finetune=str(tmp_path / "other.keras")
    )
    with pytest.raises(ValueError):
        run_training(config)
    assert not (tmp_path / "student.keras").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "name, words",
    [("cnn.keras", "holds a Functional"), ("truncated.keras", "not a .keras model file")],
)
def test_finetune_from_a_keras_file_that_is_not_a_deit(files, tmp_path, name, words):
    from deit_keras.deploy.pretrained import create_model
    from deit_keras.distill.teachers import build_small_cnn

    build_small_cnn(3, 16).save(tmp_path / "cnn.keras")
    path = str((tmp_path if name == "cnn.keras" else files) / name)
    with pytest.raises(UserInputError) as caught:
        create_model("deit_tiny_patch16_224", pretrained=path, num_classes=3, image_size=16)
    message = str(caught.value)
    assert path in message and words in message and "cache" not in message, message


# === Subprocesses: what only a CLI does ===


def test_train_cli_bad_flags(files, tmp_path):
    assert_one_line_error(run_cli("train", "--no_such_flag=1"), "no_such_flag")
    assert_one_line_error(run_cli("train", f"--flagfile={files / 'flags.cfg'}"), "this line")
    assert_one_line_error(
        run_cli(
            "train",
            "--dataset=nope_dataset",
            "--epochs=1",
            f"--data_dir={tmp_path}",
            f"--model_dir={tmp_path / 'r'}",
        ),
        "nope_dataset",
    )
    process = run_cli("train", "--epochs=0", f"--model_dir={tmp_path / 'r2'}")
    assert_one_line_error(process, "epochs must be positive")
    assert not (tmp_path / "r2").exists()


def test_train_cli_teacher_that_is_not_a_model(files, tmp_path):
    from deit_keras.data.pipeline import dataset_info

    dataset_info("digits", str(tmp_path / "tfds"))  # tfds prints progress while preparing
    process = run_cli(
        "train",
        "--dataset=digits",
        f"--data_dir={tmp_path / 'tfds'}",
        "--image_size=16",
        "--patch_size=8",
        "--embed_dim=16",
        "--depth=1",
        "--num_heads=2",
        "--epochs=1",
        f"--teacher={files / 'truncated.keras'}",
        f"--model_dir={tmp_path / 'r'}",
        f"--output={tmp_path / 'out.keras'}",
    )
    assert_one_line_error(process, "truncated.keras is not a .keras model file")
    assert not (tmp_path / "out.keras").exists()


def test_train_cli_teacher_weights_offline(tmp_path):
    from deit_keras.testing import prepare_digits
    from deit_keras.testing_server import closed_port_url

    prepare_digits(tmp_path)
    # The weights URL is reached through a proxy on a closed port: refused, never online.
    proxy = {name: closed_port_url() for name in ("https_proxy", "HTTPS_PROXY")}
    no_proxy = {"no_proxy": "", "NO_PROXY": "", "KERAS_HOME": str(tmp_path / "keras")}
    process = run_cli(
        "train",
        *TINY_TRAIN_FLAGS,
        "--distillation_type=hard",
        "--teacher=resnet50",
        f"--data_dir={tmp_path / 'tfds'}",
        f"--model_dir={tmp_path / 'r'}",
        f"--output={tmp_path / 'out.keras'}",
        env=proxy | no_proxy,
    )
    assert process.returncode == 2 and "Traceback" not in process.stderr, process.stderr
    *progress, error = user_stderr(process)  # Keras' progress line, on stderr, then the error
    assert error.startswith("error: Cannot download the imagenet weights of the teacher resnet50")
    assert all(line.startswith("Downloading data from") for line in progress), progress
    assert "Downloading" not in process.stdout
    assert not (tmp_path / "out.keras").exists()


def test_evaluate_cli_truncated_model(files):
    process = run_cli("evaluate", f"--model_path={files / 'truncated.keras'}", "--dataset=digits")
    assert_one_line_error(process, "truncated.keras")


def test_predict_cli_missing_image_and_odd_images(files):
    process = run_cli("predict", f"--model_path={files / 'good.keras'}", str(files / "nope.png"))
    assert_one_line_error(process, "nope.png")
    result = run_cli(
        "predict",
        f"--model_path={files / 'good.keras'}",
        *(str(files / n) for n in ("gray.png", "rgba.png", "gray16.png", "one.png")),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(n in result.stdout for n in ("gray.png", "rgba.png", "gray16.png", "one.png"))


def test_export_cli_empty_model(files, tmp_path):
    process = run_cli(
        "export", f"--model_path={files / 'empty.keras'}", f"--output={tmp_path / 'out'}"
    )
    assert_one_line_error(process, "empty")
    assert not (tmp_path / "out").exists()


def test_convert_cli_missing_checkpoint_and_unknown_model(files, tmp_path):
    process = run_cli(
        "convert",
        f"--checkpoint={files / 'missing.pth'}",
        "--model=deit_tiny_patch16_224",
        f"--output={tmp_path / 'x.keras'}",
    )
    assert_one_line_error(process, "missing.pth")
    process = run_cli(
        "convert",
        f"--checkpoint={files / 'missing.pth'}",
        "--model=deit_huge",
        f"--output={tmp_path / 'x.keras'}",
    )
    assert_one_line_error(process, "deit_huge")
    assert not (tmp_path / "x.keras").exists()


def test_visualize_cli_text_image(files, tmp_path):
    process = run_cli(
        "visualize",
        f"--model_path={files / 'good.keras'}",
        f"--output={tmp_path / 'v.png'}",
        str(files / "text.jpg"),
    )
    assert_one_line_error(process, "text.jpg")
    assert not (tmp_path / "v.png").exists()


REPLACES = "would replace"
NOT_JSON = "--output writes JSON"  # predict's --output under a .keras or .png name


@pytest.mark.parametrize(
    "command, arguments, replaced, said",
    [
        ("predict", ["--model_path={m}", "--output={m}", "{i}"], "{m}", NOT_JSON),
        (
            "predict",
            ["--model_path={m}", "--output={m}.classes.json", "{i}"],
            "{m}.classes.json",
            REPLACES,
        ),
        ("predict", ["--model_path={m}", "--output={i}", "{i}"], "{i}", NOT_JSON),
        ("evaluate", ["--model_path={m}", "--dataset=digits", "--output={m}"], "{m}", REPLACES),
        ("visualize", ["--model_path={m}", "--output={i}", "{i}"], "{i}", REPLACES),
    ],
)
def test_an_output_never_replaces_an_input(files, tmp_path, command, arguments, replaced, said):
    """predict, evaluate and visualize wrote over the model or the image they read."""
    names = {"m": str(tmp_path / "model.keras"), "i": str(tmp_path / "photo.png")}
    for source, copy in (("good.keras", "model.keras"), ("one.png", "photo.png")):
        (tmp_path / copy).write_bytes((files / source).read_bytes())
    (tmp_path / "model.keras.classes.json").write_text('["a", "b", "c"]')
    replaced = replaced.format(**names)
    before = open(replaced, "rb").read()
    process = run_cli(command, *(argument.format(**names) for argument in arguments))
    assert_one_line_error(process, said)
    assert open(replaced, "rb").read() == before
