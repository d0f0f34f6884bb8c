"""Published DeiT, DeiT III and CaiT weights by name: download, verify, convert once, cache.

Sources of `create_model(name, pretrained=...)`:
  * `True` or "official": the official DeiT release
    (https://dl.fbaipublicfiles.com/deit/; each DeiT file name ends in the
    first hex digits of its SHA-256, which are checked as torch.hub does;
    DeiT III and CaiT files carry none, and a warning says so).
    `DEIT_KERAS_WEIGHTS_URL` replaces that base URL (an internal mirror).
  * "hf": the variant's Hugging Face hub repository (`facebook/deit-...`,
    timm's `timm/deit3_...` / `timm/cait_...` copies);
    "hf-hub:OWNER/REPO" any hub repository (e.g. timm's
    `timm/deit_tiny_distilled_patch16_224.fb_in1k`). Downloaded with
    `huggingface_hub`, which verifies, caches and honours `HF_HOME`,
    `HF_ENDPOINT` and `HF_HUB_OFFLINE`.
  * an `http(s)://` URL of a checkpoint, or a local checkpoint / `.keras` path.

The converted `.keras` is cached under `$KERAS_HOME/models/deit_keras`
(`DEIT_KERAS_CACHE` overrides it), so a second call is offline. Downloads go
to a private `partial-*` file that is checked before anything is cached: a
failed, corrupt or interrupted download never becomes a cache entry.
"""

import contextlib
import hashlib
import inspect
import os
import re
import sys
import urllib.parse
import uuid

import keras
from absl import logging

from deit_keras.data.labels import IMAGENET_NUM_CLASSES, imagenet_class_names, imagenet_synsets
from deit_keras.deploy import checkpoints, saving
from deit_keras.errors import UserEnvironmentError, UserInputError
from deit_keras.io import leftovers
from deit_keras.io.atomic import atomic_output
from deit_keras.models import variants
from deit_keras.models.classifier import TokenClassifier
from deit_keras.models.deit_presets import (
    MIRROR_ENV,
    OFFICIAL_BASE_URL,
    PublishedWeights,
    sha256_prefix_of,
)

CACHE_ENV = "DEIT_KERAS_CACHE"
HUB_PREFIX = "hf-hub:"
PARTIAL_PREFIX = "partial-"
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


class PretrainedWeightsError(UserEnvironmentError):
    """Published weights that cannot be fetched, verified or read (one-line message)."""


def cache_dir() -> str:
    """Where converted weights are cached.

    `$DEIT_KERAS_CACHE`, else `$KERAS_HOME/models/deit_keras`; `KERAS_HOME`
    defaults to `~/.keras`, as for `keras.utils.get_file`.
    """
    if os.environ.get(CACHE_ENV):
        return os.path.expanduser(os.environ[CACHE_ENV])
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(keras_home, "models", "deit_keras")


def official_url(name: str) -> str:
    """The release URL of `name`'s weights, on the mirror when `DEIT_KERAS_WEIGHTS_URL` is set."""
    return release_url(published_weights(name).filename)


def release_url(filename: str) -> str:
    """The URL of the DeiT release file `filename`, on the mirror when `DEIT_KERAS_WEIGHTS_URL`
    is set."""
    base = os.environ.get(MIRROR_ENV) or OFFICIAL_BASE_URL
    return base.rstrip("/") + "/" + filename


def published_weights(name: str) -> PublishedWeights:
    """The `PublishedWeights` of a preset name or alias; `UserInputError` naming the valid ones."""
    weights = variants.get_variant(name).weights  # unknown names get the registry's error
    if weights is None:
        with_weights = [n for n in variants.list_models() if variants.get_variant(n).weights]
        raise UserInputError(
            f"No published weights for {name!r}. Models with weights: {', '.join(with_weights)}."
        )
    return weights


