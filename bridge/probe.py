"""``session-bridge check-config FILE --probe --session ID [--user U]``: what the
bridge would see of a running app, for an operator writing a route map.

With ``--user`` it first sends that user's ``join`` (a real one: the app will
have the user; ``--leave`` sends the leave at the end), showing the captures;
then the state route (each part, when the state has parts) rendered as the
bridge renders it — ``as: present_user`` with that user — printing the
request, the status, the decoded answer after ``select``, the captures, and
what would be refused and why. Exit status 0 when everything worked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TextIO

import aiohttp

from .config import Config, Route
from .exceptions import RenderError, UpstreamError, UpstreamRejected
from .metrics import Metrics
from .runtime.membership import template_context
from .upstream.answers import Captured
from .upstream.client import UpstreamClient


def _show(value: Any, limit: int = 4000) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text)} characters)"


class Probe:
    def __init__(self, cfg: Config, out: TextIO) -> None:
        self.cfg = cfg
        self.out = out
        self.ok = True
        self.user_values: dict[str, Any] = {}
        self.shared: dict[str, Any] = {}

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def _took(self, captured: Captured) -> None:
        if captured.user:
            self.user_values.update(captured.user)
            self.say("  captured for the user: " + _show(captured.user).replace("\n", "\n  "))
        if captured.session:
            self.shared.update(captured.session)
            self.say("  captured for the session: " + _show(captured.session).replace("\n", "\n  "))

    def _refused(self, what: str, exc: BaseException) -> None:
        self.ok = False
        if isinstance(exc, UpstreamRejected):
            self.say(f"  REFUSED: the app answered {exc.status}: {exc}")
            if what == "state" and exc.status in (404, 410):
                self.say("  (a first state fetch answering 404/410: connects are refused 4404)")
            elif what == "join" and exc.status in (401, 403):
                self.say("  (clients would be closed 4401)")
            elif what == "join" and exc.status == 404:
                self.say("  (clients would be closed 4404)")
        elif isinstance(exc, RenderError):
            self.say(f"  REFUSED before sending: {exc} (a command would be acked bad_message)")
        else:
            self.say(f"  FAILED: {exc} (code {getattr(exc, 'code', 'upstream_error')})")

    def _describe(self, client: UpstreamClient, name: str, route: Route, ctx: Any,
                  headers: Mapping[str, str]) -> bool:  # fmt: skip
        try:
            prepared = client.prepare(name, route, ctx, headers)
        except RenderError as exc:
            self._refused(name, exc)
            return False
        query = "&".join(f"{k}={v}" for k, v in prepared.query)
        self.say(f"{name}: {prepared.method} {client.base}{prepared.path}"
                 + (f"?{query}" if query else ""))  # fmt: skip
        for key, value in prepared.headers.items():
            shown = "…" if key.lower() in ("cookie", "authorization") else value
            self.say(f"  > {key}: {shown}")
        if prepared.data:
            self.say(f"  > {prepared.data[:500].decode('utf-8', 'replace')}")
        return True

    async def run(self, session: str, user: str | None, params: Mapping[str, str],
                  headers: Mapping[str, str], leave: bool) -> int:  # fmt: skip
        up = self.cfg.upstream
        for note in self.cfg.notes:
            self.say(f"note: {note}")
        timeout = aiohttp.ClientTimeout(total=up.timeout + 1)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            client = UpstreamClient(up, http, Metrics(), self.cfg.base_dir)

            def ctx() -> dict[str, Any]:
                return template_context(session, user or "", "probe", params, {},
                                        self.user_values, self.shared)  # fmt: skip

            join = up.commands.get("join")
            if user is not None and join is not None:
                if self._describe(client, "join", join, ctx(), headers):
                    try:
                        resp = await client.request("join", join, ctx(), headers)
                        self.say(f"  < {resp.status}")
                        self._took(resp.captured)
                    except (UpstreamError, RenderError) as exc:
                        self._refused("join", exc)
            elif user is not None:
                self.say("join: not mapped (the user is present at the bridge only)")
            await self._state(client, session, user, params, headers, ctx)
            leave_route = up.commands.get("leave")
            if leave and user is not None and leave_route is not None:
                if self._describe(client, "leave", leave_route, ctx(), headers):
                    try:
                        resp = await client.request("leave", leave_route, ctx(), headers)
                        self.say(f"  < {resp.status}")
                    except (UpstreamError, RenderError) as exc:
                        self._refused("leave", exc)
        self.say("probe: ok" if self.ok else "probe: something would be refused (above)")
        return 0 if self.ok else 1

    async def _state(self, client: UpstreamClient, session: str, user: str | None,
                     params: Mapping[str, str], headers: Mapping[str, str],
                     ctx: Any) -> None:  # fmt: skip
        state = self.cfg.upstream.state
        as_user = state.as_ == "present_user"
        if as_user and user is None:
            self.ok = False
            self.say("state: `as: present_user` needs --user (the bridge asks as a present user)")
            return
        if not as_user:
            base = {"sessionId": session, "params": {}, "payload": {}, "user": {},
                    "session": self.shared}  # fmt: skip
        forwarded = headers if as_user else {}
        routes = dict(state.parts) if state.parts is not None else {"": state}
        combined: dict[str, Any] = {}
        for part, route in routes.items():
            name = f"state.{part}" if part else "state"
            context = ctx() if as_user else base
            if not self._describe(client, name, route, context, forwarded):
                continue
            try:
                result = await client.fetch_state(name, route, context, forwarded, None, None)
            except (UpstreamError, RenderError) as exc:
                self._refused("state", exc)
                continue
            self.say(f"  < decoded{' after select ' + repr(route.select) if route.select else ''}:")
            self.say("  " + _show(result.payload).replace("\n", "\n  "))
            self._took(result.captured)
            if part:
                combined[part] = result.payload
        if state.parts is not None and combined:
            self.say("state clients would get (the parts merged):")
            self.say(_show(combined))
