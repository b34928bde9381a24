"""The house has one direction: each floor imports only the floors below it (parsed from the
source, function-level imports included), and the public names all resolve."""

import ast
import importlib
from pathlib import Path

import pytest

import autorec_jax

PACKAGE = Path(autorec_jax.__file__).parent
# Floor of each module: the core is flat; sub-packages are whole floors.
BASE = {"errors", "fileio"}                              # standard library only
FLOORS = {"base": 0, "data": 1, "core": 1, "distributed": 2, "run": 3, "serve": 4, "studies": 5}
THIRD_PARTY = {
    "base": set(),
    "data": {"numpy", "pandas"},
    "core": {"jax", "flax", "optax", "numpy", "chex"},
}


def floor_of(module: str) -> str:
    """'autorec_jax.distributed.parallel' -> 'distributed'; the flat core modules -> 'core'."""
    parts = module.split(".")
    if len(parts) == 1:
        return "init"
    if parts[1] in BASE:
        return "base"
    if parts[1] in FLOORS:
        return parts[1]
    return "core"


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        yield name, path


def imports_of(name: str, path: Path):
    """(imported module, line) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base == "autorec_jax":   # `from autorec_jax import x`: x is a module
                for alias in node.names:
                    yield f"autorec_jax.{alias.name}", node.lineno
            else:
                yield base, node.lineno


def violations():
    found = []
    for name, path in modules():
        floor = floor_of(name)
        if floor == "init":
            continue
        for target, line in imports_of(name, path):
            top = target.split(".")[0]
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
            if top == "autorec_jax":
                other = floor_of(target)
                if other == "init":
                    found.append(f"{where} (the package root: import the module itself)")
                elif floor in ("data", "core") and other not in (floor, "base"):
                    found.append(f"{where} ({floor} imports only itself and the base)")
                elif floor == "base" and other != "base":
                    found.append(f"{where} (the base imports the standard library only)")
                elif FLOORS[other] > FLOORS[floor]:
                    found.append(f"{where} (floor {floor} imports the higher floor {other})")
            elif floor in THIRD_PARTY and top not in THIRD_PARTY[floor] and top not in (
                    __import__("sys").stdlib_module_names):
                found.append(f"{where} ({floor} may import only "
                             f"{sorted(THIRD_PARTY[floor]) or 'the standard library'})")
    return found


def test_no_module_imports_a_higher_floor():
    assert violations() == []


def test_the_check_sees_a_wrong_way_import(tmp_path, monkeypatch):
    # A core module importing the run machinery, even inside a function, is caught.
    planted = PACKAGE / "losses.py"
    text = planted.read_text()
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (
        text + "\n\ndef _f():\n    from autorec_jax.run import experiment\n"
        if self == planted else Path.open(self).read()))
    assert any("losses.py" in v and "autorec_jax.run" in v for v in violations())


@pytest.mark.parametrize("name", sorted(autorec_jax.__all__))
def test_every_public_name_resolves_and_is_listed(name):
    assert getattr(autorec_jax, name) is not None
    assert name in dir(autorec_jax)


def test_every_module_imports():
    for name, _ in modules():
        importlib.import_module(name)
