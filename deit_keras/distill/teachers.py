"""The frozen CNN teacher: building, loading, and adapting it to the student's input.

The student sees ImageNet-normalised images, and so does the paper's teacher
(RegNetY, `distill.regnet`); `keras.applications` models expect 0-255 pixels
and apply their own preprocessing. `TeacherAdapter`
turns the student's batch into what the teacher expects (and resizes it if
the teacher has another fixed input size), so both see the same augmented
images without a silent convention mismatch.
"""

import contextlib
import sys
import urllib.error

import keras
import numpy as np
from keras import ops

from deit_keras.data.preprocessing import DEFAULT_PREPROCESSING, Preprocessing
from deit_keras.distill import regnet
from deit_keras.errors import UserEnvironmentError, UserInputError
from deit_keras.io.paths import keras_file_problem
from deit_keras.layers.replica_dropout import ReplicaDropout

INPUT_CONVENTIONS = ("normalized", "pixels", "keras_applications")
# The smallest input keras.applications builds, by module (the size its
# constructor checks); 32 for the others.
_MIN_INPUT_SIZE = {"inception_v3": 75, "inception_resnet_v2": 75, "xception": 71}


@keras.saving.register_keras_serializable(package="deit_keras")
class TeacherAdapter(keras.Model):
    """Wraps a teacher CNN so it takes the student's ImageNet-normalised batch.

    Args:
        teacher: keras.Model. The CNN; its output must be logits, or
            probabilities with `outputs="probabilities"`.
        input_convention: str. What `teacher` expects:
            "normalized": the student's input as is (teachers trained here);
            "pixels": RGB in [0, 255];
            "keras_applications": [0, 255] through
            `keras.applications.<application>.preprocess_input`.
        application: str. The keras.applications module (e.g. "regnet",
            "resnet"), with "keras_applications".
        outputs: "logits" or "probabilities" (log is taken: same argmax,
            logits up to a constant for soft distillation).
        image_size: int or None. Resize the batch (bilinear) to this size first.
        student_preprocessing: the student's `Preprocessing` (or its config), whose
            mean and std turn its batch back into pixels for "pixels" and
            "keras_applications"; None: ImageNet's, every preset's.
            `DeiT.compile` refuses an adapter whose mean/std are not its model's.
    """

    def __init__(
        self,
        teacher,
        input_convention="normalized",
        application=None,
        outputs="logits",
        image_size=None,
        student_preprocessing=None,
        **kwargs,
    ):
        if input_convention not in INPUT_CONVENTIONS:
            raise UserInputError(
                f"input_convention must be one of {INPUT_CONVENTIONS}. "
                f"Received: {input_convention!r}"
            )
        if input_convention == "keras_applications" and application is None:
            raise UserInputError(
                "input_convention 'keras_applications' is for keras.applications teachers "
                "(their preprocess_input); this teacher takes 'normalized' or 'pixels'. "
                f"Received: input_convention={input_convention!r}"
            )
        if outputs not in ("logits", "probabilities"):
            raise UserInputError(
                f"outputs must be 'logits' or 'probabilities'. Received: {outputs!r}"
            )
        super().__init__(**kwargs)
        self.teacher = teacher
        self.input_convention = input_convention
        self.application = application
        self.outputs_kind = outputs
        self.image_size = image_size
        self.student_preprocessing = Preprocessing.from_config(
            student_preprocessing or DEFAULT_PREPROCESSING
        )
        self._preprocess = None
        if input_convention == "keras_applications":
            self._preprocess = getattr(keras.applications, application).preprocess_input

    def teacher_input(self, images):
        """The student's batch as `teacher` expects it (resized, convention applied)."""
        if self.image_size is not None and images.shape[1] != self.image_size:
            images = ops.image.resize(
                images, (self.image_size, self.image_size), data_format="channels_last"
            )
        if self.input_convention != "normalized":
            mean = ops.convert_to_tensor(self.student_preprocessing.mean, images.dtype)
            std = ops.convert_to_tensor(self.student_preprocessing.std, images.dtype)
            images = (images * std + mean) * 255.0
            if self._preprocess is not None:
                images = self._preprocess(images)
        return images

    def teacher_logits(self, outputs):
        """`teacher`'s outputs -> float32 logits."""
        out = ops.cast(outputs, "float32")
        if self.outputs_kind == "probabilities":
            out = ops.log(ops.maximum(out, 1e-12))
        return out

    def call(self, images, training=False):
        return self.teacher_logits(self.teacher(self.teacher_input(images), training=False))

    @property
    def num_classes(self):
        return _logits_width(self.teacher)

    def get_config(self):
        config = super().get_config()
        config.update(
            teacher=keras.saving.serialize_keras_object(self.teacher),
            input_convention=self.input_convention,
            application=self.application,
            outputs=self.outputs_kind,
            image_size=self.image_size,
            student_preprocessing=self.student_preprocessing.get_config(),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)


