"""Every exception the bridge defines sits under BridgeError, and exceptions.py's
docstring tree names each of them."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import bridge
from bridge import exceptions
from bridge.exceptions import BridgeError


def defined_exceptions() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(bridge.__path__, "bridge."):
        if info.name.startswith("bridge.demo") or info.name == "bridge.__main__":
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


def test_every_exception_is_under_the_root():
    found = defined_exceptions()
    assert len(found) >= 20
    outside = [f"{e.__module__}.{e.__name__}" for e in found if not issubclass(e, BridgeError)]
    assert outside == []


def test_the_docstring_tree_names_every_exception():
    tree = exceptions.__doc__ or ""
    missing = [e.__name__ for e in defined_exceptions() if e.__name__ not in tree]
    assert missing == []
