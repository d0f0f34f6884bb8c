"""`deit_keras.predict` for a 1000-class model saved without names: ImageNet names, --json."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from deit_keras.data import labels
from deit_keras.deploy import saving
from deit_keras.inference.predict import predict_images
from deit_keras.io.images import load_image
from deit_keras.testing import run_cli, tiny_model, user_stderr

LINE = re.compile(r"  (.+) (\d\.\d\d)")


@pytest.fixture(scope="module")
def imagenet_model(tmp_path_factory):
    """A tiny 1000-class model saved without class names, and two images: `(path, images)`."""
    root = tmp_path_factory.mktemp("predict")
    path = str(root / "tiny1000.keras")
    saving.save_model(tiny_model(num_classes=1000), path)
    rng = np.random.default_rng(0)
    images = []
    for index, size in enumerate([(40, 60), (7, 5)]):
        images.append(str(root / f"image{index}.png"))
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(images[-1])
    return path, images


def test_predict_text_shows_imagenet_names(imagenet_model):
    path, images = imagenet_model
    process = run_cli("predict", f"--model_path={path}", "--top_k=3", *images)
    assert process.returncode == 0, process.stderr
    lines = process.stdout.splitlines()
    assert len(lines) == 2 * 4 and [lines[0], lines[4]] == images
    names = set(labels.imagenet_class_names())
    for line in lines[1:4] + lines[5:8]:
        match = LINE.fullmatch(line)
        assert match and match.group(1) in names, line
    assert any("ImageNet" in line for line in user_stderr(process))


def test_predict_json_is_one_document_on_stdout(imagenet_model, tmp_path):
    path, images = imagenet_model
    output = tmp_path / "predictions.json"
    process = run_cli("predict", f"--model_path={path}", "--json", f"--output={output}", *images)
    assert process.returncode == 0, process.stderr
    records = json.loads(process.stdout)
    assert records == json.loads(output.read_text())
    assert [record["file"] for record in records] == images
    names = labels.imagenet_class_names()
    for record in records:
        top = record["predictions"]
        assert len(top) == 5
        assert all(set(t) == {"class_index", "class_name", "probability"} for t in top)
        assert all(t["class_name"] == names[t["class_index"]] for t in top)
        probabilities = [t["probability"] for t in top]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(0 <= p <= 1 for p in probabilities) and sum(probabilities) <= 1 + 1e-6


def test_output_is_written_before_stdout_whose_reader_has_gone(imagenet_model, tmp_path):
    """`deit-predict ... --output FILE | head -1`: the file is there, whatever stdout does."""
    import os
    import subprocess
    import sys

    path, images = imagenet_model
    output = tmp_path / "predictions.json"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone: printing raises BrokenPipeError
    try:
        subprocess.run(
            [sys.executable, "-m", "deit_keras.predict", f"--model_path={path}"]
            + [f"--output={output}", *images],
            stdout=write_end,
            stderr=subprocess.DEVNULL,
            timeout=300,
        )
    finally:
        os.close(write_end)
    assert [record["file"] for record in json.loads(output.read_text())] == images


def test_a_folder_predicts_its_images_and_skip_leaves_out_the_bad_ones(imagenet_model, tmp_path):
    """A folder was refused ("give image files"), and one bad file among thousands failed
    the whole command with no way to go on."""
    path, images = imagenet_model
    folder = tmp_path / "photos"
    (folder / "b").mkdir(parents=True)
    for name, source in (("z.png", images[0]), ("b/a.PNG", images[1])):
        (folder / name).write_bytes(open(source, "rb").read())
    (folder / "notes.txt").write_text("not an image name: not read")
    # Hidden, as training's folders leave them out: macOS's junk beside copied photos.
    (folder / "._z.png").write_bytes(b"AppleDouble")
    (folder / ".thumbs").mkdir()
    (folder / ".thumbs" / "t.png").write_bytes(open(images[0], "rb").read())
    process = run_cli("predict", f"--model_path={path}", "--json", str(folder))
    assert process.returncode == 0, process.stderr
    assert len(json.loads(process.stdout)) == 2
    for index in range(4):
        (folder / f"broken{index}.jpg").write_bytes(b"not a jpeg")
    process = run_cli("predict", f"--model_path={path}", "--json", str(folder))
    assert process.returncode == 2 and "broken0.jpg" in process.stderr, process.stderr
    process = run_cli(
        "predict",
        f"--model_path={path}",
        "--json",
        "--bad_images=skip",
        str(folder),
        str(folder / "z.png"),  # also in the folder: predicted once
    )
    assert process.returncode == 0, process.stderr
    files = [record["file"] for record in json.loads(process.stdout)]
    assert files == [str(folder / "b" / "a.PNG"), str(folder / "z.png")]
    (skipped,) = [line for line in user_stderr(process) if line.startswith("skipped")]
    assert skipped.startswith("skipped 4 of 6 files:")
    assert all(f"broken{index}.jpg" in skipped for index in range(4)), skipped  # each named
    (tmp_path / "empty").mkdir()
    process = run_cli("predict", f"--model_path={path}", str(tmp_path / "empty"))
    assert process.returncode == 2 and "a folder without image files" in process.stderr


def test_predict_crops_with_crop_pct(imagenet_model):
    """--crop_pct replaces the model's crop fraction (a 40x60 image: the crops differ)."""
    path, images = imagenet_model
    model, _ = saving.load_model(path, compile=False)
    image = load_image(images[0])
    [whole] = predict_images(model, [image], crop_pct=1.0, top_k=5)
    [own] = predict_images(model, [image], top_k=5)
    assert [p for *_, p in whole] != pytest.approx([p for *_, p in own], rel=1e-4)
    process = run_cli("predict", f"--model_path={path}", "--json", "--crop_pct=1.0", images[0])
    assert process.returncode == 0, process.stderr
    [record] = json.loads(process.stdout)
    got = [(p["class_index"], p["probability"]) for p in record["predictions"]]
    assert [i for i, _ in got] == [i for _, i, _ in whole]
    assert [p for _, p in got] == pytest.approx([p for *_, p in whole], rel=1e-4)
