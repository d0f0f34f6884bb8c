"""Helpers the test suite shares: tiny models, round-trip checks, CLI runs.

Part of the package (as keras-hub's `test_case.py`) so tests import it by
name, never through the repository root on `sys.path`.
"""

import dataclasses
import os
import re
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from deit_keras.data.augment_config import AugmentConfig
from deit_keras.data.constants import IMAGENET_MEAN, IMAGENET_STD
from deit_keras.deploy.pretrained import create_model
from deit_keras.inference.torch_reference import hf_config_kwargs
from deit_keras.models import cpu_predict
from deit_keras.models.variants import get_variant
from deit_keras.training.config import TrainConfig
from deit_keras.training.custom_loop import distribute_train_dataset, fit_distributed
from deit_keras.training.optim import create_optimizer

TINY = dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def tiny_model(distilled=True, num_classes=10, **overrides):
    name = "deit_tiny_distilled_patch16_224" if distilled else "deit_tiny_patch16_224"
    config = {**TINY, **overrides}
    return create_model(name, num_classes=num_classes, **config)


def random_images(batch=2, size=32, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype("float32")


def op_by_op(model, images):
    """A token classifier's inference logits from its ops run eagerly, never a compiled step.

    `model(images)` on a CPU runs the compiled predict step
    (`TokenClassifier._eager_inference_step`); this is the reference compiled
    paths are checked against.

    Args:
        model: a `TokenClassifier`.
        images: `[B, H, W, C]` array or tensor.

    Returns:
        `[B, classes]` tensor: the mean of the heads, as `model(images)`.
    """
    with cpu_predict.op_by_op():
        return model(images, training=False)


def assert_layer_round_trip(layer, inputs):
    """get_config -> from_config rebuilds a layer giving, with the same weights, the same output."""
    expected = keras.ops.convert_to_numpy(layer(inputs))
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config)
    clone(inputs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(inputs)), expected)
    assert clone.get_config() == layer.get_config()
    assert_frozen_round_trip(layer, inputs)


def assert_frozen_round_trip(layer, inputs):
    """A frozen `layer` rebuilt from its config (as `load_model` and `clone_model` do)
    has no trainable variable: a model holding it would otherwise train it."""
    layer.trainable = False
    try:
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    finally:
        layer.trainable = True
    clone(inputs)
    assert not clone.trainable
    assert not [variable.path for variable in clone.variables if variable.trainable]


def batches(count=3, batch=4, seed=1):
    """`count` batches of random 32x32 images with one-hot targets over 10 classes."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(count * batch, 32, 32, 3)).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, count * batch)]
    return images, labels


def compiled(model, teacher, distillation="hard", **kwargs):
    """`model` compiled with a small AdamW schedule and the given objective."""
    model.compile(
        optimizer=create_optimizer(
            base_lr=1e-3, global_batch_size=512, steps_per_epoch=3, epochs=2, warmup_epochs=0
        ),
        teacher=teacher,
        distillation=distillation,
        **kwargs,
    )
    return model


# A line of TensorFlow's C++ logging (absl's format, naming a C++ source file), or one of
# the two start-up lines without that prefix. `cli.launch` holds them back by default.
TF_CPP_LINE = re.compile(
    r"^([IWEF]\d{4} \S+\s+\d+ \S+\.(cc|h|cpp):\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog"
    r"|To enable the following instructions)"
)


def run_cli(module, *args, timeout=300, env=None):
    """Runs `python -m deit_keras.<module> args...`; returns the CompletedProcess.

    `env` adds environment variables to this process's. `TF_CPP_MIN_LOG_LEVEL`
    is left out unless `env` sets it, so the command starts as a user's does.
    """
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", f"deit_keras.{module}", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def user_stderr(process):
    """The non-blank lines of stderr (a command prints no TensorFlow start-up lines)."""
    return [line for line in process.stderr.splitlines() if line.strip()]


def assert_one_line_error(process, *fragments):
    """Exit 2, exactly one `error: ...` line naming each fragment, no traceback."""
    assert process.returncode == 2, process.stderr
    lines = user_stderr(process)
    assert len(lines) == 1 and lines[0].startswith("error: "), process.stderr
    assert "Traceback" not in process.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def digits_config(tmp_path, **changes):
    """experiments/digits.cfg, reduced to run in CI."""
    config = TrainConfig(
        model="deit_tiny_distilled_patch16_224",
        dataset="digits",
        data_dir=str(tmp_path / "tfds"),
        image_size=32,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=4,
        crop_pct=1.0,
        drop_path=0.0,
        batch_size=32,
        epochs=10,
        lr=16e-3,
        warmup_epochs=1,
        repeated_aug=1,
        augment=AugmentConfig(
            rand_augment_ops=0, reprob=0.0, mixup_prob=0.0, hflip=0.0, crop_scale_min=0.9
        ),
        distillation_type="hard",
        teacher=str(tmp_path / "teacher.keras"),
        teacher_epochs=8,
        model_dir=str(tmp_path / "run"),
        output=str(tmp_path / "student.keras"),
        export_savedmodel=False,
        progress="none",
    )
    return dataclasses.replace(config, **changes)


# Global batch and steps of `fixed_batch_training`.
GLOBAL_BATCH, STEPS = 8, 4


def fixed_batch_training(strategy):
    """STEPS steps of SGD on fixed global batches; each input pipeline reads its slice."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(STEPS * GLOBAL_BATCH, 32, 32, 3)).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, STEPS * GLOBAL_BATCH)]

    def dataset_fn(input_context, batch_size):
        start = input_context.input_pipeline_id * batch_size
        ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(GLOBAL_BATCH)
        return ds.map(lambda x, y: (x[start : start + batch_size], y[start : start + batch_size]))

    keras.utils.set_random_seed(1)
    with strategy.scope():
        model = tiny_model(drop_path_rate=0.0)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
    dataset = distribute_train_dataset(strategy, dataset_fn, GLOBAL_BATCH)
    history = fit_distributed(model, strategy, dataset, epochs=STEPS, steps_per_epoch=1, verbose=0)
    return history.history["loss"], model.get_weights()


