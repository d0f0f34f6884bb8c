"""A CNN teacher's stage feature maps, for feature distillation ("locality guidance").

Li et al., "Locality Guidance for Improving Vision Transformers on Tiny
Datasets", ECCV 2022 (arXiv:2207.10026; code: lkhl/tiny-transformers): the
student's patch-token maps learn to match the feature maps a CNN teacher
computes at the end of its spatial stages (ResNet-56's three stages there).
`stage_layers` finds those layers in any functional Keras CNN (the small
CNN of `teachers.build_small_cnn`, a `keras.applications` model, either
wrapped in a `TeacherAdapter`); `FeatureTeacher` runs the frozen teacher once
for its logits and those maps.
"""

import keras
from keras import ops

from deit_keras.distill.teachers import TeacherAdapter
from deit_keras.errors import UserInputError


def _is_functional(model) -> bool:
    return isinstance(model, keras.Model) and bool(getattr(model, "inputs", None))


def cnn_of(teacher):
    """The functional CNN inside `teacher` (a `TeacherAdapter` or the CNN itself)."""
    cnn = teacher.teacher if isinstance(teacher, TeacherAdapter) else teacher
    if not _is_functional(cnn):
        raise UserInputError(
            "Feature distillation needs a functional Keras CNN teacher (a keras.applications "
            f"model, the small CNN, any keras.Model(inputs, outputs)). Received: "
            f"teacher={type(cnn).__name__}"
        )
    return cnn


def _flat_layers(model):
    """`(layer or operation, owning functional model)` in order, nested functional models
    opened.

    Operations count: ConvNeXt's residual adds are `x + y` in its graph, not
    layers, and they are its blocks' outputs. A nested `Sequential` stays one
    layer (ConvNeXt's stem and downsampling blocks): its layers' outputs are
    not tensors of the enclosing graph.
    """
    for layer in _operations(model):
        if _is_functional(layer) and not isinstance(layer, keras.Sequential):
            yield from _flat_layers(layer)
        else:
            yield layer, model


def _operations(model) -> list:
    """A functional model's layers and operations in order; a `Sequential`'s layers."""
    return getattr(model, "operations", None) or model.layers


def _spatial_size(layer):
    """`(h, w)` of a layer's 4-D output with more than one position, else None."""
    try:
        shape = tuple(layer.output.shape)
    except (AttributeError, ValueError, TypeError):
        return None
    if len(shape) != 4 or shape[1] is None or shape[2] is None or shape[1] * shape[2] <= 1:
        return None  # not a map, or a global pooling (squeeze-excitation's 1x1)
    return shape[1], shape[2]


def stage_layers(teacher) -> list[str]:
    """Names of the output layer of each spatial stage of `teacher`, shallow to deep.

    A stage is the run of layers at one resolution, each stage smaller than
    the last; padding layers (larger) and global poolings (1x1) are no stage,
    nor a run before the first layer with weights (the input, rescaling, an
    input `Normalization`). Its output is the first layer of the run that
    feeds a smaller one, in the teacher's own graph: where the next stage's
    first block begins at this resolution (a RegNet's 1x1 conv before its
    strided one, beside the shortcut), that block's layers come after the
    stage's output in the run. In inverted-residual CNNs (MobileNet,
    EfficientNet) that layer is the next block's expand activation, which
    alone feeds the strided depthwise conv; the output is then what the
    expansion reads, the last block's (`_block_input`). The last stage's
    output is its last layer. A nested `Sequential` counts as one layer.

    Args:
        teacher: a `TeacherAdapter` or a functional `keras.Model` CNN.

    Returns:
        list of str: layer names; nested models' layers by their own names.
    """
    runs = _resolution_runs(cnn_of(teacher))
    outputs = []
    for index, (area, layers) in enumerate(runs):
        last = index == len(runs) - 1
        feeding = [] if last else [pair for pair in layers if _feeds_smaller(*pair, area)]
        output = _block_input(*feeding[0], area, layers[0][0]) if feeding else layers[-1][0]
        outputs.append(output.name)
    return outputs


