"""Print pip constraints pinning every runtime dependency of pyproject.toml to its
lowest allowed version (``>=X`` → ``==X``), for ``make test-min``: the code must
work on the oldest versions the package admits, not only on the newest."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def floors(pyproject: Path) -> list[str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = []
    for dep in deps:
        m = re.match(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*>=\s*([0-9][^,;\s]*)", dep)
        if m is None:
            raise SystemExit(f"{dep!r} has no '>=' floor: give it one")
        pins.append(f"{m.group(1).split('[')[0]}=={m.group(2)}")
    return pins


def check(pins: list[str]) -> list[str]:
    """What is installed where it is not the floor (run in the floors' venv)."""
    from importlib.metadata import version

    wrong = []
    for pin in pins:
        name, want = pin.split("==")
        got = version(name)
        if got.split("+")[0] not in (want, want + ".0", want + ".0.0"):
            wrong.append(f"{name}: {got} installed, the floor is {want}")
    return wrong


if __name__ == "__main__":
    pins = floors(ROOT / "pyproject.toml")
    if sys.argv[1:] == ["--check"]:
        wrong = check(pins)
        print("\n".join(wrong) or "every runtime dependency is at its floor: " + ", ".join(pins))
        raise SystemExit(1 if wrong else 0)
    sys.stdout.write("\n".join(pins) + "\n")
