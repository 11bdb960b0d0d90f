"""The pure core stays pure: the planner and the model import no I/O library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gc_daemon"
IO_LIBRARIES = {"httpx", "docker", "schedule", "prometheus_client", "sqlite3", "socket", "subprocess", "requests"}
PURE = ["retention.py", "model.py", "accounting.py"]


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
            if node.module.startswith("gc_daemon.") and node.module not in ("gc_daemon.model",):
                roots.add(node.module)
    return roots


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io(module: str) -> None:
    roots = imported_roots(PACKAGE / module)
    assert not roots & IO_LIBRARIES, f"{module} imports {roots & IO_LIBRARIES}"
    assert not {r for r in roots if r.startswith("gc_daemon.")}, f"{module} imports beyond gc_daemon.model"
