"""PNG plots of study results (matplotlib, imported lazily).

One function per study, each taking the CSV rows (dicts; metric values are
floats or None for cells without a result) and writing one PNG. Rows of the
same ``cell`` (one per seed) are drawn as their mean, with +-1 sample standard
deviation (:func:`simclr_tf.experiments.summary.aggregate`): as text under
each heat-map value, as error bars on bars and lines; the title then says so.

* augmentations: the paper's Figure 5 heat map (rows: 1st transformation,
  columns: 2nd; the diagonal is the transformation alone; the last column is
  the row average over the finished cells);
* projection_head: bars per head (features h, and z = g(h) when evaluated);
* temperature: accuracy vs temperature (log axis), one line per hidden_norm;
* batch_size: accuracy vs batch size (log axis), one line per epoch count.
"""

import math

from simclr_tf.experiments import grids as study_grids
from simclr_tf.experiments import summary

MATPLOTLIB_HINT = ("The study plots need matplotlib: pip install 'simclr_tf[study]' "
                   "(or pip install matplotlib).")


def require_matplotlib():
    """Imports matplotlib with the non-interactive backend; returns pyplot.

    Raises ImportError with an install hint when it is missing.
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError(MATPLOTLIB_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _value(row, metric):
    return summary.number(row.get(metric))


def _spread(row, metric):
    """100 x the std of ``metric`` over the cell's seeds (0 without one)."""
    return 100 * (row.get(metric + "_std") or 0.0)


def _heat_map(plt, rows, metric):
    names = study_grids.FIG5_TRANSFORMS
    n = len(names)
    grid = [[math.nan] * (n + 1) for _ in range(n)]
    spread = {}
    for row in rows:
        value = _value(row, metric)
        if value is not None:
            i, j = names.index(row["first"]), names.index(row["second"])
            grid[i][j] = 100 * value
            if row.get(metric + "_std") is not None:
                spread[i, j] = _spread(row, metric)
    for line in grid:
        done = [v for v in line[:n] if not math.isnan(v)]
        line[n] = sum(done) / len(done) if done else math.nan
    fig, ax = plt.subplots(figsize=(8, 6.5))
    image = ax.imshow(grid, cmap=plt.get_cmap("Greens").with_extremes(bad="0.9"))
    low, high = image.get_clim()
    for i in range(n):
        for j in range(n + 1):
            value = grid[i][j]
            text = "-" if math.isnan(value) else f"{value:.1f}"
            if (i, j) in spread:
                text += f"\n±{spread[i, j]:.1f}"
            dark = not math.isnan(value) and value > (low + high) / 2
            ax.text(j, i, text, ha="center", va="center",
                    fontsize=7 if (i, j) in spread else 9,
                    color="white" if dark else "black")
    ax.axvline(n - 0.5, color="white", linewidth=3)
    ax.set_xticks(range(n + 1), list(names) + ["Average"], rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("2nd transformation")
    ax.set_ylabel("1st transformation")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return fig, ax


def _bars(plt, rows, metric):
    """Bars of ``metric`` (features h) per head, next to ``<metric>_z`` (z = g(h))
    when the rows have it."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    labels = [row["proj_head_mode"] for row in rows]
    series = [(metric, "h (encoder output)")]
    if any(_value(row, metric + "_z") is not None for row in rows):
        series.append((metric + "_z", "z = g(h)"))
    width = 0.8 / len(series)
    for k, (key, label) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(rows))]
        values = [100 * (_value(row, key) or 0.0) for row in rows]
        errors = [_spread(row, key) for row in rows]
        ax.bar(xs, values, width=width, label=label,
               yerr=errors if any(errors) else None, capsize=3)
        for x, row, value, error in zip(xs, rows, values, errors):
            text = "-" if _value(row, key) is None else f"{value:.1f}"
            ax.annotate(text, (x, value + error), ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(rows)), labels)
    ax.set_xlabel("projection head (proj_head_mode); linear eval on")
    top = max([100 * (_value(r, k) or 0.0) + _spread(r, k) for r in rows for k, _ in series]
              + [1.0])
    ax.set_ylim(0, 1.3 * top)
    ax.legend(loc="upper left", ncol=len(series), fontsize=9)
    return fig, ax


def _lines(plt, rows, metric, x_key, series_key, series_label, x_label, base):
    fig, ax = plt.subplots(figsize=(6, 4))
    for series in sorted({row[series_key] for row in rows}, key=str):
        points = sorted((row[x_key], 100 * _value(row, metric), _spread(row, metric))
                        for row in rows
                        if row[series_key] == series and _value(row, metric) is not None)
        if points:
            xs, ys, errors = zip(*points)
            ax.errorbar(xs, ys, yerr=errors if any(errors) else None, marker="o",
                        capsize=3, label=f"{series_label}={series}")
    ax.set_xscale("log", base=base)
    ax.set_xlabel(x_label)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return fig, ax


def plot(study, rows, metric, path, title):
    """Writes the PNG of ``study`` for ``rows`` to ``path``.

    ``metric``: the row key plotted (an accuracy in [0, 1], shown in %).
    Rows sharing a ``cell`` are one cell's seeds: drawn as mean +-1 std, and
    ``title`` gains a line saying so.
    """
    plt = require_matplotlib()
    fewest, most = summary.seed_counts(rows)
    rows = summary.aggregate(rows, (metric, metric + "_z"))
    if most > 1:
        # A study stopped part-way has cells with fewer seeds: say so.
        seeds = f"{most}" if fewest == most else f"{fewest}-{most}"
        title += (f"\nmean ± 1 std (sample) over {seeds} seeds"
                  + (" (± under each value)" if study == "augmentations"
                     else " (error bars)"))
    if study == "augmentations":
        fig, ax = _heat_map(plt, rows, metric)
    elif study == "projection_head":
        fig, ax = _bars(plt, rows, metric)
    elif study == "temperature":
        fig, ax = _lines(plt, rows, metric, "temperature", "hidden_norm", "hidden_norm",
                         "temperature", 10)
    else:
        fig, ax = _lines(plt, rows, metric, "train_batch_size", "train_epochs", "epochs",
                         "train_batch_size", 2)
    if study != "augmentations":
        ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
