"""The package's layers, read from its own imports: no import cycle between modules, and no
import against the layers (the runtime and the Delta code never import the ClaimX domain or the
applications above them; nothing imports the CLI or the commands but the CLI)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kafka_pipeline"
ROOT = "kafka_pipeline"

# layer -> packages it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "kafka_pipeline.errors": ("kafka_pipeline.",),
    "kafka_pipeline.config": ("kafka_pipeline.runtime", "kafka_pipeline.claimx", "kafka_pipeline.delta", "kafka_pipeline.writer"),
    "kafka_pipeline.runtime": (
        "kafka_pipeline.claimx", "kafka_pipeline.delta", "kafka_pipeline.writer", "kafka_pipeline.retry",
        "kafka_pipeline.dlq", "kafka_pipeline.embedded", "kafka_pipeline.simulator",
    ),
    "kafka_pipeline.delta": (
        "kafka_pipeline.claimx", "kafka_pipeline.writer", "kafka_pipeline.retry", "kafka_pipeline.dlq",
        "kafka_pipeline.embedded", "kafka_pipeline.simulator",
    ),
    "kafka_pipeline.offsets": (
        "kafka_pipeline.claimx", "kafka_pipeline.delta", "kafka_pipeline.writer", "kafka_pipeline.retry",
        "kafka_pipeline.dlq", "kafka_pipeline.embedded", "kafka_pipeline.simulator",
    ),
    "kafka_pipeline.claimx": ("kafka_pipeline.writer", "kafka_pipeline.dlq", "kafka_pipeline.embedded", "kafka_pipeline.retry.scheduler"),
}
TOP = ("kafka_pipeline.cli", "kafka_pipeline.commands")  # only the CLI (and __main__) import these


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The package modules `path` imports (submodules resolved; TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    this = module_name(path)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith(ROOT) and name in known and name != this:
                yield name


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        # a package's own modules importing the package __init__ is how Python loads them, not a cycle
        edges[name] = {t for t in imports(path, known) if not (path.name != "__init__.py" and name.startswith(t + "."))}
    return edges


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


def test_there_is_no_import_cycle_between_modules() -> None:
    assert cycles(graph()) == []


def test_no_module_imports_against_the_layers() -> None:
    wrong = []
    for module, targets in graph().items():
        for target in targets:
            for layer, forbidden in FORBIDDEN.items():
                if (module == layer or module.startswith(layer + ".")) and target.startswith(forbidden):
                    wrong.append(f"{module} imports {target}")
            if target.startswith(TOP) and not module.startswith(TOP) and module != "kafka_pipeline.__main__":
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_the_checker_sees_a_cycle_and_a_layer_violation() -> None:
    # the checks above can fail: a made-up graph with a cycle and an import against the layers
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    edges = graph()
    assert "kafka_pipeline.runtime.consumer" in edges and "kafka_pipeline.runtime.kafka" in edges["kafka_pipeline.runtime.consumer"]
    assert any(target.startswith("kafka_pipeline.claimx") for target in edges["kafka_pipeline.claimx.enrich.worker"])
