"""Where images come from: `digits`, `folder:PATH` or any tfds dataset.

Every source reads a split as `(encoded_image_bytes, int64 label)` so one
image pipeline (decode inside the crop window for JPEGs) serves all.
Nothing is ever downloaded: a tfds dataset must be prepared beforehand.

A `folder:` dataset is checked before use (`image_check`): files the
pipeline cannot decode are left out (`bad_images="skip"`, listed in
`DatasetInfo.skipped`) or stop the run (`"fail"`); files that are not
images, or lie in a sub-folder of a class folder (class folders do not
nest), are listed there too. train/ and val/ must hold the same class
folders, at least 2, and every train/ class at least one image.
"""

import contextlib
import dataclasses
import os
import re

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from deit_keras.data import digits, image_check
from deit_keras.errors import UserInputError
from deit_keras.io.images import IMAGE_EXTENSIONS, is_hidden, visible_files

FOLDER_PREFIX = "folder:"
SPLITS = ("train", "eval")
# Image formats TensorFlow's decoders do not read.
UNDECODED_IMAGE_EXTENSIONS = (".tif", ".tiff", ".heic", ".heif", ".avif", ".jp2", ".jxl")
NOT_AN_IMAGE = "not an image file name"  # the reason given for e.g. notes.txt
UNDECODED_FORMAT = (
    "an image format TensorFlow does not decode (TIFF, HEIC, AVIF, JPEG 2000, JPEG XL); "
    "convert it to JPEG or PNG"
)
IN_SUB_FOLDER = "in a sub-folder of a class folder (class folders do not nest)"
NOT_UTF8 = "a file name that is not UTF-8 (TensorFlow opens UTF-8 paths only)"
# Reasons of files left out undecoded.
NOT_READ = (NOT_AN_IMAGE, UNDECODED_FORMAT, IN_SUB_FOLDER, NOT_UTF8)


class DatasetNotFoundError(UserInputError):
    """A dataset is not prepared / not found where it was looked for."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the training code needs to know about a dataset.

    Args:
        name: str. The name passed to `dataset_info` / `make_dataset`.
        num_classes: int.
        class_names: tuple of str, index = label id.
        num_train_examples: int (None: a folder split not read, `get_source(splits=...)`).
        num_eval_examples: int (the same).
        train_split: str. The dataset's own name of the training split.
        eval_split: str. The dataset's own name of the evaluation split.
        skipped: tuple of `(path, reason)`: files of a folder dataset left
            out (undecodable images, files that are not images, files in
            sub-folders of class folders).
    """

    name: str
    num_classes: int
    class_names: tuple
    num_train_examples: int | None
    num_eval_examples: int | None
    train_split: str
    eval_split: str
    skipped: tuple = ()


class Source:
    """A dataset: its `DatasetInfo` and a reader of its splits."""

    def __init__(self, info, reader):
        self.info = info
        self._reader = reader

    def split_name(self, split):
        if split == "train":
            return self.info.train_split
        if split == "eval":
            return self.info.eval_split
        raise UserInputError(f"`split` must be 'train' or 'eval'. Received: split={split!r}")

    def num_examples(self, split):
        self.split_name(split)
        if split == "train":
            return self.info.num_train_examples
        return self.info.num_eval_examples

    def read(self, split, shuffle_files=False, seed=None, reshuffle=True):
        """`tf.data.Dataset` of `(encoded bytes, int64 label)`.

        With `shuffle_files`, in a random order (tfds: its files; a folder: a full
        permutation of its images, drawn again each pass when `reshuffle`).
        """
        return self._reader(self.split_name(split), shuffle_files, seed, reshuffle)


def permuted_slices(elements: tuple, seed=None, reshuffle=True) -> tf.data.Dataset:
    """`Dataset.from_tensor_slices(elements)` in a random order: a full permutation (the
    official DeiT's `RASampler` draws `torch.randperm` over the whole dataset), drawn
    again on each pass when `reshuffle`.

    A folder lists its images class by class, and a shuffle window over such a list
    sees a few classes at a time; the window here holds indices only.

    Args:
        elements: tuple of tensors or arrays with one first dimension.
        seed: int or None. With `reshuffle`, the passes' orders follow from it.
            Salted here: the training stream's window shuffle draws from the same
            seed, and two shuffles from one seed compose to no uniform permutation.
    """
    if seed is not None:
        seed = (seed * 1_000_003 + 1) % 2**63
    tensors = tuple(tf.convert_to_tensor(element) for element in elements)
    count = int(tensors[0].shape[0])
    order = tf.data.Dataset.range(count).shuffle(
        max(count, 1), seed=seed, reshuffle_each_iteration=reshuffle
    )
    return order.map(lambda index: tuple(tf.gather(tensor, index) for tensor in tensors))


