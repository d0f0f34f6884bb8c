"""Config fields that carry their own help text: the one schema flags are generated from.

A run's settings live in dataclasses (`deit_keras.data.augment.AugmentConfig`,
`deit_keras.training.config.TrainConfig`) whose fields are declared with
`field(default, help, ...)`. The train CLI defines one absl flag per field,
named as the field, so a hyperparameter has one name and one home.
"""

import dataclasses
import typing

HELP = "help"
CHOICES = "choices"
ALIASES = "aliases"


def field(default, help: str, *, choices=None, aliases=()):
    """A dataclass field with its command-line help (and enum choices, flag aliases).

    Args:
        default: the default value (tuples are copied per instance).
        help: str. One line for `--help`.
        choices: tuple of str or None. The allowed values of a str field.
        aliases: tuple of str. Other flag names accepted for this field.
    """
    metadata = {HELP: help, CHOICES: choices, ALIASES: tuple(aliases)}
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
