"""The package's shape: no import loops among its modules (function-level imports included)
and no module over :data:`MAX_LINES` lines.

The installed package is ``orderdp_dali`` plus ``pipelines/`` and ``bench/``, which install
as ``orderdp_dali.pipelines`` and ``orderdp_dali.bench`` (see setup.py); the check reads
their sources with ``ast`` and never imports them.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

REPO = Path(__file__).resolve().parents[1]
# import name -> folder, as setup.py's package_dir maps them
ROOTS = {"orderdp_dali": REPO / "orderdp_dali", "orderdp_dali.pipelines": REPO / "pipelines",
         "orderdp_dali.bench": REPO / "bench"}
MAX_LINES = 600


def _modules() -> Dict[str, Path]:
    """Every module of the installed package: dotted name -> source file."""
    out = {}
    for package, folder in ROOTS.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _resolve(name: str, modules: Dict[str, Path]) -> Optional[str]:
    """The package module ``name`` (or the longest known prefix of it), or None for other packages."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The package modules ``module`` imports, at module level or inside functions."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = module.split(".")
                package = package if is_package else package[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module:
                found.add(target)
                break  # "from a.b import c": c is a module of a.b, or a name in it
    return found


def _cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import loop of ``graph`` as [a, b, ..., a], or None."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_loop():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    assert graph["orderdp_dali.check_data"] >= {"orderdp_dali.data.images"}  # the scan sees imports at all
    assert "orderdp_dali.iterator" in graph["orderdp_dali.training.builders"]  # function-level imports count
    loop = _cycle(graph)
    assert loop is None, "import loop: " + " -> ".join(loop)


def test_the_loop_check_finds_a_loop():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_is_over_600_lines():
    modules = _modules()
    long = {m: n for m, p in modules.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: split them by job"


def _setup_packages() -> Set[str]:
    """The ``packages=[...]`` list of setup.py, read with ``ast``."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "packages":
            return {elt.value for elt in node.value.elts}
    raise AssertionError("setup.py has no packages=[...] list")


def test_setup_installs_every_package_folder():
    """A sub-package missing from setup.py's explicit list works in a checkout and is absent from a wheel."""
    folders = {
        ".".join([package, *init.parent.relative_to(folder).parts])
        for package, folder in ROOTS.items()
        for init in folder.rglob("__init__.py")
    }
    assert folders == _setup_packages()


def test_no_package_folder_is_ignored_by_git():
    """An unanchored pattern in .gitignore (``data/``) once hid ``orderdp_dali/data/`` from every commit."""
    import subprocess

    folders = [str(init.parent.relative_to(REPO)) for folder in ROOTS.values() for init in folder.rglob("__init__.py")]
    ignored = subprocess.run(["git", "check-ignore", *folders], cwd=REPO, capture_output=True, text=True).stdout
    assert ignored.split() == []


def _imports_argparse(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "argparse":
            return True
    return False


def test_command_lines_live_in_cli():
    """Parsers, exit codes and error wording are orderdp_dali.cli's; the library has none
    (bench's micro-benchmarks are ``python -m`` tools and keep theirs, bench.run is the library)."""
    modules = _modules()
    library = {m for m in modules if not m.startswith(("orderdp_dali.cli", "orderdp_dali.bench"))}
    library.add("orderdp_dali.bench.run")
    with_parsers = {m for m in library if _imports_argparse(modules[m])}
    assert with_parsers == set()
    assert _imports_argparse(modules["orderdp_dali.cli.train"])  # the check sees argparse at all


def test_every_command_has_its_module_with_main():
    from orderdp_dali.cli import COMMANDS

    modules = _modules()
    for name, (module, _) in COMMANDS.items():
        assert module == f"orderdp_dali.cli.{name.replace('-', '_')}" and module in modules, name
        tree = ast.parse(modules[module].read_text(encoding="utf-8"))
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        defined |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        assert {"main", "get_args_parser"} <= defined, module
