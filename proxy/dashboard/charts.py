"""Stacked bar charts as plain geometry, drawn as inline SVG by the templates.

No script and no style attributes: colours come from CSS classes, so the page keeps its
strict Content-Security-Policy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

WIDTH, HEIGHT, LEFT, BOTTOM = 720, 180, 44, 20


@dataclass(frozen=True, slots=True)
class Box:
    x: float
    y: float
    width: float
    height: float
    series: int  # index into the chart's legend (the CSS class `s<index>`)
    title: str


@dataclass(frozen=True, slots=True)
class Label:
    x: float
    y: float
    text: str


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    boxes: list[Box]
    legend: list[tuple[int, str, int]]  # (series index, name, total)
    x_labels: list[Label]
    y_labels: list[Label]
    empty: bool


def stacked_bars(
    series: dict[str, dict[int, int]], order: tuple[str, ...], buckets: list[int], bucket_hours: int
) -> Chart:
    """One bar per bucket, one stacked segment per series, in `order` (others after it)."""
    names = [n for n in order if n in series] + sorted(n for n in series if n not in order)
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - 8
    totals = [sum(series[n].get(b, 0) for n in names) for b in buckets]
    peak = max(totals, default=0)
    boxes: list[Box] = []
    step = plot_w / max(1, len(buckets))
    for column, bucket in enumerate(buckets):
        y = 8.0 + plot_h
        for index, name in enumerate(names):
            count = series[name].get(bucket, 0)
            if not count or not peak:
                continue
            height = plot_h * count / peak
            y -= height
            when = _when(bucket * bucket_hours * 3600, bucket_hours)
            boxes.append(
                Box(
                    round(LEFT + column * step + step * 0.1, 2),
                    round(y, 2),
                    round(max(step * 0.8, 0.5), 2),
                    round(height, 2),
                    index,
                    f"{when}: {count} {name}",
                )
            )
    x_labels: list[Label] = []
    if buckets:
        every = max(1, len(buckets) // 6)
        for column in range(0, len(buckets), every):
            when = _when(buckets[column] * bucket_hours * 3600, bucket_hours)
            x_labels.append(Label(round(LEFT + column * step, 2), HEIGHT - 4, when))
    y_labels = [
        Label(LEFT - 4, round(8 + plot_h - plot_h * f, 2), f"{round(peak * f):,}")
        for f in (0.0, 0.5, 1.0)
    ]
    legend = [(i, n, sum(series[n].values())) for i, n in enumerate(names)]
    return Chart(WIDTH, HEIGHT, boxes, legend, x_labels, y_labels, peak == 0)


def _when(epoch: float, bucket_hours: int) -> str:
    fmt = "%H:%M" if bucket_hours == 1 else "%m-%d %H:%M" if bucket_hours < 24 else "%Y-%m-%d"
    return time.strftime(fmt, time.gmtime(epoch))
