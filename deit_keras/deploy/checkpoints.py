"""Import of published DeiT, DeiT III and CaiT weights (official/timm and Hugging Face layouts).

Two key styles are in use:
  * official DeiT / timm: `cls_token`, `dist_token`, `pos_embed`,
    `patch_embed.proj.*`, `blocks.N.attn.qkv.*` (fused), `head`, `head_dist`;
    `.pth` files wrap them in a `model` entry.
  * Hugging Face: `deit.` (distilled, `DeiTForImageClassificationWithTeacher`)
    or `vit.` (the hub's non-distilled DeiTs, stored as ViT) prefixes,
    separate query/key/value, `cls_classifier` / `distillation_classifier`
    or `classifier`. The hub's files use the transformers 4 names
    (`encoder.layer.N.attention.attention.query`); transformers 5 writes
    `layers.N.attention.q_proj`. Both are read.
Both are first rewritten to timm keys, then copied into the model. DeiT III's
official files (`models_v2.py`) name LayerScale `blocks.N.gamma_1`, timm
`blocks.N.ls1.gamma`; CaiT's keys are the same in both (`blocks.N.gamma_1`,
`blocks_token_only.N.attn.q`, ...), and DataParallel's `module.` prefix is
dropped.
"""

import math
import os
import pickle
import re

import numpy as np
from absl import logging

from deit_keras.data.labels import IMAGENET_NUM_CLASSES, imagenet_synsets
from deit_keras.deploy import saving
from deit_keras.errors import UserInputError
from deit_keras.io import torch_checkpoint
from deit_keras.layers.embedding import resample_position_embeddings
from deit_keras.models.cait import CaiT
from deit_keras.models.variants import build_model


class CheckpointError(UserInputError):
    """A checkpoint that cannot be read or does not fit the model."""


# === Reading ===
def read_state_dict(path: str) -> dict:
    """Reads `path` into `{key: float32 numpy array}`.

    `.safetensors`, `.npz` and zip-format `.pth`/`.pt`/`.bin` files (what
    `torch.save` writes since PyTorch 1.6, e.g. the official DeiT weights) are
    read without torch; torch is used when installed (`weights_only`; a zip
    file it refuses, as a training checkpoint with its run's arguments, is
    read without torch), and needed only for files in the legacy pre-1.6
    format.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint not found: {path}")
    extension = os.path.splitext(path)[1].lower()
    if path.lower().endswith((".pth.tar", ".pt.tar")):  # timm train.py's model_best.pth.tar
        extension = ".pth"
    try:
        if extension == ".safetensors":
            from safetensors.numpy import load_file

            state = load_file(path)
        elif extension == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                state = {key: archive[key] for key in archive.files}
        elif extension in (".pth", ".pt", ".bin"):
            state = _read_torch(path)
        else:
            raise CheckpointError(
                f"Unsupported checkpoint type {extension!r} for {path}; "
                "expected .pth, .pt, .bin, .safetensors or .npz."
            )
    except CheckpointError:
        raise
    except Exception as error:  # corrupt files raise many different types
        first_line = (str(error).strip().splitlines() or [""])[0]  # torch's is a paragraph
        raise CheckpointError(
            f"Cannot read checkpoint {path}: not a readable {extension} file of tensors "
            f"({type(error).__name__}: {first_line})"
        ) from error
    return {key: np.asarray(value, dtype=np.float32) for key, value in state.items()}


def _read_torch(path):
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        state = _torch_load(torch, path)
    elif torch_checkpoint.is_torch_zip(path):
        state = torch_checkpoint.read_torch_zip(path)
    elif _starts_as_a_zip(path):  # the format of every torch.save since 1.6, cut short
        raise CheckpointError(
            f"Cannot read checkpoint {path}: a zip-format torch file, damaged or cut short "
            "(an interrupted download?); fetch it again."
        )
    else:
        raise CheckpointError(
            f"Reading {path} (a legacy torch file) needs torch; install it (pip install torch) "
            "or convert the checkpoint to .safetensors."
        )
    # The model's weights; a checkpoint holding only its EMA's (official main.py's
    # `model_ema`, timm train.py's `state_dict_ema`) gives those.
    for wrapper in ("model", "state_dict", "model_ema", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} is not a checkpoint of weights (a dict of tensor names to tensors, or "
            f"one under 'model' / 'state_dict'); it holds a {type(state).__name__}."
        )
    tensors = {key: _to_numpy(value) for key, value in state.items() if _is_tensor(value)}
    unnamed = [key for key in tensors if not isinstance(key, str)]
    if unnamed:
        raise CheckpointError(
            f"{path} is not a checkpoint of weights: its tensors must be named by strings "
            f"('blocks.0.attn.qkv.weight'); {len(unnamed)} are not. Received: {unnamed[0]!r}"
        )
    if state and not tensors:
        raise CheckpointError(
            f"{path} holds no tensors at its top level nor under 'model' / 'state_dict' / "
            f"'model_ema' / 'state_dict_ema'; its entries: {_key_list(state)}."
        )
    return tensors


def _starts_as_a_zip(path) -> bool:
    with open(path, "rb") as file:
        return file.read(4) == b"PK\x03\x04"


def _torch_load(torch, path):
    """`torch.load` with only tensors unpickled; a training checkpoint also holds the run's
    `args` (official DeiT's `main.py` and timm save an `argparse.Namespace`), which
    `weights_only` refuses: such a zip file is read by our own reader, which keeps the
    tensors and leaves every other object a placeholder."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not torch_checkpoint.is_torch_zip(path):
            # Not torch's advice (weights_only=False runs the file's pickled code).
            raise CheckpointError(
                f"Cannot read checkpoint {path}: not a readable .pth file of tensors (torch's "
                "tensors-only loader refuses it: a damaged file, or a legacy one holding more "
                "than tensors); re-save its state_dict with torch.save, or as .safetensors."
            ) from error
        return torch_checkpoint.read_torch_zip(path)


def _is_tensor(value):
    return isinstance(value, np.ndarray) or hasattr(value, "numpy")


def _to_numpy(value):
    return value if isinstance(value, np.ndarray) else value.float().numpy()


# === Key styles ===
_HF_PREFIX = re.compile(r"^(deit|vit)\.")
_HF_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.distillation_token$", "dist_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    # transformers 5 layout
    (r"^layers\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^layers\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.mlp\.(fc1|fc2)\.", r"blocks.\1.mlp.\2."),
    (r"^layernorm\.", "norm."),
    (r"^(cls_classifier|classifier)\.", "head."),
    (r"^distillation_classifier\.", "head_dist."),
]
_HF_QKV = re.compile(
    r"^(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:attention\.)?"
    r"(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$"
)
_QKV_PART = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}


