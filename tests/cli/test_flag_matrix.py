"""Every flag of every CLI at its edge values: each works or fails in one line naming it.

In-process: each CLI module is imported afresh with only its own flags
defined (`cli_flags`), its flags are enumerated from absl, and each value is
put through what the CLI runs before any work: absl parsing with the
registered validators (`cli.check_range`, `cli.check_path`), then the CLI's
own checks (`TrainConfig.validate` / `check_paths`, export's `_check_flags`)
and, for input files, the reader of that file. Numeric flags get 0, -1, NaN,
+-inf and a huge value; path flags a missing path, a directory, an unreadable
file, an empty file and a file of the wrong kind. A few subprocess runs at the
end show what a user sees: one `error:` line, exit 2, no output left.
"""

import contextlib
import dataclasses
import importlib
import json
import os
import sys

import numpy as np
import pytest
from absl import flags
from hypothesis import given, settings
from hypothesis import strategies as st

from deit_keras import cli
from deit_keras.deploy import saving
from deit_keras.io.images import load_image
from deit_keras.schema import VALID, schema_fields
from deit_keras.testing import assert_one_line_error, run_cli, tiny_model
from deit_keras.training.config import TrainConfig

CLIS = ("train", "convert", "export", "evaluate", "predict", "visualize", "ablate")
NUMBERS = ("0", "-1", "nan", "inf", "-inf", "huge")
PATH_CASES = ("missing", "directory", "unreadable", "empty", "wrong_kind")
ROOT = os.geteuid() == 0  # root reads and writes past file modes

# Each path flag and what it names; `flagfile` (absl's) comes with every CLI.
PATH_FLAGS = {
    "train": {
        "finetune": "input_file",
        "teacher": "input_file",
        "model_dir": "output_dir",
        "output": "keras_file",
        "data_dir": "directory",
    },
    "convert": {"checkpoint": "input_file", "output": "output_file"},
    "export": {"model_path": "input_file", "output": "output_path", "data_dir": "directory"},
    "evaluate": {
        "model_path": "input_file",
        "reference_model": "input_file",
        "output": "output_file",
        "data_dir": "directory",
    },
    "predict": {"model_path": "input_file", "output": "output_file"},
    "visualize": {
        "model_path": "input_file",
        "output": "output_file",
        "similarity_output": "output_file",
    },
    "ablate": {"model_dir": "output_dir", "finetune": "input_file", "output": "keras_file"},
}
# Which cases of each kind must be refused (the others must pass the checks);
# root reads and writes past file modes, so "unreadable" is refused only for others.
UNREADABLE = set() if ROOT else {"unreadable"}
REFUSED = {
    "input_file": {"missing", "directory", "empty", "wrong_kind"} | UNREADABLE,
    "output_file": {"directory", "wrong_kind"} | UNREADABLE,
    "keras_file": {"directory", "wrong_kind"} | UNREADABLE,  # an output_file named .keras
    "output_dir": {"empty", "wrong_kind"} | UNREADABLE,
    # export's --output (a SavedModel by default): a file, or a directory that is not
    # an earlier SavedModel, is not replaced.
    "output_path": {"directory", "empty", "wrong_kind"} | UNREADABLE,
    "directory": {"empty", "wrong_kind"},
    "flagfile": {"missing", "directory", "wrong_kind"} | UNREADABLE,
}


@contextlib.contextmanager
def cli_flags(name):
    """`deit_keras.cli.<name>` imported afresh, with no other CLI's flags defined.

    The CLIs share flag names (`--output`, `--crop_pct`, ...), so only one can
    be imported into `flags.FLAGS` at a time; what was there before (e.g. from
    another test module) is put back afterwards.
    """
    values = flags.FLAGS

    def cli_owned():
        return {
            module: list(owned)
            for module, owned in values.flags_by_module_dict().items()
            if module.startswith("deit_keras.cli.")
        }

    def remove(owned):
        for module_flags in owned.values():
            for flag in module_flags:
                if flag.name in values:
                    delattr(values, flag.name)

    saved_flags = cli_owned()

    def cli_modules():
        return [
            key
            for key in sys.modules
            if key.startswith("deit_keras.cli.") and key != "deit_keras.cli.config_flags"
        ]

    def forget(keys):  # `from deit_keras.cli import x` reads the package attribute first
        for key in keys:
            del sys.modules[key]
            with contextlib.suppress(AttributeError):
                delattr(package, key.rsplit(".", 1)[1])

    package = importlib.import_module("deit_keras.cli")
    saved_modules = {key: sys.modules[key] for key in cli_modules()}
    forget(saved_modules)
    remove(saved_flags)
    values.unparse_flags()
    try:
        yield importlib.import_module(f"deit_keras.cli.{name}")
    finally:
        values.unparse_flags()
        remove(cli_owned())
        forget(cli_modules())
        sys.modules.update(saved_modules)
        for key, saved in saved_modules.items():
            setattr(package, key.rsplit(".", 1)[1], saved)
        for module, module_flags in saved_flags.items():
            for flag in module_flags:
                values[flag.name] = flag
                values.register_flag_by_module(module, flag)


