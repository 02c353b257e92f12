"""The projection's readers import its public read API only (docs/architecture.md, "The read
side"): ``ingestor.projection``, never a module behind it (``schema``, ``store``, ``asof``...),
so the write side can change its inside without breaking the workbench or a notebook. Nor do
they import the ingestor's commands (``ingestor.app``, ``ingestor.commands``, ``ingestor.cli``):
a command is a program, not a library."""

from __future__ import annotations

import ast
import json
import pkgutil
from pathlib import Path

import ingestor.projection
import ingestor.projection.read

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "ingestor.projection"
PRIVATE = {info.name for info in pkgutil.iter_modules(ingestor.projection.__path__)}
COMMANDS = ("ingestor.app", "ingestor.commands", "ingestor.cli")


def _sources() -> list[tuple[str, str]]:
    """(where, Python source) of every workbench, bench and notebook module; a notebook's code
    cells without their IPython magics."""
    found = []
    for folder in ("workbench", "bench", "notebooks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            found.append((str(path.relative_to(ROOT)), path.read_text()))
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        for n, cell in enumerate(cells):
            if cell["cell_type"] == "code":
                lines = "".join(cell["source"]).splitlines()
                code = "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))
                found.append((f"{path.relative_to(ROOT)} cell {n}", code))
    return found


def private_imports(where: str, source: str) -> list[str]:
    """The imports in ``source`` that reach behind ``ingestor.projection``'s public API, or
    into the ingestor's commands."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
            if node.module == PACKAGE:  # ``from ingestor.projection import store``
                modules += [f"{PACKAGE}.{a.name}" for a in node.names if a.name in PRIVATE]
            if node.module == "ingestor":  # ``from ingestor import app``
                modules += [f"ingestor.{a.name}" for a in node.names]
        else:
            continue
        bad += [f"{where}:{node.lineno}: {m}" for m in modules if _private(m)]
    return sorted(bad)


def _private(module: str) -> bool:
    return module.startswith(PACKAGE + ".") or any(
        module == name or module.startswith(name + ".") for name in COMMANDS
    )


def test_readers_import_only_the_projections_public_api() -> None:
    sources = _sources()
    assert any(where.startswith("workbench/") for where, _ in sources)
    assert any(".ipynb" in where for where, _ in sources)
    bad = [line for where, source in sources for line in private_imports(where, source)]
    hint = "import the projection's names from ingestor.projection, and no command:\n"
    assert bad == [], hint + "\n".join(bad)


def test_the_scan_catches_each_way_of_reaching_behind_the_api() -> None:
    source = (
        "import ingestor.projection.store\n"
        "from ingestor.projection.schema import DETAIL_VIEW\n"
        "from ingestor.projection import asof, Projection\n"
        "def f():\n    from ingestor.projection.fold import fold_playbacks\n"
        "from ingestor.projection import PLAYBACK_TABLE\n"
        "from ingestor.app import TRUTH_SQL\n"
        "from ingestor import app, events\n"
        "import ingestor.commands.demo\n"
    )
    assert private_imports("x.py", source) == [
        "x.py:1: ingestor.projection.store",
        "x.py:2: ingestor.projection.schema",
        "x.py:3: ingestor.projection.asof",
        "x.py:5: ingestor.projection.fold",
        "x.py:7: ingestor.app",
        "x.py:8: ingestor.app",
        "x.py:9: ingestor.commands.demo",
    ]


def test_the_read_api_is_exported_documented_and_resolves() -> None:
    read_names = set(ingestor.projection.read.__all__)
    assert read_names <= set(ingestor.projection.__all__)
    for name in ingestor.projection.__all__:
        assert hasattr(ingestor.projection, name), name
    source = Path(ingestor.projection.read.__file__).read_text()
    tree = ast.parse(source)
    # every constant the read module defines has a docstring below it, every function one
    body = tree.body
    for i, node in enumerate(body):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in read_names:
                follow = body[i + 1]
                assert isinstance(follow, ast.Expr) and isinstance(follow.value, ast.Constant), name
        if isinstance(node, ast.FunctionDef) and node.name in read_names:
            assert ast.get_docstring(node), node.name