def hf_reference(name, num_classes=1000):
    """The Hugging Face model of the same variant, randomly initialised (never downloaded)."""
    import pytest

    transformers = pytest.importorskip("transformers")
    variant = get_variant(name)
    kwargs = hf_config_kwargs(variant, num_classes, attn="eager")
    if variant.distilled:
        return transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**kwargs))
    return transformers.ViTForImageClassification(transformers.ViTConfig(**kwargs))


def timm_reference(name, seed=0, **kwargs):
    """timm's model `name` (never downloaded) with every parameter random, so that a
    mis-mapped weight, even a LayerScale of 1e-6, changes the logits.

    Needs the torchvision stub of tests/conftest.py (timm imports torchvision)."""
    import pytest

    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    return model


def sample_photos(size):
    """scikit-learn's two bundled photos, centre-cropped, resized, ImageNet-normalised."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = []
    for photo in load_sample_images().images:
        height, width, _ = photo.shape
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        pixels = np.asarray(crop.resize((size, size), Image.BICUBIC), "float32") / 255.0
        out.append((pixels - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD))
    return np.stack(out).astype("float32")


# A digits run of seconds through `python -m deit_keras.train` (whole epochs: resume tests).
TINY_TRAIN_FLAGS = [
    "--dataset=digits",
    "--image_size=16",
    "--patch_size=8",
    "--embed_dim=16",
    "--depth=1",
    "--num_heads=2",
    "--drop_path=0.0",
    "--batch_size=64",
    "--lr=2e-3",
    "--warmup_epochs=1",
    "--repeated_aug=1",
    "--rand_augment_ops=0",
    "--reprob=0.0",
    "--mixup_prob=0.5",
    "--hflip=0.0",
    "--crop_pct=1.0",
    "--distillation_type=none",
    "--export_savedmodel=false",
    "--progress=none",
]


def train_command(tmp_path, name, *extra):
    """argv of a tiny digits train run in `tmp_path/name` (data in `tmp_path/tfds`)."""
    return [
        sys.executable,
        "-m",
        "deit_keras.train",
        *TINY_TRAIN_FLAGS,
        f"--data_dir={tmp_path / 'tfds'}",
        f"--model_dir={tmp_path / name}",
        f"--output={tmp_path / name}.keras",
        *extra,
    ]


def prepare_digits(tmp_path):
    """Builds digits in `tmp_path/tfds` once, before processes race to build it."""
    from deit_keras.data.pipeline import dataset_info

    dataset_info("digits", str(tmp_path / "tfds"))


def saved_weights(path):
    """The weights of a saved `.keras` model, as numpy arrays."""
    return keras.saving.load_model(path, compile=False).get_weights()


def write_tfds_dataset(data_dir, name, splits):
    """Writes a prepared tfds dataset `name` of a few examples in `data_dir`, offline.

    The catalogue's own builder class writes it (a subclass whose only change is
    where the examples come from), so its features, version, config and folder
    are exactly those `tfds.builder(name, data_dir=data_dir)` reads.

    Args:
        data_dir: str or path. The tfds data directory.
        name: str. A catalogue name, with its config: "imagenet2012_real",
            "imagenet_v2/matched-frequency".
        splits: dict `{split: [(key, example dict of the dataset's features)]}`.
    """
    import tensorflow_datasets as tfds

    dataset, _, config = name.partition("/")

    # Not registered (the catalogue keeps its own class); the keyword, not tfds'
    # `skip_registration()` context, which would also hide every builder tfds
    # imports for the first time inside it.
    class Tiny(tfds.builder_cls(dataset), skip_registration=True):
        name = dataset  # the folder tfds.builder(name) reads

        def _log_download_bytes(self):  # nothing is downloaded
            pass

        def _log_download_done(self):
            pass

        def _split_generators(self, dl_manager):
            del dl_manager  # the examples are given
            return {split: iter(examples) for split, examples in splits.items()}

    tfds.display_progress_bar(False)
    try:
        builder = Tiny(data_dir=str(data_dir), config=config or None)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    finally:
        tfds.display_progress_bar(True)


def jpeg_bytes(seed, shape=(40, 48)):
    """A random-noise RGB JPEG file's bytes."""
    import io

    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def own_predictions(model, encoded_images, crop_pct=None):
    """The argmax of `model`'s inference output on each JPEG, through the eval transform."""
    from deit_keras.data.preprocessing import preprocess
    from deit_keras.data.transforms import decode_image

    preprocessing = model.preprocessing.replace(crop_pct=crop_pct)
    images = [preprocess(decode_image(e), model.image_size, preprocessing) for e in encoded_images]
    return np.argmax(keras.ops.convert_to_numpy(model(tf.stack(images))), axis=-1)


