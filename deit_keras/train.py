"""Trains a DeiT student, with a frozen CNN teacher, from absl flags.

    python -m deit_keras.train --flagfile=experiments/digits.cfg
    python -m deit_keras.train --flagfile=experiments/deit_t.cfg --data_dir=/data/tfds

Every default is the paper's recipe (DeiT `main.py`); `experiments/*.cfg`
hold complete runs.
"""

import json
import os

from absl import flags

from deit_keras import cli
from deit_keras.augment import AugmentConfig
from deit_keras.distribute import STRATEGIES
from deit_keras.io_utils import write_text_atomic
from deit_keras.losses import DISTILLATION_TYPES
from deit_keras.models.variants import ALIASES, list_models

# === Model ===
_MODEL = flags.DEFINE_enum("model", "deit_tiny_distilled_patch16_224", list_models() + sorted(ALIASES),
                           "DeiT variant (timm name).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Input size; defaults to the variant's.")
_PATCH_SIZE = flags.DEFINE_integer("patch_size", None, "Override the variant's patch size (small data).")
_EMBED_DIM = flags.DEFINE_integer("embed_dim", None, "Override the variant's token size.")
_DEPTH = flags.DEFINE_integer("depth", None, "Override the variant's number of blocks.")
_NUM_HEADS = flags.DEFINE_integer("num_heads", None, "Override the variant's attention heads.")
_DROP_PATH = flags.DEFINE_float("drop_path", 0.1, "Stochastic depth rate of the last block.")
_FINETUNE = flags.DEFINE_string(
    "finetune", None, "Start from this checkpoint (.keras of ours, or .pth/.safetensors/.npz); "
    "heads with another class count are re-initialised, position embeddings resampled.")