# tfds datasets scored otherwise than by one label per image: what to use.
_NOT_ONE_LABEL = {
    "imagenet2012_real": "its labels are sets: use deit-evaluate --benchmarks=real",
}


def tfds_base_name(name: str) -> str:
    """A tfds name without its config and version ("imagenet_v2/topimages:3.0.0": imagenet_v2)."""
    return name.split("/")[0].split(":")[0]


def _check_one_label(name) -> None:
    base_name = tfds_base_name(name)
    if base_name in _NOT_ONE_LABEL:
        raise UserInputError(
            f"tfds dataset {name!r} is not read as a one-label dataset here: "
            f"{_NOT_ONE_LABEL[base_name]}."
        )


def _tfds_source(name, builder, user_name, wanted=SPLITS):
    _check_one_label(name)
    info = builder.info
    image_key, label_key = info.supervised_keys or ("image", "label")
    splits = info.splits
    if "train" not in splits and "train" in wanted:
        raise UserInputError(f"tfds dataset {name!r} has no 'train' split: {list(splits)}")
    eval_split = next((s for s in ("validation", "test", "val") if s in splits), None)
    if eval_split is None:
        raise UserInputError(f"tfds dataset {name!r} has no validation/test split: {list(splits)}")
    label_feature = info.features[label_key]
    class_names = tuple(label_feature.names)
    dataset_info = DatasetInfo(
        name=user_name,
        num_classes=label_feature.num_classes,
        class_names=class_names,
        num_train_examples=splits["train"].num_examples if "train" in splits else None,
        num_eval_examples=splits[eval_split].num_examples,
        train_split="train",
        eval_split=eval_split,
    )

    def reader(split, shuffle_files, seed, reshuffle):
        del reshuffle  # tfds' default: each of a deterministic run's epochs is read once
        read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
        ds = builder.as_dataset(
            split=split,
            shuffle_files=shuffle_files,
            decoders={image_key: tfds.decode.SkipDecoding()},
            read_config=read_config,
        )
        return ds.map(lambda x: (x[image_key], tf.cast(x[label_key], tf.int64)))

    return Source(dataset_info, reader)


def _manual_download_line(builder, looked_in, catalog_name):
    """What a dataset that needs a manual download asks for, in one sentence."""
    files = re.findall(r"[\w.-]+\.(?:tar\.gz|tar|zip|tgz)\b", builder.MANUAL_DOWNLOAD_INSTRUCTIONS)
    what = " and ".join(dict.fromkeys(files)) or "the files"
    return (
        f" It needs a manual download: put {what} in "
        f"{os.path.join(looked_in, 'downloads', 'manual')} (or pass "
        "--manual_dir) as described at "
        f"https://www.tensorflow.org/datasets/catalog/{catalog_name}."
    )