def own_flags():
    """The flags the imported CLI modules define: `{name: flag}` (aliases left out)."""
    found = {}
    for module, owned in flags.FLAGS.flags_by_module_dict().items():
        if module.startswith("deit_keras.cli.") or module == "deit_keras.cli":
            for flag in owned:
                if type(flag).__name__ != "_FlagAlias":
                    found[flag.name] = flag
    return found


def check(name, module, argv, files):
    """What the CLI does before any work; raises its one-line error for a bad input."""
    values = flags.FLAGS
    values.unparse_flags()
    rest = cli.parse_argv(["prog", *argv])
    if name in ("predict", "visualize"):  # image paths; a stray flagfile line becomes one
        for path in rest[1:]:
            load_image(path)
    else:
        cli.check_no_arguments(rest)
    if name in ("train", "ablate"):
        from deit_keras.cli.config_flags import config_from_flags

        config = config_from_flags(TrainConfig)
        config.validate()
        config.check_paths()
        if name == "ablate":
            module.check_arguments(values.seeds, values.rows)
        finetune = config.finetune
        if finetune:
            saving.load_model(finetune, compile=False)
        if name == "train" and str(config.teacher).endswith(".keras"):
            from deit_keras.distill import teachers

            teachers.build_teacher(config.teacher, 3, 32)
    if name == "export":
        module._check_flags()
    if name == "convert" and values.checkpoint:
        from deit_keras.deploy.checkpoints import read_state_dict

        read_state_dict(values.checkpoint)
    if "model_path" in values and values.model_path:
        saving.load_model(values.model_path, compile=False)
    if "reference_model" in values and values.reference_model:
        from deit_keras.deploy.runtimes import load_for_inference

        load_for_inference(values.reference_model)


# What a CLI needs besides the flag tried (its required flags, where its checks read them).
BASE_ARGV = {"export": ("--output=exported",)}


def spellings(value):
    """How a message may quote `value` (`1e30` is printed `1e+30`)."""
    found = {value}
    with contextlib.suppress(ValueError):
        found.add(str(float(value)))
    return found


def outcome(name, module, flag, value, files):
    """None when the CLI's checks pass, else the error line, asserted to name what is wrong.

    A flag's checks name the flag and the value; a file's reader (a text file
    given as a .keras or .pth) names the file; a flagfile's bad line is quoted.
    """
    try:
        check(name, module, [*BASE_ARGV.get(name, ()), f"--{flag}={value}"], files)
    except (flags.Error, ValueError, OSError) as error:
        message = " ".join(str(error).split())  # as `cli.run` prints it: `error: <message>`
        assert message, (flag, value)
        if "this line is not a flag" not in message:
            assert any(text in message for text in spellings(value)), (flag, value, message)
            read = "not a .keras" in message or "checkpoint" in message
            assert flag in message.lower() or read, (flag, value, message)
        return message
    return None


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    saving.save_model(tiny_model(num_classes=3), str(root / "good.keras"), class_names=list("abc"))
    (root / "text.keras").write_text("not a model")
    (root / "text.pth").write_text("not a checkpoint")
    (root / "flags.cfg").write_text("this line is not a flag\n")
    (root / "a_file").write_text("x")
    (root / "empty").write_bytes(b"")
    (root / "a_dir").mkdir()
    (root / "a_dir" / "notes.txt").write_text("a user's folder")  # not empty: not replaced
    locked = root / "locked"
    locked.mkdir()
    unreadable = locked / "good.keras"
    unreadable.write_bytes((root / "good.keras").read_bytes())
    unreadable.chmod(0)
    (locked / "flags.txt").write_text("--verbose=false\n")
    np.savez(locked / "weights.npz", cls_token=np.zeros((1, 1, 8), np.float32))
    for name in ("flags.txt", "weights.npz"):
        (locked / name).chmod(0)
    locked.chmod(0o555)
    yield root
    locked.chmod(0o755)
    unreadable.chmod(0o644)
    for name in ("flags.txt", "weights.npz"):
        (locked / name).chmod(0o644)


