"""The ablation's rows (the paper's Table 3 and ours), without TensorFlow: `deit-ablate`'s
flags list them before TensorFlow loads (`training.ablation` runs them)."""

import dataclasses

from deit_keras.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class Row:
    """One student row of the ablation: a model and its objective.

    Args:
        name: str. The `--rows` value and the run's folder under `seed_<s>/`.
        label: str. The row's text in the table and the plot's legend.
        distillation: str. The run's `distillation_type`: none, soft or hard.
        dist_token: bool. DeiT⚗ (dist token and head) or DeiT without them.
        settings: tuple of `(TrainConfig field, value)` pairs the row sets on top
            of the ablation's configuration (e.g. a feature-distillation weight).
    """

    name: str
    label: str
    distillation: str
    dist_token: bool
    settings: tuple = ()

    @property
    def heads(self) -> tuple:
        """`(results key, how the table names that head)` of each number the row reports."""
        if not self.dist_token:
            return (("top1", ""),)  # one head: its inference output is the class head
        return (
            ("cls_top1", "class embedding"),
            ("dist_top1", "distil. embedding"),
            ("top1", "class+distil."),
        )


# The paper's Table 3, top to bottom (the teacher row comes first, from the teachers),
# then rows that are not the paper's: what `none` meant here before issue 24, and
# feature distillation.
ROWS = (
    Row("none", "DeiT, no distillation", "none", dist_token=False),
    Row("soft", "DeiT, usual distillation (soft, class token)", "soft", dist_token=False),
    Row("hard", "DeiT, hard distillation (class token)", "hard", dist_token=False),
    Row("dist_hard", "DeiT⚗, hard distillation (dist token)", "hard", dist_token=True),
    Row(
        "dist_labels",
        "DeiT⚗ without teacher, both heads on labels (not a Table 3 row)",
        "none",
        dist_token=True,
    ),
    # Not the paper's either: locality guidance (Li et al., ECCV 2022) beside the dist token's.
    Row(
        "feature",
        "DeiT⚗, hard (dist token) + feature distillation",
        "hard",
        dist_token=True,
        settings=(("feature_distillation", True),),
    ),
)
ROWS_BY_NAME = {row.name: row for row in ROWS}
DEFAULT_ROWS = ("none", "soft", "hard", "dist_hard")


def check_arguments(num_seeds: int, rows) -> tuple:
    """The rows' names as a tuple; UserInputError naming a bad seed count or row."""
    rows = tuple(rows)
    if num_seeds <= 0:
        raise UserInputError(f"seeds must be positive, got {num_seeds}")
    unknown = [name for name in rows if name not in ROWS_BY_NAME]
    if unknown or not rows:
        raise UserInputError(
            f"rows must be a non-empty list of {', '.join(ROWS_BY_NAME)}; got "
            f"{','.join(rows) or 'nothing'}"
        )
    if len(set(rows)) != len(rows):
        raise UserInputError(f"rows lists a row twice: {','.join(rows)}")
    return rows