def _block_input(layer, owner, area, first):
    """The stage output behind `layer`: the input of the block `layer` begins, or `layer`.

    Walks back from `layer` through normalizations and activations (each the
    sole consumer of the one before, at this resolution). Reaching a 1x1
    convolution that at least doubles the channels, `layer` is a block's
    expansion (an inverted residual's: 1x1 conv, BN, activation, then the
    strided depthwise conv) and the layer the convolution reads is the
    previous block's output, the stage's, unless it is the stage's `first`
    layer (nothing computed at this resolution yet: InceptionV3's stem).
    Anything else (a merge, another kernel, another resolution, a branch)
    leaves `layer`.
    """
    graph = _graph_node_ids(owner)
    current = layer
    while True:
        producers = _producers(current, graph)
        if len(producers) != 1:
            return layer
        producer = producers[0]
        if _area(producer) != area or _consumers(producer, graph) != [current]:
            return layer
        if _is_expansion(producer):
            inputs = _producers(producer, graph)
            if len(inputs) == 1 and inputs[0] is not first and _area(inputs[0]) == area:
                return inputs[0]
            return layer
        if _weights(producer) and not isinstance(producer, _NORMALIZATIONS):
            return layer
        current = producer


_NORMALIZATIONS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)


def _is_expansion(layer) -> bool:
    """A 1x1 convolution with at least twice the channels it takes."""
    return (
        isinstance(layer, keras.layers.Conv2D)
        and tuple(layer.kernel_size) == (1, 1)
        and tuple(layer.strides) == (1, 1)
        and layer.output.shape[-1] >= 2 * layer.input.shape[-1]
    )


def _area(layer):
    size = _spatial_size(layer)
    return None if size is None else size[0] * size[1]


def _resolution_runs(cnn) -> list:
    """`[(area, [(layer, owner), ...])]`: runs at one spatial size, each smaller, with weights."""
    runs = []  # [area, (layer, owning model) pairs, whether the run has weights]
    for layer, owner in _flat_layers(cnn):
        size = _spatial_size(layer)
        if size is None:
            continue
        area = size[0] * size[1]
        if not runs or area < runs[-1][0]:
            runs.append([area, [(layer, owner)], _computes(layer)])
        elif area == runs[-1][0]:
            runs[-1][1].append((layer, owner))
            runs[-1][2] = runs[-1][2] or _computes(layer)
    return [(area, layers) for area, layers, weighted in runs if weighted]


def _graph_node_ids(owner) -> set:
    """Ids of the nodes of `owner`'s graph (a `Sequential`'s: its inner functional model's)."""
    graph = getattr(owner, "_functional", None) or owner
    return {id(node) for nodes in graph._nodes_by_depth.values() for node in nodes}


def _weights(operation) -> list:
    return getattr(operation, "weights", [])  # a Keras operation (`x + y`) has none


def _computes(layer) -> bool:
    """Whether `layer` has weights of a feature extractor (not the input's `Normalization`)."""
    return bool(_weights(layer)) and not isinstance(layer, keras.layers.Normalization)


def _feeds_smaller(layer, owner, area) -> bool:
    """Whether a layer consuming `layer`'s output, through larger ones (padding), is smaller."""
    graph = _graph_node_ids(owner)
    pending, seen = list(_consumers(layer, graph)), set()
    while pending:
        consumer = pending.pop()
        if id(consumer) in seen:
            continue
        seen.add(id(consumer))
        size = _spatial_size(consumer)
        if size is not None and size[0] * size[1] < area:
            return True
        if size is not None and size[0] * size[1] > area:
            pending.extend(_consumers(consumer, graph))
    return False