def path_value(flag, kind, case, files):
    if kind == "keras_file":  # other names are refused for their suffix alone
        value = path_value(flag, "output_file", case, files)
        return value if case in REFUSED[kind] else value + ".keras"
    if case == "missing":
        return str(files / "missing" / ("x.keras" if kind == "input_file" else "new"))
    if case == "directory":
        return str(files / "a_dir")
    if case == "empty":
        return str(files / "empty")
    if case == "unreadable":
        locked = {"input_file": "good.keras", "flagfile": "flags.txt"}
        if flag == "checkpoint":
            locked["input_file"] = "weights.npz"
        return str(files / "locked" / locked.get(kind, "out"))
    if kind == "input_file":
        return str(files / ("text.pth" if flag == "checkpoint" else "text.keras"))
    if kind == "flagfile":
        return str(files / "flags.cfg")
    return str(files / "a_file" / "out")  # an output under a regular file


def number_value(flag, case):
    if case != "huge":
        return case
    return str(10**30) if flag.flag_type() == "int" else "1e30"


def test_every_numeric_schema_field_declares_its_range():
    from deit_keras.data.augment_config import AugmentConfig

    for cls in (TrainConfig, AugmentConfig):
        kinds = {item.name: item.type for item in dataclasses.fields(cls)}
        for item in schema_fields(cls):
            if any(kind in str(kinds[item.name]) for kind in ("int", "float", "tuple")):
                assert item.metadata[VALID] is not None, f"{cls.__name__}.{item.name}"


@pytest.mark.parametrize("name", CLIS)
def test_every_flag_at_every_edge(name, files, record_property):
    counts = {"tried": 0, "refused": 0, "accepted": 0}
    problems = []
    with cli_flags(name) as module:
        own = own_flags()
        numeric = [flag for flag in own.values() if flag.flag_type() in ("int", "float")]
        assert numeric, name
        cases = [
            (flag.name, number_value(flag, case), None) for flag in numeric for case in NUMBERS
        ]
        if name in ("train", "ablate"):
            ranges = {
                item.name: item.metadata[VALID]
                for cls in (TrainConfig, TrainConfig.__dataclass_fields__["augment"].type)
                for item in schema_fields(cls)
            }
        else:
            ranges = {}
        kinds = dict(PATH_FLAGS[name], flagfile="flagfile")
        assert set(PATH_FLAGS[name]) <= set(own), set(PATH_FLAGS[name]) - set(own)
        cases += [
            (flag, path_value(flag, kind, case, files), (kind, case))
            for flag, kind in kinds.items()
            for case in PATH_CASES
        ]
        for flag, value, path_case in cases:
            counts["tried"] += 1
            try:
                message = outcome(name, module, flag, value, files)
            except AssertionError as error:
                problems.append(f"--{flag}={value}: {error}")
                continue
            counts["refused" if message else "accepted"] += 1
            if path_case is not None:
                expected = path_case[1] in REFUSED[path_case[0]]
            elif flag in ranges and ranges[flag] is not None:
                expected = not ranges[flag].contains(_number(value))
            elif value in ("-1", "nan", "inf", "-inf") or value == str(10**30):
                expected = True  # no setting of these CLIs takes a negative or non-finite value
            else:
                expected = bool(message)  # 0, 1e30 on a flag without a schema range: either
            if bool(message) != expected:
                problems.append(
                    f"--{flag}={value}: {'refused: ' + message if message else 'accepted'}"
                )
    print(f"{name}: {json.dumps(counts)}")
    record_property("counts", counts)
    assert not problems, "\n".join(problems)
    assert counts["tried"] == counts["refused"] + counts["accepted"]


def test_convert_takes_num_classes_0_for_a_headless_model(files):
    """The library converts to timm's `num_classes=0` (features); the command refused it."""
    with cli_flags("convert") as module:
        assert outcome("convert", module, "num_classes", "0", files) is None
        assert outcome("convert", module, "num_classes", "-1", files)


def test_convert_takes_every_name_create_model_takes(files):
    """timm's default tags (docs/models.md) and the short aliases were refused by --model."""
    with cli_flags("convert") as module:
        for name in ("cait_xxs24_224.fb_dist_in1k", "deit3_small_patch16_224.fb_in1k", "deit_t"):
            assert outcome("convert", module, "model", name, files) is None, name
        assert "deit_tiny_patch" in outcome("convert", module, "model", "deit_tiny_patch", files)


def test_predict_output_is_refused_under_another_format_s_name(files):
    """`--output preds.csv` wrote JSON into it."""
    with cli_flags("predict") as module:
        message = outcome("predict", module, "output", str(files / "preds.csv"), files)
        assert "writes JSON" in message
        assert outcome("predict", module, "output", str(files / "preds.JSON"), files) is None


def _number(text):
    try:
        return int(text)
    except ValueError:
        return float(text)


# === Hypothesis: any mix of train values ===