def _applications():
    """`{lowercase name: (constructor, module name)}` of keras.applications models."""
    table = {}
    for name in dir(keras.applications):
        constructor = getattr(keras.applications, name)
        if callable(constructor) and name[0].isupper():
            module = constructor.__module__.rsplit(".", 1)[-1]
            table[name.lower()] = (constructor, module)
    return table


def _application(name, unknown_message):
    """`(constructor, module name)` of the keras.applications model `name` (any case)."""
    table = _applications()
    if name.lower() not in table:
        raise UserInputError(unknown_message)
    return table[name.lower()]


def _check_input_size(name, module, image_size, flag):
    """`UserInputError` before building `name` (--`flag`) at a size its constructor refuses."""
    minimum = _MIN_INPUT_SIZE.get(module, 32)
    if image_size < minimum:
        raise UserInputError(
            f"keras.applications {name} needs images of at least {minimum}x{minimum} "
            f"pixels: raise --image_size or choose another --{flag}. Received: "
            f"image_size={image_size}, {flag}={name}"
        )


def _download_failed(error) -> bool:
    """Whether `error` is `keras.utils.get_file` failing to fetch a URL.

    get_file re-raises urllib's `URLError` (HTTP errors, refused connections,
    unknown hosts, truncated bodies) as a bare `Exception`, raised while
    handling it: the URLError is in the chain.
    """
    while error is not None:
        if isinstance(error, urllib.error.URLError):
            return True
        error = error.__cause__ or error.__context__
    return False


def _with_weights(name, weights, constructor, **kwargs):
    """`constructor(weights=weights, **kwargs)`; a failed weights download in one line."""
    try:
        # Keras prints "Downloading data from ..." on stdout, which is for results.
        with contextlib.redirect_stdout(sys.stderr):
            return constructor(weights=weights, **kwargs)
    except Exception as error:
        if not _download_failed(error):
            raise
        detail = " ".join(str(error).split()) or type(error).__name__
        raise UserEnvironmentError(
            f"Cannot download the {weights} weights of the teacher {name}: {detail}. Check "
            "the network connection, or download the file yourself and pass its path "
            "(--teacher_weights=PATH) or put it in $KERAS_HOME/models (default "
            "~/.keras/models)."
        ) from error


