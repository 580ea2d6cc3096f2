"""The release's plots: PNG files beside the card, drawn from the aggregate result.

Four figures, where people would rather look than read a table: the rating distribution of each
aspect, the overall-score histogram, the per-model leaderboard and the per-source scores. They are
drawn with matplotlib's Agg canvas (no display, no pyplot global state, safe in a thread) from
``AggregateResult.to_dict()`` only, so they are a pure function of what the card already shows:
the same aggregate gives the same bytes (the PNG carries no timestamp or version text).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

FOLDER = "plots"
DPI = 100


@dataclass(frozen=True)
class Plot:
    """One figure of a release: its file (relative to the release folder), title and PNG bytes."""

    path: str
    title: str
    png: bytes


def render_plots(aggregate: Mapping[str, Any] | None) -> list[Plot]:
    """The plots the aggregate has data for (none without an aggregate), in card order."""
    if not aggregate:
        return []
    drawers = (
        ("ratings", "Rating distribution per aspect", _ratings, aggregate.get("rating_distribution")),
        ("overall_score", "overall_score histogram", _overall, aggregate.get("overall_histogram")),
        ("leaderboard", "Model leaderboard", partial(_scores, "model"), aggregate.get("leaderboard")),
        ("sources", "Scores per source", partial(_scores, "source"), aggregate.get("by_source")),
    )
    plots = []
    for name, title, draw, rows in drawers:
        if not rows:
            continue
        figure = draw(list(rows), title)
        if figure is not None:
            plots.append(Plot(f"{FOLDER}/{name}.png", title, _png(figure)))
    return plots


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    # no "Software" text chunk: the bytes depend on the data only
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if number != number else number  # NaN: nothing to draw


def _ratings(rows: Sequence[Mapping[str, Any]], title: str) -> Any:
    """One bar chart per aspect: completions per rating (N/A, null and other only when present)."""
    from ultrafeedback.tasks.aggregate.aggregate import RATING_LABELS

    labels = [label for label in RATING_LABELS if label in "12345" or any(_number(row.get(label)) > 0 for row in rows)]
    columns = 2 if len(rows) > 1 else 1
    lines = (len(rows) + columns - 1) // columns
    figure = _figure(4.2 * columns, 2.8 * lines)
    figure.suptitle(title)
    axes = figure.subplots(lines, columns, squeeze=False).ravel()
    for ax, row in zip(axes, rows, strict=False):
        counts = [_number(row.get(label)) for label in labels]
        bars = ax.bar(labels, counts, color="#4c72b0")
        ax.bar_label(bars, labels=[f"{int(c):,}" if c else "" for c in counts], fontsize=8)
        ax.set_title(str(row.get("aspect", "")))
        ax.set_xlabel("rating")
        ax.set_ylabel("completions")
        ax.margins(y=0.15)
    for ax in axes[len(rows) :]:
        ax.set_visible(False)
    return figure


def _overall(rows: Sequence[Mapping[str, Any]], title: str) -> Any:
    """Completions per overall-score bucket (floor of the score, 1-10; null only when present)."""
    rows = [row for row in rows if row.get("bucket") != "null" or _number(row.get("count")) > 0]
    buckets = [str(row.get("bucket")) for row in rows]
    counts = [_number(row.get("count")) for row in rows]
    figure = _figure(6.4, 3.6)
    ax = figure.subplots()
    bars = ax.bar(buckets, counts, color="#55a868")
    ax.bar_label(bars, labels=[f"{int(c):,}" if c else "" for c in counts], fontsize=8)
    ax.set_title(title)
    ax.set_xlabel("overall_score (floor)")
    ax.set_ylabel("completions")
    ax.margins(y=0.15)
    return figure


SCORES = (
    ("mean_fine_grained", "mean fine-grained score (1-5)", 5, "#4c72b0"),
    ("mean_overall", "mean overall score (1-10)", 10, "#dd8452"),
)
"""The leaderboard's and the per-source table's score columns: (column, axis label, top of the
scale, colour)."""


def _scores(name: str, rows: Sequence[Mapping[str, Any]], title: str) -> Any:
    """Mean scores per ``name`` (model, source): one panel per score, the first row on top (the
    leaderboard lists the best model first)."""
    names = [str(row.get(name)) for row in rows]
    figure = _figure(8.0, max(2.4, 1.3 + 0.3 * len(rows)))
    figure.suptitle(title)
    axes = figure.subplots(1, len(SCORES), sharey=True, squeeze=False).ravel()
    for ax, (column, label, top, color) in zip(axes, SCORES, strict=True):
        values = [_number(row.get(column)) for row in rows]
        bars = ax.barh(range(len(rows)), values, color=color)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8, padding=2)
        ax.set_xlabel(label)
        ax.set_xlim(0, top * 1.15)
    axes[0].set_yticks(range(len(rows)), names)
    axes[0].invert_yaxis()
    return figure
