"""The names of the DeiT paper's Table 5 test sets and their choice, without TensorFlow
(`deit-evaluate`'s flags load before it); `data.imagenet_test_sets` reads them."""

from deit_keras.errors import UserInputError

IMAGENET, REAL, V2 = "imagenet", "real", "v2"
BENCHMARKS = (IMAGENET, REAL, V2)
V2_VARIANTS = ("matched-frequency", "threshold-0.7", "topimages")
DEFAULT_V2_VARIANT = "matched-frequency"


def parse_benchmarks(benchmarks) -> tuple:
    """`"imagenet,real,v2"` or a list of names -> a tuple in `BENCHMARKS` order.

    Raises:
        UserInputError: a name is not a benchmark, or none is given.
    """
    names = benchmarks.split(",") if isinstance(benchmarks, str) else list(benchmarks or ())
    given = ",".join(names)  # as typed: a list flag's value is a Python list
    names = [name.strip().lower() for name in names if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown or not names:
        raise UserInputError(
            f"benchmarks must be a comma-separated subset of {','.join(BENCHMARKS)}. "
            f"Received: benchmarks={given}"
        )
    return tuple(name for name in BENCHMARKS if name in names)
