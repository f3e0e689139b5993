"""The package's layers stay layers: no import cycles, no upward imports, none of the
imports the design rules out (NEVER), pytest only in harness/pytest_plugin/, KSM's sysfs path
only in the KSM layer, no module far over 400 lines. Read from the source with ast: nothing
is imported or run."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

HARNESS = REPO / "harness"
# Lower layers never import higher ones (a package or module name -> its layer).
LAYERS = {
    "errors": 0, "paths": 0, "deps": 0, "options": 0, "reaper": 0, "version": 0,
    "progress": 0, "findings": 0, "faultpoints": 0,
    "console": 1,
    "access": 2, "assets": 2,
    "machine": 3,
    "health": 4, "guest_handle": 4, "ksm": 4, "guest_mm": 4, "workloads": 4, "spec": 4,
    "cellplan": 4, "coverage": 4,
    "kernel_bugs": 4,
    "results": 5, "fuzz": 5,
    "pytest_plugin": 6,
    "runs": 7,
    "cli": 8,
}
# Imports the layers alone would allow (or catch only by accident of numbering) that the
# design rules out: (importer, imported, why); a package stands for all its modules.
NEVER = (
    ("harness.health", "harness.machine", "the monitor sees a guest through harness.access.port"),
    ("harness.ksm", "harness.machine", "KSM control runs on the guest port, not on a VM"),
    ("harness.ksm", "harness.guest_handle", "KsmGuest is typed on harness.access.port.GuestPort"),
    ("harness.workloads", "harness.machine", "workloads run on a Spawner"),
    ("harness.workloads", "harness.guest_handle", "workloads run on a Spawner"),
    ("harness.guest_mm", "harness.machine", "guest set-up runs on a Runner"),
    ("harness.console", "harness.access", "the reader and classifier know no transport"),
    ("harness.console", "harness.machine", "the reader and classifier know no transport"),
    ("harness.results", "harness.pytest_plugin", "records are written and merged without pytest"),
    ("harness.results", "harness.machine", "records are written and merged without a VM"),
)
MAX_LINES = 450  # "about 400"; the classifier's report table is data and lives beside it


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(HARNESS.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """harness modules ``path`` imports (at any depth, TYPE_CHECKING included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n.startswith("harness.") or n == "harness":
                found.add(n)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports(p, known) - {m} for m, p in mods.items()}


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    assert top in LAYERS, f"{module}: give harness.{top} a layer in LAYERS"
    return LAYERS[top]


def test_no_import_cycles() -> None:
    g = graph()
    # package __init__ files that re-export their own modules are not cycles
    edges = {m: {d for d in deps if not (d.startswith(m + ".") and m != "harness")}
             for m, deps in g.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if d == "harness":
                continue
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state and m != "harness":
            visit(m)


def upward(g: dict[str, set[str]]) -> list[str]:
    return [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
            for m, deps in g.items() if m != "harness"
            for d in sorted(deps) if d != "harness" and layer(d) > layer(m)]


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def forbidden(g: dict[str, set[str]]) -> list[str]:
    return [f"{m} imports {d}: {why}" for m, deps in sorted(g.items()) for d in sorted(deps)
            for src, dst, why in NEVER if within(m, src) and within(d, dst)]


def test_no_upward_imports() -> None:
    bad = upward(graph())
    assert not bad, "\n".join(bad)


def test_no_forbidden_imports() -> None:
    bad = forbidden(graph())
    assert not bad, "\n".join(bad)


def test_pytest_only_in_the_plugin_package() -> None:
    bad = []
    for m, path in modules().items():
        if m.startswith("harness.pytest_plugin"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{m} imports {n}" for n in names
                    if n.split(".")[0] in ("pytest", "_pytest", "pluggy")]
    assert not bad, "\n".join(bad)


def test_ksm_sysfs_is_known_in_the_ksm_layer_only() -> None:
    outside = [str(p.relative_to(REPO)) for m, p in modules().items()
               if not m.startswith("harness.ksm") and "/sys/kernel/mm/ksm" in p.read_text()]
    assert not outside


def test_no_module_far_over_400_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_the_checks_see_a_cycle(tmp_path: Path) -> None:
    # the import reader itself: a module importing through a package's re-export
    a = tmp_path / "a.py"
    a.write_text("from harness.results.model import Result\nimport harness.errors\n")
    assert imports(a, set(modules())) == {"harness.results.model", "harness.errors"}


def test_the_checks_see_a_planted_violation(tmp_path: Path) -> None:
    known = set(modules())
    planted = {  # module -> what it is made to import
        "harness.health": "from harness.machine.vm import VM\n",
        "harness.console.reader": "from harness.access.remote import CommandResult\n",
        "harness.results.junit": "import harness.pytest_plugin.watch\n",
        "harness.ksm.prepared_guest": "from harness.machine.qmp import QMP\n",
    }
    g = {}
    for module, source in planted.items():
        path = tmp_path / f"{module}.py"
        path.write_text(source)
        g[module] = imports(path, known)
    assert [line.split(":")[0] for line in forbidden(g)] == [
        "harness.console.reader imports harness.access.remote",
        "harness.health imports harness.machine.vm",
        "harness.ksm.prepared_guest imports harness.machine.qmp",
        "harness.results.junit imports harness.pytest_plugin.watch",
    ]
    assert upward(g) == [  # console (1) below access (2), results (5) below the plugin (6)
        "harness.console.reader (layer 1) imports harness.access.remote (layer 2)",
        "harness.results.junit (layer 5) imports harness.pytest_plugin.watch (layer 6)",
    ]
    assert forbidden(graph()) == [] and upward(graph()) == []  # and the real tree is clean
