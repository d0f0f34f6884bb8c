"""Dirty image folders: bad files skipped (listed) or fatal (named), odd ones converted.

One folder holds every case of issue #15: a truncated JPEG, a 0-byte file, a
text file named .png, a non-image file, CMYK and 16-bit images, a grayscale
JPEG, a 1x1 and a 12000x9000 image.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deit_keras.data import image_check
from deit_keras.data.augment_config import AugmentConfig
from deit_keras.data.pipeline import dataset_info, make_dataset
from deit_keras.testing import assert_one_line_error, tiny_model

BAD = {"0_truncated.jpg": "Invalid JPEG data", "1_empty.jpg": "empty", "2_text.png": "Unknown"}
CONVERTED = ("cmyk.jpg", "gray16.png", "gray.jpg", "one.png", "huge.jpg")


def _write_class(directory, rng, count=3):
    directory.mkdir(parents=True)
    for index in range(count):
        pixels = rng.integers(0, 256, (20 + index, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / f"good{index}.jpg")


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    """folder:ROOT with train/{ant,bee}, val/{ant,bee}; every fault in train/ant."""
    root = tmp_path_factory.mktemp("dirty")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("ant", "bee"):
            _write_class(root / split / name, rng)
    ant = root / "train" / "ant"
    whole = (ant / "good0.jpg").read_bytes()
    (ant / "0_truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (ant / "1_empty.jpg").write_bytes(b"")
    (ant / "2_text.png").write_text("this is not a PNG")
    (ant / "notes.txt").write_text("labelled by hand, 2024")
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[:8] = (200, 30, 60)
    colour[8:] = (20, 180, 90)
    Image.fromarray(colour).convert("CMYK").save(ant / "cmyk.jpg", quality=95)
    Image.fromarray(np.full((10, 12), 51400, np.uint16)).save(ant / "gray16.png")  # 200 in 8 bits
    Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8)).save(ant / "gray.jpg")
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(ant / "one.png")
    Image.new("RGB", (12000, 9000), (10, 100, 200)).save(ant / "huge.jpg", quality=50)
    return root


def test_skip_lists_bad_and_non_image_files_and_keeps_converted_ones(dirty):
    info = dataset_info(f"folder:{dirty}")
    ant = dirty / "train" / "ant"
    skipped = dict(info.skipped)
    assert sorted(skipped) == sorted(str(ant / name) for name in [*BAD, "notes.txt"])
    for name, words in BAD.items():
        assert words in skipped[str(ant / name)], skipped
    assert skipped[str(ant / "notes.txt")] == "not an image file name"
    assert info.num_train_examples == 3 + len(CONVERTED) + 3 and info.num_eval_examples == 6


@pytest.mark.parametrize("split", ["train", "eval"])
def test_skipped_folder_goes_through_the_pipeline(dirty, split):
    training = split == "train"
    dataset = make_dataset(
        f"folder:{dirty}",
        split,
        image_size=16,
        batch_size=4,
        training=training,
        seed=0,
        augment=AugmentConfig(rand_augment_ops=0, reprob=0.0, mixup_prob=0.0),
    )
    images = [x.numpy() for x, _ in dataset]
    count = sum(len(batch) for batch in images)
    assert count == (8 if training else 6)  # 11 train images: 2 whole batches of 4
    assert all(batch.shape[1:] == (16, 16, 3) and np.isfinite(batch).all() for batch in images)


def test_odd_images_decode_to_rgb_as_pil_sees_them(dirty):
    from deit_keras.data.transforms import decode_image

    ant = dirty / "train" / "ant"
    cmyk = decode_image((ant / "cmyk.jpg").read_bytes()).numpy()
    assert np.abs(cmyk[0, 0].astype(int) - (200, 30, 60)).max() <= 3
    assert np.abs(cmyk[-1, -1].astype(int) - (20, 180, 90)).max() <= 3
    assert (decode_image((ant / "gray16.png").read_bytes()).numpy() == 200).all()
    assert decode_image((ant / "one.png").read_bytes()).shape == (1, 1, 3)
    assert decode_image((ant / "gray.jpg").read_bytes()).shape == (20, 24, 3)


def test_fail_names_the_first_bad_file_in_one_line(dirty):
    with pytest.raises(image_check.BadImageError) as caught:
        dataset_info(f"folder:{dirty}", bad_images="fail")
    message = str(caught.value)
    assert "\n" not in message
    assert str(dirty / "train" / "ant" / "0_truncated.jpg") in message
    assert "3 bad file(s)" in message and "--bad_images=skip" in message


def test_a_file_that_changes_is_checked_again(tmp_path):
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for name in ("a", "b"):
            _write_class(tmp_path / split / name, rng, count=2)
    victim = tmp_path / "train" / "a" / "good1.jpg"
    assert dataset_info(f"folder:{tmp_path}").skipped == ()
    victim.write_bytes(victim.read_bytes()[:40])  # new size and mtime: not the cached result
    info = dataset_info(f"folder:{tmp_path}")
    assert [path for path, _ in info.skipped] == [str(victim)]
    with pytest.raises(image_check.BadImageError, match="good1.jpg"):
        dataset_info(f"folder:{tmp_path}", bad_images="fail")


def test_empty_class_folder_is_one_line_error(tmp_path):
    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        _write_class(tmp_path / split / "ant", rng, count=1)
        (tmp_path / split / "bee").mkdir()
    (tmp_path / "train" / "bee" / "broken.jpg").write_bytes(b"\xff\xd8\xff")  # skipped: empty
    with pytest.raises(ValueError, match=r"\['bee'\] .* hold no readable image"):
        dataset_info(f"folder:{tmp_path}")


def test_empty_val_class_folder_is_allowed(tmp_path):
    rng = np.random.default_rng(3)
    for name in ("ant", "bee"):
        _write_class(tmp_path / "train" / name, rng, count=1)
    _write_class(tmp_path / "val" / "ant", rng, count=1)
    (tmp_path / "val" / "bee").mkdir()
    info = dataset_info(f"folder:{tmp_path}")
    assert info.num_classes == 2 and info.num_eval_examples == 1


def test_train_and_val_class_folders_that_differ(tmp_path):
    rng = np.random.default_rng(4)
    for name in ("ant", "bee", "cat"):
        _write_class(tmp_path / "train" / name, rng, count=1)
    for name in ("ant", "bee", "dog"):
        _write_class(tmp_path / "val" / name, rng, count=1)
    with pytest.raises(ValueError) as caught:
        dataset_info(f"folder:{tmp_path}")
    message = str(caught.value)
    assert "only in train: ['cat']" in message and "only in val: ['dog']" in message, message


def test_images_in_sub_folders_of_a_class_folder_are_listed_as_skipped(tmp_path, caplog):
    from deit_keras.training.runner import report_skipped

    rng = np.random.default_rng(6)
    for split in ("train", "val"):
        for name in ("a", "b"):
            _write_class(tmp_path / split / name, rng, count=1)
    _write_class(tmp_path / "train" / "a" / "sub", rng, count=1)
    _write_class(tmp_path / "train" / "a" / "sub" / "deeper", rng, count=1)
    _write_class(tmp_path / "train" / "a" / ".cache", rng, count=1)  # hidden: not listed
    info = dataset_info(f"folder:{tmp_path}")
    sub = tmp_path / "train" / "a" / "sub"
    reason = "in a sub-folder of a class folder (class folders do not nest)"
    assert list(info.skipped) == [
        (str(sub / "deeper" / "good0.jpg"), reason),
        (str(sub / "good0.jpg"), reason),
    ]
    assert info.num_train_examples == 2
    with caplog.at_level("WARNING"):
        report_skipped(info, str(tmp_path / "run"))
    assert "0 file(s) that do not decode, 0 in image formats" in caplog.text
    assert "and 2 that are not images or are in sub" in caplog.text


def test_single_class_folder_is_one_line_error(tmp_path):
    rng = np.random.default_rng(7)
    for split in ("train", "val"):
        _write_class(tmp_path / split / "a", rng, count=2)
    with pytest.raises(ValueError) as caught:
        dataset_info(f"folder:{tmp_path}")
    message = str(caught.value)
    assert "needs at least 2 classes. Received: 1 class folder 'a' in" in message, message
    assert str(tmp_path / "train") in message and "\n" not in message


def test_unknown_policy_refused():
    with pytest.raises(ValueError, match="bad_images must be one of"):
        dataset_info("digits", bad_images="ignore")


@pytest.fixture(scope="module")
def dirty_val(dirty, tmp_path_factory):
    """The dirty train/ as val/ too: bad files in the evaluated split."""
    root = tmp_path_factory.mktemp("dirty_val")
    shutil.copytree(dirty / "train", root / "train")
    shutil.copytree(dirty / "train", root / "val")
    return root


def test_evaluate_fail_names_the_file(dirty_val):
    from deit_keras.inference.evaluate import evaluate_on_dataset

    model = tiny_model(num_classes=2, image_size=16, patch_size=8)
    with pytest.raises(image_check.BadImageError, match="0_truncated.jpg"):
        evaluate_on_dataset(model, f"folder:{dirty_val}", batch_size=4, bad_images="fail")


@pytest.mark.large  # ~20 s on 2 shared cores; fast variant: test_evaluate_fail_names_the_file
def test_evaluate_skips_and_reports(dirty_val):
    from deit_keras.inference.evaluate import evaluate_on_dataset

    model = tiny_model(num_classes=2, image_size=16, patch_size=8)
    summary = evaluate_on_dataset(model, f"folder:{dirty_val}", batch_size=4)
    assert summary["num_examples"] == 3 + len(CONVERTED) + 3
    assert len(summary["skipped"]) == len(BAD) + 1  # val/'s: train/ is not read


def test_run_reports_skipped_files_in_one_warning_and_a_list(dirty, tmp_path, caplog):
    from deit_keras.training.runner import report_skipped

    info = dataset_info(f"folder:{dirty}")
    with caplog.at_level("WARNING"):
        path = report_skipped(info, str(tmp_path))
    listed = open(path).read().splitlines()
    assert [line.split("\t") for line in listed] == [list(item) for item in info.skipped]
    warnings = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(warnings) == 1 and path in warnings[0], warnings
    assert "3 file(s) that do not decode, 0 in image formats" in warnings[0]
    assert "and 1 that are not images" in warnings[0]
    assert report_skipped(dataset_info("folder:" + str(dirty_clean(tmp_path))), "x") is None


def dirty_clean(root):
    """A clean folder dataset under `root/clean`."""
    rng = np.random.default_rng(5)
    for split in ("train", "val"):
        for name in ("a", "b"):
            _write_class(root / "clean" / split / name, rng, count=1)
    return root / "clean"


TINY_RUN = [
    "--image_size=16",
    "--patch_size=8",
    "--embed_dim=16",
    "--depth=1",
    "--num_heads=2",
    "--batch_size=4",
    "--epochs=1",
    "--steps_per_epoch=2",
    "--warmup_epochs=0",
    "--repeated_aug=1",
    "--rand_augment_ops=0",
    "--reprob=0.0",
    "--mixup_prob=0.0",
    "--distillation_type=none",
    "--export_savedmodel=false",
    "--summary_every=0",
    "--jit_compile=false",
    "--progress=none",
]


def _train(dirty, tmp_path, *extra):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "deit_keras.train",
            *TINY_RUN,
            f"--dataset=folder:{dirty}",
            f"--model_dir={tmp_path / 'run'}",
            f"--output={tmp_path / 'out.keras'}",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_train_cli_bad_images_fail_is_one_line_exit_2(dirty, tmp_path):
    process = _train(dirty, tmp_path, "--bad_images=fail")
    assert_one_line_error(process, str(dirty / "train" / "ant" / "0_truncated.jpg"))
    assert "JPEG library" not in process.stderr  # libjpeg's own line is silenced
    assert not (tmp_path / "out.keras").exists()


def test_a_refused_run_writes_no_list_of_skipped_files(dirty, tmp_path):
    # Refused when the teacher is built (keras.applications needs 32 px), after the data.
    process = _train(
        dirty, tmp_path, "--distillation_type=hard", "--teacher=resnet50", "--teacher_weights=none"
    )
    assert_one_line_error(process, "at least 32x32")
    assert not (tmp_path / "run" / "skipped_images.txt").exists()


@pytest.mark.large  # ~30 s on 2 shared cores; fast variant: test_run_reports_skipped_files...
def test_train_cli_default_skips_with_one_warning_and_a_list(dirty, tmp_path):
    process = _train(dirty, tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    warnings = [line for line in process.stderr.splitlines() if "left out" in line]
    assert len(warnings) == 1 and "3 file(s) that do not decode" in warnings[0], warnings
    assert "JPEG library" not in process.stderr
    listed = (tmp_path / "run" / "skipped_images.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in listed) == sorted(
        str(dirty / "train" / "ant" / name) for name in [*BAD, "notes.txt"]
    )
    assert json.loads((tmp_path / "run" / "results.json").read_text())["epochs"] == 1
