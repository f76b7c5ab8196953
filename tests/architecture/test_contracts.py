"""The import contracts in pyproject.toml ([tool.importlinter]) are kept, and
they bite: each is broken by the kind of import it exists to stop, including
the ones an AST check used to miss (``from .. import x``, ``importlib``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(cwd: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    only = [arg for c in contracts for arg in ("--contract", c)]
    return subprocess.run(
        [LINT, "--no-cache", *only], cwd=cwd, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_the_contracts_are_kept():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 kept, 0 broken" in result.stdout, result.stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package and its pyproject.toml, in a folder of their own."""
    where = tmp_path_factory.mktemp("arch")
    shutil.copytree(ROOT / "bridge", where / "bridge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", where / "pyproject.toml")
    return where


SANS_IO = "sans-io"
ABOVE = "core-protocol-bottom"
#: violation → (file, the import injected there, the id of the contract it must break)
VIOLATIONS = {
    "a clock in core": ("bridge/core/timers.py", "import time", SANS_IO),
    "a dynamic import in protocol": ("bridge/protocol/frames.py", "import importlib", SANS_IO),
    "the runtime, relatively": ("bridge/protocol/frames.py", "from .. import runtime", ABOVE),
    "the config": ("bridge/core/hub.py", "from ..config import Config", ABOVE),
    "protocol on core": (
        "bridge/protocol/types.py", "from ..core import timers", "core-over-protocol"
    ),
    "transports on upstream": (
        "bridge/transports/http.py", "from ..upstream import client", "transports-no-upstream"
    ),
    "backplane on runtime": (
        "bridge/backplane/memory.py", "from ..runtime import session",
        "backplane-port",
    ),
    "client on config": (
        "bridge/client/__init__.py", "from .. import config", "client-protocol-only"
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_each_contract_is_broken_by_what_it_forbids(copy: Path, name: str):
    path, line, contract = VIOLATIONS[name]
    target = copy / path
    original = target.read_text()
    target.write_text(original + f"\n{line}  # injected by the test\n")
    try:
        result = lint(copy, contract)
    finally:
        target.write_text(original)
    assert result.returncode != 0, f"{name}: {line!r} in {path} was not caught\n{result.stdout}"
    assert "0 kept, 1 broken" in result.stdout, result.stdout
    assert lint(copy, contract).returncode == 0, "kept again without the import"