# Prefixes of wrapped models' keys: DataParallel/DDP's, torch.compile's.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def without_wrapper_prefixes(state: dict) -> dict:
    """`state`'s keys without DataParallel's `module.` and torch.compile's `_orig_mod.`."""

    def bare(key):
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        return key

    return {bare(key): value for key, value in state.items()}


def detect_key_style(state: dict) -> str:
    """ "hf" when the keys carry the `deit.` / `vit.` prefix, or are a bare backbone's
    (`DeiTModel`, `ViTModel`: `embeddings.`, no prefix), else "timm"."""
    hf = any(_HF_PREFIX.match(key) or key.startswith("embeddings.") for key in state)
    return "hf" if hf else "timm"


def hf_to_timm_keys(state: dict) -> dict:
    """Rewrites a Hugging Face DeiT/ViT state dict to timm keys (fusing q, k, v)."""
    out, qkv_parts, unknown = {}, {}, []
    for key, value in state.items():
        short = _HF_PREFIX.sub("", key)
        if short.startswith("pooler."):
            continue  # DeiTModel's pooler is not used by the classifiers
        match = _HF_QKV.match(short)
        if match:
            block, part, kind = match.groups()
            qkv_parts.setdefault((block, kind), {})[_QKV_PART.get(part, part)] = value
            continue
        for pattern, replacement in _HF_RENAMES:
            renamed, count = re.subn(pattern, replacement, short)
            if count:
                out[renamed] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"Unknown checkpoint keys: {_key_list(unknown)}")
    for (block, kind), parts in qkv_parts.items():
        missing = {"query", "key", "value"} - set(parts)
        if missing:
            raise CheckpointError(
                f"Block {block} {kind}: missing attention parts {sorted(missing)}"
            )
        out[f"blocks.{block}.attn.qkv.{kind}"] = np.concatenate(
            [parts["query"], parts["key"], parts["value"]], axis=0
        )
    return out


def _key_list(keys, limit=8):
    """`a, b, c (+N more)`: keeps an error about hundreds of keys on one readable line."""
    keys = sorted(map(str, keys))
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# === Copying into the model ===
# PyTorch layouts -> Keras: Linear [out, in] -> Dense [in, out];
# Conv2d [out, in, kh, kw] -> Conv2D [kh, kw, in, out]. Each entry is (to_keras, to_torch).
_LINEAR = (np.transpose, np.transpose)
_CONV = (lambda w: np.transpose(w, (2, 3, 1, 0)), lambda w: np.transpose(w, (3, 2, 0, 1)))


