"""Every Redis key and channel of one session (docs/scaling.md lists them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """Every key of one session (``{id}`` is a Redis Cluster hash tag)."""

    meta: str
    log: str
    latest: str
    presence: str
    users: str
    lease: str
    #: values captured for the session (``{session.NAME}``)
    context: str
    #: the command gate (upstream.session_concurrency): queue, liveness, tickets
    gate: str
    gate_alive: str
    gate_tickets: str
    channel: str
    cmd_prefix: str

    @classmethod
    def of(cls, prefix: str, session_id: str) -> Keys:
        base = f"{prefix}:{{{session_id}}}:"
        return cls(
            meta=base + "meta",
            log=base + "log",
            latest=base + "latest",
            presence=base + "presence",
            users=base + "users",
            lease=base + "lease",
            context=base + "context",
            gate=base + "gate",
            gate_alive=base + "gate:alive",
            gate_tickets=base + "gate:tickets",
            channel=base + "events",
            cmd_prefix=base + "cmd:",
        )

    @staticmethod
    def session_of_channel(prefix: str, channel: str) -> str | None:
        """The session id of one of :meth:`of`'s channels (None: not one)."""
        head, tail = f"{prefix}:{{", "}:events"
        if channel.startswith(head) and channel.endswith(tail):
            return channel[len(head) : -len(tail)]
        return None

    def values(self, user: str) -> str:
        """The values captured for ``user`` (a hash: name → JSON, never re-encoded)."""
        return f"{self.cmd_prefix[: -len('cmd:')]}values:{user}"

    def command(self, user: str, command_id: str) -> str:
        return f"{self.cmd_prefix}{user}:{command_id}"