# === Data ===
_DATASET = flags.DEFINE_string("dataset", "imagenet2012", "digits, folder:PATH, or a tfds name.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data directory.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1024, "Global batch size (all replicas).")
_EPOCHS = flags.DEFINE_integer("epochs", 300, "Training epochs.")
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", None, "Steps per epoch; default one pass.")
_REPEATED_AUG = flags.DEFINE_integer("repeated_aug", 3, "Repeated augmentation count (1 = off).")
_RA_OPS = flags.DEFINE_integer("rand_augment_ops", 2, "RandAugment ops per image (0 = off).")
_RA_MAGNITUDE = flags.DEFINE_float("rand_augment_magnitude", 9.0, "RandAugment magnitude (0-10).")
_RA_STD = flags.DEFINE_float("rand_augment_std", 0.5, "RandAugment magnitude noise std.")
_REPROB = flags.DEFINE_float("reprob", 0.25, "Random erasing probability.")
_MIXUP = flags.DEFINE_float("mixup", 0.8, "MixUp alpha (0 = off).")
_CUTMIX = flags.DEFINE_float("cutmix", 1.0, "CutMix alpha (0 = off).")
_MIXUP_PROB = flags.DEFINE_float("mixup_prob", 1.0, "Probability of mixing a batch.")
_MIXUP_SWITCH = flags.DEFINE_float("mixup_switch_prob", 0.5, "Probability of CutMix over MixUp.")
_SMOOTHING = flags.DEFINE_float("smoothing", 0.1, "Label smoothing.")
_HFLIP = flags.DEFINE_float("hflip", 0.5, "Horizontal flip probability.")
_CROP_SCALE_MIN = flags.DEFINE_float("crop_scale_min", 0.08, "Random resized crop: smallest area.")
_CROP_RATIO = flags.DEFINE_list("crop_ratio", ["0.75", "1.3333"], "Random resized crop: aspect range.")
_CROP_PCT = flags.DEFINE_float("crop_pct", 0.875, "Eval centre-crop fraction.")

# === Optimiser ===
_LR = flags.DEFINE_float("lr", 5e-4, "Base LR for batch 512; scaled by batch_size / 512.")
_MIN_LR = flags.DEFINE_float("min_lr", 1e-5, "LR at the end of the cosine.")
_WARMUP_LR = flags.DEFINE_float("warmup_lr", 1e-6, "LR at step 0.")
_WARMUP_EPOCHS = flags.DEFINE_integer("warmup_epochs", 5, "Linear warmup epochs.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 0.05, "AdamW weight decay.")
_CLIP_GRAD = flags.DEFINE_float("clip_grad", None, "Global gradient norm clip (off by default).")
_MODEL_EMA = flags.DEFINE_bool("model_ema", False, "Keep an EMA of the weights; used at the end.")
_MODEL_EMA_DECAY = flags.DEFINE_float("model_ema_decay", 0.99996, "EMA decay.")

# === Distillation ===
_DISTILLATION = flags.DEFINE_enum("distillation_type", "hard", list(DISTILLATION_TYPES),
                                  "none, soft or hard distillation.")
flags.DEFINE_alias("distillation", "distillation_type")
_ALPHA = flags.DEFINE_float("distillation_alpha", 0.5, "Weight of the distillation loss.")
_TAU = flags.DEFINE_float("distillation_tau", 1.0, "Soft distillation temperature.")
_TEACHER = flags.DEFINE_string("teacher", "regnety160",
                               "A .keras CNN or a keras.applications name (regnety160 = RegNetY-16GF).")
_TEACHER_WEIGHTS = flags.DEFINE_string("teacher_weights", "imagenet",
                                       "keras.applications weights: imagenet, a file, or none.")
_TEACHER_INPUT = flags.DEFINE_enum("teacher_input", None, ["normalized", "pixels", "keras_applications"],
                                   "Input convention of the teacher; default by teacher kind.")
_TEACHER_EPOCHS = flags.DEFINE_integer(
    "teacher_epochs", 0, "If > 0 and --teacher is a missing .keras file, first train a small CNN "
    "teacher this many epochs and save it there.")
_TEACHER_LR = flags.DEFINE_float("teacher_lr", 4e-3, "Peak LR of that CNN teacher (batch 64, AdamW).")

# === Run ===
_STRATEGY = flags.DEFINE_enum("strategy", "auto", list(STRATEGIES), "tf.distribute strategy.")
_TPU = flags.DEFINE_string("tpu", None, "TPU name or grpc:// address, with --strategy=tpu.")
_PRECISION = flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"],
                               "Keras dtype policy.")
_JIT_COMPILE = flags.DEFINE_bool("jit_compile", True, "Compile the train step with XLA.")
_MODEL_DIR = flags.DEFINE_string("model_dir", "runs/deit", "Checkpoints, TensorBoard logs, results.json.")
_OUTPUT = flags.DEFINE_string("output", None, "Final .keras; default saved_models/<model>.keras.")
_EXPORT = flags.DEFINE_bool("export_savedmodel", True, "Also export a serving SavedModel.")
_RESUME = flags.DEFINE_bool("resume", True, "Resume from model_dir's backup if one exists.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_DETERMINISTIC = flags.DEFINE_bool("deterministic", False, "Deterministic ops and input order.")
_PROGRESS = flags.DEFINE_enum("progress", "auto", ["auto", "bar", "epoch", "none"],
                              "Keras fit output: bar on a TTY, one line per epoch otherwise.")


def config_from_flags():
    """The `TrainConfig` the parsed flags describe."""
    from deit_keras.training.runner import TrainConfig

    augment = AugmentConfig(
        rand_augment_ops=_RA_OPS.value, rand_augment_magnitude=_RA_MAGNITUDE.value,
        rand_augment_std=_RA_STD.value, reprob=_REPROB.value, mixup_alpha=_MIXUP.value,
        cutmix_alpha=_CUTMIX.value, mixup_prob=_MIXUP_PROB.value,
        mixup_switch_prob=_MIXUP_SWITCH.value, label_smoothing=_SMOOTHING.value, hflip=_HFLIP.value,
        crop_scale=(_CROP_SCALE_MIN.value, 1.0),
        crop_ratio=tuple(float(value) for value in _CROP_RATIO.value), crop_pct=_CROP_PCT.value,
    )
    return TrainConfig(
        model=_MODEL.value, image_size=_IMAGE_SIZE.value, drop_path=_DROP_PATH.value,
        model_overrides=dict(patch_size=_PATCH_SIZE.value, embed_dim=_EMBED_DIM.value,
                             depth=_DEPTH.value, num_heads=_NUM_HEADS.value),
        finetune=_FINETUNE.value, dataset=_DATASET.value, data_dir=_DATA_DIR.value,
        batch_size=_BATCH_SIZE.value, epochs=_EPOCHS.value, steps_per_epoch=_STEPS_PER_EPOCH.value,
        augment=augment, repeated_aug=_REPEATED_AUG.value, lr=_LR.value, min_lr=_MIN_LR.value,
        warmup_lr=_WARMUP_LR.value, warmup_epochs=_WARMUP_EPOCHS.value,
        weight_decay=_WEIGHT_DECAY.value, clip_grad=_CLIP_GRAD.value, model_ema=_MODEL_EMA.value,
        model_ema_decay=_MODEL_EMA_DECAY.value, distillation=_DISTILLATION.value,
        alpha=_ALPHA.value, tau=_TAU.value, teacher=_TEACHER.value,
        teacher_weights=_TEACHER_WEIGHTS.value, teacher_input=_TEACHER_INPUT.value,
        teacher_epochs=_TEACHER_EPOCHS.value, teacher_lr=_TEACHER_LR.value, strategy=_STRATEGY.value, tpu=_TPU.value,
        precision=_PRECISION.value, jit_compile=_JIT_COMPILE.value, model_dir=_MODEL_DIR.value,
        output=_OUTPUT.value, export_savedmodel=_EXPORT.value, resume=_RESUME.value,
        seed=_SEED.value, deterministic=_DETERMINISTIC.value,
        verbose={"auto": "auto", "bar": 1, "epoch": 2, "none": 0}[_PROGRESS.value],
    )


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from deit_keras.training.runner import run_training

    config = config_from_flags()
    config.validate()
    os.makedirs(config.model_dir, exist_ok=True)
    write_text_atomic(os.path.join(config.model_dir, "flags.txt"), flags.FLAGS.flags_into_string())
    results = run_training(config)
    print(json.dumps(results, indent=1))
    summary = f"student top-1 {results['top1']:.2f}%"
    if "teacher_top1" in results:
        summary += f", teacher top-1 {results['teacher_top1']:.2f}%"
    print(f"{summary}; {results['wall_s']:.0f} s; saved {results['saved_model']}")


if __name__ == "__main__":
    cli.run(main)