def build_finetune_teacher(
    application: str,
    num_classes: int,
    image_size: int,
    weights: str | None = "imagenet",
    name: str = "finetune_teacher",
    student_preprocessing=None,
) -> "TeacherAdapter":
    """A `keras.applications` or RegNetY backbone with a new head, to fine-tune as the teacher.

    The backbone (no top, global average pooling) runs in inference mode, so
    its BatchNorm statistics stay the pretrained ones while its weights train
    (the Keras transfer-learning recipe); a new `Dense(num_classes)` head
    gives logits. Wrapped in a `TeacherAdapter` ("keras_applications", or
    "normalized" for a RegNetY, which takes the student's input as timm's
    does), the trainable model takes the student's normalised batch, and
    saved as `.keras` it is a ready `--teacher` file.

    Args:
        application: str. A keras.applications name, lowercase, e.g.
            "resnet50", "efficientnetb0", "convnexttiny"; or a RegNetY name
            ("regnety160", the paper's teacher; any `regnet.CONFIGS` size).
        num_classes: int. Classes of the dataset to fine-tune on.
        image_size: int. The student's input size.
        weights: str, dict or None. For an application: "imagenet", a
            weights file of the backbone without its top, or None (random).
            For a RegNetY: a timm state dict (its head is dropped; DeiT's
            released teacher is read into one by `training.teacher`) or None.
        name: str. The model's name.
        student_preprocessing: the student's `Preprocessing` (`TeacherAdapter`'s);
            None: ImageNet's.

    Returns:
        A trainable `TeacherAdapter` producing `[B, num_classes]` logits.

    Raises:
        ValueError: unknown application name, or `image_size` below its minimum.
        OSError: the weights cannot be downloaded.
    """
    if regnet.canonical_name(application):
        return _finetune_regnet(application, num_classes, image_size, weights, name)
    constructor, module = _application(
        application,
        f"Unknown keras.applications model {application!r}. Received: "
        f"application={application!r}; e.g. resnet50, efficientnetb0, convnexttiny.",
    )
    _check_input_size(application, module, image_size, "teacher_base")
    backbone = _with_weights(
        application,
        weights,
        constructor,
        include_top=False,
        input_shape=(image_size, image_size, 3),
        pooling="avg",
    )
    classifier = _with_new_head(backbone, image_size, num_classes, application.lower())
    return TeacherAdapter(
        classifier,
        "keras_applications",
        application=module,
        name=name,
        student_preprocessing=student_preprocessing,
    )


def _finetune_regnet(spec, num_classes, image_size, weights, name):
    full = _regnet(spec, num_classes, image_size, weights)  # its head is left out below
    backbone = keras.Model(full.input, full.get_layer("head_pool").output, name=full.name)
    classifier = _with_new_head(backbone, image_size, num_classes, full.name)
    return TeacherAdapter(classifier, "normalized", name=name)


def _with_new_head(backbone, image_size, num_classes, name):
    """`backbone` (pooled features) in inference mode, then a new `Dense(num_classes)` head."""
    inputs = keras.Input((image_size, image_size, 3))
    features = backbone(inputs, training=False)
    outputs = keras.layers.Dense(num_classes, name="head")(features)
    return keras.Model(inputs, outputs, name=f"{name}_classifier")


