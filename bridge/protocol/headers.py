"""HTTP header values the bridge reads from clients, parsed without raising.

``Accept-Encoding`` (RFC 9110 §12.5.3): a list of codings, each with an
optional weight ``q=`` between 0 and 1 (§12.4.2: at most three decimals).
A coding whose weight is malformed (``gzip;q=high``) is not acceptable:
the client asked for something we cannot read, so it gets the identity
encoding, never an error.
"""

from __future__ import annotations

import re

_QVALUE = re.compile(r"^(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)$")


def weight(params: str) -> float | None:
    """The ``q`` of one list member's parameters (``"; q=0.5"``): 1.0 when absent,
    None when malformed."""
    q = 1.0
    for param in params.split(";"):
        name, eq, value = param.partition("=")
        if not eq:
            if name.strip():
                return None  # a parameter without a value: not ours to guess
            continue
        if name.strip().lower() != "q":
            continue
        value = value.strip()
        if not _QVALUE.match(value):
            return None
        q = float(value)
    return q


def accepts_coding(header: str | None, coding: str) -> bool:
    """Whether an ``Accept-Encoding`` value allows ``coding`` (lower case):
    listed by name with a weight above 0, or covered by ``*`` when not listed."""
    if not header:
        return False
    wildcard: float | None = None
    for member in header.split(","):
        name, _, params = member.partition(";")
        name = name.strip().lower()
        if name == coding:
            q = weight(params)
            return q is not None and q > 0
        if name == "*":
            wildcard = weight(params)
    return wildcard is not None and wildcard > 0