def _dense(layer):
    return [(layer.kernel, _LINEAR), (layer.bias, None)]


def _norm(layer):
    return [(layer.gamma, None), (layer.beta, None)]


def timm_weight_map(model) -> dict:
    """`{timm key: (keras variable, (to_keras, to_torch) or None)}` for every weight of `model`."""
    conv = model.patch_embed.projection
    is_cait = isinstance(model, CaiT)
    pairs = {
        "cls_token": (model.cls_token if is_cait else model.tokens.cls_token, None),
        "pos_embed": (model.tokens.pos_embed, None),
        "patch_embed.proj.weight": (conv.kernel, _CONV),
        "patch_embed.proj.bias": (conv.bias, None),
    }
    if model.distilled:
        pairs["dist_token"] = (model.tokens.dist_token, None)

    def add(prefix, variables):
        for suffix, pair in zip(("weight", "bias"), variables, strict=False):
            pairs[f"{prefix}.{suffix}"] = pair

    for index, block in enumerate(model.blocks):
        prefix = f"blocks.{index}"
        add(f"{prefix}.norm1", _norm(block.norm1))
        add(f"{prefix}.attn.qkv", _dense(block.attn.qkv))
        if block.talking_heads:
            add(f"{prefix}.attn.proj_l", _dense(block.attn.proj_l))
            add(f"{prefix}.attn.proj_w", _dense(block.attn.proj_w))
        add(f"{prefix}.attn.proj", _dense(block.attn.proj))
        add(f"{prefix}.norm2", _norm(block.norm2))
        add(f"{prefix}.mlp.fc1", _dense(block.mlp.fc1))
        add(f"{prefix}.mlp.fc2", _dense(block.mlp.fc2))
        if block.ls1 is not None:
            # timm's CaiT keeps the official `gamma_N`; its ViT (DeiT III) says `lsN.gamma`.
            for number, scale in ((1, block.ls1), (2, block.ls2)):
                key = f"{prefix}.gamma_{number}" if is_cait else f"{prefix}.ls{number}.gamma"
                pairs[key] = (scale.gamma, None)
    for index, block in enumerate(getattr(model, "blocks_token_only", [])):
        prefix = f"blocks_token_only.{index}"
        add(f"{prefix}.norm1", _norm(block.norm1))
        for part in ("q", "k", "v", "proj"):
            add(f"{prefix}.attn.{part}", _dense(getattr(block.attn, part)))
        add(f"{prefix}.norm2", _norm(block.norm2))
        add(f"{prefix}.mlp.fc1", _dense(block.mlp.fc1))
        add(f"{prefix}.mlp.fc2", _dense(block.mlp.fc2))
        pairs[f"{prefix}.gamma_1"] = (block.gamma_1.gamma, None)
        pairs[f"{prefix}.gamma_2"] = (block.gamma_2.gamma, None)
    add("norm", _norm(model.norm))
    for name in ("head", "head_dist"):
        layer = getattr(model, name)
        if layer is not None:
            add(name, _dense(layer))
    return pairs


def has_one_head_for_two_tokens(state: dict) -> bool:
    """A distilled body (class and distillation tokens) under one head, on the class token
    (Hugging Face's `DeiTForImageClassification`): no model here computes its output."""
    return "dist_token" in state and "head.weight" in state and "head_dist.weight" not in state


def checkpoint_num_classes(state: dict) -> int:
    """Class count of the checkpoint's head (0 when it has none)."""
    head = state.get("head.weight")
    if head is None:
        head = state.get("head.bias")
        return 0 if head is None else head.shape[0]
    return head.shape[0]


