"""`--model NAME --pretrained` in predict, evaluate and export, served from 127.0.0.1."""

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from deit_keras.deploy import pretrained
from deit_keras.testing import assert_one_line_error, hf_reference, run_cli, user_stderr
from deit_keras.testing_server import closed_port_url, serve_files

torch = pytest.importorskip("torch")

NAME = "deit_tiny_distilled_patch16_224"


@pytest.fixture(scope="module")
def checkpoint():
    """A random-weight HF DeiT-Ti distilled as an official-layout `.pth`: `(filename, bytes)`."""
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save({"model": hf_reference(NAME).eval().state_dict()}, buffer)
    body = buffer.getvalue()
    return f"{NAME}-{hashlib.sha256(body).hexdigest()[:8]}.pth", body


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "cat.png"
    pixels = np.random.default_rng(0).integers(0, 256, (180, 240, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def test_predict_downloads_once_then_runs_offline(checkpoint, image, tmp_path):
    filename, body = checkpoint
    env = {pretrained.CACHE_ENV: str(tmp_path / "cache")}
    with serve_files({filename: body}) as base:
        weights = f"--pretrained_weights={base}/files/{filename}"
        args = ["--model", NAME, "--pretrained", weights, "--json", image]
        first = run_cli("predict", *args, env=env)
    assert first.returncode == 0, first.stderr
    records = json.loads(first.stdout)
    assert [record["file"] for record in records] == [image]
    top = records[0]["predictions"]
    assert len(top) == 5 and top[0]["class_name"]  # ImageNet names for 1000 classes
    offline = run_cli("predict", *args, env=env)  # the server is gone: the cache answers
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout) == records


def test_predict_with_a_local_checkpoint_of_other_classes_uses_its_heads(image, tmp_path):
    """A 10-class checkpoint through `--pretrained_weights=FILE`: its own heads answer (they
    were replaced by a random 1000-class head, shown with ImageNet's names)."""
    torch.manual_seed(2)
    hf_model = hf_reference(NAME, num_classes=10).eval()
    path = tmp_path / "ten.pth"
    torch.save({"model": hf_model.state_dict()}, path)
    process = run_cli(
        "predict",
        f"--model={NAME}",
        "--pretrained",
        f"--pretrained_weights={path}",
        "--json",
        image,
    )
    assert process.returncode == 0, process.stderr
    top = json.loads(process.stdout)[0]["predictions"]
    assert len(top) == 5 and all(entry["class_name"].startswith("class_") for entry in top)
    assert len({entry["class_index"] for entry in top}) == 5
    assert max(entry["class_index"] for entry in top) < 10


def test_predict_refuses_a_checkpoint_without_heads_in_one_line(image, tmp_path):
    """A backbone's fresh heads predicted ImageNet names at random."""
    torch.manual_seed(3)
    state = hf_reference(NAME).state_dict()
    path = tmp_path / "backbone.pth"
    heads = ("cls_classifier", "distillation_classifier")
    torch.save({k: v for k, v in state.items() if not k.startswith(heads)}, path)
    process = run_cli(
        "predict", f"--model={NAME}", "--pretrained", f"--pretrained_weights={path}", image
    )
    assert_one_line_error(process, "have no classification heads")


def test_export_a_named_model(checkpoint, tmp_path):
    filename, body = checkpoint
    env = {pretrained.CACHE_ENV: str(tmp_path / "cache")}
    out = tmp_path / "exported"
    with serve_files({filename: body}) as base:
        process = run_cli(
            "export",
            f"--model={NAME}",
            "--pretrained",
            f"--pretrained_weights={base}/files/{filename}",
            f"--output={out}",
            env=env,
        )
    assert process.returncode == 0, process.stderr
    serving = json.loads((out / "deit_serving.json").read_text())
    assert serving["class_names_source"] == "imagenet" and serving["num_classes"] == 1000


def test_unreachable_mirror_is_one_line(image, tmp_path):
    env = {pretrained.CACHE_ENV: str(tmp_path / "cache"), pretrained.MIRROR_ENV: closed_port_url()}
    process = run_cli("predict", f"--model={NAME}", "--pretrained", image, env=env)
    assert process.returncode == 2 and "Traceback" not in process.stderr, process.stderr
    *progress, error = user_stderr(process)
    assert error.startswith("error: Cannot download") and NAME in error, error
    assert all(line.startswith("Downloading data from") for line in progress), progress
    assert not list((tmp_path / "cache").rglob("*.pth"))


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([f"--model={NAME}"], "--pretrained"),
        ([], "--model_path"),
        ([f"--model={NAME}", "--pretrained", "--model_path=IMAGE"], "not both"),
        (["--pretrained_weights=hf", "--model_path=IMAGE"], "--pretrained_weights is for"),
        (["--model=deit_huge", "--pretrained"], "deit_huge"),
    ],
)
def test_bad_model_choice_is_one_line(args, fragment, image):
    args = [arg.replace("IMAGE", image) for arg in args]  # an existing file: past the path check
    assert_one_line_error(run_cli("predict", *args, image), fragment)