def build_teacher(
    spec,
    num_classes,
    image_size,
    weights=None,
    input_convention=None,
    outputs="logits",
    student_preprocessing=None,
):
    """The teacher named by `spec`, wrapped in a `TeacherAdapter`.

    Args:
        spec: a `.keras` path (a CNN trained elsewhere), a RegNetY name
            ("regnety160" or "regnety_160": the paper's RegNetY-16GF; any
            `regnet.CONFIGS` size), or a keras.applications name, lowercase
            (e.g. "resnet50").
        num_classes: classes of the student's dataset; the teacher must match.
        image_size: the student's input size.
        weights: for a RegNetY: a timm state dict (`{key: numpy array}`; its
            head sets the class count) or None (random). For an application:
            "imagenet", a weights file, or None (random; tests only). Ignored
            for `.keras` files. A RegNetY's "imagenet" (DeiT's released
            teacher) and checkpoint files are read into a state dict by
            `training.teacher.make_teacher`.
        input_convention: overrides the default ("normalized" for `.keras`
            files and RegNetY, "keras_applications" for application names).
        outputs: "logits" or "probabilities", for `.keras` files.
        student_preprocessing: the student's `Preprocessing` (`TeacherAdapter`'s);
            None: ImageNet's. A saved adapter keeps the one it was saved with.

    Raises:
        ValueError: unknown name, unreadable file, class-count mismatch, or
            `image_size` below the application's minimum (random weights).
        OSError: the application's weights cannot be downloaded.
    """
    if spec.endswith(".keras"):
        problem = keras_file_problem(spec)
        if problem:
            raise UserInputError(f"Teacher: {problem}")
        try:
            teacher = keras.models.load_model(spec)
        except Exception as error:
            raise UserInputError(
                f"Teacher {spec} is not a loadable Keras model: {error}"
            ) from error
        if isinstance(teacher, TeacherAdapter):  # saved with its convention (a fine-tuned one)
            return _frozen(_check_classes(teacher, spec, num_classes))
        _check_takes_rgb_images(teacher, spec)
        teacher_size = (getattr(teacher, "input_shape", None) or (None, None))[1]
        adapter = TeacherAdapter(
            teacher,
            input_convention or "normalized",
            outputs=outputs,
            name="teacher",
            student_preprocessing=student_preprocessing,
            # a teacher built for another fixed size gets the batch resized to it
            image_size=teacher_size if teacher_size not in (None, image_size) else None,
        )
    elif regnet.canonical_name(spec):
        adapter = TeacherAdapter(
            _regnet(spec, num_classes, image_size, weights),
            input_convention or "normalized",  # timm's RegNetY takes the student's input
            name="teacher",
            student_preprocessing=student_preprocessing,
        )
    else:
        constructor, module = _application(
            spec,
            f"Unknown teacher {spec!r}: give a .keras file, a RegNetY name (regnety160, the "
            f"paper's teacher, or another size: {', '.join(regnet.CONFIGS)}) or a "
            f"keras.applications name such as resnet50, efficientnetb0. Received: teacher={spec!r}",
        )
        convention = input_convention or "keras_applications"
        if weights is None:  # built at the student's size; with weights, at its own
            _check_input_size(spec, module, image_size, "teacher")
        teacher = _with_weights(
            spec,
            weights,
            constructor,
            classes=num_classes if weights in (None,) else 1000,
            classifier_activation=None,
            input_shape=(image_size, image_size, 3) if weights is None else None,
        )
        adapter = TeacherAdapter(
            teacher,
            convention,
            application=module,
            outputs="logits",
            image_size=None if weights is None else teacher.input_shape[1] or None,
            name="teacher",
            student_preprocessing=student_preprocessing,
        )
    return _frozen(_check_classes(adapter, spec, num_classes))


def _regnet(spec, num_classes, image_size, weights):
    """A RegNetY with timm's weights (a state dict) or random ones (None)."""
    if weights is not None and not isinstance(weights, dict):
        raise UserInputError(
            "A RegNetY teacher's weights are a timm state dict or None here ('imagenet' and "
            f"checkpoint files are read by deit_keras.training.teacher). Received: {weights=}"
        )
    classes = num_classes if weights is None else regnet.state_num_classes(weights)
    model = regnet.regnety(spec, num_classes=classes, image_size=image_size)
    return model if weights is None else regnet.load_timm_state(model, weights)


def _check_takes_rgb_images(teacher, spec: str) -> None:
    """A teacher sees the student's batch: `[B, H, W, 3]` images."""
    try:
        shape = teacher.input_shape
    except (AttributeError, ValueError):  # a subclassed model: its call decides
        return
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[-1] not in (None, 3):
        raise UserInputError(
            f"Teacher {spec} takes inputs of shape {shape}, but a teacher sees the student's "
            "RGB images, shape (batch, height, width, 3): train the teacher on RGB images."
        )


def _logits_width(model) -> int:
    """Classes of `model`'s logits: its `num_classes` (a subclassed model, such as a
    deit_keras DeiT teacher, has no `output_shape`), else its output's last axis."""
    known = getattr(model, "num_classes", None)
    return known if isinstance(known, int) else model.output_shape[-1]


def check_teacher_classes(teacher, num_classes: int) -> None:
    """Refuses, in one line, a teacher whose logits are not `num_classes` wide (an ImageNet
    top on a 10-class student: a NaN loss under XLA, a label error without it)."""
    try:
        width = _logits_width(teacher)
    except (AttributeError, ValueError, TypeError, KeyError):  # only a call would tell
        return
    if isinstance(width, int) and width != num_classes:
        raise UserInputError(
            f"The teacher {teacher.name} predicts {width} classes but the student has "
            f"{num_classes}; give a teacher trained on the student's classes (e.g. "
            "`deit_keras.distill.teachers.build_finetune_teacher`, then fit it). "
            f"Received: teacher classes={width}, student num_classes={num_classes}"
        )


