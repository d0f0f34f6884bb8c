"""Feature distillation ("locality guidance"): student patch-token maps -> a CNN's stage maps.

As Li et al., ECCV 2022 (lkhl/tiny-transformers `distill.py`, linear
transform): the patch tokens after chosen student blocks, as maps
`[B, gh, gw, D]`, each pass a trainable 1x1 convolution to the channel count
of the matched teacher map; both maps are resized (bilinear, half-pixel
centres) to the larger of the two grids; the loss is the plain mean squared
error, summed over the pairs, added to the objective with a weight (2.5
there). The adapters exist only for training: they live here, outside the
student, with their own copy of the student's optimizer, so the student's
`.keras` file, weights and optimizer state are those of a plain model.
"""

import keras
from keras import ops

from deit_keras.distill.feature_teacher import FeatureTeacher, spread, stage_layers
from deit_keras.errors import UserInputError

TEACHER_FEATURES = "teacher_features"


def default_blocks(depth: int) -> tuple:
    """The paper's blocks for depth 12, `(0, 6, 11)`: first, middle and last."""
    return tuple(sorted({0, depth // 2, depth - 1}))


def _larger(a, b, axis):
    """The larger of two maps' sizes along `axis` (an int when both are known)."""
    if a.shape[axis] is None or b.shape[axis] is None:
        return ops.maximum(ops.shape(a)[axis], ops.shape(b)[axis])
    return max(a.shape[axis], b.shape[axis])


def _resize(maps, size):
    if tuple(maps.shape[1:3]) == tuple(size):  # nothing to do (never for run-time sizes)
        return maps
    return ops.image.resize(
        maps, size, interpolation="bilinear", antialias=False, data_format="channels_last"
    )


def feature_mse(student_maps, teacher_maps):
    """Sum over pairs of `mean((s - t)^2)`, both resized to their larger grid.

    Args:
        student_maps: list of `[B, h, w, C]` float32 (adapted) student maps.
        teacher_maps: list of `[B, h', w', C]` float32 teacher maps.

    Returns:
        A float32 scalar.
    """
    total = ops.zeros((), "float32")
    for student, teacher in zip(student_maps, teacher_maps, strict=True):
        size = (_larger(student, teacher, 1), _larger(student, teacher, 2))
        difference = _resize(student, size) - _resize(ops.stop_gradient(teacher), size)
        total = total + ops.mean(ops.square(difference))
    return total


@keras.saving.register_keras_serializable(package="deit_keras")
class FeatureAdapters(keras.Model):
    """One 1x1 convolution per matched pair: student tokens -> teacher channels (training only).

    Args:
        channels: list of int. The teacher maps' channel counts.
        embed_dim: int. The student's token size.

    Call takes the list of student maps `[B, h, w, embed_dim]` and returns
    them adapted, float32.
    """

    def __init__(self, channels, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.channels = tuple(int(c) for c in channels)
        self.embed_dim = int(embed_dim)
        self.convs = [
            keras.layers.Conv2D(
                c, 1, data_format="channels_last", dtype="float32", name=f"adapter_{i}"
            )
            for i, c in enumerate(self.channels)
        ]
        for conv in self.convs:
            conv.build((None, None, None, self.embed_dim))
        self.built = True

    def call(self, maps):
        pairs = zip(self.convs, maps, strict=True)
        return [conv(ops.cast(item, "float32")) for conv, item in pairs]

    def get_config(self):
        config = super().get_config()
        config.update(channels=list(self.channels), embed_dim=self.embed_dim)
        return config


def copy_optimizer(optimizer):
    """A fresh optimizer of `optimizer`'s class and settings (no EMA, no loss scaling)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's
    config = dict(inner.get_config(), use_ema=False)
    return type(inner).from_config(config)


def _check_blocks(blocks, depth):
    bad = [block for block in blocks if not 0 <= block < depth]
    if bad or not blocks or len(set(blocks)) != len(blocks):
        raise UserInputError(
            f"feature_student_blocks must be distinct block indices in [0, {depth - 1}]. "
            f"Received: feature_student_blocks={list(blocks)}"
        )


class FeatureDistillation:
    """The feature term of the objective: the teacher's maps, the adapters and their optimizer.

    Args:
        teacher: the run's teacher (`TeacherAdapter` or functional CNN).
        embed_dim: int. The student's token size.
        depth: int. The student's number of (self-attention) blocks.
        weight: float >= 0. The term's weight. Defaults to 2.5 (the paper's).
        student_blocks: list of int or None. Blocks whose output tokens are
            matched; None: `default_blocks(depth)`.
        teacher_layers: list of str or None. The matched teacher layers;
            None: as many of `stage_layers(teacher)` as blocks, evenly spread.
    """

    def __init__(
        self, teacher, embed_dim, depth, weight=2.5, student_blocks=None, teacher_layers=None
    ):
        if weight < 0:
            raise UserInputError(
                f"feature_distill_weight must be >= 0. Received: feature_distill_weight={weight}"
            )
        blocks = tuple(student_blocks) if student_blocks else default_blocks(depth)
        _check_blocks(blocks, depth)
        blocks = tuple(sorted(blocks))  # matched to the teacher's layers from the first block
        layers = list(teacher_layers or spread(stage_layers(teacher), len(blocks)))
        if len(layers) != len(blocks):
            raise UserInputError(
                f"Got {len(blocks)} student blocks and {len(layers)} teacher layers; give as "
                f"many of each. Received: feature_student_blocks={list(blocks)}, "
                f"feature_teacher_layers={layers}"
            )
        self.weight = float(weight)
        self.student_blocks = blocks
        self.teacher = FeatureTeacher(teacher, layers, name="feature_teacher")
        self.adapters = FeatureAdapters(self.teacher.channels, embed_dim, name="feature_adapters")

    @property
    def teacher_layers(self) -> tuple:
        return self.teacher.layer_names

    @property
    def optimizer(self):
        return self.adapters.optimizer

    def compile(self, optimizer) -> None:
        """Gives the adapters a copy of the student's `optimizer`, built now (in its scope)."""
        self.adapters.compile(optimizer=copy_optimizer(optimizer))
        self.adapters.optimizer.build(self.adapters.trainable_variables)

    def teacher_outputs(self, images):
        """`(teacher logits, teacher maps)` of a batch."""
        return self.teacher(images, training=False)

    def loss(self, student_maps, teacher_maps):
        """The unweighted feature loss of one batch (`feature_mse` of the adapted maps)."""
        return feature_mse(self.adapters(student_maps), teacher_maps)