def load_timm_state_dict(model, state: dict, skip_heads: bool = False):
    """Copies a timm-keyed state dict into `model`, all or nothing.

    The position embeddings are resampled (PyTorch bicubic) when the
    checkpoint's patch grid differs from the model's. With `skip_heads` the
    classification heads keep their fresh init (fine-tuning to new classes).

    Raises:
        CheckpointError: naming unknown keys, missing keys and shape
            mismatches; the model is left untouched.
    """
    state = dict(state)
    if skip_heads:
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist."))}
    if not {"patch_embed.proj.weight", "pos_embed", "cls_token"} & set(state):
        raise CheckpointError(
            "The checkpoint holds no DeiT, DeiT III or CaiT weights (no patch_embed.proj.weight, "
            f"pos_embed or cls_token); its keys: {_key_list(sorted(state))}"
        )
    family, model_family = checkpoint_family(state), _model_family(model)
    if family == LAYER_SCALE_VIT:
        raise CheckpointError(
            "The checkpoint is a ViT with LayerScale whose position embeddings include the "
            "class token (timm's vit_* built with init_values): neither a DeiT (no LayerScale) "
            "nor a DeiT III (position embeddings for the patches only); no model here "
            "computes it."
        )
    if family != model_family:
        raise CheckpointError(
            f"The checkpoint is a {family}'s but {model.name} is a {model_family}; "
            f"pick a {family} --model (`deit_keras.list_models()` names them)."
        )
    source_prefix = 2 if "dist_token" in state else 1
    if has_one_head_for_two_tokens(state):
        raise CheckpointError(
            "The checkpoint has a distillation token but one head, on the class token "
            "(Hugging Face's DeiTForImageClassification, e.g. a fine-tune of "
            "facebook/deit-*-distilled): a distilled DeiT here averages two heads. Convert "
            "the DeiTForImageClassificationWithTeacher checkpoint instead, or fine-tune "
            "from this one with new heads (deit-train, or create_model(..., num_classes=N))."
        )
    if source_prefix != model.num_prefix_tokens:
        kind = "distilled (has dist_token)" if source_prefix == 2 else "not distilled"
        advice = "pick the matching --model"
        if model_family != "DeiT" and model.distilled:  # no distilled checkpoint exists
            advice = (
                f"{model_family} weights are not distilled: load them without a distillation "
                "token (distilled=False), or train the distilled student from scratch"
            )
        raise CheckpointError(
            f"The checkpoint is {kind} but {model.name} is "
            f"{'' if model.distilled else 'not '}distilled; {advice}."
        )
    if "pos_embed" in state and state["pos_embed"].shape[1] != model.tokens.pos_embed.shape[1]:
        state["pos_embed"] = _resampled_pos_embed(model, state["pos_embed"])
    targets = timm_weight_map(model)
    if skip_heads:
        targets = {k: v for k, v in targets.items() if not k.startswith(("head.", "head_dist."))}
    unknown = sorted(set(state) - set(targets))
    missing = sorted(set(targets) - set(state))
    values, mismatched = {}, []
    for key in sorted(set(state) & set(targets)):
        variable, transform = targets[key]
        value = transform[0](state[key]) if transform else state[key]
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(f"{key} {tuple(value.shape)} vs model {tuple(variable.shape)}")
        values[key] = value
    problems = []
    if unknown:
        problems.append(f"unknown keys: {_key_list(unknown)}")
    if missing:
        problems.append(f"missing keys: {_key_list(missing)}")
    if mismatched:
        problems.append(f"shape mismatches: {_key_list(mismatched, limit=4)}")
    if problems:
        raise CheckpointError(f"Checkpoint does not fit {model.name}: " + " | ".join(problems))
    for key, value in values.items():
        targets[key][0].assign(value)


LAYER_SCALE_VIT = "ViT with LayerScale"


def checkpoint_family(state: dict) -> str:
    """ "CaiT", "DeiT III" (LayerScale on every block, position embeddings for the patches
    only), `LAYER_SCALE_VIT` (LayerScale, a class token's position embedding too) or "DeiT",
    from a timm-keyed state dict."""
    if any(key.startswith("blocks_token_only.") for key in state):
        return "CaiT"
    if any(".ls1.gamma" in key for key in state):
        pos_embed = state.get("pos_embed")
        tokens = 0 if pos_embed is None or pos_embed.ndim != 3 else pos_embed.shape[1]
        if tokens and _grid_side(tokens) is None:  # a class token's row too
            return LAYER_SCALE_VIT
        return "DeiT III"
    return "DeiT"


def _model_family(model) -> str:
    if isinstance(model, CaiT):
        return "CaiT"
    return "DeiT" if model.layer_scale_init is None else "DeiT III"


def _pos_embed_grid(model, pos_embed) -> int | None:
    """The side of the square patch grid `pos_embed` holds after `model`'s prefix
    embeddings; None when it is not one."""
    if pos_embed is None or pos_embed.ndim != 3:
        return None
    return _grid_side(pos_embed.shape[1] - model.tokens.embedded_prefix_tokens)


def _grid_side(tokens: int) -> int | None:
    """The side of a square grid of `tokens` patches; None when they are not one."""
    side = math.isqrt(max(tokens, 0))
    return side if side >= 1 and side * side == tokens else None


