"""The schema of a training run: one dataclass tree, from which the train CLI's flags are made.

Each field is declared once with its default and help (`deit_keras.schema.field`);
`deit_keras.cli.train` defines one absl flag per field under the field's name,
the names the official DeiT `main.py` uses where it has the setting
(`--drop_path`, `--mixup`, `--smoothing`, `--distillation_type`,
`--distillation_alpha`, `--distillation_tau`, ...). Defaults are the paper's
DeiT-Ti recipe; `experiments/*.cfg` hold complete runs.
"""

import dataclasses
import json
import math
import os

from deit_keras.data.augment_config import AugmentConfig
from deit_keras.data.image_check import BAD_IMAGES
from deit_keras.deploy.export_options import SAVED_MODEL_FILE, savedmodel_beside
from deit_keras.distill import regnet
from deit_keras.distill.distillation_types import DISTILLATION_TYPES
from deit_keras.errors import UserInputError
from deit_keras.io.paths import (
    directory_problem,
    input_file_problem,
    output_dir_problem,
    output_file_problem,
    replaceable_dir_problem,
)
from deit_keras.models.variants import accepted_names, canonical_name
from deit_keras.schema import (
    CROP_PCT,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Range,
    field,
    range_problems,
)
from deit_keras.training.distribute import STRATEGIES

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
TEACHER_INPUTS = ("normalized", "pixels", "keras_applications")
TEACHER_AUGMENT = ("crops", "student")
# "backbone" trains the classification heads only (`training.optim.freeze_backbone`).
FREEZE = ("none", "backbone")
# The official `--opt` values (its `fusedlamb` is "lamb" here; `training.optim`).
OPTIMIZERS = ("adamw", "lamb")
PROGRESS = {"auto": "auto", "bar": 1, "epoch": 2, "none": 0}  # -> keras fit `verbose`
# Settings in which a rerun may differ and still resume the run in --model_dir: more
# epochs, or where and how it runs, not what it trains.
RESUMABLE_CHANGES = (
    "epochs",
    "model_dir",
    "output",
    "export_savedmodel",
    "resume",
    "checkpoint_interval_s",
    "backup_every_steps",
    "teacher_wait_s",
    "summary_every",
    "progress",
    "validation_freq",
    "steps_per_execution",
    "jit_compile",
    "strategy",
    "tpu",
    "data_dir",
    "bad_images",
    "deterministic",
)


def default_output(model_name: str) -> str:
    """Where a run saves its model when `output` is not given (named as the model: an
    alias such as `deit_t` by the preset it stands for)."""
    return os.path.join("saved_models", f"{canonical_name(model_name)}.keras")


