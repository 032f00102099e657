"""The package's layers import one way, and reading a checkpoint needs no input pipeline.

Layers, bottom to top: the foundation modules at the top of the package (errors, config,
artifacts, distributed, manifest, backends, logs), ``data``, ``model``, ``hf``, ``training``,
``planning``, then ``inference``, ``export`` and ``cli``. A module may import its own layer
and the layers below it, never one above; every import statement counts, those inside
functions too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mlm_jax"
FOUNDATION = {
    "errors", "config", "artifacts", "distributed", "manifest", "backends", "logs", "__init__",
}  # fmt: skip
ORDER = [
    "foundation", "data", "model", "hf", "state", "training", "planning", "inference", "export",
    "cli",
]  # fmt: skip
# The data layer turns text into numpy batches: no accelerator framework in it.
NOT_IN_DATA = ("jax", "jaxlib", "flax", "optax", "orbax")


def layer_of(module: str) -> str:
    """``mlm_jax.training.step`` -> ``training``; ``mlm_jax.config`` -> ``foundation``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "foundation"
    if parts[1] in FOUNDATION:
        return "foundation"
    return parts[1]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(path: Path, name: str, known: set[str]) -> tuple[set[str], set[str]]:
    """``(package modules, third-party top-level names)`` that ``path`` imports anywhere."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if not target.startswith("mlm_jax"):
                theirs.add(target.split(".")[0])
                continue
            while target and target not in known:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != name:
                ours.add(target)
    return ours, theirs


@pytest.fixture(scope="module")
def graph() -> dict[str, tuple[set[str], set[str]]]:
    found = modules()
    known = set(found)
    return {name: imports_of(path, name, known) for name, path in found.items()}


def upward_imports(graph) -> list[str]:
    wrong = []
    for name, (ours, _) in graph.items():
        if name == "mlm_jax":
            continue
        mine = ORDER.index(layer_of(name))
        wrong += [
            f"{name} -> {other}"
            for other in ours
            if other != "mlm_jax" and ORDER.index(layer_of(other)) > mine
        ]
    return wrong


def test_no_module_imports_a_layer_above_its_own(graph):
    wrong = upward_imports(graph)
    assert not wrong, wrong


def test_the_import_graph_has_no_cycle(graph):
    edges = {name: {o for o in ours if o != "mlm_jax"} for name, (ours, _) in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for other in sorted(edges.get(node, ())):
            if state.get(other) == 1:
                return path + [node, other]
            if other not in state and (cycle := visit(other, path + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            cycle = visit(start, [])
            assert cycle is None, " -> ".join(cycle)


def test_the_data_layer_never_imports_jax(graph):
    wrong = {
        name: sorted(theirs & set(NOT_IN_DATA))
        for name, (_, theirs) in graph.items()
        if layer_of(name) == "data" and theirs & set(NOT_IN_DATA)
    }
    assert not wrong, wrong


def test_the_checker_sees_a_lazy_upward_import(tmp_path):
    """A data module importing training inside a function, and jax: both are caught."""
    source = tmp_path / "x.py"
    source.write_text(
        "def f():\n    import jax\n    from mlm_jax.training import step\n    return step, jax\n"
    )
    known = {"mlm_jax.training.step", "mlm_jax.data.x"}
    ours, theirs = imports_of(source, "mlm_jax.data.x", known)
    assert ours == {"mlm_jax.training.step"} and "jax" in theirs
    assert upward_imports({"mlm_jax.data.x": (ours, theirs)}) == [
        "mlm_jax.data.x -> mlm_jax.training.step"
    ]


def test_reading_a_checkpoint_or_an_export_needs_no_input_pipeline():
    """Export, inference and restoring a run import neither Grain nor TFDS nor Beam."""
    code = (
        "import sys\n"
        "import mlm_jax.export, mlm_jax.inference.loading, mlm_jax.inference.scoring\n"
        "import mlm_jax.training.runs\n"
        "heavy = ('grain', 'tensorflow_datasets', 'apache_beam', 'mlm_jax.data.pipeline')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
