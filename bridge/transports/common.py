"""What every transport adapter shares: JSON errors, origin checks, app keys."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..config import Config
from ..metrics import Metrics
from ..runtime import Bridge

CONFIG: web.AppKey[Config] = web.AppKey("config", Config)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
BRIDGE: web.AppKey[Bridge] = web.AppKey("bridge", Bridge)


def json_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The HTTP error shape of protocol.md: ``{"error": {"code", "message"}}``."""
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def origin_allowed(cfg: Config, origin: str | None) -> bool:
    """Origin policy: see docs/configuration.md ("security").

    No Origin header (a non-browser client) is allowed unless
    ``security.require_origin``; with one, it must be listed in
    ``security.allowed_origins`` (an empty list or ``"*"`` allows any).
    """
    sec = cfg.security
    if origin is None:
        return not sec.require_origin
    allowed = sec.allowed_origins
    return not allowed or "*" in allowed or origin in allowed


def client_ip(request: web.Request) -> str:
    peer: Any = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unknown"