@contextlib.contextmanager
def _without_lookup_warnings():
    """tfds warns "Variant folder ... has no dataset_info.json" for a dataset it finds
    unprepared; `prepared_builder` says so in its own one line instead."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def prepared_builder(name: str, data_dir: str | None = None):
    """The tfds builder of `name` (e.g. "imagenet_v2/matched-frequency"), prepared in `data_dir`.

    Raises:
        DatasetNotFoundError: `name` is not in the tfds catalogue, or the
            dataset is not prepared there; the message names the `tfds build`
            command that prepares it (and the files a manual download needs).
    """
    looked_in = data_dir or tfds.core.constants.DATA_DIR
    try:
        with _without_lookup_warnings():
            builder = tfds.builder(name, data_dir=data_dir)
            prepared = builder.is_prepared()
    except tfds.core.registered.DatasetNotFoundError as error:
        raise DatasetNotFoundError(
            f"Unknown dataset {name!r}: not 'digits', not 'folder:PATH' and "
            f"not a tfds catalogue name ({error.__class__.__name__})."
        ) from None
    if not prepared:
        manual = ""
        if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
            manual = _manual_download_line(builder, looked_in, tfds_base_name(name))
        raise DatasetNotFoundError(
            f"tfds dataset {name!r} is not prepared in data_dir={looked_in!r} "
            f"(looked for {builder.data_dir}). deit_keras never downloads "
            f"data; prepare it first with `tfds build {name} "
            f"--data_dir={looked_in}`.{manual}"
        )
    return builder


def _tfds(name, data_dir, splits):
    _check_one_label(name)  # before "not prepared": preparing it would not help
    return _tfds_source(name, prepared_builder(name, data_dir), name, splits)


def _is_local(path) -> bool:
    return "://" not in path


def _names(directory) -> list[str]:
    """The entries of `directory`, sorted. Local folders are listed by `os`, which keeps
    names that are not UTF-8 (as surrogate escapes) where TensorFlow's listing raises."""
    if _is_local(directory):
        return sorted(os.listdir(directory))
    return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(directory))


def _is_dir(path) -> bool:
    return os.path.isdir(path) if _is_local(path) else tf.io.gfile.isdir(path)


def _is_utf8(name) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def dataset_folder(name: str) -> str | None:
    """The folder a `folder:DIR` dataset reads (user's `~` expanded); None for other names."""
    if not name.startswith(FOLDER_PREFIX):
        return None
    return os.path.expanduser(name[len(FOLDER_PREFIX) :])


def _class_folders(root):
    """The class folder names in `root`, sorted; hidden folders (`.ipynb_checkpoints`) left out.

    Names that are all numbers sort by their value: ImageNet-V2's folders `0` to
    `999` are the class indices (tfds' `imagenet_v2` reads them so), which a sort
    of strings would put as 0, 1, 10, 100, ...
    """
    folders = [
        name for name in _names(root) if not is_hidden(name) and _is_dir(os.path.join(root, name))
    ]
    for name in folders:
        if not _is_utf8(name):
            raise UserInputError(
                f"The class folder {os.path.join(root, name)!r} has a name that is not UTF-8 "
                "(TensorFlow opens UTF-8 paths only); rename it."
            )
    if folders and all(re.fullmatch("[0-9]+", name) for name in folders):
        folders.sort(key=lambda name: (int(name), name))
    return tuple(folders)


def _list_folder(root, class_names):
    """`(paths, labels, ignored)`: image files by class; `ignored`: `(path, reason)` of others."""
    paths, labels, ignored = [], [], []
    for label, class_name in enumerate(class_names):
        class_dir = os.path.join(root, class_name)
        if not _is_dir(class_dir):
            continue
        for file_name in _names(class_dir):
            path = os.path.join(class_dir, file_name)
            if is_hidden(file_name):
                continue
            if _is_dir(path):
                ignored += [(f, IN_SUB_FOLDER) for f in _files_under(path)]
            elif not _is_utf8(file_name):  # listed printable: the bytes as \xNN escapes
                ignored.append((os.fsencode(path).decode("utf-8", "backslashreplace"), NOT_UTF8))
            elif file_name.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(path)
                labels.append(label)
            elif file_name.lower().endswith(UNDECODED_IMAGE_EXTENSIONS):
                ignored.append((path, UNDECODED_FORMAT))
            else:
                ignored.append((path, NOT_AN_IMAGE))
    return paths, labels, ignored


def _files_under(directory):
    """The files below `directory`, sorted; hidden files and folders left out. Links to
    folders are not followed (a link to a parent folder would loop)."""
    return visible_files(directory, walk=os.walk if _is_local(directory) else tf.io.gfile.walk)


def _check_classes(train_dir, eval_dir, class_names, eval_classes):
    if class_names != eval_classes:
        only_train = sorted(set(class_names) - set(eval_classes))
        only_eval = sorted(set(eval_classes) - set(class_names))
        raise UserInputError(
            f"The class folders of {train_dir} and {eval_dir} differ: only in train: "
            f"{only_train}, only in {os.path.basename(eval_dir)}: {only_eval}. "
            "Both need the same class folders (one may be empty in "
            f"{os.path.basename(eval_dir)})."
        )