# === Fetching ===
def download(url: str, directory: str, sha256: str | None = None) -> str:
    """Downloads `url` into `directory` with `keras.utils.get_file` and verifies it.

    The file is written under a unique `partial-<pid>@<host>-...` name and its SHA-256 (or
    its prefix) checked; on any failure it is removed. Leftovers of killed
    downloads of the same file by this host are removed first; another host's
    (a shared cache) only after a day.

    Returns:
        The path of the verified partial file; the caller converts and
        removes it.

    Raises:
        PretrainedWeightsError: one line naming the URL and what to do.
    """
    filename = os.path.basename(urllib.parse.urlsplit(url).path) or "checkpoint"
    leftovers.remove_stale(directory, PARTIAL_PREFIX, f"-{filename}")
    # The name keeps the extension last: the checkpoint reader goes by it.
    partial = f"{PARTIAL_PREFIX}{leftovers.owner()}-{uuid.uuid4().hex[:8]}-{filename}"
    path = os.path.join(directory, partial)
    try:
        os.makedirs(directory, exist_ok=True)
        # get_file reports progress on stdout; a command's stdout is its result.
        with contextlib.redirect_stdout(sys.stderr):
            keras.utils.get_file(partial, url, cache_subdir=directory, force_download=True)
    except (Exception, KeyboardInterrupt) as error:
        _remove(path)
        if isinstance(error, KeyboardInterrupt):
            raise
        raise PretrainedWeightsError(_download_advice(url, error)) from error
    if sha256:
        _verify_sha256(path, sha256, url)
    return path


def _download_advice(url, error):
    detail = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OSError) and error.errno is not None:
        return (
            f"Cannot save the download of {url}: {detail}. Free space or set {CACHE_ENV} to "
            "a writable directory."
        )
    return (
        f"Cannot download {url}: {detail}. Check the network connection, set {MIRROR_ENV} "
        "to a mirror of the release files, or download the file yourself and pass its path "
        "(--pretrained_weights=PATH)."
    )


def _verify_sha256(path, expected, url):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if not actual.startswith(expected.lower()):
        _remove(path)
        raise PretrainedWeightsError(
            f"Checksum mismatch for {url}: SHA-256 {actual[:16]}... does not start with "
            f"{expected}; the download is corrupt or not the published file (check "
            f"{MIRROR_ENV}). Nothing was cached; run again to retry."
        )


def _remove(path):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def hub_download(repo_id: str) -> str:
    """A hub repository's weights file (safetensors first), via `huggingface_hub`.

    Raises:
        PretrainedWeightsError: one line naming the repository and what to do.
    """
    import huggingface_hub
    from huggingface_hub import errors

    last = None
    for filename in _HUB_FILES:
        try:
            with contextlib.redirect_stdout(sys.stderr):
                return huggingface_hub.hf_hub_download(repo_id, filename)
        except (errors.EntryNotFoundError, errors.LocalEntryNotFoundError) as error:
            last = error
            continue
        except Exception as error:  # network, auth and HTTP errors have many types
            raise PretrainedWeightsError(_hub_advice(repo_id, error)) from error
    raise PretrainedWeightsError(_hub_advice(repo_id, last))


def _hub_advice(repo_id, error):
    detail = " ".join(str(error).split())[:300] or type(error).__name__
    return (
        f"Cannot get weights from the Hugging Face hub repository {repo_id!r} "
        f"({', '.join(_HUB_FILES)}): {detail}. Check the network or HF_ENDPOINT; with "
        "HF_HUB_OFFLINE=1 the files must already be in the hub cache (HF_HOME)."
    )


# === Converting and caching ===
def _cached_model(path, source):
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:
        raise PretrainedWeightsError(
            f"The cached weights {path} (from {source}) cannot be read: "
            f"{type(error).__name__}: {' '.join(str(error).split())[:200]}. Delete the file "
            "to download them again."
        ) from error


def _convert_into_cache(checkpoint_path, name, cached_path, source):
    try:
        model = checkpoints.load_checkpoint(checkpoint_path, name)
    except checkpoints.CheckpointError as error:
        raise PretrainedWeightsError(f"Weights from {source} do not load: {error}") from error
    try:
        with atomic_output(cached_path) as temporary:
            model.save(temporary)
    except OSError as error:
        raise PretrainedWeightsError(
            f"Cannot write the converted weights to {cached_path}: {error.strerror or error}. "
            f"Free space or set {CACHE_ENV} to a writable directory."
        ) from error
    return model


