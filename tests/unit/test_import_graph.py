"""No import cycle in `proxy/`, between modules or between packages (proxy.protocol,
proxy.upstream, proxy.audit, ...), counting imports inside functions too: an import moved into
a function to dodge a cycle is still one. Imports under `if TYPE_CHECKING:` are for types only
and are left out. docs/architecture.md says which package may use which.

`jitproxy_demo/` (the demo, local database servers, the in-process test proxy) sits beside the
runtime package: it may import `proxy`, but `proxy` imports it in one place only, inside the
`jitproxy demo` command (the image carries no jitproxy_demo)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "proxy"
DEMO = ROOT.parent / "jitproxy_demo"
# (module, function): the only imports of jitproxy_demo in proxy/, made when `jitproxy demo` runs.
DEMO_IMPORTS_ALLOWED = {("proxy.cli", "cmd_demo")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in root.rglob("*.py")}
    return {name: {i for i in _imports(ast.parse(path.read_text(encoding="utf-8"))) if i in modules and i != name}
            for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _demo_imports(module: str, tree: ast.Module) -> set[tuple[str, str | None]]:
    """(module, the function it is in, None at module level) of each import of jitproxy_demo,
    `if TYPE_CHECKING:` ones and importlib.import_module("jitproxy_demo...") included."""
    found: set[tuple[str, str | None]] = set()

    def visit(node: ast.AST, function: str | None) -> None:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            if ast.unparse(node.func) in {"import_module", "importlib.import_module", "__import__"}:
                names = [str(node.args[0].value)]
        if any(n == "jitproxy_demo" or n.startswith("jitproxy_demo.") for n in names):
            found.add((module, function))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name if function is None else f"{function}.{node.name}"
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, None)
    return found


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_cycle_between_modules() -> None:
    assert _cycles(_graph()) == []


def test_no_cycle_between_packages() -> None:
    packages: dict[str, set[str]] = {}
    for module, imported in _graph().items():
        packages.setdefault(_package(module), set()).update(
            _package(i) for i in imported if _package(i) != _package(module))
    assert _cycles(packages) == []


def test_proxy_imports_the_demo_only_inside_the_demo_command() -> None:
    found: set[tuple[str, str | None]] = set()
    for path in ROOT.rglob("*.py"):
        found |= _demo_imports(_module_name(path), ast.parse(path.read_text(encoding="utf-8")))
    assert found == DEMO_IMPORTS_ALLOWED


def test_importing_the_command_loads_no_demo() -> None:
    """Importing the command (what `jitproxy serve` runs) and the server loads none of jitproxy_demo."""
    code = ("import sys; import proxy.cli, proxy.server, proxy.wiring; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'jitproxy_demo'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=ROOT.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_no_cycle_in_the_demo_package() -> None:
    assert DEMO.is_dir()
    assert _cycles(_graph(DEMO)) == []


@pytest.mark.parametrize(("source", "expected"), [
    ("import jitproxy_demo.run", {("m", None)}),
    ("from jitproxy_demo import iam", {("m", None)}),
    ("def f():\n    from jitproxy_demo.run import run_demo", {("m", "f")}),
    ("class C:\n    def g(self):\n        import importlib\n        importlib.import_module('jitproxy_demo.x')",
     {("m", "g")}),
    ("import jitproxy_demos\nfrom proxy import demo", set()),
])
def test_the_demo_import_finder(source: str, expected: set[tuple[str, str | None]]) -> None:
    assert _demo_imports("m", ast.parse(source)) == expected


@pytest.mark.parametrize(("graph", "expected"), [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
])
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert _cycles(graph) == expected
