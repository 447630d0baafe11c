"""The layer table of docs/architecture.md, enforced: dependencies point down only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# layer -> packages it must never import
FORBIDDEN = {
    "tasks/core": ("prefect", "flows"),  # the core: stdlib and SDKs only
    "tasks": ("flows",),
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_upward_imports(layer: str) -> None:
    offenders = []
    for path in sorted((REPO / layer).rglob("*.py")):
        if layer == "tasks" and "core" in path.relative_to(REPO / "tasks").parts[:1]:
            continue  # tasks/core has its own, stricter row
        for name in _imports(path):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[layer]):
                offenders.append(f"{path.relative_to(REPO)} imports {name}")
    assert offenders == []


def test_tasks_package_init_is_empty() -> None:
    # importing the core must not import Prefect through tasks/__init__.py
    assert (REPO / "tasks" / "__init__.py").read_text().strip() == ""


def test_importing_the_core_and_cli_does_not_load_prefect() -> None:
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in (REPO / "tasks" / "core").rglob("*.py")
    )
    code = (
        "import sys\n"
        + "".join(f"import {m.removesuffix('.__init__')}\n" for m in modules)
        + "import flows.cli\n"
        + "assert not [m for m in sys.modules if m.split('.')[0] == 'prefect'], 'prefect loaded'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert proc.returncode == 0, proc.stderr
