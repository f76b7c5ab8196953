"""The Python asyncio client: the same semantics as the browser's ConnectionManager.

::

    async with aiohttp.ClientSession() as http:
        client = BridgeClient("http://127.0.0.1:8080", "s1", "u1", params={"name": "Ada"})
        client.on_session = lambda state, seq: print(seq, state)
        await client.connect()            # returns after the first welcome
        ack = await client.send_vote("5")  # returns the ack; raises CommandFailed on an error ack
        await client.close()

Where things are:

- ``connection.py``: :class:`BridgeClient`, the manager: transports in order,
  resume, fallback and the return to WebSocket, reconnect delays, the
  rules for refusals (a resume refused for its token connects afresh);
- ``websocket.py``, ``sse.py``, ``poll.py``: one class per transport, with
  the interface of ``transport.py`` (start, run, send, fail, close);
- ``outbox.py``: commands waiting for their ack;
- ``errors.py``: :class:`ClientError` and :class:`CommandFailed`, under
  :class:`bridge.exceptions.BridgeError`.

The wire format (codecs, subprotocol names, SSE parsing) and the backoff
come from :mod:`bridge.protocol`; the client imports nothing else of the
project but :mod:`bridge.exceptions`.
"""

from .connection import TRANSPORTS, BridgeClient, backoff
from .errors import ClientError, CommandFailed

__all__ = ["TRANSPORTS", "BridgeClient", "ClientError", "CommandFailed", "backoff"]