def check_teacher_input(teacher, preprocessing: Preprocessing) -> None:
    """Refuses, in one line, a `TeacherAdapter` that turns the student's batch back into
    pixels with another mean/std than the student normalised it with: the teacher would
    see shifted colours, a wrong target with no error."""
    if not isinstance(teacher, TeacherAdapter) or teacher.input_convention == "normalized":
        return
    adapter = teacher.student_preprocessing
    pairs = ((adapter.mean, preprocessing.mean), (adapter.std, preprocessing.std))
    if not all(np.allclose(a, b, rtol=0, atol=1e-6) for a, b in pairs):
        raise UserInputError(
            "The teacher adapter turns the student's batch back into pixels with mean "
            f"{adapter.mean} and std {adapter.std}, but the student normalises with mean "
            f"{preprocessing.mean} and std {preprocessing.std}: build it with "
            "TeacherAdapter(..., student_preprocessing=model.preprocessing)."
        )


def check_teacher_outputs(teacher, distillation: str) -> None:
    """Refuses, in one line, soft distillation from a teacher that ends in a softmax
    (keras.applications' default top): its probabilities would be read as logits and
    softened again, a wrong target with no error. Hard distillation's argmax is the same."""
    if distillation == "soft" and _ends_in_softmax(teacher):
        raise UserInputError(
            f"The teacher {teacher.name} ends in a softmax, and soft distillation takes its "
            "logits: give one without the final softmax (keras.applications: "
            "classifier_activation=None; a teacher file: saved so), or from Python wrap it "
            "in deit_keras.distill.TeacherAdapter(teacher, outputs='probabilities'). "
            "Received: distillation='soft'"
        )


def _ends_in_softmax(model, depth: int = 0) -> bool:
    """Whether a functional or Sequential model's output layer or op (through adapters
    and nested models) is a softmax; False when it cannot be told (a subclassed model, a
    `Lambda`)."""
    if depth > 8:
        return False
    if isinstance(model, TeacherAdapter):
        return model.outputs_kind == "logits" and _ends_in_softmax(model.teacher, depth + 1)
    try:
        last = model.outputs[0]._keras_history[0]
    except (AttributeError, IndexError, TypeError, ValueError):
        return False
    if isinstance(last, keras.Model):
        return _ends_in_softmax(last, depth + 1)
    if type(last).__name__ == "Softmax":  # the layer, or `keras.ops.softmax` in a graph
        return True
    return getattr(getattr(last, "activation", None), "__name__", None) == "softmax"


def _check_classes(adapter, spec, num_classes):
    if adapter.num_classes != num_classes:
        raise UserInputError(
            f"Teacher {spec} predicts {adapter.num_classes} classes but the dataset has "
            f"{num_classes}; use a teacher trained on this dataset."
        )
    return adapter


def _frozen(adapter):
    adapter.trainable = False
    return adapter


def build_small_cnn(
    num_classes: int, image_size: int, width: int = 16, name: str = "cnn_teacher"
) -> keras.Model:
    """A small ConvNet teacher for small datasets (the digits default).

    Three stages of two 3x3 conv + BatchNorm + ReLU, global pooling, a
    linear head producing logits; takes the student's normalised input.
    """
    inputs = keras.Input((image_size, image_size, 3))
    x = inputs
    for stage in range(3):
        for _ in range(2):
            x = keras.layers.Conv2D(
                width * 2**stage, 3, padding="same", use_bias=False, data_format="channels_last"
            )(x)
            # PyTorch's momentum (0.1 there): Keras' 0.99 left the moving statistics about
            # half at their start after the 80 updates of a 40-epoch teacher on 184 images,
            # which then predicted 0.38 in inference mode (0.98 on batch statistics).
            x = keras.layers.BatchNormalization(momentum=0.9)(x)
            x = keras.layers.ReLU()(x)
        if stage < 2:
            x = keras.layers.MaxPooling2D(data_format="channels_last")(x)
    x = keras.layers.GlobalAveragePooling2D(data_format="channels_last")(x)
    x = ReplicaDropout(0.2)(x)  # its masks differ between replicas, as official DeiT's ranks
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name=name)