def _read_split(root, class_names, bad_images):
    paths, labels, ignored = _list_folder(root, class_names)
    paths, labels, bad = image_check.apply_policy(paths, labels, bad_images)
    skipped = [(path, reason) for path, reason in bad.items()]
    skipped += ignored
    return paths, labels, skipped


def _folder(name, path, bad_images="skip", splits=SPLITS):
    if not tf.io.gfile.isdir(path):
        missing = "is a file, not a folder" if tf.io.gfile.exists(path) else "does not exist"
        raise DatasetNotFoundError(f"Image folder {path!r} {missing}.")
    train_dir = os.path.join(path, "train")
    eval_name = next(
        (s for s in ("val", "validation", "test") if tf.io.gfile.isdir(os.path.join(path, s))),
        None,
    )
    has_train = tf.io.gfile.isdir(train_dir)
    # Evaluating needs only val/ (a test set such as ImageNet-V2 has no train/).
    if eval_name is None or not has_train and "train" in splits:
        raise DatasetNotFoundError(
            f"Image folder {path!r} must contain 'train/' and 'val/' "
            "sub-folders, each with one folder of JPEG/PNG images per class."
        )
    eval_dir = os.path.join(path, eval_name)
    class_dir = train_dir if has_train else eval_dir
    class_names = _class_folders(class_dir)
    if not class_names:
        raise DatasetNotFoundError(f"No class folders with images in {class_dir!r}.")
    if len(class_names) == 1:
        raise UserInputError(
            f"A folder dataset needs at least 2 classes. Received: 1 class folder "
            f"{class_names[0]!r} in {class_dir}"
        )
    if has_train:
        _check_classes(train_dir, eval_dir, class_names, _class_folders(eval_dir))
    files, counts, skipped = {}, {}, []
    if "train" in splits:  # every image of a split is decoded once up front: only those used
        train_paths, train_labels, skipped = _read_split(train_dir, class_names, bad_images)
        empty = sorted(set(class_names) - {class_names[label] for label in train_labels})
        if empty:
            raise UserInputError(
                f"Class folder(s) {empty} of {train_dir} hold no readable image: a class the "
                "model could never learn. Add images or remove the folder(s) (from val/ too)."
            )
        files["train"], counts["train"] = (train_paths, train_labels), len(train_paths)
    if "eval" in splits:
        eval_paths, eval_labels, eval_skipped = _read_split(eval_dir, class_names, bad_images)
        files[eval_name], counts["eval"] = (eval_paths, eval_labels), len(eval_paths)
        skipped += eval_skipped
    info = DatasetInfo(
        name=name,
        num_classes=len(class_names),
        class_names=class_names,
        num_train_examples=counts.get("train"),
        num_eval_examples=counts.get("eval"),
        train_split="train",
        eval_split=eval_name,
        skipped=tuple(skipped),
    )

    def reader(split, shuffle_files, seed, reshuffle):
        split_paths, split_labels = files[split]
        elements = (tf.constant(split_paths, tf.string), tf.constant(split_labels, tf.int64))
        if shuffle_files:  # the file names in a random order, before any is read
            ds = permuted_slices(elements, seed, reshuffle)
        else:
            ds = tf.data.Dataset.from_tensor_slices(elements)
        return ds.map(lambda p, y: (tf.io.read_file(p), y))

    return Source(info, reader)


def get_source(
    name: str, data_dir: str | None = None, bad_images: str = "skip", splits=SPLITS
) -> Source:
    """Resolves `"digits"`, `"folder:PATH"` or a tfds name to a `Source`.

    `bad_images` ("skip" or "fail") is what a folder dataset does with files
    that do not decode (see `image_check`); tfds datasets are checked by tfds.
    A folder dataset lists and checks only the `splits` ("train", "eval")
    asked for: evaluating does not decode the training images first (its
    `info` then counts None examples in the other split, and `skipped` holds
    the asked splits' files).
    """
    image_check.check_policy(bad_images)
    if not isinstance(name, str) or not name:
        raise UserInputError(f"`name` must be a non-empty string. Received: name={name!r}")
    if name == "digits":
        builder = digits.digits_builder(data_dir)
        return _tfds_source(digits.TFDS_NAME, builder, "digits")
    if name.startswith(FOLDER_PREFIX):
        return _folder(name, dataset_folder(name), bad_images, splits)
    return _tfds(name, data_dir, splits)
