"""RegNetY, the CNN teacher of the DeiT paper (RegNetY-16GF, `regnety_160`).

The architecture of timm's `timm/models/regnet.py` (Radosavovic et al., "Designing
Network Design Spaces"), channels-last, as a functional Keras model of built-in
layers, with timm's module paths as layer names (`s1.b1.conv2.conv` ->
`s1_b1_conv2_conv`), so `load_timm_state` maps a timm state dict onto it one
layer at a time. Convolutions pad as PyTorch does (symmetric zero padding), and
BatchNorm uses PyTorch's epsilon, so converted weights give timm's logits.

Stem: 3x3 stride-2 conv (32) + BN + ReLU. Each Y block: 1x1 conv-BN-ReLU, 3x3
grouped conv-BN-ReLU (stride 2 in a stage's first block), squeeze-excitation,
1x1 conv-BN, plus the shortcut (1x1 stride-2 conv + BN where the shape changes),
ReLU. Head: global average pooling, Dense.
"""

from __future__ import annotations  # `keras.Model` annotations stay unevaluated

import dataclasses
import math

import numpy as np

from deit_keras.backend import keras
from deit_keras.errors import UserInputError

BN_EPSILON = 1e-5  # PyTorch's BatchNorm2d default, what timm's weights were trained with
STEM_WIDTH = 32
WIDTH_QUANTUM = 8


@dataclasses.dataclass(frozen=True)
class RegNetYConfig:
    """timm's `RegNetCfg` fields a RegNetY uses (bottleneck ratio 1, SE ratio 0.25)."""

    w0: int
    wa: float
    wm: float
    group_size: int
    depth: int
    se_ratio: float = 0.25


# timm's `model_cfgs` of the RegNetY family (the name's digits: GFLOPs x 10).
CONFIGS = {
    "regnety_002": RegNetYConfig(w0=24, wa=36.44, wm=2.49, group_size=8, depth=13),
    "regnety_004": RegNetYConfig(w0=48, wa=27.89, wm=2.09, group_size=8, depth=16),
    "regnety_006": RegNetYConfig(w0=48, wa=32.54, wm=2.32, group_size=16, depth=15),
    "regnety_008": RegNetYConfig(w0=56, wa=38.84, wm=2.4, group_size=16, depth=14),
    "regnety_016": RegNetYConfig(w0=48, wa=20.71, wm=2.65, group_size=24, depth=27),
    "regnety_032": RegNetYConfig(w0=80, wa=42.63, wm=2.66, group_size=24, depth=21),
    "regnety_040": RegNetYConfig(w0=96, wa=31.41, wm=2.24, group_size=64, depth=22),
    "regnety_064": RegNetYConfig(w0=112, wa=33.22, wm=2.27, group_size=72, depth=25),
    "regnety_080": RegNetYConfig(w0=192, wa=76.82, wm=2.19, group_size=56, depth=17),
    "regnety_120": RegNetYConfig(w0=168, wa=73.36, wm=2.37, group_size=112, depth=19),
    "regnety_160": RegNetYConfig(w0=200, wa=106.23, wm=2.48, group_size=112, depth=18),
    "regnety_320": RegNetYConfig(w0=232, wa=115.89, wm=2.53, group_size=232, depth=20),
}


@dataclasses.dataclass(frozen=True)
class Stage:
    width: int
    depth: int
    group_size: int


def canonical_name(name: str) -> str | None:
    """`"regnety160"`, `"RegNetY_160"`, `"regnety_160"` -> `"regnety_160"`; else None."""
    compact = name.lower().replace("_", "").replace("-", "")
    for known in CONFIGS:
        if compact == known.replace("_", ""):
            return known
    return None


def stages(config: RegNetYConfig) -> list[Stage]:
    """The four stages' widths, depths and group widths, as timm's `generate_regnet` and
    `adjust_widths_groups_comp` derive them from (w0, wa, wm, depth)."""
    continuous = np.arange(config.depth) * config.wa + config.w0
    exponents = np.round(np.log(continuous / config.w0) / math.log(config.wm))
    widths = np.round(config.w0 * np.power(config.wm, exponents) / WIDTH_QUANTUM) * WIDTH_QUANTUM
    stage_widths, depths = np.unique(widths.astype(int), return_counts=True)
    result = []
    for width, depth in zip(stage_widths.tolist(), depths.tolist(), strict=True):
        group = min(config.group_size, width)
        result.append(Stage(int(round(width / group) * group), depth, group))
    return result


def _conv_bn(x, filters, kernel, stride, name, groups=1, relu=True):
    """timm's `ConvNormAct`: PyTorch's symmetric padding (k // 2), conv without bias, BN."""
    if kernel > 1:
        x = keras.layers.ZeroPadding2D(
            kernel // 2, data_format="channels_last", name=f"{name}_pad"
        )(x)
    x = keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        groups=groups,
        use_bias=False,
        data_format="channels_last",
        name=f"{name}_conv",
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.9, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_act")(x) if relu else x


