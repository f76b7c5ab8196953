"""Session state machines, sans-I/O.

Rules for every module here: no I/O, no asyncio, no clock reads. Callers pass
``now`` (seconds, any monotonic origin) and ask for ``next_deadline()``.
"""
