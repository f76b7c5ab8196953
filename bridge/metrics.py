"""Every Prometheus metric of the bridge, defined once.

Labels never carry session or user ids (cardinality and privacy): only
transport, codec, direction, message type, command name, status class,
outcome and reason, each from a small fixed set. Unknown client message
types are counted as ``other``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

KNOWN_TYPES = frozenset(
    {
        "welcome", "session", "presence", "ack", "ping", "pong", "heartbeat", "error",
        "reconnect", "join", "vote", "reveal", "reset", "leave",
    }
)  # fmt: skip


def type_label(message_type: object, commands: frozenset[str] = frozenset()) -> str:
    """A bounded label value for a message type."""
    if isinstance(message_type, str) and (message_type in KNOWN_TYPES or message_type in commands):
        return message_type
    return "other"


def status_label(status: int | None) -> str:
    """``2xx`` .. ``5xx`` for HTTP answers; ``error`` when none came."""
    if status is None:
        return "error"
    return f"{status // 100}xx"


class Metrics:
    """All metric families, registered on one registry (one per app)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connections_active = Gauge(
            "bridge_connections_active", "Open client transports.", ["transport"], registry=r
        )
        self.connections_opened = Counter(
            "bridge_connections_opened", "Client transports opened.", ["transport"], registry=r
        )
        self.connections_closed = Counter(
            "bridge_connections_closed",
            "Client transports closed, by reason.",
            ["transport", "reason"],
            registry=r,
        )
        self.connections_rejected = Counter(
            "bridge_connections_rejected",
            "Connection attempts refused before welcome, by reason.",
            ["transport", "reason"],
            registry=r,
        )
        self.messages = Counter(
            "bridge_messages",
            "Messages by direction (in = client to bridge), type and codec.",
            ["direction", "type", "codec"],
            registry=r,
        )
        self.deliveries = Counter(
            "bridge_stream_deliveries",
            "Stream messages written to client transports.",
            ["transport"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "bridge_delivery_latency_seconds",
            "Upstream change seen to written to every client transport of the session.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.transport_switches = Counter(
            "bridge_transport_switches",
            "Connects of a client that was on another transport (its 'transport' parameter).",
            ["from", "to"],
            registry=r,
        )
        self.wire_bytes = Counter(
            "bridge_wire_bytes",
            "Bytes of messages written, before (encoded) and after (sent) compression.",
            ["transport", "stage"],
            registry=r,
        )
        self.heartbeat_rtt = Histogram(
            "bridge_heartbeat_rtt_seconds",
            "Ping to pong round trip of WebSocket clients.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.resumes = Counter(
            "bridge_resumes",
            "Connects that asked to resume, by outcome (resumed or reset).",
            ["outcome"],
            registry=r,
        )
        self.heartbeat_timeouts = Counter(
            "bridge_heartbeat_timeouts",
            "Transports closed because nothing was received in time.",
            ["transport"],
            registry=r,
        )
        self.upstream_requests = Counter(
            "bridge_upstream_requests",
            "Requests to the legacy app, by command (or state/keepalive) and status class.",
            ["command", "status"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "bridge_upstream_request_duration_seconds",
            "Duration of requests to the legacy app.",
            ["command"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.upstream_retries = Counter(
            "bridge_upstream_retries", "Retried upstream requests.", ["command"], registry=r
        )
        self.upstream_unusable = Counter(
            "bridge_upstream_unusable_answers",
            "2xx answers of the legacy app the bridge could not use, by route and reason "
            "(content_type, invalid, too_big, hook_error, hook_slow, capture).",
            ["command", "reason"],
            registry=r,
        )
        self.upstream_captures = Counter(
            "bridge_upstream_captures",
            "Values captured from the legacy app's answers, by scope (user, session).",
            ["scope"],
            registry=r,
        )
        self.passthrough_requests = Counter(
            "bridge_passthrough_requests",
            "Requests passed through to the legacy app, by method and status class.",
            ["method", "code"],
            registry=r,
        )
        self.passthrough_duration = Histogram(
            "bridge_passthrough_duration_seconds",
            "Time until the legacy app's answer (its headers) to a passed-through request.",
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.intercept_requests = Counter(
            "bridge_intercept_requests",
            "The app's own state GETs answered by the bridge (hit, miss, not_modified).",
            ["result"],
            registry=r,
        )
        self.upstream_in_flight = Gauge(
            "bridge_upstream_in_flight",
            "The bridge's own requests at the legacy app now.",
            registry=r,
        )
        self.upstream_limit = Gauge(
            "bridge_upstream_limit",
            "How many of the bridge's requests may be at the legacy app at once (adaptive).",
            registry=r,
        )
        self.upstream_queue = Histogram(
            "bridge_upstream_queue_seconds",
            "How long a request waited for its turn to go to the legacy app.",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.breaker_state = Gauge(
            "bridge_upstream_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            registry=r,
        )
        self.state_polls = Counter(
            "bridge_state_polls", "State polls of the legacy app, by result.", ["result"],
            registry=r,
        )  # fmt: skip
        self.state_changes = Counter(
            "bridge_state_changes", "Session state changes, by source (poll or push).",
            ["source"], registry=r,
        )  # fmt: skip
        self.rate_limited = Counter(
            "bridge_rate_limited",
            "Commands refused (rate_limited) over limits.commands_per_second.",
            ["transport"],
            registry=r,
        )
        self.commands_held = Counter(
            "bridge_commands_held",
            "Commands held while the upstream breaker was open (then sent or expired).",
            registry=r,
        )
        self.dedupe_hits = Counter(
            "bridge_dedupe_hits", "Commands answered from the de-dupe window.", registry=r
        )
        self.sessions = Gauge("bridge_sessions", "Sessions held by this instance.", registry=r)
        self.present_users = Gauge(
            "bridge_present_users", "Users present (including those in grace).", registry=r
        )
        self.replay_entries = Gauge(
            "bridge_replay_entries", "Stream messages held in replay logs.", registry=r
        )
        self.replay_evictions = Counter(
            "bridge_replay_evictions", "Stream messages evicted from replay logs.", registry=r
        )
        self.slow_consumer_collapses = Counter(
            "bridge_slow_consumer_collapses",
            "Snapshots replaced by a newer one while a slow client's socket was full.",
            ["transport"],
            registry=r,
        )
        self.slow_consumer_closes = Counter(
            "bridge_slow_consumer_closes",
            "Transports closed (1013) because their send queue passed the cap.",
            ["transport"],
            registry=r,
        )
        self.task_errors = Counter(
            "bridge_task_errors",
            "Background tasks that ended with an exception (a bug: the log has its traceback),"
            " by owner.",
            ["owner"],
            registry=r,
        )
        self.backplane_up = Gauge(
            "bridge_backplane_up",
            "1 while the shared backplane (Redis) is reachable; always 1 for memory.",
            registry=r,
        )
        self.backplane_up.set(1)
        self.backplane_errors = Counter(
            "bridge_backplane_errors",
            "Backplane operations that failed (Redis unreachable or erroring).",
            ["op"],
            registry=r,
        )
        self.backplane_leases = Gauge(
            "bridge_backplane_leases",
            "Session leases this instance holds (it polls and keeps alive those sessions).",
            registry=r,
        )
        self.backplane_resyncs = Counter(
            "bridge_backplane_resyncs",
            "Session logs reloaded from Redis (new epoch, or a hole), clients asked to resume.",
            ["reason"],
            registry=r,
        )