def _source_key(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "--", source).strip("-")


def load_published(name: str, source: bool | str = True) -> TokenClassifier:
    """The variant `name` with published weights, as released (1000 classes, its own size).

    Args:
        name: a `list_models()` name or alias.
        source: True / "official", "hf", "hf-hub:OWNER/REPO", a URL or a
            local checkpoint path (see the module docstring).

    Returns:
        A `DeiT` or `CaiT` with the weights (uncompiled).

    Raises:
        PretrainedWeightsError: download, checksum, cache or conversion
            failures, in one line.
        ValueError: unknown model name.
    """
    name = variants.canonical_name(name)
    variants.get_variant(name)
    if source is True or source == "official":
        weights = published_weights(name)
        if weights.sha256_prefix is None:
            logging.warning(
                "The official file of %s has no checksum in its name, so its download is not "
                "verified; pretrained='hf' gets the hub copy (%s), which huggingface_hub verifies.",
                name,
                weights.hf_hub_id,
            )
        return _fetch_url(name, official_url(name), weights.sha256_prefix, f"{name}.keras")
    if source == "hf" or (isinstance(source, str) and source.startswith(HUB_PREFIX)):
        repo_id = published_weights(name).hf_hub_id if source == "hf" else source[len(HUB_PREFIX) :]
        cached = os.path.join(cache_dir(), f"{name}--hf--{_source_key(repo_id)}.keras")
        if os.path.exists(cached):
            return _cached_model(cached, repo_id)
        return _convert_into_cache(hub_download(repo_id), name, cached, repo_id)
    if not isinstance(source, str) or not source:
        raise UserInputError(
            "pretrained must be True, 'official', 'hf', 'hf-hub:OWNER/REPO', a URL or a "
            f"checkpoint path. Received: pretrained={source!r}"
        )
    if urllib.parse.urlsplit(source).scheme in ("http", "https", "file", "ftp"):
        filename = os.path.basename(urllib.parse.urlsplit(source).path)
        sha256 = sha256_prefix_of(filename)
        # A name carrying its checksum is one file wherever it is served from; any other
        # name (weights.pth) is the URL's own entry, or two such URLs would share one.
        stem = os.path.splitext(filename)[0]
        if sha256 is None:
            stem += "--" + hashlib.sha256(source.encode()).hexdigest()[:12]
        return _fetch_url(name, source, sha256, f"{name}--{_source_key(stem)}.keras")
    return _load_local(name, source)


def _fetch_url(name, url, sha256, cache_name):
    cached = os.path.join(cache_dir(), cache_name)
    if os.path.exists(cached):
        return _cached_model(cached, url)
    partial = download(url, os.path.join(cache_dir(), "downloads"), sha256=sha256)
    try:
        return _convert_into_cache(partial, name, cached, url)
    finally:
        _remove(partial)


class HeadlessWeightsError(UserInputError):
    """Weights without classification heads where a model must predict."""


def _headless(source) -> HeadlessWeightsError:
    return HeadlessWeightsError(
        f"The weights {source} have no classification heads (a backbone): a model built on "
        "them would predict from fresh, random heads. Fine-tune them first (deit-train "
        "--pretrained_weights=...), or pass weights with heads."
    )


def _is_checkpoint_file(source) -> bool:
    """A local `.pth` / `.safetensors` / `.npz` path (not a name, URL or `.keras` file)."""
    if not isinstance(source, str) or source in ("official", "hf") or source.endswith(".keras"):
        return False
    return not source.startswith(HUB_PREFIX) and not urllib.parse.urlsplit(source).scheme


def _check_local_file(path):
    if not os.path.isfile(path):
        raise PretrainedWeightsError(
            f"Pretrained weights file not found: {path}. Pass an existing checkpoint, a URL, "
            "'official' or 'hf'."
        )


