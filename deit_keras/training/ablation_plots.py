"""The ablation's figures, drawn with matplotlib: learning curves with mean ± std bands.

Each figure is a `matplotlib.figure.Figure` rendered by its own Agg canvas, never
through `pyplot`: no backend is chosen, no global state or open-figure registry is
touched for the process that calls this (a notebook keeps its backend). PNGs are
written atomically (`io.atomic`), at exactly the requested size in pixels.
"""

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from deit_keras.io.atomic import atomic_output

# matplotlib's "tab10" colours, in order: row i of a figure is drawn in PALETTE[i].
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
BAND_ALPHA = 0.2  # opacity of a mean ± std band
REFERENCE_COLOUR = "#000000"
_DPI = 100


def colour(index: int) -> str:
    """The colour of a figure's `index`-th row."""
    return PALETTE[index % len(PALETTE)]


def _figure(size: tuple[int, int]) -> tuple[Figure, object]:
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive pixels. Received: size={size}")
    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself: `figure.savefig` renders with Agg
    return figure, figure.add_subplot()


def _save(figure: Figure, path: str) -> None:
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=_DPI)


def learning_curves_png(
    curves: dict,
    path: str,
    title: str,
    references: dict | None = None,
    size: tuple[int, int] = (800, 500),
) -> None:
    """Writes validation top-1 per epoch, each row's mean line in a ± std band, to `path`.

    Args:
        curves: `{label: (means, stds)}` or `{label: (means, stds, epochs)}`:
            one value per validated epoch, at `epochs` (1-based; None or left
            out: 1, 2, ...); a single-epoch curve is drawn as a point.
        path: str. The PNG to write (atomically).
        title: str. The figure's title.
        references: `{label: {"mean": m, "std": s}}` or None. Levels drawn as
            dashed horizontal lines (the teacher's final top-1).
        size: `(width, height)` in pixels. Defaults to (800, 500).
    """
    figure, axes = _figure(size)
    for index, (label, (means, stds, *at)) in enumerate(curves.items()):
        epochs = list(at[0]) if at and at[0] else list(range(1, len(means) + 1))
        stds = [std or 0.0 for std in stds]  # one seed: no band
        low = [mean - std for mean, std in zip(means, stds, strict=True)]
        high = [mean + std for mean, std in zip(means, stds, strict=True)]
        axes.fill_between(epochs, low, high, color=colour(index), alpha=BAND_ALPHA, linewidth=0)
        marker = "o" if len(means) == 1 else None
        axes.plot(epochs, means, color=colour(index), linewidth=1.8, marker=marker, label=label)
    for label, stats in (references or {}).items():
        if stats:
            axes.axhline(
                stats["mean"], color=REFERENCE_COLOUR, linestyle="--", linewidth=1, label=label
            )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation top-1 (fraction)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if curves or references:
        axes.legend(loc="lower right", fontsize="small")
    _save(figure, path)


def data_efficiency_png(
    series: dict,
    path: str,
    title: str,
    size: tuple[int, int] = (800, 500),
) -> None:
    """Writes top-1 against the number of training images, mean ± std per row, to `path`.

    Args:
        series: `{label: [(num_images, mean, std), ...]}`, one point per train fraction.
        path: str. The PNG to write (atomically).
        title: str. The figure's title.
        size: `(width, height)` in pixels. Defaults to (800, 500).
    """
    figure, axes = _figure(size)
    for index, (label, points) in enumerate(series.items()):
        points = sorted(points)
        counts = [count for count, _, _ in points]
        means = [mean for _, mean, _ in points]
        low = [mean - (std or 0.0) for _, mean, std in points]
        high = [mean + (std or 0.0) for _, mean, std in points]
        axes.fill_between(counts, low, high, color=colour(index), alpha=BAND_ALPHA, linewidth=0)
        axes.plot(counts, means, color=colour(index), linewidth=1.8, marker="o", label=label)
    axes.set_xscale("log")
    axes.set_xlabel("training images (log scale)")
    axes.set_ylabel("top-1 on the evaluation split (fraction)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    if series:
        axes.legend(loc="lower right", fontsize="small")
    _save(figure, path)