def _train_numeric_fields():
    from deit_keras.data.augment_config import AugmentConfig

    return [
        (item.name, item.metadata[VALID], "int" in str(item.type))
        for cls in (TrainConfig, AugmentConfig)
        for item in schema_fields(cls)
        if item.metadata[VALID] is not None and "tuple" not in str(item.type)
    ]


@st.composite
def _train_values(draw):
    chosen = draw(
        st.lists(
            st.sampled_from(_train_numeric_fields()),
            min_size=1,
            max_size=4,
            unique_by=lambda field: field[0],
        )
    )
    values = {}
    for name, _, is_int in chosen:
        if is_int:
            values[name] = draw(st.integers(min_value=-(2**40), max_value=2**40))
        else:
            values[name] = draw(st.floats(allow_nan=True, allow_infinity=True))
    return values


def test_train_values_in_any_mix_are_all_checked(tmp_path):
    """A mix of values: refused in one line naming a bad one with its value, else accepted."""
    ranges = {name: allowed for name, allowed, _ in _train_numeric_fields()}
    seen = {"refused": 0, "accepted": 0}

    @settings(max_examples=150, deadline=None, database=None)
    @given(values=_train_values())
    def property_(values):
        bad = {name: value for name, value in values.items() if not ranges[name].contains(value)}
        argv = [f"--model_dir={tmp_path / 'run'}"]
        argv += [f"--{name}={value!r}" for name, value in values.items()]
        try:
            check("train", module, argv, None)
        except (flags.Error, ValueError) as error:
            message = str(error)
            assert len(message.splitlines()) == 1, message
            if not bad:  # the one cross-field rule among numbers
                assert "must be a multiple of grad_accum_steps" in message, (values, message)
            else:
                named = [f"{name} must" in message and str(bad[name]) in message for name in bad]
                assert any(named), (values, message)
            seen["refused"] += 1
            return
        assert not bad, f"accepted {bad}"
        seen["accepted"] += 1

    with cli_flags("train") as module:
        property_()
    print(f"train, hypothesis mixes: {json.dumps(seen)}")
    assert seen["refused"] and seen["accepted"], seen


# === Subprocesses: what a user sees ===


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("inputs")
    saving.save_model(tiny_model(num_classes=3), str(root / "good.keras"), class_names=list("abc"))
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(root / "image.png")
    (root / "empty.keras").write_bytes(b"")
    return root


@pytest.mark.parametrize(
    "name, args, flag, value, output",
    [
        ("train", ["--model_dir={tmp}/run"], "drop_path", "nan", "run"),
        ("ablate", ["--output_dir={tmp}/ablation"], "seeds", "0", "ablation"),
        ("ablate", ["--output_dir={tmp}/ablation"], "train_fractions", "0.5,1.5", "ablation"),
        (
            "convert",
            ["--model=deit_tiny_patch16_224", "--output={tmp}/x.keras"],
            "checkpoint",
            "{tmp}",
            "x.keras",
        ),
        (
            "export",
            ["--model_path={inputs}/good.keras", "--output={tmp}/out"],
            "crop_pct",
            "0",
            "out",
        ),
        (
            "evaluate",
            ["--model_path={inputs}/good.keras", "--dataset=digits", "--output={tmp}/e.json"],
            "max_batches",
            "-1",
            "e.json",
        ),
        (
            "predict",
            ["--model_path={inputs}/good.keras", "--output={tmp}/p.json", "{inputs}/image.png"],
            "crop_pct",
            "0.05",
            "p.json",
        ),
        (
            "predict",
            ["--model_path={inputs}/good.keras", "--output={tmp}/p.json", "{inputs}/image.png"],
            "top_k",
            str(10**30),
            "p.json",
        ),
        (
            "visualize",
            ["--output={tmp}/v.png", "{inputs}/image.png"],
            "model_path",
            "{inputs}/empty.keras",
            "v.png",
        ),
    ],
)
def test_cli_prints_one_line_and_exits_2(name, args, flag, value, output, inputs, tmp_path):
    def fill(text):
        return text.format(tmp=tmp_path, inputs=inputs)

    value = fill(value)
    process = run_cli(name, f"--{flag}={value}", *map(fill, args), timeout=120)
    assert_one_line_error(process, flag, value)
    assert not (tmp_path / output).exists()


def test_a_model_folder_that_is_no_saved_model_says_so(tmp_path):
    """It said "is a directory, expected a file", where a SavedModel directory serves."""
    from deit_keras import cli

    problem = cli.PATH_KINDS["model_input"]("model_path", str(tmp_path))
    assert problem.startswith("model_path is a directory but not a SavedModel (no "), problem
    (tmp_path / "saved_model.pb").write_bytes(b"read later, by the loader")
    assert cli.PATH_KINDS["model_input"]("model_path", str(tmp_path)) is None
