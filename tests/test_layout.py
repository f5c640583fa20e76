"""The layout is a rule: small modules, no import circle, and the Ray boundary.

- every module of e2i/ is at most MAX_LINES lines;
- the module-level import graph of e2i (from the source, with ast) has no cycle, and a fresh
  interpreter imports every module, each one first in its own process for the stage packages;
- the pure packages (e2i.model, e2i.evaluate.metrics, e2i.store, e2i.corpus, e2i.config) never import
  ray: imported with all their sub-modules in a fresh interpreter, `ray` is not in sys.modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "e2i"
MAX_LINES = 400
RAY_FREE = ("e2i.model", "e2i.evaluate.metrics", "e2i.store", "e2i.corpus", "e2i.config")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _top_level_imports(tree: ast.Module) -> list[ast.stmt]:
    """Import statements that run at import time: module level, incl. inside plain if/try blocks,
    excluding `if TYPE_CHECKING:` blocks and anything inside functions or classes."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> e2i modules it imports at import time. `from e2i.x import y` is an edge to e2i.x.y when
    that is a module, else to e2i.x (the parent packages' __init__ run first, but importing a
    sub-module from its own package's __init__ is the normal re-export pattern, not a circle)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges = graph.setdefault(name, set())
        is_pkg = path.name == "__init__.py"
        for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative import
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
            edges.update(t for t in targets if t in MODULES and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_over_the_line_limit():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle():
    assert find_cycle(import_graph()) is None


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)


def test_a_fresh_interpreter_imports_every_module():
    names = [n for n in MODULES if not n.endswith("__main__")]
    res = _fresh(f"import importlib\nfor n in {names!r}: importlib.import_module(n)\nprint('ok')")
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


@pytest.mark.parametrize("package", sorted({n.split(".")[1] for n in MODULES if n.count(".") >= 2}))
def test_each_stage_package_imports_first(package):
    # Each stage package first in a fresh interpreter, then every one of its modules: an import that
    # only works because another package happened to be imported before fails here.
    mods = [n for n in MODULES if n == f"e2i.{package}" or n.startswith(f"e2i.{package}.")]
    res = _fresh(f"import importlib\nfor n in {mods!r}: importlib.import_module(n)\nprint('ok')")
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


@pytest.mark.parametrize("package", RAY_FREE)
def test_pure_packages_never_import_ray(package):
    mods = [n for n in MODULES if n == package or n.startswith(package + ".")]
    assert mods, package
    res = _fresh("import importlib, sys\n"
                 f"for n in {mods!r}: importlib.import_module(n)\n"
                 "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "[]", f"{package} imports ray: {res.stdout[:300]}"


def test_the_ray_check_sees_ray_when_it_is_imported():
    # the same probe, after a module that needs Ray: the check is able to fail
    res = _fresh("import importlib, sys\nimport e2i.store, ray.train\n"
                 "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))[:1])")
    assert res.stdout.strip() == "['ray']", res.stderr[-2000:]
