"""Decode hooks for rpc.yaml: answers in a line-oriented text format.

Each line of the answer is ``N:<json>``; line 1 holds the action's result.
A hook gets the status, the headers and the body, and returns the decoded
value or raises ValueError (the bridge then treats the answer as unusable).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def decode_action(status: int, headers: Mapping[str, str], body: bytes) -> Any:
    ctype = headers.get("Content-Type", "")
    if "text/x-component" not in ctype:
        # e.g. the page's HTML, when the action id is wrong
        raise ValueError(f"expected text/x-component, got {ctype or 'no content type'}")
    for line in body.decode("utf-8").splitlines():
        row, sep, value = line.partition(":")
        if sep and row == "1":
            return json.loads(value)
    raise ValueError("the answer has no line 1")
