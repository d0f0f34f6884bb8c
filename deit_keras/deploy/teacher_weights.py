"""The DeiT paper's teacher weights (RegNetY-16GF), as a timm state dict: download, verify, cache.

DeiT distils from timm's `regnety_160` with the weights the DeiT authors
released (https://dl.fbaipublicfiles.com/deit/regnety_160-a5fe301d.pth; timm
calls them `regnety_160.deit_in1k`). `teacher_state` reads them, or a local
timm checkpoint of any RegNetY, into `{timm key: float32 array}`, which
`distill.regnet.load_timm_state` puts into the Keras model. The release file
is downloaded once (its name's SHA-256 prefix checked, as torch.hub does)
into the weights cache, beside the converted DeiT models; `DEIT_KERAS_WEIGHTS_URL`
(a mirror of the release directory) applies to it too.
"""

import os

from deit_keras.deploy import checkpoints, pretrained
from deit_keras.errors import UserInputError
from deit_keras.models.deit_presets import sha256_prefix_of

# timm name -> (the DeiT release file, timm's hub copy of it)
RELEASED = {"regnety_160": ("regnety_160-a5fe301d.pth", "timm/regnety_160.deit_in1k")}
RELEASED_CLASSES = 1000  # ImageNet-1k
TEACHERS_SUBDIR = "teachers"


def _is_url(weights: str) -> bool:
    return str(weights).startswith(("http://", "https://"))


def is_release(weights: str | None) -> bool:
    """Whether `--teacher_weights` names released weights (ImageNet-1k classes), not a file."""
    return weights in ("imagenet", "hf") or (weights is not None and _is_url(weights))


def _check_release_url(name: str, url: str) -> None:
    """A URL must end in the release file's name (official DeiT's `--teacher-path`), whose
    checksum prefix verifies it wherever it is served from."""
    release = RELEASED.get(name, (None,))[0]
    if url.rsplit("/", 1)[-1] == release:
        return
    raise UserInputError(
        f"Teacher weights are downloaded by URL only for DeiT's release "
        f"({', '.join(f for f, _ in RELEASED.values())}); download other files and pass their "
        f"path. Received: teacher={name}, teacher_weights={url!r}"
    )


def teacher_state(name: str, weights: str) -> dict:
    """`{timm key: array}` of the RegNetY `name` (timm's spelling, e.g. "regnety_160").

    Args:
        name: the teacher's timm name.
        weights: "imagenet" (DeiT's released teacher), a URL of that release
            file (official DeiT's `--teacher-path`; a mirror's too), "hf" (timm's hub copy of
            it) or a local `.pth` / `.safetensors` / `.npz` timm checkpoint.

    Raises:
        UserInputError: no released weights for `name`, a missing or
            unreadable file.
        PretrainedWeightsError: the download failed or did not verify.
    """
    if _is_url(weights):
        _check_release_url(name, weights)
        # The official address stands for the release directory, which a mirror replaces.
        official = weights.startswith(pretrained.OFFICIAL_BASE_URL.rstrip("/") + "/")
        url = None if official else weights
        return checkpoints.read_state_dict(released_file(RELEASED[name][0], url=url))
    if weights in ("imagenet", "hf"):
        if name not in RELEASED:
            raise UserInputError(
                f"DeiT released teacher weights for {', '.join(RELEASED)} only; give a timm "
                f"checkpoint of {name} (--teacher_weights=PATH) or none. "
                f"Received: teacher={name!r}, teacher_weights={weights!r}"
            )
        filename, hub_id = RELEASED[name]
        path = released_file(filename) if weights == "imagenet" else pretrained.hub_download(hub_id)
    else:
        path = weights
        if not os.path.isfile(path):
            raise UserInputError(
                f"Teacher weights file not found: {path}. Give imagenet, a timm checkpoint "
                f"(.pth, .safetensors, .npz) or none. Received: teacher_weights={weights!r}"
            )
    return checkpoints.read_state_dict(path)


def released_file(filename: str, url: str | None = None) -> str:
    """The cached release file `filename`, downloaded (from `url`, else the release
    directory or its mirror) and verified on first use."""
    directory = os.path.join(pretrained.cache_dir(), TEACHERS_SUBDIR)
    cached = os.path.join(directory, filename)
    if os.path.exists(cached):
        return cached
    url = url or pretrained.release_url(filename)
    try:
        partial = pretrained.download(url, directory, sha256=sha256_prefix_of(filename))
    except pretrained.PretrainedWeightsError as error:
        # download()'s advice names the student's flag; here the file is the teacher's.
        message = str(error).replace("--pretrained_weights=PATH", "--teacher_weights=PATH")
        raise pretrained.PretrainedWeightsError(message) from error
    os.replace(partial, cached)  # verified: the cache entry appears whole
    return cached
