"""The package's layout holds: every module imports alone, the import graph of repro/ has no circle (by
module, and by package), and repro/'s top level is packages by concern plus a handful of entry modules."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "repro"
# Top-level modules: the base every layer imports (errors), the paper's optimizer beside the loop, and the
# entry points `python -m repro.X` (get_data and wandb only hand on to repro.data.fetch, repro.runs.wandb_mirror).
# entry points (train, evaluate, protocol; get_data and wandb are thin) and the two modules every layer reads
TOP_MODULES = {"__init__", "errors", "optim", "train", "evaluate", "protocol", "get_data", "wandb"}


def _module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, object]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path, name: str, modules) -> set[str]:
    """The repro modules `path` imports, at its top or inside a function: `from repro.a import b` names
    repro.a.b where b is a module, else repro.a."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .a import b
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph`, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_import_graph_has_no_circle():
    modules = _modules()
    graph = {name: _imports(path, name, modules) for name, path in modules.items()}
    circle = _circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_packages_import_one_way():
    """Collapsed to repro/'s packages and top-level modules, the import graph has no circle either: a report
    may use the evaluation, and then the evaluation never reads a report; a run's record never imports one."""
    modules = _modules()

    def top(m: str) -> str:
        return ".".join(m.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph.setdefault(top(name), set()).update(top(m) for m in _imports(path, name, modules) if top(m) != top(name))
    circle = _circle(graph)
    assert circle is None, "packages import each other: " + " -> ".join(circle)


def test_circle_finder_finds_one():
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_every_module_imports_alone():
    """Each module, imported first into a process whose repro modules are all forgotten, loads: no module
    leans on another having been imported before it."""
    names = sorted(m for m in _modules() if not m.endswith("__main__"))
    code = (
        "import importlib, sys, traceback\n"
        f"failed = []\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m == 'repro' or m.startswith('repro.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed.append(name + ': ' + traceback.format_exc().strip().splitlines()[-1])\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]


def test_top_level_is_packages_and_a_handful_of_entry_modules():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules <= TOP_MODULES, f"modules at repro/'s top level beyond the entry points: {modules - TOP_MODULES}"
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert all((PACKAGE / f / "__init__.py").exists() for f in folders), folders
    assert {"config", "data", "models", "report", "runs", "stacked"} <= folders


def test_every_module_opens_with_its_purpose():
    for path in sorted(PACKAGE.rglob("*.py")):
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path.relative_to(ROOT)} opens with no docstring"


def test_the_package_ships_every_package_and_the_configs():
    """pyproject.toml lists repro's packages by name (so conf/ can ship inside as repro/conf, and an installed,
    not only an editable, repro finds its configs): every package under repro/ is listed, and every YAML under
    conf/ matches the package data's patterns."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {_module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert set(tool["packages"]) == packages | {"repro.conf"}
    assert tool["package-dir"] == {"repro.conf": "conf"}
    patterns = tool["package-data"]["repro.conf"]
    for path in (ROOT / "conf").rglob("*"):
        if path.is_file():
            rel = str(path.relative_to(ROOT / "conf"))
            assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"conf/{rel} would not ship"
