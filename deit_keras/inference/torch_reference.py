"""The PyTorch reference of a DeiT: Hugging Face transformers' model of the same architecture.

`DeiTForImageClassificationWithTeacher` for a distilled DeiT (two heads, the
logits their mean, as ours), `ViTForImageClassification` otherwise; randomly
initialised from the config (never downloaded), fp32, eval mode. torch and
transformers are imported here only, when a reference is asked for: they are
not requirements of the package (the `test` extra has them).
"""

import numpy as np

from deit_keras.errors import UserEnvironmentError

INSTALL = "pip install torch transformers"


def _import_reference():
    try:
        import torch
        import transformers
    except ImportError as error:
        raise UserEnvironmentError(
            f"The PyTorch reference needs torch and transformers ({error.name} is missing): "
            f"{INSTALL}."
        ) from None
    return torch, transformers


def hf_config_kwargs(model, num_classes: int | None = None, attn: str = "sdpa") -> dict:
    """The transformers config of `model`'s architecture (a `DeiT` or a `Variant`).

    Args:
        model: anything with `embed_dim`, `depth`, `num_heads`, `mlp_ratio`,
            `image_size`, `patch_size` (a `DeiT`, `models.variants.Variant`).
        num_classes: int or None. Defaults to `model.num_classes`.
        attn: str. transformers' `attn_implementation`: "sdpa" (its default)
            or "eager".
    """
    mlp_ratio = getattr(model, "mlp_ratio", 4.0)
    return dict(
        hidden_size=model.embed_dim,
        num_hidden_layers=model.depth,
        num_attention_heads=model.num_heads,
        intermediate_size=int(mlp_ratio * model.embed_dim),
        image_size=model.image_size,
        patch_size=model.patch_size,
        num_labels=num_classes if num_classes is not None else model.num_classes,
        layer_norm_eps=1e-6,
        attn_implementation=attn,
    )


def hf_model(model, num_classes: int | None = None, attn: str = "sdpa"):
    """The transformers twin of `model`'s architecture, random weights, in eval mode."""
    _, transformers = _import_reference()
    kwargs = hf_config_kwargs(model, num_classes, attn)
    names = ("DeiTForImageClassificationWithTeacher", "DeiTConfig")
    if not model.distilled:
        names = ("ViTForImageClassification", "ViTConfig")
    try:  # transformers imports its model modules on first use
        model_class, config_class = (getattr(transformers, name) for name in names)
    except (ImportError, RuntimeError) as error:
        reason = " ".join(str(error.__cause__ or error).split())[:200]
        raise UserEnvironmentError(
            f"transformers cannot import {names[0]} here ({reason}); check that torch, "
            "transformers (and torchvision, if installed) are versions that go together."
        ) from error
    return model_class(config_class(**kwargs)).eval()


def torch_steps(model, num_threads: int | None = None, attn: str = "sdpa"):
    """`step_for(images_nhwc) -> step()`: the reference's forward pass on fixed images.

    The reference is built once; each `step()` runs it under
    `torch.inference_mode()` on float32 `[B, S, S, 3]` images (made NCHW once).

    Args:
        model: the `DeiT` whose architecture the reference copies.
        num_threads: int or None. `torch.set_num_threads`; None leaves torch's.
        attn: str. transformers' attention implementation.
    """
    torch, _ = _import_reference()
    if num_threads:
        torch.set_num_threads(num_threads)
    reference = hf_model(model, attn=attn)

    def step_for(images_nhwc):
        images = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))

        def step():
            with torch.inference_mode():
                return reference(images).logits.numpy()

        return step

    return step_for
