"""The runtime: the I/O side of the sessions this instance serves.

Its modules, in the order data flows through them (``bridge.py`` wires them):

- :mod:`.connection`: what a transport gives the runtime (a Connection, the
  validated connect parameters);
- :mod:`.admission`: every check a new connection passes, atomically;
- :mod:`.sessions` / :mod:`.session`: the sessions served here, attach/detach;
- :mod:`.membership`: the upstream join, keep-alives, graces and leaves;
- :mod:`.commands`: client messages, de-duplicated and forwarded upstream;
- :mod:`.poller`: one upstream state poller per session;
- :mod:`.fanout`: one stream entry to every connection of a session;
- :mod:`.heartbeats` and :mod:`.ticker`: liveness and every deadline;
- :mod:`.events`: what the backplane reports, carried out;
- :mod:`.bridge`: the composition and the process' lifecycle.
"""

from ..exceptions import JoinRefused
from .admission import Admission, Refusal
from .bridge import Bridge
from .connection import TRANSPORTS, Connection, ConnectRequest, Identity, parse_connect
from .session import Session

__all__ = [
    "TRANSPORTS",
    "Admission",
    "Bridge",
    "ConnectRequest",
    "Connection",
    "Identity",
    "JoinRefused",
    "Refusal",
    "Session",
    "parse_connect",
]
