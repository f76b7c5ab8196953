"""bridge/core and bridge/protocol stay sans-I/O: no asyncio, aiohttp, redis,
sockets, clocks or randomness. This test fails if one of them is imported."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "bridge"
FORBIDDEN_MODULES = {
    "asyncio", "aiohttp", "redis", "socket", "time", "datetime", "random", "secrets",
    "threading", "os", "subprocess", "selectors", "ssl", "uuid",
}  # fmt: skip


def sources():
    for package in ("core", "protocol"):
        yield from sorted((ROOT / package).glob("*.py"))


@pytest.mark.parametrize("path", list(sources()), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_io_imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom) and node.level > 0 and node.module:
            # relative imports may only reach bridge.core / bridge.protocol / exceptions
            top = node.module.split(".")[0]
            assert top in ("core", "protocol", "exceptions") or node.level == 1, (
                f"{path}: imports bridge.{node.module}"
            )
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN_MODULES, f"{path} imports {name}"


def test_the_check_sees_the_files():
    assert len(list(sources())) >= 10
