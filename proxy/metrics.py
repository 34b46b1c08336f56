"""Operational metrics in Prometheus' text format, served on `/metrics`.

Labels carry names and outcomes (a backend, a mode, a model the policy names), never ids,
subjects or content.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

LabelKey = tuple[tuple[str, str], ...]

# Seconds: from a fast filter (~50 us) to a long stream (minutes).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


def label_key(labels: dict[str, str]) -> LabelKey:
    return tuple(sorted(labels.items()))


@dataclass
class Metric:
    name: str
    kind: str  # "counter" or "gauge"
    help: str
    values: dict[LabelKey, float] = field(default_factory=dict)

    def add(self, amount: float = 1.0, **labels: str) -> None:
        key = label_key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def set(self, value: float, **labels: str) -> None:
        self.values[label_key(labels)] = value


class Series:
    """One label set of a histogram. Callers on a hot path keep it instead of passing labels
    on every observation."""

    __slots__ = ("_histogram", "count", "counts", "labels", "total")

    def __init__(self, histogram: Histogram, labels: dict[str, str]) -> None:
        self._histogram = histogram
        self.labels = labels
        self.counts = [0] * (len(histogram.buckets) + 1)  # per bucket; the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        histogram = self._histogram
        self.counts[bisect.bisect_left(histogram.buckets, value)] += 1
        self.total += value
        self.count += 1
        if histogram.mirror is not None:
            histogram.mirror(value, self.labels)


@dataclass
class Histogram:
    """Observations counted into fixed buckets, rendered cumulatively as Prometheus expects."""

    name: str
    help: str
    buckets: tuple[float, ...]
    series: dict[LabelKey, Series] = field(default_factory=dict)
    # Called with every observation, e.g. to mirror it into an OTLP exporter.
    mirror: Callable[[float, dict[str, str]], None] | None = None
    kind: str = "histogram"

    def labels(self, **labels: str) -> Series:
        key = label_key(labels)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series(self, labels)
        return series

    def observe(self, value: float, **labels: str) -> None:
        self.labels(**labels).observe(value)

    def lines(self) -> Iterator[str]:
        bounds = [*(f"{b:g}" for b in self.buckets), "+Inf"]
        for labels, series in sorted(self.series.items()):
            cumulative = 0
            for bound, count in zip(bounds, series.counts, strict=True):
                cumulative += count
                yield f"{self.name}_bucket{_render((*labels, ('le', bound)))} {cumulative}"
            yield f"{self.name}_sum{_render(labels)} {series.total:g}"
            yield f"{self.name}_count{_render(labels)} {series.count}"


class Metrics:
    """The process's metrics: registered once at startup, rendered on every scrape."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric | Histogram] = {}
        self._collectors: list[Callable[[], None]] = []

    def counter(self, name: str, help_text: str) -> Metric:
        return self._register(name, "counter", help_text)

    def gauge(self, name: str, help_text: str) -> Metric:
        return self._register(name, "gauge", help_text)

    def histogram(
        self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS
    ) -> Histogram:
        metric = self._metrics.get(name)
        if metric is None:
            metric = self._metrics[name] = Histogram(name, help_text, buckets)
        assert isinstance(metric, Histogram), f"{name} is registered as a {metric.kind}"
        return metric

    def on_scrape(self, collect: Callable[[], None]) -> None:
        """`collect` refreshes gauges from live state just before each scrape."""
        self._collectors.append(collect)

    def collect(self) -> None:
        """Run the scrape-time collectors (before rendering, or before an OTLP export)."""
        for collect in self._collectors:
            collect()

    def scalars(self) -> list[Metric]:
        """The counters and gauges, for exporters that read their values."""
        return [m for m in self._metrics.values() if isinstance(m, Metric)]

    def histograms(self) -> list[Histogram]:
        return [m for m in self._metrics.values() if isinstance(m, Histogram)]

    def _register(self, name: str, kind: str, help_text: str) -> Metric:
        metric = self._metrics.get(name)
        if metric is None:
            metric = self._metrics[name] = Metric(name, kind, help_text)
        assert isinstance(metric, Metric), f"{name} is registered as a histogram"
        return metric

    def render(self) -> str:
        self.collect()
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            if isinstance(metric, Histogram):
                lines.extend(metric.lines())
                continue
            for labels, value in sorted(metric.values.items()):
                lines.append(f"{metric.name}{_render(labels)} {value:g}")
        return "\n".join(lines) + "\n"


def _render(labels: LabelKey) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
