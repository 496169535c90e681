"""Study results over seeds: per-cell mean and spread, and a Markdown table.

A study run with several seeds (``python -m simclr_tf.study --seeds=0,1,2``)
has one ``results.csv`` row per cell and seed. :func:`aggregate` folds the
rows of a cell into one, holding for each metric the mean over the finished
runs and the sample standard deviation (n - 1 in the denominator; None with
fewer than two runs), which the plots draw as +-1 std. :func:`markdown`
prints the table STUDIES.md records (``python -m simclr_tf.study --summary``).
"""

import csv
import math
import statistics

#: Metrics summarised per cell, in table order (those present in the rows).
METRICS = ("feature_linear_eval_top1", "feature_linear_eval_top1_z", "top1")


def read_csv(path):
    """The rows of a study's ``results.csv`` (dicts of strings)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def number(value):
    """A metric value as float: None for a missing one (None, "", NaN)."""
    if value is None or value == "":
        return None
    value = float(value)
    return None if math.isnan(value) else value


def aggregate(rows, metrics):
    """One row per cell (first-seen order): its first row's values, then for
    each of ``metrics`` the mean over the runs that have it (None: no run),
    ``<metric>_std`` (sample std; None below two runs) and ``<metric>_n``.
    Rows without a ``cell`` key are cells of their own."""
    groups = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.get("cell", i), []).append(row)
    out = []
    for group in groups.values():
        merged = dict(group[0])
        for metric in metrics:
            values = [v for v in (number(r.get(metric)) for r in group) if v is not None]
            merged[metric] = statistics.fmean(values) if values else None
            merged[metric + "_std"] = statistics.stdev(values) if len(values) > 1 else None
            merged[metric + "_n"] = len(values)
        out.append(merged)
    return out


def seed_counts(rows):
    """``(fewest, most)`` rows of one cell: the seeds the cells have run (0, 0 without rows)."""
    counts = {}
    for i, row in enumerate(rows):
        key = row.get("cell", i)
        counts[key] = counts.get(key, 0) + 1
    return min(counts.values(), default=0), max(counts.values(), default=0)


def _percent(mean, std):
    if mean is None:
        return "-"
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def markdown(rows):
    """The Markdown table of ``rows`` (a results.csv): one line per cell with
    its finished runs and each metric's mean ± std in %, then a caption."""
    metrics = [m for m in METRICS if any(number(r.get(m)) is not None for r in rows)]
    cells = aggregate(rows, metrics)
    runs = {}
    for row in rows:
        done = runs.setdefault(row.get("cell"), [0, 0])
        done[0] += row.get("status") == "done"
        done[1] += 1
    lines = ["| cell | runs done | " + " | ".join(f"{m} (%)" for m in metrics) + " |",
             "|---" * (2 + len(metrics)) + "|"]
    for cell in cells:
        done, total = runs[cell.get("cell")]
        values = [_percent(cell[m], cell[m + "_std"]) for m in metrics]
        lines.append(f"| {cell.get('cell')} | {done}/{total} | " + " | ".join(values) + " |")
    seeds = sorted({int(r["seed"]) for r in rows if r.get("seed") not in (None, "")})
    caption = (f"Mean ± sample standard deviation over the finished runs "
               f"(seeds {', '.join(map(str, seeds)) or '-'}); a single run shows its value.")
    protocols = sorted({r["protocol"] for r in rows if r.get("protocol")})
    if protocols:
        caption += f" Protocol: {', '.join(protocols)}."
    return "\n".join(lines) + "\n\n" + caption
