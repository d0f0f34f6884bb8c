"""The PyTorch reference of a DeiT: Hugging Face transformers' model of the same architecture.

`DeiTForImageClassificationWithTeacher` for a distilled DeiT (two heads, the
logits their mean, as ours), `ViTForImageClassification` otherwise; randomly
initialised from the config (never downloaded), fp32, eval mode. torch and
transformers are imported here only, when a reference is asked for: they are
not requirements of the package (the `test` extra has them).
"""

import multiprocessing
import types

import numpy as np

from deit_keras.errors import UserEnvironmentError, check_installed
from deit_keras.inference import host

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
    """`step_for(images_nhwc) -> step()`: the reference's forward pass on fixed images, here.

    The reference is built once; each `step()` runs it under
    `torch.inference_mode()` on float32 `[B, S, S, 3]` images (made NCHW once).
    In a process that also runs TensorFlow the two thread pools compete:
    `ReferenceProcess` keeps them apart.

    Args:
        model: the `DeiT` (or its `architecture(model)`) the reference copies.
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


_FIELDS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "image_size", "patch_size")


def architecture(model) -> types.SimpleNamespace:
    """The fields of `model` the reference needs, as a plain (picklable) object."""
    fields = {name: getattr(model, name) for name in _FIELDS}
    return types.SimpleNamespace(
        **fields, num_classes=int(model.num_classes), distilled=bool(model.distilled)
    )


def _serve(connection, fields, num_threads, attn) -> None:
    """The reference process: builds the model, then answers the parent's requests."""
    try:
        step_for = torch_steps(fields, num_threads, attn)
    except Exception as error:  # sent to the parent, which raises it there
        connection.send(("error", type(error).__name__, " ".join(str(error).split())))
        return
    connection.send(("ready",))
    steps, rng = {}, np.random.default_rng(0)
    size = fields.image_size
    while True:
        request, batch_size = connection.recv()
        if request == "close":
            connection.send(("closed", host.own_peak_rss_mb()))
            return
        if batch_size not in steps:
            images = rng.normal(size=(batch_size, size, size, 3)).astype(np.float32)
            steps[batch_size] = step_for(images)
        steps[batch_size]()
        connection.send(("done",))


class ReferenceProcess:
    """The reference in a process of its own (spawned, no TensorFlow in it).

    Each `step()` of `step_for(batch_size)` asks that process for one forward
    pass on fixed random images and waits for it; the pipe's round trip (tens
    of microseconds) is in the time, as a served model's would be. TensorFlow's
    and torch's thread pools then never share a process, and the reference's
    memory is its own (`close()` returns its peak RSS), as in
    `benchmarks/throughput.py`'s one-process-per-side workers. Its OpenMP
    threads still share the cores: on cores other work also uses, torch with
    every core's thread stalls (2 cores at load ~5: batch-1 median 36 ms and
    p90 960 ms with 2 threads, 7 ms with 1, DeiT-Ti at 32 px).

    Args:
        model: the `DeiT` whose architecture the reference copies.
        num_threads: int or None. torch's threads in that process.
        attn: str. transformers' attention implementation.

    Raises:
        MissingDependencyError: torch or transformers is not installed.
        UserEnvironmentError: torch or transformers cannot build the model there.
    """

    def __init__(self, model, num_threads: int | None = None, attn: str = "sdpa"):
        check_installed(("torch", "transformers"), "The PyTorch reference", INSTALL)
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, architecture(model), num_threads, attn), daemon=True
        )
        self._process.start()
        reply = self._connection.recv()
        if reply[0] == "error":
            self._process.join()
            raise UserEnvironmentError(f"The PyTorch reference failed to start: {reply[2]}")

    def step_for(self, batch_size: int):
        def step():
            self._connection.send(("run", batch_size))
            self._connection.recv()

        return step

    def close(self) -> float:
        """Ends the process; returns its own peak RSS in MiB (`host.own_peak_rss_mb`)."""
        self._connection.send(("close", 0))
        peak = self._connection.recv()[1]
        self._process.join()
        return peak