def _checkpoint_state(path) -> dict:
    """The timm-layout state dict of a local checkpoint file, in one-line errors."""
    _check_local_file(path)
    try:
        return checkpoints.to_timm_state_dict(checkpoints.read_state_dict(path))
    except checkpoints.CheckpointError as error:
        raise PretrainedWeightsError(str(error)) from error


def _load_local(name, path):
    _check_local_file(path)
    if path.endswith(".keras"):
        # The user's own file: errors name it (not cache advice) and its kind (a DeiT or CaiT).
        return saving.load_model(path, compile=False)[0]
    try:
        return checkpoints.load_checkpoint(path, name)
    except checkpoints.CheckpointError as error:
        raise PretrainedWeightsError(str(error)) from error


def _holds_another_model(published: TokenClassifier, name: str) -> bool:
    """Whether a loaded file holds another model than the preset `name`: another class
    (DeiT, CaiT), distillation token or (by the model's own name, when that is a preset's)
    preset. `name`'s model is then built and given the file's weights (a 224 px DeiT-B's for
    `deit_base_patch16_384`, resampled; weights that do not fit are refused), not the file's
    model returned as it was under the name asked for. A file of the user's own model (a
    small student: other widths, any name) asked for by its preset's name comes back as
    saved."""
    variant = variants.get_variant(name)
    if type(published) is not variants.model_class(variant.architecture):
        return True
    if bool(getattr(published, "distilled", False)) != bool(variant.config.get("distilled")):
        return True
    held = published.name
    presets = {known.replace(".", "_") for known in variants.list_models()}
    return held in presets and held != variants.canonical_name(name).replace(".", "_")


_NOT_ARCHITECTURE = frozenset(
    ("self", "kwargs", "num_classes", "image_size", "drop_path_rate", "preprocessing")
)


def _architecture_of(model: TokenClassifier) -> dict:
    """The constructor arguments of `model` that make its layout (widths, depth, patch
    size, tokens), for a model rebuilt from its weights with other heads or size; what
    its config holds beyond them (frozen or quantized layers, its name) stays behind."""
    taken = set(inspect.signature(type(model).__init__).parameters) - _NOT_ARCHITECTURE
    return {k: v for k, v in model.get_config().items() if k in taken}


def _carried_preprocessing(published: TokenClassifier, name: str, another: bool, crop_pct):
    """The eval transform a model rebuilt from `published`'s weights keeps: the weights'
    own normalisation (a model trained on other data normalises its way, not ImageNet's),
    and, for another preset (224 -> 384 px), that preset's crop."""
    own = published.preprocessing
    if another:
        preset = variants.get_variant(name).preprocessing
        own = preset.replace(mean=own.mean, std=own.std)
    return own.replace(crop_pct=crop_pct)