def _consumers(layer, graph) -> list:
    """The layers called on `layer`'s output in the functional graph whose node ids are `graph`.

    A layer's nodes also record calls in other graphs (another model built on it).
    """
    return [node.operation for node in layer._outbound_nodes if id(node) in graph]


def _producers(layer, graph) -> list:
    """The layers whose outputs `layer` is called on in the graph whose node ids are `graph`."""
    nodes = [node for node in layer._inbound_nodes if id(node) in graph]
    return [parent.operation for node in nodes for parent in node.parent_nodes]


def spread(items: list, count: int) -> list:
    """`count` of `items` evenly spread, the first and the last included."""
    if count > len(items) or count <= 0:
        raise UserInputError(
            f"Feature distillation matches {count} student blocks but the teacher has "
            f"{len(items)} spatial stages ({', '.join(items)}); choose at most {len(items)} "
            "blocks (compile's feature_blocks=, deit-train's --feature_student_blocks) or "
            "name the teacher layers (feature_layers=, --feature_teacher_layers)."
        )
    if count == 1:
        return [items[-1]]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def _owner(cnn, names):
    """The one functional model (`cnn` or a nested one) holding every layer in `names`."""
    owners = dict((layer.name, owner) for layer, owner in _flat_layers(cnn))
    missing = [name for name in names if name not in owners]
    if missing:
        raise UserInputError(
            f"The teacher has no layer named {', '.join(missing)}; its stage ends are "
            f"{', '.join(stage_layers(cnn))}. Received: teacher_layers={list(names)}"
        )
    found = {id(owners[name]): owners[name] for name in names}
    if len(found) > 1:
        raise UserInputError(
            f"The teacher layers {list(names)} lie in different nested models; name "
            "layers of one model."
        )
    return next(iter(found.values()))


@keras.saving.register_keras_serializable(package="deit_keras")
class FeatureTeacher(keras.Model):
    """A frozen teacher that returns its logits and the feature maps of named layers.

    Args:
        teacher: a `TeacherAdapter` or a functional `keras.Model` CNN taking
            the student's batch and giving logits.
        layer_names: list of str. Layers of the CNN (or of one functional
            model nested in it and applied to its input, a fine-tuned
            `keras.applications` backbone) whose outputs are the maps.

    Call returns `(logits [B, K] float32, [maps [B, h, w, C] float32, ...])`.
    A flat CNN runs once for both; a nested backbone runs once more for its maps.
    """

    def __init__(self, teacher, layer_names, **kwargs):
        super().__init__(**kwargs)
        self.teacher = teacher
        self.layer_names = tuple(layer_names)
        self._cnn = cnn_of(teacher)
        owner = _owner(self._cnn, self.layer_names)
        named = {operation.name: operation for operation in _operations(owner)}
        maps = [named[name].output for name in self.layer_names]
        self.channels = tuple(int(item.shape[-1]) for item in maps)
        if owner is self._cnn:
            self._joint = keras.Model(owner.inputs, [owner.outputs[0], *maps])
            self._maps = None
        else:
            self._joint = None
            self._maps = keras.Model(owner.inputs, maps)
        self.trainable = False
        self.built = True  # of built models only

    def call(self, images, training=False):
        adapter = self.teacher if isinstance(self.teacher, TeacherAdapter) else None
        inputs = adapter.teacher_input(images) if adapter else images
        if self._joint is not None:
            outputs = self._joint(inputs, training=False)
            logits, maps = outputs[0], list(outputs[1:])
        else:
            logits = self._cnn(inputs, training=False)
            maps = self._maps(inputs, training=False)
            maps = list(maps) if isinstance(maps, (list, tuple)) else [maps]
        logits = adapter.teacher_logits(logits) if adapter else ops.cast(logits, "float32")
        return logits, [ops.cast(item, "float32") for item in maps]

    def get_config(self):
        config = super().get_config()
        config.update(
            teacher=keras.saving.serialize_keras_object(self.teacher),
            layer_names=list(self.layer_names),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)
