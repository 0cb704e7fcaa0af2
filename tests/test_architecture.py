"""The import contracts of pyproject.toml hold for the tree, and break on an import against the layers
or a cycle (a function-local import included): run on a copy of ``server/`` with one import added."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(tree / "pyproject.toml")],
                          cwd=tree, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "server", tmp_path / "server", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract(tree):
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "added", "broken"), [
    # a lower layer reaching up, lazily, inside a function
    ("core/values.py", "def _late():\n    from server.http import state  # noqa\n",
     "server.core is not allowed to import server.http"),
    # the pure domain importing Redis
    ("domain/articles.py", "import redis  # noqa\n", "server.domain is not allowed to import redis"),
    # a cycle inside one package, behind TYPE_CHECKING
    ("http/auth.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from server.http import app  # noqa\n",
     "No import cycle, at any depth BROKEN"),
])
def test_an_import_against_the_direction_breaks_the_lint(tree, module, added, broken):
    path = tree / "server" / module
    path.write_text(path.read_text() + "\n\n" + added)
    result = _lint(tree)
    assert result.returncode != 0
    assert broken in result.stdout, result.stdout