def create_model(
    name: str,
    /,
    pretrained: bool | str = False,
    num_classes: int | None = None,
    image_size: int | None = None,
    drop_path_rate: float = 0.0,
    crop_pct: float | None = None,
    require_heads: bool = False,
    class_names: list | None = None,
    **overrides,
) -> TokenClassifier:
    """Builds the model `name`, with published weights when `pretrained`.

    Like timm's `create_model(name, pretrained=True)`: the published weights
    are downloaded once (see `load_published`), then copied into the model
    asked for. A `num_classes` other than the weights' own keeps freshly
    initialised heads (to fine-tune); a different `image_size` resamples the position embeddings
    (PyTorch-exact bicubic, as in the paper's 384 px fine-tuning).

    Args:
        name: str. A `list_models()` name or alias.
        pretrained: bool or str. False for fresh weights; True / "official",
            "hf", "hf-hub:OWNER/REPO", a URL or a checkpoint path.
        num_classes: int or None. Classes of the heads; None: those of the
            weights (a checkpoint's own count), or 1000 without weights. Given,
            a distilled body under one head (Hugging Face's
            `DeiTForImageClassification`) loads with new heads, to fine-tune.
        image_size, drop_path_rate, crop_pct, **overrides: as for
            `deit_keras.models.build_model`.
        require_heads: bool. Refuse weights without classification heads (a
            backbone): a model to predict with would answer from fresh heads.
            Defaults to False (fresh heads, to fine-tune).
        class_names: list of str or None. The classes the heads are for, in their
            order (a dataset's, to fine-tune on). When the weights name theirs (a
            file's `.classes.json`, which this library saves beside a model), their
            head rows are carried by class name: reordered, and a fresh row for a
            class they lack. Otherwise the heads are kept or made fresh by
            `num_classes` alone.

    Returns:
        A built `DeiT` or `CaiT`.

    Raises:
        HeadlessWeightsError: `require_heads` and the weights have no heads.
    """
    num_classes = _count_of(num_classes, class_names)
    if isinstance(pretrained, os.PathLike):  # a pathlib.Path
        pretrained = os.fspath(pretrained)
    if pretrained is False or pretrained is None:
        classes = IMAGENET_NUM_CLASSES if num_classes is None else num_classes
        return variants.build_model(
            name, classes, image_size, drop_path_rate, crop_pct, **overrides
        )
    if _is_checkpoint_file(pretrained):
        # Its state dict as it is: the file may come from a model with other
        # overrides (a small student) than the preset `name` has.
        state = _checkpoint_state(pretrained)
        if require_heads and not checkpoints.checkpoint_num_classes(state):
            raise _headless(pretrained)
        # Asked for a model of `num_classes` (to fine-tune): such a file's body, new heads.
        fresh_heads = num_classes is not None and checkpoints.has_one_head_for_two_tokens(state)
        if num_classes is None:  # a headless checkpoint (a backbone) gets ImageNet's count
            num_classes = checkpoints.checkpoint_num_classes(state) or IMAGENET_NUM_CLASSES
        saved_classes = None
        if not fresh_heads:
            rows = checkpoints.checkpoint_num_classes(state)
            saved_classes = _renamed_classes(pretrained, class_names, rows)
    else:
        fresh_heads = False
        published = load_published(name, pretrained)
        if require_heads and not published.num_classes:
            raise _headless(pretrained)
        if num_classes is None:
            num_classes = published.num_classes
        another = _holds_another_model(published, name)
        saved_classes = _renamed_classes(pretrained, class_names, published.num_classes)
        same_model = (
            num_classes == published.num_classes
            and image_size in (None, published.image_size)
            and not drop_path_rate
            and crop_pct is None
            and not overrides
            and not another
        )
        if same_model:  # a user's own model (other widths than the preset's) stays itself
            if saved_classes:
                state = checkpoints.state_dict_of(published)
                _carry_head_rows(published, state, saved_classes, class_names, pretrained)
            return published
        state = checkpoints.state_dict_of(published)
        overrides.setdefault(
            "preprocessing", _carried_preprocessing(published, name, another, crop_pct)
        )
        if not another:  # a user's own model (a small student) keeps its layout and size
            overrides = {**_architecture_of(published), **overrides}
            image_size = published.image_size if image_size is None else image_size
    model = variants.build_model(
        name, num_classes, image_size, drop_path_rate, crop_pct, **overrides
    )
    if fresh_heads:
        logging.warning(
            "%s has one head for its class and distillation tokens; %s gets its body and new "
            "heads, to fine-tune.",
            pretrained,
            model.name,
        )
    held = checkpoints.checkpoint_num_classes(state)
    if held != num_classes and not fresh_heads and not saved_classes:
        _say_heads_are_new(pretrained, held, model.name, num_classes)
    skip_heads = fresh_heads or held != num_classes
    checkpoints.load_timm_state_dict(model, state, skip_heads=skip_heads or bool(saved_classes))
    if image_size is None and _is_checkpoint_file(pretrained):
        checkpoints.warn_if_resized(model, state, pretrained)
    if saved_classes:
        _carry_head_rows(model, state, saved_classes, class_names, pretrained)
    return model


