"""Class names: the ImageNet-1k names shipped with the package, and how a model's classes are named.

`imagenet_classes.txt` (beside this module) has one line per class in the
standard class-index order (`n01440764` first): the WordNet synset id, a tab,
and its comma-separated lemmas (`n02123045<TAB>tabby, tabby cat`). The order
is that of `tensorflow_datasets`' `imagenet2012/labels.txt` (and timm's
`imagenet_synsets.txt`); the lemmas are those of timm's
`imagenet_synset_to_lemma.txt` and of Keras' `imagenet_class_index.json`
(both synsets 134 and 517 are called "crane").

The rule (`resolve_class_names`, its one home): names saved with the model
win; otherwise a 1000-class model gets the ImageNet names; otherwise classes
are called `class_<index>`. Saved names that are all ImageNet synset ids (a
model trained on an ImageNet folder or on tfds `imagenet2012`) are shown as
their lemmas.
"""

import functools
from collections.abc import Sequence
from importlib import resources

from deit_keras.errors import UserInputError

IMAGENET_NUM_CLASSES = 1000
_IMAGENET_FILE = "imagenet_classes.txt"

# Where the names `resolve_class_names` returns come from.
SAVED, IMAGENET, INDEX = "saved", "imagenet", "index"


@functools.cache
def _imagenet_table() -> tuple[tuple[str, str], ...]:
    """`((synset, lemmas), ...)` in class-index order, read once."""
    text = resources.files(__package__).joinpath(_IMAGENET_FILE).read_text(encoding="utf-8")
    table = tuple(tuple(line.split("\t")) for line in text.splitlines() if line)
    if len(table) != IMAGENET_NUM_CLASSES or any(len(row) != 2 for row in table):
        raise UserInputError(
            f"{_IMAGENET_FILE} must have {IMAGENET_NUM_CLASSES} 'synset<TAB>lemmas' lines. "
            f"Received: {len(table)} lines"
        )
    return table


# Test sets of 200 ImageNet classes, scored over those classes only (the logits of the
# other 800 left out, as their authors' code and timm's `--valid-labels` do).
IMAGENET_200_SUBSETS = {
    "imagenet_a": "imagenet_a_synsets.txt",
    "imagenet_r": "imagenet_r_synsets.txt",
}


@functools.cache
def imagenet_subset_indices(name: str) -> tuple[int, ...]:
    """The ImageNet-1k class indices of test set `name`'s classes (`IMAGENET_200_SUBSETS`).

    Returns:
        tuple of 200 increasing ints in [0, 1000).
    """
    text = resources.files(__package__).joinpath(IMAGENET_200_SUBSETS[name]).read_text("utf-8")
    synsets = [line for line in text.splitlines() if line and not line.startswith("#")]
    index_of = imagenet_class_index()
    return tuple(sorted(index_of[synset] for synset in synsets))


@functools.cache
def imagenet_class_index() -> dict[str, int]:
    """`{synset id: ImageNet-1k class index}`."""
    return {synset: index for index, synset in enumerate(imagenet_synsets())}


@functools.cache
def _lemmas_by_synset() -> dict[str, str]:
    return dict(_imagenet_table())


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k WordNet synset ids in class-index order.

    Returns:
        list of str, e.g. `["n01440764", "n01443537", ...]`.
    """
    return [synset for synset, _ in _imagenet_table()]


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names (WordNet lemmas) in class-index order.

    Returns:
        list of str: index 0 is "tench, Tinca tinca", 281 "tabby, tabby cat".
    """
    return [lemmas for _, lemmas in _imagenet_table()]


def index_class_names(num_classes: int) -> list[str]:
    """Placeholder names for classes nobody named.

    Args:
        num_classes: int. How many classes.

    Returns:
        list of str: `["class_0", "class_1", ...]`.
    """
    return [f"class_{index}" for index in range(num_classes)]


def default_class_names(num_classes: int) -> list[str]:
    """The names of a model's classes when none were saved with it.

    Args:
        num_classes: int. The model's number of classes.

    Returns:
        list of str: the ImageNet-1k names for 1000 classes, otherwise
        `class_<index>`.
    """
    return resolve_class_names(num_classes)[0]


def resolve_class_names(
    num_classes: int, saved: Sequence[str] | None = None
) -> tuple[list[str], str]:
    """The names a model's classes are shown with, and where they come from.

    Args:
        num_classes: int. The model's number of classes.
        saved: sequence of str or None. Names saved with the model (the
            `.classes.json` sidecar, `deit_serving.json`, a dataset's labels).

    Returns:
        `(names, source)`: `num_classes` str, and `"saved"` (from `saved`;
        ImageNet synset ids become their lemmas), `"imagenet"` (no saved
        names, 1000 classes) or `"index"` (`class_<index>`).

    Raises:
        ValueError: when `saved` does not have `num_classes` names.
    """
    if num_classes < 0:
        raise UserInputError(f"num_classes must be >= 0. Received: num_classes={num_classes}")
    if saved is not None:
        names = [str(name) for name in saved]
        if len(names) != num_classes:
            raise UserInputError(
                f"Expected num_classes={num_classes} class names. Received: {len(names)} names"
            )
        lemmas = _lemmas_by_synset()
        if names and all(name in lemmas for name in names):
            names = [lemmas[name] for name in names]
        return names, SAVED
    if num_classes == IMAGENET_NUM_CLASSES:
        return imagenet_class_names(), IMAGENET
    return index_class_names(num_classes), INDEX
