"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library.

Three kinds are enough here: counters and histograms with labels, and gauges read from a
callback at scrape time (queue depth). Updates happen on the event loop or under the GIL in one
statement each, so no lock is needed for the counts to add up.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(x: float) -> str:
    if x == float("inf"):
        return "+Inf"
    return repr(float(x)) if isinstance(x, float) and not float(x).is_integer() else str(int(x))


class Counter:
    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.labels = name, help, tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + amount

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        out += [f"{self.name}{_labels(self.labels, k)} {_number(v)}" for k, v in sorted(self.values.items())]
        return out


class Histogram:
    def __init__(self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.labels = name, help, tuple(labels)
        self.buckets = tuple(sorted(buckets))
        self.series: dict[tuple[str, ...], list] = {}  # labels -> [bucket counts..., sum, count]

    def observe(self, value: float, *labels: str) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [0] * len(self.buckets) + [0.0, 0]
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.buckets):
            s[i] += 1
        s[-2] += value
        s[-1] += 1

    def render(self) -> list[str]:
        return _render_histogram(self.name, self.help, self.labels, self.buckets, self.series)


def _render_histogram(name: str, help: str, label_names: Sequence[str], buckets: Sequence[float],
                      series: dict[tuple[str, ...], list]) -> list[str]:
    out = [f"# HELP {name} {help}", f"# TYPE {name} histogram"]
    for k, s in sorted(series.items()):
        running = 0
        for bound, n in zip(buckets, s[: len(buckets)], strict=True):
            running += n
            le = 'le="' + _number(bound) + '"'
            out.append(f"{name}_bucket{_labels(label_names, k, le)} {running}")
        inf = 'le="+Inf"'
        out.append(f"{name}_bucket{_labels(label_names, k, inf)} {s[-1]}")
        out.append(f"{name}_sum{_labels(label_names, k)} {_number(s[-2])}")
        out.append(f"{name}_count{_labels(label_names, k)} {s[-1]}")
    return out


class CounterHistogram:
    """A histogram rendered from a ``{value: count}`` mapping read at scrape time (batch sizes)."""

    def __init__(self, name: str, help: str, buckets: Sequence[float], read: Callable[[], dict]) -> None:
        self.name, self.help, self.buckets, self.read = name, help, tuple(sorted(buckets)), read

    def render(self) -> list[str]:
        counts = dict(self.read())  # a copy: the worker thread keeps counting
        s = [0] * len(self.buckets) + [0.0, 0]
        for value, n in counts.items():
            i = bisect.bisect_left(self.buckets, value)
            if i < len(self.buckets):
                s[i] += n
            s[-2] += value * n
            s[-1] += n
        return _render_histogram(self.name, self.help, (), self.buckets, {(): s})


class Gauge:
    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help, read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {_number(self.read())}"]


class Registry:
    def __init__(self) -> None:
        self.metrics: list = []

    def add(self, metric):
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for m in self.metrics:
            lines += m.render()
        return "\n".join(lines) + "\n"
