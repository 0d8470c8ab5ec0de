"""The package's layers, read from its own imports (type-only imports counted too):

- no import cycle between modules;
- every package has a rule naming the packages it may import, and nothing imports against it
  (the runtime and the Delta code never import the ClaimX domain or the workers above them;
  nothing imports the CLI or the commands but the CLI);
- the ClaimX domain (events, schemas, transforms, rows, handlers) does no I/O: no metrics, no
  Kafka, no HTTP, no Delta, no Redis.

Each rule is shown to fail on a made-up violation at the end."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kafka_pipeline"
ROOT = "kafka_pipeline"

# package (relative to kafka_pipeline) -> the other packages it may import
RULES: dict[str, frozenset[str]] = {name: frozenset(allowed) for name, allowed in {
    "errors": (),
    "config": ("errors",),
    "argument_types": ("errors",),
    # the plumbing every part uses
    "observability": ("config", "errors"),
    "resilience": ("errors",),
    "kafka": ("config", "errors"),
    "lifecycle": ("config", "errors", "kafka", "observability"),
    "offsets": ("config", "errors", "kafka", "observability"),
    "dead_letters": ("config", "errors", "kafka", "observability"),
    "delta": ("config", "errors", "observability", "resilience"),
    "maintenance": ("claimx", "config", "delta", "errors", "observability", "resilience"),  # the tables it keeps are the domain's
    # the consumer loop the workers run on
    "runtime": ("config", "dead_letters", "errors", "kafka", "observability", "offsets"),
    # the ClaimX domain and its clients
    "claimx": ("config", "errors"),
    "claimx.api": ("config", "errors", "observability", "resilience"),
    "claimx.cache": ("claimx", "claimx.api", "config", "delta", "errors", "observability", "resilience"),
    "claimx.handlers": ("claimx", "claimx.api", "claimx.cache", "errors"),
    # the three workers, side by side: none imports another
    "workers": (),
    "workers.enrich": ("claimx", "claimx.api", "claimx.cache", "claimx.handlers", "config", "dead_letters", "errors", "observability", "runtime"),
    "workers.writer": (
        "claimx", "config", "dead_letters", "delta", "errors", "maintenance", "observability", "offsets", "resilience", "runtime",
    ),
    "workers.retry": ("config", "dead_letters", "errors", "observability", "runtime"),  # the broker only through the runtime
    # operator tools, the embedded stack, the simulator
    "ops": (
        "claimx", "claimx.handlers", "config", "dead_letters", "delta", "errors", "kafka", "maintenance", "observability", "offsets",
        "workers.writer",  # dlq replay re-validates a letter as the writer will read it
    ),
    "simulator": ("argument_types", "config", "errors", "lifecycle", "observability"),
    "embedded": ("config", "errors", "kafka", "lifecycle", "offsets", "simulator"),
    # the CLI on top
    "commands": (
        "argument_types", "claimx", "claimx.api", "claimx.cache", "claimx.handlers", "config", "delta", "embedded", "errors", "kafka",
        "lifecycle", "maintenance", "observability", "offsets", "ops", "simulator", "workers.enrich", "workers.retry", "workers.writer",
    ),
    "cli": ("commands", "errors"),
    "__main__": ("cli",),
    "": (),  # kafka_pipeline/__init__.py
}.items()}

# the domain: pure functions and models over events, API answers and rows
DOMAIN = ("claimx", "claimx.handlers")
IO_LIBRARIES = ("prometheus_client", "aiokafka", "httpx", "deltalake", "redis", "starlette", "uvicorn", "boto3", "opentelemetry")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_names(source: str, known: dict[str, Path] | None = None) -> Iterator[str]:
    """Every module name `source` imports, type-only imports included; `from a import b` is
    `a.b` when that is one of the `known` modules, else `a`."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield full if known is not None and full in known else node.module


def imports(path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The package modules `path` imports."""
    this = module_name(path)
    for name in imported_names(path.read_text(), known):
        if name.startswith(ROOT) and name in known and name != this:
            yield name


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        # a package's own modules importing the package __init__ is how Python loads them, not a cycle
        edges[name] = {t for t in imports(path, known) if not (path.name != "__init__.py" and name.startswith(t + "."))}
    return edges


def package_of(module: str) -> str | None:
    """The package rule a module falls under: the longest rule name that prefixes it."""
    relative = module.removeprefix(ROOT).removeprefix(".")
    best = None
    for name in RULES:
        if relative == name or (name and relative.startswith(name + ".")):
            if best is None or len(name) > len(best):
                best = name
    return best


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in edges.items():
        mine = package_of(module)
        if mine is None:
            wrong.append(f"{module} belongs to no package with a rule (add it to RULES)")
            continue
        for target in targets:
            theirs = package_of(target)
            if theirs is not None and theirs != mine and theirs not in RULES[mine]:
                wrong.append(f"{module} imports {target} ({mine or ROOT} may not import {theirs})")
    return wrong


def io_in_domain(third_party: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} imports {name}"
        for module, names in third_party.items()
        if package_of(module) in DOMAIN
        for name in names
        if name.split(".")[0] in IO_LIBRARIES
    ]


def third_party_imports() -> dict[str, set[str]]:
    return {name: {n for n in imported_names(path.read_text()) if not n.startswith(ROOT)} for name, path in modules().items()}


def test_there_is_no_import_cycle_between_modules() -> None:
    assert cycles(graph()) == []


def test_every_package_imports_only_what_its_rule_allows() -> None:
    assert layer_violations(graph()) == []


def test_the_domain_does_no_io() -> None:
    assert io_in_domain(third_party_imports()) == []


def test_type_only_imports_count() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kafka_pipeline.runtime.consumer import ConsumerRuntime\n"
    assert "kafka_pipeline.runtime.consumer" in set(imported_names(source, modules()))


def test_each_rule_fails_on_a_made_up_violation() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert layer_violations({"kafka_pipeline.runtime.consumer": {"kafka_pipeline.claimx.events"}}) == [
        "kafka_pipeline.runtime.consumer imports kafka_pipeline.claimx.events (runtime may not import claimx)"
    ]
    assert layer_violations({"kafka_pipeline.workers.writer.entity_writer": {"kafka_pipeline.commands.write"}})
    assert layer_violations({"kafka_pipeline.workers.writer.entity_writer": {"kafka_pipeline.workers.enrich.worker"}}) == [
        "kafka_pipeline.workers.writer.entity_writer imports kafka_pipeline.workers.enrich.worker (workers.writer may not import workers.enrich)"
    ]
    assert layer_violations({"kafka_pipeline.newpackage.thing": set()}) == [
        "kafka_pipeline.newpackage.thing belongs to no package with a rule (add it to RULES)"
    ]
    assert io_in_domain({"kafka_pipeline.claimx.transforms": {"prometheus_client"}, "kafka_pipeline.claimx.handlers.task": {"httpx"},
                         "kafka_pipeline.claimx.api.client": {"httpx"}}) == [
        "kafka_pipeline.claimx.transforms imports prometheus_client", "kafka_pipeline.claimx.handlers.task imports httpx",
    ]
    # and the real graph is read: the runtime's loop imports the Kafka clients module, the enrichment worker the domain
    edges = graph()
    assert "kafka_pipeline.kafka.clients" in edges["kafka_pipeline.runtime.consumer"]
    assert any(package_of(t) == "claimx" for t in edges["kafka_pipeline.workers.enrich.worker"])
