"""The house has no import circles: every ``import`` statement in ``src/icmix`` (function-level and
``TYPE_CHECKING`` ones included) forms a graph among its modules with no cycle, checked here with
the standard library's ``ast`` and ``graphlib``, independently of ``lint-imports`` (whose layers
contract ``make test`` and CI also run)."""

import ast
import graphlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "icmix").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}``: a name imported from a package counts as its submodule
    when it is one, else as the package."""
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: set() for m in mods}
    for module, path in mods.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for target in targets:
                if target.startswith("icmix") and (resolved := resolve(target)) and resolved != module:
                    graph[module].add(resolved)
    return graph


def test_no_module_of_icmix_imports_itself_round_a_circle():
    graph = import_graph()
    assert len(graph) > 60 and sum(map(len, graph.values())) > 300  # the whole package was read
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"an import circle: {' -> '.join(err.args[1])}")
    assert set(order) == set(graph)


def test_the_checker_sees_a_circle_and_a_function_level_import(tmp_path, monkeypatch):
    (tmp_path / "icmix").mkdir()
    (tmp_path / "icmix" / "__init__.py").write_text("")
    (tmp_path / "icmix" / "a.py").write_text("from icmix import b\n")
    (tmp_path / "icmix" / "b.py").write_text("def f():\n    from icmix.a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    assert import_graph() == {"icmix": set(), "icmix.a": {"icmix.b"}, "icmix.b": {"icmix.a"}}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(import_graph()).static_order())


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
                    reason="import-linter is not installed (make test installs it)")
def test_the_layers_contract_holds():
    done = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=SRC.parent,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Contracts: 3 kept, 0 broken." in done.stdout
