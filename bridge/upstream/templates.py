"""Request templates: ``{sessionId}``, ``{userId}``, ``{clientId}``, ``{params.NAME}``,
``{payload.x.y}``, ``{user.NAME}`` and ``{session.NAME}`` (values captured from the
app's answers) inside paths, query and header values, JSON and form bodies.

Rules:

- A JSON string that is exactly one placeholder takes the value with its JSON
  type (``"{payload.vote}"`` with vote 5 renders the number 5).
- Inside longer strings values are inserted as text; in paths they are
  percent-encoded, so a value can never add a path segment or a query.
- A missing value fails the render with :class:`MissingValue` (the command is
  acked ``bad_message``) unless written ``{payload.x?}``: then the key holding it
  is left out of its object (or the text is empty inside a longer string); in
  a JSON array it renders ``null`` (positions never shift); a query or form
  value that is only such a placeholder leaves its key out.
- Header and query values that render CR, LF or NUL are refused
  (:class:`UnsafeValue`): nothing is sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ..exceptions import MissingValue, TemplateError, UnsafeValue

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)(\?)?\}")
ROOTS = ("sessionId", "userId", "clientId", "params", "payload", "user", "session")
_SCALAR_ROOTS = ("sessionId", "userId", "clientId")


MISSING: Any = object()


@dataclass(frozen=True)
class _Ref:
    parts: tuple[str, ...]
    optional: bool

    @property
    def name(self) -> str:
        return ".".join(self.parts)


def _check_ref(text: str, m: re.Match[str]) -> None:
    parts = m.group(1).split(".")
    root = parts[0]
    if root not in ROOTS:
        raise TemplateError(
            f"unknown placeholder {{{m.group(1)}}} in {text!r} (use one of "
            + ", ".join("{" + r + ("" if r in _SCALAR_ROOTS else ".NAME") + "}" for r in ROOTS)
            + ")"
        )
    if root in _SCALAR_ROOTS and len(parts) > 1:
        raise TemplateError(f"{{{root}}} has no fields, in {text!r}")
    if root not in _SCALAR_ROOTS and len(parts) == 1:
        raise TemplateError(f"{{{root}}} needs a field name, like {{{root}.name}}, in {text!r}")


def compile_template(template: Any) -> None:
    """Check every placeholder in ``template``. Raises TemplateError."""
    if isinstance(template, str):
        for m in PLACEHOLDER.finditer(template):
            _check_ref(template, m)
        stripped = PLACEHOLDER.sub("", template)
        if "{" in stripped or "}" in stripped:
            raise TemplateError(f"unbalanced or malformed placeholder in {template!r}")
    elif isinstance(template, dict):
        for value in template.values():
            compile_template(value)
    elif isinstance(template, list):
        for value in template:
            compile_template(value)


def lookup(document: Any, parts: tuple[str, ...]) -> Any:
    """Follow ``parts`` (map keys, or list indexes as digits) into a JSON document;
    returns :data:`MISSING` when the path does not exist."""
    value: Any = document
    for part in parts:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _render(template: Any, ctx: Mapping[str, Any], in_path: bool) -> Any:
    if isinstance(template, str):
        whole = PLACEHOLDER.fullmatch(template)
        if whole is not None and not in_path:
            ref = _Ref(tuple(whole.group(1).split(".")), whole.group(2) == "?")
            value = lookup(ctx, ref.parts)
            if value is MISSING or value is None and ref.optional:
                if ref.optional:
                    return MISSING
                raise MissingValue(ref.name)
            return value

        def repl(m: re.Match[str]) -> str:
            ref = _Ref(tuple(m.group(1).split(".")), m.group(2) == "?")
            value = lookup(ctx, ref.parts)
            if value is MISSING or value is None:
                if ref.optional:
                    return ""
                raise MissingValue(ref.name)
            text = _as_text(value)
            return quote(text, safe="") if in_path else text

        return PLACEHOLDER.sub(repl, template)
    if isinstance(template, dict):
        out = {}
        for key, value in template.items():
            rendered = _render(value, ctx, in_path)
            if rendered is not MISSING:
                out[key] = rendered
        return out
    if isinstance(template, list):
        return [None if r is MISSING else r for r in (_render(v, ctx, in_path) for v in template)]
    return template


#: what may stay as it is in a rendered path (its values are percent-encoded already)
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


def render_path(template: str, ctx: Mapping[str, Any]) -> str:
    """Render a URL path, ready to send as it is (encoded): values are
    percent-encoded, and a segment that renders ``.`` or ``..`` is sent as
    ``%2E`` / ``%2E%2E``, so no value can climb out of its segment (nor add one,
    nor a query). Raises MissingValue."""
    result = _render(template, ctx, in_path=True)
    assert isinstance(result, str)
    segments = [
        seg.replace(".", "%2E") if seg in (".", "..") else seg
        for seg in quote(result, safe=_PATH_SAFE).split("/")
    ]
    return "/".join(segments)


def render_json(template: Any, ctx: Mapping[str, Any]) -> Any:
    """Render a JSON body template (None stays None). Raises MissingValue."""
    if template is None:
        return None
    result = _render(template, ctx, in_path=False)
    return None if result is MISSING else result


_UNSAFE = re.compile(r"[\r\n\x00]")


def render_text(
    template: str, ctx: Mapping[str, Any], what: str, *, line: bool = True
) -> str | None:
    """Render a query, header or form value as text: None when it is only an
    optional placeholder that is missing (its key is left out). Raises
    MissingValue, and (``line``: a header or query value) UnsafeValue when the
    text holds CR, LF or NUL."""
    result = _render(template, ctx, in_path=False)
    if result is MISSING:  # only an optional placeholder, and it is missing
        return None
    text = _as_text(result)
    if line and _UNSAFE.search(text):
        raise UnsafeValue(f"{what} would hold a control character (CR, LF or NUL)")
    return text


def render_fields(
    templates: Mapping[str, str], ctx: Mapping[str, Any], what: str, *, line: bool = True
) -> list[tuple[str, str]]:
    """Render a map of query/header/form values (missing optional ones left out;
    ``line=False`` for form values, which a urlencoded body carries safely)."""
    out: list[tuple[str, str]] = []
    for key, template in templates.items():
        text = render_text(template, ctx, f"{what} {key}", line=line)
        if text is not None:
            out.append((key, text))
    return out
