"""core/children.py: keishiki's child interpreters never import from the working folder
(often the model's own folder, which may ship a ``json/`` or ``keishiki/`` of its own)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from keishiki.core.children import python_code, python_module

SRC = Path(__file__).resolve().parents[2] / "src" / "keishiki"


@pytest.fixture()
def planted(tmp_path):
    """A working folder whose ``json`` and ``keishiki`` packages would leave a marker."""
    for name in ("json", "keishiki"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(
            f"open({str(tmp_path / ('PLANTED_' + name))!r}, 'w').close()\n"
        )
    return tmp_path


@pytest.mark.parametrize(
    "argv",
    [
        python_code("import json; print(json.dumps([1]))"),
        python_module("json.tool", "--help"),
        python_module("keishiki.core.children"),
    ],
    ids=["code", "stdlib module", "keishiki module"],
)
def test_nothing_is_imported_from_the_working_folder(planted, argv):
    proc = subprocess.run(argv, cwd=planted, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not list(planted.glob("PLANTED_*"))


def test_every_child_interpreter_starts_through_it():
    """keishiki starts Python children only through core/children.py."""
    spawners = [
        p.relative_to(SRC).as_posix()
        for p in SRC.rglob("*.py")
        if "sys.executable" in p.read_text() and p.name != "children.py"
    ]
    assert spawners == []
