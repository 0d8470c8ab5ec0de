"""One way to declare Prometheus series: `metric(registry, Counter, name, doc, labels)`.

Every worker declares its series against the registry its ops server serves. The same series
asked for twice on one registry is the same object (several workers of one kind in one process,
tests), so registration never clashes and no module holds a global per metric.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

M = TypeVar("M")

_declared: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Any]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def metric(registry: CollectorRegistry, kind: type[M], name: str, documentation: str, labels: Sequence[str] = (), **options: Any) -> M:
    with _lock:
        series = _declared.setdefault(registry, {})
        found = series.get(name)
        if found is None:
            found = series[name] = cast(Any, kind)(name, documentation, list(labels), registry=registry, **options)
        elif not isinstance(found, kind):
            raise TypeError(f"metric {name} was declared as {type(found).__name__}")
        return cast(M, found)


def collector(registry: CollectorRegistry, name: str, make: Callable[[], Collector]) -> None:
    """Register the custom collector `make()` under `name` once per registry (see `metric`)."""
    with _lock:
        series = _declared.setdefault(registry, {})
        if name not in series:
            series[name] = made = make()
            registry.register(made)


class LabelCache:
    """`metric.labels(*values)` looked up once per label tuple (labels() takes a lock and builds a key)."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child