def _say_heads_are_new(pretrained, held: int, model_name: str, num_classes: int) -> None:
    """Logs that a checkpoint's heads of another class count are left out (fine-tuning)."""
    if pretrained is True or pretrained in ("official", "hf"):
        source = f"{model_name}'s {'official' if pretrained is True else pretrained} weights"
    else:  # a file, URL or hub repository
        source = str(pretrained)
    heads = f"its heads ({held} classes) are left out" if held else "it has no heads"
    logging.warning(
        "%s: %s; %s gets new heads for its %d classes, to fine-tune.",
        source,
        heads,
        model_name,
        num_classes,
    )


def _count_of(num_classes, class_names):
    """`num_classes`, or the count of `class_names`; the two must agree."""
    if class_names is None:
        return num_classes
    if num_classes is not None and num_classes != len(class_names):
        raise UserInputError(
            f"class_names names {len(class_names)} classes but num_classes is {num_classes}: "
            f"give one count. Received: num_classes={num_classes}, class_names="
            f"{list(class_names)[:4]}..."
        )
    return len(class_names)


def _renamed_classes(pretrained, class_names, rows) -> list[str] | None:
    """The classes weights of `rows` head rows name when they are not `class_names`; None
    when either is unknown, the weights have no heads, the two agree, or they share no
    class and differ in count (fresh heads, as by `num_classes` alone). ImageNet-1k
    heads (named by synset id) match `class_names` of synset ids or of the names the
    library shows (`imagenet_class_names`); 1000 names of neither kind keep the heads."""
    if class_names is None or not rows:
        return None
    saved = _saved_class_names(pretrained, rows)
    wanted = [str(name) for name in class_names]
    imagenet = saved == imagenet_synsets()
    if imagenet and not set(saved) & set(wanted):
        saved = imagenet_class_names()  # the names the library shows them by
    if saved is None or saved == wanted:
        return None
    if not set(saved) & set(wanted) and (imagenet or len(saved) != len(wanted)):
        return None  # nothing to carry: the heads are kept or made fresh by count
    return saved


def _saved_class_names(pretrained, rows) -> list[str] | None:
    """A local file's `.classes.json` (refused when of another count than `rows`), or the
    ImageNet-1k synset ids of a published ImageNet-1k head."""
    if isinstance(pretrained, str) and os.path.isfile(pretrained):
        return saving.read_class_names(pretrained, rows)
    if (pretrained is True or pretrained in ("official", "hf")) and rows == IMAGENET_NUM_CLASSES:
        return imagenet_synsets()
    return None


def _carry_head_rows(model, state, saved_classes, class_names, source) -> None:
    """Gives each of `class_names` its head row in `state` by name (a fresh row when the
    weights lack the class): the same count of classes renamed or reordered kept every
    row where it was, under the wrong names."""
    row_of = {name: row for row, name in enumerate(saved_classes)}
    wanted = [str(name) for name in class_names]
    for head_name in ("head", "head_dist"):
        head = getattr(model, head_name, None)
        if head is None or f"{head_name}.weight" not in state:
            continue
        # Fresh rows as the layer initialises them (the model may hold the file's own).
        shape = tuple(head.kernel.shape)
        kernel = keras.ops.convert_to_numpy(head.kernel_initializer(shape, dtype="float32"))
        bias = keras.ops.convert_to_numpy(head.bias_initializer((shape[1],), dtype="float32"))
        for column, name in enumerate(wanted):
            if name in row_of:
                kernel[:, column] = state[f"{head_name}.weight"][row_of[name]]
                bias[column] = state[f"{head_name}.bias"][row_of[name]]
        head.kernel.assign(kernel)
        head.bias.assign(bias)
    new = [name for name in wanted if name not in row_of]
    logging.warning(
        "The head rows of %s are matched to the classes by name: %d of %d found%s.",
        source if isinstance(source, str) and os.path.isfile(source) else f"{model.name}'s weights",
        len(wanted) - len(new),
        len(wanted),
        f"; fresh rows for {', '.join(new[:3])}{'...' if len(new) > 3 else ''}" if new else "",
    )