# What `write_benchmark_datasets` builds: (right, counted) by construction.
TINY_BENCHMARK_EXPECTED = {"imagenet": (7, 12), "real": (6, 9), "v2": (4, 10)}
TINY_REAL_WITHOUT_LABELS = 3


def write_benchmark_datasets(data_dir, model, v2_variant="matched-frequency"):
    """Tiny `imagenet2012_real` (12 images) and `imagenet_v2/<variant>` (10) in `data_dir`.

    Labels are set from `model`'s own predictions `p` so that the scores are
    known (`TINY_BENCHMARK_EXPECTED`): ImageNet's `original_label` is `p` for
    images 0-6; ReaL's `real_label` is, by image index mod 4, empty (left
    out: 0, 4, 8), `[p, p+1]`, `[p+1]` and `[p+1, p+2, p]`; V2's `label` is `p`
    for images 0-3. Images alternate between two sizes.
    """
    real_images = [jpeg_bytes(i, (40, 48) if i % 2 else (36, 36)) for i in range(12)]
    predictions = own_predictions(model, real_images)
    examples = []
    for i, (image, p) in enumerate(zip(real_images, predictions, strict=True)):
        p, q, r = (int(p + offset) % model.num_classes for offset in (0, 1, 2))
        real_label = [[], [p, q], [q], [q, r, p]][i % 4]
        file_name = f"ILSVRC2012_val_{i + 1:08}.JPEG"
        example = {"file_name": file_name, "image": image, "real_label": real_label}
        examples.append((file_name, {**example, "original_label": p if i < 7 else q}))
    write_tfds_dataset(data_dir, "imagenet2012_real", {"validation": examples})
    v2_images = [jpeg_bytes(100 + i, (48, 40)) for i in range(10)]
    examples = []
    for i, (image, p) in enumerate(zip(v2_images, own_predictions(model, v2_images), strict=True)):
        label = int(p if i < 4 else (p + 1) % model.num_classes)
        file_name = f"{label}/{i}.jpeg"
        examples.append((file_name, {"file_name": file_name, "image": image, "label": label}))
    write_tfds_dataset(data_dir, f"imagenet_v2/{v2_variant}", {"test": examples})
