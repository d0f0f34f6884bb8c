"""absl flags generated from a config dataclass tree (`deit_keras.schema`).

One flag per `field()`, named as the field, with the field's default, help,
enum choices and aliases; a nested dataclass field (e.g. `augment`)
contributes its own fields' flags. `config_from_flags` builds the dataclass
back from the parsed values, so no hand-written mapping can drift.
"""

import dataclasses

from absl import flags

from deit_keras.errors import UserInputError
from deit_keras.schema import ALIASES, CHOICES, HELP, field_type, schema_fields


def _nested(cls) -> list:
    """`(name, dataclass type)` of the fields that hold a nested config."""
    return [
        (item.name, field_type(cls, item))
        for item in dataclasses.fields(cls)
        if HELP not in item.metadata and dataclasses.is_dataclass(field_type(cls, item))
    ]


def _define(cls, item, flag_values):
    kind = field_type(cls, item)
    help_text = item.metadata[HELP]
    name, default = item.name, item.default
    if item.metadata[CHOICES]:
        flags.DEFINE_enum(
            name, default, list(item.metadata[CHOICES]), help_text, flag_values=flag_values
        )
    elif kind is bool:
        flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
    elif kind is int:
        flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
    elif kind is float:
        flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
    elif kind is tuple:
        flags.DEFINE_list(
            name, [repr(value) for value in default], help_text, flag_values=flag_values
        )
    else:
        flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
    for alias in item.metadata[ALIASES]:
        flags.DEFINE_alias(alias, name, flag_values=flag_values)


def define_config_flags(cls: type, flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one flag per schema field of `cls` and of its nested configs."""
    for item in schema_fields(cls):
        _define(cls, item, flag_values)
    for _, nested in _nested(cls):
        define_config_flags(nested, flag_values)


def _number(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserInputError(f"{name} must be a list of numbers, got {text!r}") from None


def config_from_flags(cls: type, flag_values: flags.FlagValues = flags.FLAGS):
    """The `cls` instance the parsed flags describe."""
    values = {}
    for item in schema_fields(cls):
        value = flag_values[item.name].value
        if field_type(cls, item) is tuple:
            value = tuple(_number(item.name, part) for part in value)
        values[item.name] = value
    for name, nested in _nested(cls):
        values[name] = config_from_flags(nested, flag_values)
    return cls(**values)
