"""Config fields that carry their own help text: the one schema flags are generated from.

A run's settings live in dataclasses (`deit_keras.data.augment_config.AugmentConfig`,
`deit_keras.training.config.TrainConfig`) whose fields are declared with
`field(default, help, ...)`. The train CLI defines one absl flag per field,
named as the field, so a hyperparameter has one name and one home; a numeric
field also declares its allowed values there (`valid=`, a `Range`).
"""

import dataclasses
import math
import typing

HELP = "help"
CHOICES = "choices"
ALIASES = "aliases"
VALID = "valid"

# The largest integer setting: TensorFlow counts steps, sizes and seeds in 32
# bits, so anything above is a typo that would otherwise fail deep inside it.
INT_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a numeric setting: finite, from `low` to `high`.

    Args:
        low: float or None. Smallest allowed value; None for no bound.
        high: float or None. Largest allowed value; None for no bound.
        low_open: bool. Exclude `low` itself.
        high_open: bool. Exclude `high` itself.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __str__(self) -> str:
        if self.high is None:
            if self.low == 0:
                return "positive" if self.low_open else ">= 0"
            return f"{'>' if self.low_open else '>='} {self.low}"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"in {left}{self.low}, {self.high}{right}"

    def contains(self, value) -> bool:
        """Whether `value` (a number, or a tuple of them) is allowed; None always is."""
        if isinstance(value, (tuple, list)):
            return all(self.contains(item) for item in value)
        if value is None:
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value) or abs(value) > INT_MAX and isinstance(value, int):
            return False
        if self.low is not None and (value < self.low or self.low_open and value == self.low):
            return False
        return self.high is None or value < self.high or value == self.high and not self.high_open

    def problem(self, name: str, value) -> str | None:
        """None when `value` is allowed, else one line naming `name` and `value`."""
        if self.contains(value):
            return None
        huge = isinstance(value, int) and value > INT_MAX and self.high is None
        limit = f" and at most {INT_MAX}" if huge else ""
        return f"{name} must be {self}{limit}, got {value}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
PROBABILITY = Range(0, 1)
FRACTION = Range(0, 1, low_open=True)  # (0, 1]: a decay factor or a share of the data
# An eval crop fraction: below 0.1 the resize before the crop (image_size / crop_pct
# on the shorter side) outgrows memory and int32 sizes long before it is of any use.
CROP_PCT = Range(0.1, 1)


def field(default, help: str, *, choices=None, aliases=(), valid=None):
    """A dataclass field with its command-line help (and enum choices, flag aliases).

    Args:
        default: the default value (tuples are copied per instance).
        help: str. One line for `--help`.
        choices: tuple of str or None. The allowed values of a str field.
        aliases: tuple of str. Other flag names accepted for this field.
        valid: `Range` or None. The allowed values of a numeric field
            (None is always allowed for an optional one); see `range_problems`.
    """
    metadata = {HELP: help, CHOICES: choices, ALIASES: tuple(aliases), VALID: valid}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_type(cls, field: dataclasses.Field) -> type:
    """The plain type of a field: `int | None` -> int, `tuple` -> tuple."""
    hint = typing.get_type_hints(cls)[field.name]
    arguments = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return arguments[0] if arguments else hint


def schema_fields(cls) -> list:
    """The fields of `cls` declared with `field()` (those that become flags)."""
    return [item for item in dataclasses.fields(cls) if HELP in item.metadata]


def range_problems(config) -> list:
    """One line per field of `config` (not its nested configs) outside its `valid` range."""
    problems = []
    for item in schema_fields(type(config)):
        allowed = item.metadata[VALID]
        problem = allowed and allowed.problem(item.name, getattr(config, item.name))
        if problem:
            problems.append(problem)
    return problems