def _squeeze_excite(x, reduced, name):
    channels = x.shape[-1]
    gate = keras.layers.GlobalAveragePooling2D(
        keepdims=True, data_format="channels_last", name=f"{name}_pool"
    )(x)
    gate = keras.layers.Conv2D(reduced, 1, data_format="channels_last", name=f"{name}_fc1")(gate)
    gate = keras.layers.ReLU(name=f"{name}_act")(gate)
    gate = keras.layers.Conv2D(
        channels, 1, activation="sigmoid", data_format="channels_last", name=f"{name}_fc2"
    )(gate)
    return keras.layers.Multiply(name=f"{name}_scale")([x, gate])


def _block(x, width, stride, group_size, se_ratio, name):
    in_width = x.shape[-1]
    shortcut = x
    x = _conv_bn(x, width, 1, 1, f"{name}_conv1")
    x = _conv_bn(x, width, 3, stride, f"{name}_conv2", groups=width // group_size)
    # timm sizes the squeeze from the block's input width, not its bottleneck width.
    x = _squeeze_excite(x, int(round(in_width * se_ratio)), f"{name}_se")
    x = _conv_bn(x, width, 1, 1, f"{name}_conv3", relu=False)
    if in_width != width or stride != 1:
        shortcut = _conv_bn(shortcut, width, 1, stride, f"{name}_downsample", relu=False)
    x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    return keras.layers.ReLU(name=f"{name}_act3")(x)


def regnety(
    variant: str = "regnety_160", num_classes: int = 1000, image_size: int | None = None
) -> keras.Model:
    """A RegNetY with fresh weights: `[B, H, W, 3]` ImageNet-normalised RGB -> logits.

    Args:
        variant: a `CONFIGS` name, in any spelling `canonical_name` accepts.
        num_classes: outputs of the head.
        image_size: a fixed input size, or None (any size).

    Raises:
        UserInputError: unknown variant.
    """
    name = canonical_name(variant)
    if name is None:
        raise UserInputError(
            f"Unknown RegNetY {variant!r}; known: {', '.join(CONFIGS)}. Received: {variant=}"
        )
    config = CONFIGS[name]
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = _conv_bn(inputs, STEM_WIDTH, 3, 2, "stem")
    for index, stage in enumerate(stages(config), start=1):
        for block in range(1, stage.depth + 1):
            stride = 2 if block == 1 else 1
            prefix = f"s{index}_b{block}"
            x = _block(x, stage.width, stride, stage.group_size, config.se_ratio, prefix)
    x = keras.layers.GlobalAveragePooling2D(data_format="channels_last", name="head_pool")(x)
    outputs = keras.layers.Dense(num_classes, name="head_fc")(x)
    return keras.Model(inputs, outputs, name=name)


# === timm weights ===
def state_num_classes(state: dict) -> int:
    """The head's output count of a timm RegNet state dict."""
    if "head.fc.weight" not in state:
        raise UserInputError(
            "The checkpoint is not a timm RegNet state dict (no head.fc.weight). Received keys: "
            f"{', '.join(list(state)[:5])}, ..."
        )
    return int(np.shape(state["head.fc.weight"])[0])


def _keras_values(layer, params):
    """A layer's weights in Keras order and layout, from its timm parameters."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [params[k] for k in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, keras.layers.Dense):
        return [params["weight"].T, params["bias"]]
    # conv: OIHW (O, I/groups, kh, kw) -> HWIO (kh, kw, I/groups, O), grouped or not
    kernel = np.transpose(params["weight"], (2, 3, 1, 0))
    return [kernel, params["bias"]] if layer.use_bias else [kernel]


def load_timm_state(model: keras.Model, state: dict) -> keras.Model:
    """Sets `model`'s weights from timm's state dict of the same RegNetY (numpy arrays).

    Raises:
        UserInputError: keys or shapes that do not match (another architecture).
    """
    by_layer = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if param != "num_batches_tracked":
            by_layer.setdefault(module.replace(".", "_"), {})[param] = np.asarray(value)
    for layer in model.layers:
        if not layer.weights:
            continue
        params = by_layer.pop(layer.name, None)
        if params is None:
            raise UserInputError(
                f"The checkpoint is not a timm {model.name}: it has no "
                f"{layer.name.replace('_', '.')}.*."
            )
        values = _keras_values(layer, params)
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise UserInputError(
                f"The checkpoint is not a timm {model.name}: {layer.name.replace('_', '.')} "
                f"has shapes {[v.shape for v in values]}, the model {expected}."
            )
        layer.set_weights(values)
    if by_layer:
        extra = ", ".join(name.replace("_", ".") for name in list(by_layer)[:3])
        raise UserInputError(f"The checkpoint is not a timm {model.name}: it also has {extra}.")
    return model