@dataclasses.dataclass
class TrainConfig:
    """Everything one run needs; `augment` holds the per-image and per-batch recipe."""

    # === Model ===
    model: str = field(
        "deit_tiny_distilled_patch16_224",
        "DeiT variant (timm name).",
        choices=tuple(accepted_names()),
    )
    image_size: int | None = field(
        None, "Input size; defaults to the variant's.", aliases=("input_size",), valid=POSITIVE
    )
    patch_size: int | None = field(
        None, "Override the variant's patch size (small data).", valid=POSITIVE
    )
    embed_dim: int | None = field(None, "Override the variant's token size.", valid=POSITIVE)
    depth: int | None = field(None, "Override the variant's number of blocks.", valid=POSITIVE)
    num_heads: int | None = field(None, "Override the variant's attention heads.", valid=POSITIVE)
    drop_path: float = field(
        0.1,
        "Stochastic depth rate: of the last block, rising linearly from 0 (DeiT); of every "
        "block (deit3_*, and cait_*'s self-attention blocks).",
        valid=Range(0, 1, high_open=True),
    )
    crop_pct: float | None = field(
        None,
        "Eval centre-crop fraction saved with the model; "
        "defaults to the variant's (DeiT: 0.875 for the *_224 variants, 1.0 for *_384, "
        "whatever --image_size: a 224 variant fine-tuned at 384 keeps 0.875 unless given, "
        "as experiments/deit_b_384_finetune.cfg does; DeiT III and CaiT: their presets', "
        "docs/models.md).",
        valid=CROP_PCT,
    )
    pretrained: bool = field(
        False, "Start from the published ImageNet weights of --model (downloaded, cached)."
    )
    pretrained_weights: str = field(
        "official",
        "Where --pretrained gets them: official, hf, hf-hub:OWNER/REPO, a URL or a path.",
    )
    finetune: str | None = field(
        None,
        "Start from this checkpoint (.keras of ours, or .pth/.safetensors/.npz), position "
        "embeddings resampled. A file saved with its classes (<file>.classes.json) gives "
        "its head rows to this dataset's classes by name (fresh rows for classes it lacks); "
        "otherwise heads of another class count are re-initialised.",
    )
    # === Data ===
    dataset: str = field("imagenet2012", "digits, folder:PATH, or a tfds name.")
    data_dir: str | None = field(None, "tfds data directory.")
    bad_images: str = field(
        "skip",
        "What a folder: dataset does with files that do not decode (truncated, empty, not "
        "an image): skip them (counted, listed in model_dir/skipped_images.txt) or fail "
        "naming the first.",
        choices=BAD_IMAGES,
    )
    train_fraction: float = field(
        1.0,
        "Train (student and a teacher trained here) on this share of the training split: "
        "a class-balanced subset chosen by --seed (data-efficiency studies; 1 = all).",
        valid=FRACTION,
    )
    batch_size: int = field(1024, "Global batch size (all replicas).", valid=POSITIVE)
    epochs: int = field(300, "Training epochs.", valid=POSITIVE)
    steps_per_epoch: int | None = field(None, "Steps per epoch; default one pass.", valid=POSITIVE)
    repeated_aug: int = field(3, "Repeated augmentation count (1 = off).", valid=Range(1))
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    # === Loss ===
    bce_loss: bool = field(
        False, "Binary cross-entropy on the (mixed) targets instead of cross-entropy (DeiT III)."
    )
    bce_target_thresh: float = field(
        0.0,
        "With --bce_loss, targets above this become 1, the rest 0 (0: the official "
        "binarized mix, each class in it a positive).",
        valid=Range(0, 1, high_open=True),
    )
    # === Optimiser ===
    opt: str = field("adamw", "Optimizer: adamw, or lamb (DeiT III).", choices=OPTIMIZERS)
    lr: float = field(
        5e-4,
        "Base LR for batch 512; scaled by batch_size / 512 unless --unscale_lr.",
        valid=POSITIVE,
    )
    unscale_lr: bool = field(False, "Use --lr as it is, whatever the batch size.")
    min_lr: float = field(1e-5, "LR at the end of the cosine.", valid=NON_NEGATIVE)
    warmup_lr: float = field(1e-6, "LR at step 0.", valid=NON_NEGATIVE)
    warmup_epochs: int = field(5, "Linear warmup epochs.", valid=NON_NEGATIVE)
    weight_decay: float = field(0.05, "AdamW / LAMB weight decay.", valid=NON_NEGATIVE)
    clip_grad: float | None = field(
        None, "Global gradient norm clip (off by default).", valid=POSITIVE
    )
    model_ema: bool = field(
        False, "Keep an EMA of the weights (one step per optimizer update); used at the end."
    )
    model_ema_decay: float = field(0.99996, "EMA decay.", valid=PROBABILITY)
    # === Fine-tuning ===
    layer_decay: float = field(
        1.0,
        "Layer-wise LR decay (BEiT, timm): block i (of depth d) trains at lr x "
        "layer_decay^(d - i) (0-based i; the final norm with the last block), the patch "
        "embedding and tokens at lr x layer_decay^(d + 1), the heads at lr; 1 = off.",
        valid=FRACTION,
    )
    grad_accum_steps: int = field(
        1,
        "Steps whose mean gradient makes one optimizer update; the LR scales with "
        "batch_size x grad_accum_steps and the schedule counts updates.",
        valid=POSITIVE,
    )
    freeze: str = field(
        "none", "backbone: train only head / head_dist (a first stage).", choices=FREEZE
    )
    # === Distillation ===
    distillation_type: str = field(
        "hard",
        "none, soft or hard distillation.",
        choices=DISTILLATION_TYPES,
        aliases=("distillation",),
    )
    distillation_alpha: float = field(0.5, "Weight of the distillation loss.", valid=PROBABILITY)
    distillation_tau: float = field(1.0, "Soft distillation temperature.", valid=POSITIVE)
    teacher: str | None = field(
        "regnety160",
        "A .keras CNN, a RegNetY (regnety160: the paper's RegNetY-16GF, timm's "
        "architecture in Keras; or regnety002 ... regnety320) or a keras.applications name "
        "(e.g. resnet50).",
        aliases=("teacher_model",),
    )
    teacher_weights: str | None = field(
        "imagenet",
        "Teacher weights: imagenet (for regnety160 the DeiT authors' released teacher, "
        "downloaded once and cached; also a URL of that file, on any host), hf (for "
        "regnety160 timm's hub copy of it), a file (a timm .pth/.safetensors/.npz "
        "checkpoint for a RegNetY, a Keras weights file for a keras.applications model), "
        "or none.",
        aliases=("teacher_path",),
    )
    teacher_input: str | None = field(
        None, "Input convention of the teacher; default by teacher kind.", choices=TEACHER_INPUTS
    )
    teacher_epochs: int = field(
        0,
        "If > 0 and --teacher is a missing .keras file, first train a small CNN teacher this "
        "many epochs and save it there.",
        valid=NON_NEGATIVE,
    )
    teacher_lr: float = field(
        4e-3,
        "Peak LR of that CNN teacher (AdamW; batches of --teacher_batch_size; not scaled by "
        "the batch).",
        valid=POSITIVE,
    )
    teacher_batch_size: int = field(
        64,
        "Batch of a teacher trained here (the whole train split when smaller; a multiple "
        "of the replicas): lower it where a large teacher (--teacher_base) at a large "
        "--image_size runs out of memory.",
        valid=POSITIVE,
    )
    teacher_base: str | None = field(
        None,
        "A keras.applications name (e.g. resnet50) or a RegNetY (regnety160, the paper's "
        "teacher) to fine-tune as that teacher instead of the small CNN, starting from "
        "--teacher_weights (imagenet: Keras' or, for a RegNetY, DeiT's released teacher; a "
        "no-top weights file or a timm RegNetY checkpoint; none).",
    )
    feature_distillation: bool = field(
        False,
        "Also distil features (locality guidance, Li et al. ECCV 2022): chosen blocks' "
        "patch-token maps, through training-only 1x1 adapters, matched by MSE to the CNN "
        "teacher's stage feature maps; with soft or hard distillation.",
    )
    feature_distill_weight: float = field(
        2.5, "Weight of the feature loss (the paper's 2.5).", valid=NON_NEGATIVE
    )
    feature_student_blocks: str = field(
        "", "Comma-separated student blocks matched ('' = first, middle and last)."
    )
    feature_teacher_layers: str = field(
        "",
        "Comma-separated teacher layer names matched ('' = the output layer of each spatial "
        "stage, as many as blocks, evenly spread from the first to the last).",
    )
    teacher_augment: str = field(
        "crops",
        "Views that teacher trains on: crops (the crop, translation and flip settings only) "
        "or student (the student's whole recipe: RandAugment, erasing, MixUp/CutMix too).",
        choices=TEACHER_AUGMENT,
    )
    # === Run ===
    strategy: str = field("auto", "tf.distribute strategy.", choices=STRATEGIES)
    tpu: str | None = field(
        None, "TPU name or grpc:// address (local: a TPU VM's own chips), with --strategy=tpu."
    )
    precision: str = field("float32", "Keras dtype policy.", choices=PRECISIONS)
    jit_compile: bool = field(
        True, "Compile the train step with XLA (not with --deterministic: Keras turns it off)."
    )
    steps_per_execution: int = field(
        1,
        "Training steps run per tf.function call (Keras' steps_per_execution; the "
        "greatest common divisor of N and the steps per epoch is used): fewer Python round "
        "trips for small models; callbacks, SIGTERM and --backup_every_steps act every N steps. "
        "Keras fit only: --strategy=multi_worker's loop runs one step per call.",
        valid=POSITIVE,
    )
    validation_freq: int = field(
        1,
        "Validate every N epochs (Keras fit's validation_freq): the logs, TensorBoard and "
        "history.json have val_* on those epochs only. The final evaluation runs regardless.",
        valid=POSITIVE,
    )
    model_dir: str = field(
        "runs/deit", "Checkpoints, TensorBoard logs, results.json.", aliases=("output_dir",)
    )
    output: str | None = field(None, "Final .keras; default saved_models/<model>.keras.")
    export_savedmodel: bool = field(True, "Also export a serving SavedModel.")
    resume: bool = field(True, "Resume from model_dir's backup if one exists.")
    checkpoint_interval_s: float = field(
        30.0,
        "Write checkpoints/last.keras and the epoch-end backup at most every N seconds "
        "(first and last epoch always; 0 = every epoch): a save costs about a digits epoch.",
        valid=NON_NEGATIVE,
    )
    seed: int = field(0, "Random seed.", valid=NON_NEGATIVE)
    deterministic: bool = field(
        False, "Deterministic ops and input order; the train step runs without XLA."
    )
    backup_every_steps: int = field(
        0,
        "Also back up to model_dir/backup every N training steps, to resume mid-epoch "
        "(0 = at epoch ends only). A SIGTERM always backs up the current step.",
        valid=NON_NEGATIVE,
    )
    teacher_wait_s: int = field(
        3600,
        "Multi-worker: seconds the other workers wait for the chief to train a missing "
        "--teacher file (--teacher_epochs) before giving up.",
        valid=POSITIVE,
    )
    summary_every: int = field(
        5,
        "Every N epochs, TensorBoard gets the cls/dist attention maps of a few validation "
        "images and the per-layer cls-dist token cosine similarity (0 = off).",
        valid=NON_NEGATIVE,
    )
    progress: str = field(
        "auto",
        "Keras fit output: bar on a TTY, one line per epoch otherwise.",
        choices=tuple(PROGRESS),
    )

    @property
    def model_overrides(self) -> dict:
        """The architecture fields set on top of the variant's."""
        names = ("patch_size", "embed_dim", "depth", "num_heads")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @property
    def feature_blocks(self) -> tuple | None:
        """`--feature_student_blocks` as ints; None for the default."""
        text = self.feature_student_blocks.strip()
        if not text:
            return None
        try:
            return tuple(int(part) for part in text.split(","))
        except ValueError:
            raise UserInputError(
                "feature_student_blocks must be comma-separated block indices. "
                f"Received: feature_student_blocks={text!r}"
            ) from None

    @property
    def feature_layers(self) -> tuple | None:
        """`--feature_teacher_layers` as names; None for the default."""
        names = tuple(part.strip() for part in self.feature_teacher_layers.split(","))
        return tuple(name for name in names if name) or None

    @property
    def train_jit_compile(self) -> bool:
        """`jit_compile` of the train steps: off under `--deterministic`, where Keras turns
        XLA off itself (TensorFlow's op determinism) with a warning."""
        return self.jit_compile and not self.deterministic

    @property
    def feature_weight(self) -> float:
        """The feature loss weight a run compiles with (0 without feature distillation)."""
        return self.feature_distill_weight if self.feature_distillation else 0.0

    def flat_settings(self) -> dict:
        """Every setting by its flag name (the recipe's fields beside the run's), JSON-able."""
        settings = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if dataclasses.is_dataclass(value):
                settings.update(json.loads(json.dumps(dataclasses.asdict(value))))
            else:
                settings[item.name] = json.loads(json.dumps(value))
        return settings

    def defining_settings(self) -> dict:
        """`flat_settings` less `RESUMABLE_CHANGES`: those a resumed run must share."""
        settings = self.flat_settings()
        return {key: value for key, value in settings.items() if key not in RESUMABLE_CHANGES}

    @property
    def fit_verbose(self) -> int | str:
        return PROGRESS[self.progress]

    def validate(self) -> None:
        """Raises one ValueError naming every out-of-range setting."""
        problems = range_problems(self)  # every numeric field's `valid` range
        for name, allowed in (
            ("precision", PRECISIONS),
            ("strategy", STRATEGIES),
            ("distillation_type", DISTILLATION_TYPES),
            ("progress", PROGRESS),
            ("freeze", FREEZE),
            ("bad_images", BAD_IMAGES),
            ("opt", OPTIMIZERS),
        ):
            if getattr(self, name) not in allowed:
                problems.append(
                    f"{name} must be one of {tuple(allowed)}, got {getattr(self, name)!r}"
                )
        problems += self._finetune_problems()
        if self.teacher_augment not in TEACHER_AUGMENT:
            problems.append(
                f"teacher_augment must be one of {TEACHER_AUGMENT}, got {self.teacher_augment!r}"
            )
        if self.output and not self.output.endswith(".keras"):
            problems.append(f"output must end in '.keras', got {self.output}")
        regnet_teacher = regnet.canonical_name(str(self.teacher_base or self.teacher))
        if self.teacher_weights == "hf" and not regnet_teacher:
            problems.append(
                f"teacher_weights=hf (timm's hub copy of DeiT's teacher) is for a RegNetY "
                f"teacher, got teacher={self.teacher!r}"
            )
        if not self.model_dir:  # an unset shell variable, say
            problems.append(
                "model_dir is empty: name the run's directory (checkpoints, backup, logs), "
                "e.g. --model_dir=runs/mine"
            )
        if self.pretrained and self.finetune:
            problems.append("pass --pretrained or --finetune, not both")
        if self.pretrained_weights != "official" and not self.pretrained:  # was ignored
            problems.append(
                f"pretrained_weights={self.pretrained_weights!r} says where --pretrained gets "
                "its weights: add --pretrained (or pass the file as --finetune)"
            )
        if self.tpu and self.strategy != "tpu":
            problems.append(f"tpu={self.tpu!r} is for strategy='tpu', got {self.strategy!r}")
        keras_cv = self.augment.rand_augment_impl == "keras_cv" and self.augment.rand_augment_ops
        if self.deterministic and keras_cv:
            problems.append(
                "rand_augment_impl=keras_cv is not seedable, so it cannot run deterministic "
                "(TensorFlow refuses its global generator): use the default, timm"
            )
        if self.steps_per_epoch:  # else known once the dataset is (`check_backup_interval`)
            problems += filter(None, [self._backup_interval_problem(self.steps_per_epoch)])
        if self.distillation_type != "none" and not self.teacher:
            problems.append(f"distillation_type={self.distillation_type!r} needs --teacher")
        problems += self._feature_problems()
        if problems:
            raise UserInputError("; ".join(problems))

    def steps_per_call(self, steps_per_epoch: int) -> int:
        """Training steps per tf.function call: `steps_per_execution`'s greatest common
        divisor with the epoch's steps (epochs, backups and the LR schedule keep their
        steps); one in `multi_worker`'s loop."""
        if self.strategy == "multi_worker":
            return 1
        return math.gcd(self.steps_per_execution, steps_per_epoch)

    def check_backup_interval(self, steps_per_epoch: int) -> None:
        """Raises ValueError unless `backup_every_steps` falls on a call's last step."""
        problem = self._backup_interval_problem(steps_per_epoch)
        if problem:
            raise UserInputError(problem)

    def _backup_interval_problem(self, steps_per_epoch: int) -> str | None:
        per_call = self.steps_per_call(steps_per_epoch)
        if not self.backup_every_steps % per_call:
            return None
        return (
            f"backup_every_steps={self.backup_every_steps} must be a multiple of the "
            f"{per_call} steps each call runs (steps_per_execution={self.steps_per_execution} "
            f"and {steps_per_epoch} steps per epoch)"
        )

    def _output_replaces_an_input(self) -> list[str]:
        output = self.output or default_output(self.model)
        inputs = {"finetune": self.finetune}
        if self.distillation_type != "none" and str(self.teacher).endswith(".keras"):
            inputs["teacher"] = self.teacher
        return [
            f"output would replace {name}: write the model elsewhere. "
            f"Received: output={output}, {name}={path}"
            for name, path in inputs.items()
            if path and os.path.realpath(path) == os.path.realpath(output)
        ]

    def check_paths(self) -> None:
        """Raises one ValueError naming every file or folder setting that cannot serve.

        Run before any work: a missing `finetune` or `teacher` file, an `output`
        that is a directory, a `model_dir` or `data_dir` that is a file or lies
        in a folder that cannot be written. Apart from `validate` so a config can
        be checked on a machine without its files.
        """
        problems = [
            output_dir_problem("model_dir", self.model_dir),
            directory_problem("data_dir", self.data_dir),
            output_file_problem("output", self.output),
            input_file_problem("finetune", self.finetune),
        ]
        if self.distillation_type != "none" and str(self.teacher).endswith(".keras"):
            # A missing .keras teacher is written first when teacher_epochs > 0.
            if self.teacher_epochs and not os.path.exists(self.teacher):
                problems.append(output_file_problem("teacher", self.teacher))
            else:
                problems.append(input_file_problem("teacher", self.teacher))
        elif self.distillation_type != "none" and self.teacher and os.path.exists(self.teacher):
            problems.append(
                "teacher must be a .keras file, a RegNetY name or a keras.applications name. "
                f"Received: teacher={self.teacher}"
            )
        problems.extend(self._output_replaces_an_input())
        if self.export_savedmodel:  # written last: checked first, not after the training
            savedmodel = savedmodel_beside(self.output or default_output(self.model))
            where = "the SavedModel beside output"
            problems.append(replaceable_dir_problem(where, savedmodel, SAVED_MODEL_FILE))
        problems = [problem for problem in problems if problem]
        if problems:
            raise UserInputError("; ".join(problems))

    def _feature_problems(self) -> list:
        if not self.feature_distillation:
            return []
        problems = []
        if self.distillation_type == "none":
            problems.append(
                "feature_distillation needs a teacher: set --distillation_type=hard (or soft), "
                "or --nofeature_distillation"
            )
        try:
            _ = self.feature_blocks
        except UserInputError as error:
            problems.append(str(error))
        return problems

    def _finetune_problems(self) -> list:
        problems = []
        if (
            POSITIVE.contains(self.grad_accum_steps)
            and POSITIVE.contains(self.steps_per_epoch)
            and self.steps_per_epoch
            and self.steps_per_epoch % self.grad_accum_steps
        ):
            problems.append(
                f"steps_per_epoch ({self.steps_per_epoch}) must be a multiple of "
                f"grad_accum_steps ({self.grad_accum_steps}): an epoch ends on an update"
            )
        return problems
