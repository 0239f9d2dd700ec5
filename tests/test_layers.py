"""The layers of DESIGN.md, checked on the imports: the library never imports the CLI, the
building blocks never import stages, and stages never import one another."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdist"
BUILDING_BLOCKS = ("kdist.llm", "kdist.train", "kdist.data", "kdist.judging", "kdist.storage", "kdist.endpoints", "kdist.config")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(path): _imports(path) for path in PACKAGE.rglob("*.py")}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.startswith("kdist.cli")))
def test_the_library_never_imports_the_cli(module):
    assert not [name for name in MODULES[module] if name.startswith("kdist.cli")]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(BUILDING_BLOCKS)))
def test_building_blocks_never_import_stages(module):
    assert not [name for name in MODULES[module] if name.startswith(("kdist.stages", "kdist.pipeline", "kdist.demo"))]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("kdist.stages.")))
def test_stages_never_import_one_another(module):
    assert not [name for name in MODULES[module] if name in MODULES and name.startswith("kdist.stages.") and name != module]
