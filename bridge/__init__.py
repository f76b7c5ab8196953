"""session-bridge: a resumable WebSocket/SSE/long-poll sidecar for legacy estimation apps."""

__version__ = "0.1.0"