def _resampled_pos_embed(model, pos_embed):
    prefix = model.tokens.embedded_prefix_tokens
    if _pos_embed_grid(model, pos_embed) is None:
        layout = "patches only" if model.tokens.no_embed_class else f"{prefix} prefix token(s)"
        raise CheckpointError(
            f"The checkpoint's pos_embed {tuple(pos_embed.shape)} is not a square grid plus "
            f"{prefix} prefix embedding(s), as {model.name} has ({layout}); is it from another "
            "model family (DeiT vs DeiT III / CaiT)? Pick the matching --model."
        )
    return resample_position_embeddings(pos_embed, (model.grid_size, model.grid_size), prefix)


def state_dict_of(model) -> dict:
    """The weights of a `DeiT` as a timm-keyed numpy state dict (the inverse of loading)."""
    return {
        key: (transform[1](variable.numpy()) if transform else variable.numpy())
        for key, (variable, transform) in timm_weight_map(model).items()
    }


_OFFICIAL_LAYER_SCALE = re.compile(r"^blocks\.(\d+)\.gamma_([12])$")


def official_to_timm_keys(state: dict) -> dict:
    """The official release's keys as timm's: no `module.`; DeiT III's `gamma_N` -> `lsN.gamma`."""
    state = without_wrapper_prefixes(state)
    if any(key.startswith("blocks_token_only.") for key in state):
        return state  # CaiT: timm keeps the official names
    return {_OFFICIAL_LAYER_SCALE.sub(r"blocks.\1.ls\2.gamma", k): v for k, v in state.items()}


def to_timm_state_dict(state: dict) -> dict:
    """Any supported key style, rewritten to timm keys."""
    state = without_wrapper_prefixes(state)
    if detect_key_style(state) == "hf":
        return hf_to_timm_keys(state)
    return official_to_timm_keys(state)


def load_checkpoint(
    path: str,
    model_name: str,
    num_classes: int | None = None,
    image_size: int | None = None,
    **overrides,
):
    """Builds the variant `model_name` and loads the checkpoint at `path` into it.

    Args:
        path: `.pth`/`.pt`/`.bin`/`.safetensors`/`.npz`, timm or HF keys.
        model_name: a `list_models()` name.
        num_classes: int or None. Defaults to the checkpoint's head size; a
            different value keeps freshly initialised heads.
        image_size: int or None. Defaults to the variant's; position
            embeddings are resampled to it.

    Returns:
        The loaded `DeiT`.
    """
    state = to_timm_state_dict(read_state_dict(path))
    return _load_state(state, model_name, num_classes, image_size, path, **overrides)


def _load_state(state, model_name, num_classes, image_size, source, **overrides):
    source_classes = checkpoint_num_classes(state)
    if num_classes is None:
        num_classes = source_classes
    model = build_model(model_name, num_classes=num_classes, image_size=image_size, **overrides)
    load_timm_state_dict(model, state, skip_heads=num_classes != source_classes)
    if image_size is None:
        warn_if_resized(model, state, source)
    return model


def warn_if_resized(model, state: dict, source) -> None:
    """Warns when `model`, built at its name's size, resampled the position embeddings of
    a checkpoint made at another (a 384 px checkpoint named as a 224 px model): its eval
    resolution and crop are then not the checkpoint's. For callers that were not given
    an image size."""
    grid = _pos_embed_grid(model, state.get("pos_embed"))
    if grid in (None, model.grid_size):
        return
    size = grid * model.patch_size
    logging.warning(
        "%s is a %d px model (a %dx%d grid of position embeddings), %s a %d px one: the "
        "embeddings were resampled to %dx%d; give the image size %d (--image_size, "
        "image_size=) to keep its size.",
        source, size, grid, grid, model.name, model.image_size,
        model.grid_size, model.grid_size, size,
    )  # fmt: skip


def convert_checkpoint(
    checkpoint: str,
    model_name: str,
    output: str,
    image_size: int | None = None,
    num_classes: int | None = None,
):
    """Loads `checkpoint` into `model_name` and saves it to `output` atomically.

    An ImageNet-1k head kept from the checkpoint is saved with its classes (the
    synset ids, in `<output>.classes.json`), so that fine-tuning on classes named
    by synset (ImageNet subsets, Imagenette) carries their rows; fresh heads are
    saved without names (and a stale names file at `output` is removed).
    """
    if not output.endswith(".keras"):
        raise CheckpointError(f"The output path must end in .keras. Received: {output!r}")
    state = to_timm_state_dict(read_state_dict(checkpoint))
    model = _load_state(state, model_name, num_classes, image_size, checkpoint)
    kept_imagenet_head = checkpoint_num_classes(state) == model.num_classes == IMAGENET_NUM_CLASSES
    saving.save_model(model, output, imagenet_synsets() if kept_imagenet_head else None)
    return model
