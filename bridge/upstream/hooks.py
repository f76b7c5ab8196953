"""Decode hooks: ``decode: "MODULE:FUNCTION"`` on a route.

A hook is ``f(status: int, headers: Mapping[str, str], body: bytes) -> object``:
it returns the decoded answer, or raises ``ValueError`` when the answer cannot
be used (then it counts as an undecodable answer, like HTML where JSON was
due). MODULE is looked up in the config file's folder first (``MODULE.py``
there), then on ``sys.path``; a missing module or function is a config error
naming the key (:func:`resolve`, called by ``check-config`` and at start).

Hooks run on a small thread pool of their own (:func:`run`), so a slow one
never stalls the event loop; one that takes over :data:`HOOK_TIMEOUT` once
a thread runs it (a wait for a free thread does not count, up to
:data:`HOOK_QUEUE_WAIT`), or raises anything but ``ValueError``, is a counted
failure, never a crash. A thread cannot be stopped: a hook that never returns
holds one for good (said by its failure; with all of them held, every hook
fails until a restart).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..exceptions import BridgeError

#: the longest a decode hook may take
HOOK_TIMEOUT = 0.1
#: threads running hooks (a hook stuck for good holds one)
HOOK_THREADS = 8
#: the longest a hook waits for a free thread
HOOK_QUEUE_WAIT = 1.0

Hook = Callable[[int, Mapping[str, str], bytes], Any]

_SPEC = re.compile(
    r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*)"
)
_cache: dict[tuple[str, str | None], Hook] = {}
_pool: ThreadPoolExecutor | None = None


class HookNotFound(BridgeError, ValueError):
    """The hook named by a ``decode`` key cannot be loaded."""


class HookFailed(BridgeError):
    """A hook raised something other than ValueError, or ran too long (``slow``)."""

    def __init__(self, message: str, slow: bool = False) -> None:
        super().__init__(message)
        self.slow = slow


def resolve(spec: str, base_dir: str | None) -> Hook:
    """The function named ``MODULE:FUNCTION``. Raises HookNotFound."""
    key = (spec, base_dir)
    hook = _cache.get(key)
    if hook is not None:
        return hook
    m = _SPEC.fullmatch(spec)
    if m is None:
        raise HookNotFound(f"expected MODULE:FUNCTION, got {spec!r}")
    module_name, func_name = m.groups()
    module: Any = None
    if base_dir is not None:
        candidate = Path(base_dir, *module_name.split(".")).with_suffix(".py")
        if candidate.is_file():
            unique = f"bridge_hooks_{abs(hash(str(candidate))):x}_{module_name.replace('.', '_')}"
            loader_spec = importlib.util.spec_from_file_location(unique, candidate)
            if loader_spec is None or loader_spec.loader is None:  # pragma: no cover
                raise HookNotFound(f"cannot load {candidate}")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[unique] = module
            try:
                loader_spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[unique]
                raise HookNotFound(
                    f"{candidate} failed to load: {type(exc).__name__}: {exc}"
                ) from None
    if module is None:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            where = f" (nor {module_name}.py beside the config)" if base_dir else ""
            raise HookNotFound(f"no module {module_name!r}{where}: {exc}") from None
        except Exception as exc:
            raise HookNotFound(f"module {module_name!r} failed to load: {exc}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise HookNotFound(f"module {module_name!r} has no function {func_name!r}")
    _cache[key] = func
    return func  # type: ignore[no-any-return]


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(HOOK_THREADS, thread_name_prefix="decode-hook")
    return _pool


async def run(hook: Hook, status: int, headers: Mapping[str, str], body: bytes) -> Any:
    """Call a hook off the event loop. Its ValueError passes through (the answer
    cannot be used); anything else, a run over HOOK_TIMEOUT (counted from when a
    thread starts it), or no thread free within HOOK_QUEUE_WAIT is HookFailed."""
    loop = asyncio.get_running_loop()
    started: asyncio.Future[None] = loop.create_future()

    def began() -> None:
        if not started.done():
            started.set_result(None)

    def call() -> Any:
        loop.call_soon_threadsafe(began)
        return hook(status, dict(headers), body)

    future = loop.run_in_executor(_executor(), call)
    try:
        await asyncio.wait_for(asyncio.shield(started), HOOK_QUEUE_WAIT)
    except TimeoutError:
        future.cancel()  # still queued: it never runs
        raise HookFailed(
            f"found no free thread within {HOOK_QUEUE_WAIT:g} s (every one is running a "
            "hook: one stuck?)", slow=True,
        ) from None  # fmt: skip
    except BaseException:
        future.cancel()
        raise
    try:
        return await asyncio.wait_for(future, HOOK_TIMEOUT)
    except TimeoutError:
        raise HookFailed(f"took over {HOOK_TIMEOUT * 1000:.0f} ms", slow=True) from None
    except ValueError:
        raise
    except Exception as exc:
        raise HookFailed(f"raised {type(exc).__name__}: {exc}") from None
