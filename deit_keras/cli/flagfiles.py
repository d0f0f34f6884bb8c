"""`--flagfile=FILE` read as absl reads it, with includes found beside the including file.

absl opens a `--flagfile=` line inside a flagfile relative to the working directory, so
`experiments/deit_finetune.cfg` (which includes `teacher_finetune.cfg`) worked only from
the repository's root. Here each flagfile on the command line is expanded in place into
its flags before absl parses them, a relative include looked for beside the file that
includes it first, then (absl's rule) from the working directory. Files that cannot be
read are left to absl, which names them.
"""

import os

_DIRECTIVES = ("--flagfile=", "-flagfile=")


def _included_path(arg: str) -> str | None:
    directive = next((d for d in _DIRECTIVES if arg.startswith(d)), None)
    return arg[len(directive) :] if directive else None


def _flags_of(path: str, stack: tuple) -> list[tuple[str, str | None]]:
    """FILE's flags, its includes expanded, each with where it stands (`FILE line N`);
    absl's line rules (strip, skip blank and `#` / `//` comments); a file already being
    read (a cycle) is skipped, as absl does."""
    if path in stack:
        return []
    with open(path, encoding="utf-8-sig") as handle:  # a BOM (Windows editors) is not a flag
        lines = [line.strip() for line in handle]
    expanded = []
    for number, line in enumerate(lines, start=1):
        if not line or line.startswith(("#", "//")):
            continue
        included = _included_path(line)
        if included is None:
            expanded.append((line, f"{path} line {number}"))
            continue
        beside = os.path.join(os.path.dirname(path), os.path.expanduser(included))
        if not os.path.isabs(included) and os.path.isfile(beside):
            included = beside
        expanded += _expanded(f"--flagfile={included}", (*stack, path))
    return expanded


def _expanded(arg: str, stack: tuple = ()) -> list[tuple[str, str | None]]:
    path = _included_path(arg)
    if path is None or not os.path.isfile(os.path.expanduser(path)):
        return [(arg, None)]
    return _flags_of(os.path.abspath(os.path.expanduser(path)), stack)


def expand_flagfiles_with_origins(argv: list[str]) -> list[tuple[str, str | None]]:
    """`argv` with each `--flagfile=FILE` before `--` replaced by FILE's flags, each
    argument with the flagfile line it comes from (None: the command line).

    Raises:
        UnicodeDecodeError: a flagfile is not UTF-8 text (the caller's one line).
    """
    expanded = [(arg, None) for arg in argv[:1]]
    for index, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            return expanded + [(rest, None) for rest in argv[index:]]
        expanded += _expanded(arg)
    return expanded


def expand_flagfiles(argv: list[str]) -> list[str]:
    """`argv` with each `--flagfile=FILE` before `--` replaced by FILE's flags."""
    return [arg for arg, _ in expand_flagfiles_with_origins(argv)]
