"""The package layout: no import cycles, packages import only from the layers below them, and no
private name is imported across packages.

Every import statement counts, module level or inside a function (a function-level import is still a
dependency, only a deferred one). Imports are read from the source with :mod:`ast`, so nothing is
executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lacbed_refine"

#: The data flow, bottom to top: a package may import from its own layer and the layers below.
LAYERS = {
    "conventions": 0, "runtime": 0, "metrics": 0, "version": 0,
    "structure": 1,
    "physics": 2,
    "engine": 3,
    "io": 4,
    "simulators": 5,
    "dataset": 6,
    "surrogate": 7,
    "refine": 8,
    "__init__": 9,   # the public API sits on top of everything
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def _imports(path: Path):
    """(target module, imported name or None, line) for every lacbed_refine import in ``path``."""
    me = _module_name(path)
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "lacbed_refine":
                    yield a.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = me.split(".") if is_pkg else me.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "lacbed_refine":
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if _is_module(sub):
                    yield sub, None, node.lineno
                else:
                    yield mod, a.name, node.lineno


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module_name(path)
        graph.setdefault(me, set())
        for target, _, _ in _imports(path):
            if target != me:
                graph[me].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS["__init__"] if len(parts) == 1 else LAYERS[parts[1]]


def test_every_module_has_a_layer():
    missing = sorted({m.split(".")[1] for m in _graph() if "." in m and m.split(".")[1] not in LAYERS})
    assert not missing, f"packages or modules without a layer in LAYERS: {missing}"


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle():
    # The checker itself must be able to fail.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_packages_import_only_from_layers_below():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module_name(path)
        for target, _, line in _imports(path):
            if _layer(target) > _layer(me):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def _package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


@pytest.mark.parametrize("folder", ["lacbed_refine", "cli", "plugins"])
def test_no_private_name_across_packages(folder):
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        me = _module_name(path)
        mine = _package_of(me) if folder == "lacbed_refine" else folder
        for target, name, line in _imports(path):
            private = [p for p in target.split(".") if p.startswith("_") and not p.startswith("__")]
            if name is not None and name.startswith("_") and not name.startswith("__"):
                private.append(name)
            if private and _package_of(target) != mine:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target} {name or ''}".rstrip())
    assert not bad, "\n".join(bad)


def test_public_api_names_resolve():
    import lacbed_refine

    for name in lacbed_refine.__all__:
        assert getattr(lacbed_refine, name) is not None, name
    with pytest.raises(AttributeError):
        lacbed_refine.no_such_name  # noqa: B018


def test_import_is_light():
    # The public API is lazy: a bare import loads neither torch nor any subpackage.
    import subprocess
    import sys

    code = "import sys, lacbed_refine; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('lacbed_refine.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['lacbed_refine.version']"


def test_every_package_is_installed():
    # pyproject lists packages explicitly: a package missing there is absent from a non-editable install.
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {_module_name(p.parent) if p.parent != PACKAGE else "lacbed_refine"
             for p in PACKAGE.rglob("__init__.py") if "weights" not in p.parts}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"


def test_the_command_line_loads_torch_only_for_work():
    # `lacbed-refine --help`/`--version` and option errors answer without loading torch (seconds);
    # each command imports what it needs when it runs
    import subprocess
    import sys

    code = "import sys, lacbed_refine_cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
