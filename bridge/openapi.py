"""``session-bridge init --openapi URL|FILE``: a first route map from the app's
OpenAPI document (3.x, or Swagger 2.0).

Most apps of this kind publish one (FastAPI at ``/openapi.json``, Express with
swagger-jsdoc, Spring's springdoc). The draft proposes a route for each of
join, vote, reveal, reset, leave, keep-alive and state from the methods, the
paths, the operation ids, the summaries and the parameter names; every guess
carries a comment saying what it was guessed from, and ``TODO`` marks what it
could not tell. The draft always passes ``check-config``; whether the app
answers it as the bridge expects is what ``check-config --probe`` is for.

How it guesses:

- Each operation gets a score per role: words of the role (``join``, ``vote``,
  ``reveal`` …) in its operation id, path and summary, the method (the state
  is a ``GET``, a leave is often a ``DELETE``), and its shape (a ``POST`` to
  ``…/participants`` joins, a ``DELETE`` of ``…/participants/{id}`` leaves, a
  ``GET`` of ``/rooms/{id}`` is the state). The best pairs are taken first;
  an operation serves one role; below a floor a role stays unmapped.
- Names of parameters and body fields: a room-like one is ``{sessionId}``, a
  user-like one ``{userId}``, a name ``{params.name}``, a vote-like one in the
  vote ``{payload.vote}``. When the join takes no user id and answers one, the
  app mints ids: the draft captures it (``{user.appId}``) for later requests.
  When the join takes only a name and answers no id, the app keys users by
  name: the name is ``{userId}``.
- No route names a room: one global game. Several plain GETs then make the
  state's ``parts``.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .exceptions import OpenAPIError

ROLES = ("state", "leave", "join", "vote", "reveal", "reset", "keepalive")
COMMANDS = ("join", "vote", "reveal", "reset", "leave")
#: words of each role: the first set counts much more than the second
WORDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "join": (frozenset({"join", "enter", "attend"}),
             frozenset({"participant", "participants", "player", "players", "member", "members",
                        "add", "register", "users", "user"})),
    "vote": (frozenset({"vote", "votes", "estimate", "estimates", "estimation", "ballot"}),
             frozenset({"card", "pick", "point", "points", "bet", "score", "cast"})),
    "reveal": (frozenset({"reveal", "flip", "uncover"}),
               frozenset({"show", "open", "results", "cards"})),
    "reset": (frozenset({"reset", "restart", "clear"}),
              frozenset({"next", "new", "round", "again", "issue"})),
    "leave": (frozenset({"leave", "exit", "quit"}),
              frozenset({"remove", "kick", "part", "participants", "players", "members"})),
    "keepalive": (frozenset({"heartbeat", "keepalive", "ping", "alive", "touch"}),
                  frozenset({"presence", "beat", "still", "here"})),
    "state": (frozenset({"state", "status", "current"}),
              frozenset({"room", "session", "game", "board", "table", "get", "show", "info",
                         "detail", "details", "read"})),
}  # fmt: skip
ROOM_WORDS = frozenset({"room", "rooms", "session", "sessions", "game", "games", "board",
                        "boards", "table", "tables", "lobby", "lobbies", "poker"})  # fmt: skip
MEMBER_WORDS = frozenset({"participant", "participants", "player", "players", "member",
                          "members", "user", "users"})  # fmt: skip
USER_NAMES = frozenset({"user", "userid", "uid", "participant", "participantid", "player",
                        "playerid", "member", "memberid", "voter", "voterid"})  # fmt: skip
ROOM_NAMES = frozenset({"room", "roomid", "session", "sessionid", "game", "gameid", "board",
                        "boardid", "table", "tableid", "lobby", "lobbyid", "roomcode",
                        "code"})  # fmt: skip
NAME_NAMES = frozenset({"name", "displayname", "username", "nickname", "nick", "playername"})
VOTE_NAMES = frozenset({"vote", "value", "estimate", "points", "point", "card", "score", "size"})
#: not the app's game: documentation, health, metrics
NOT_GAME = frozenset({"openapi", "docs", "swagger", "health", "healthz", "readyz", "metrics",
                      "login", "logout", "auth", "token", "static", "admin",
                      "actuator"})  # fmt: skip
FLOOR = 4
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


@dataclass
class Field:
    name: str
    where: str  # path | query | header | cookie | body
    required: bool
    type: str = ""


@dataclass
class Operation:
    method: str
    path: str
    op_id: str = ""
    summary: str = ""
    params: list[Field] = field(default_factory=list)
    body: list[Field] = field(default_factory=list)
    #: "json" or "form" (when there is a body)
    body_kind: str = "json"
    #: the 2xx answer's top-level properties (name → type)
    answer: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """For a comment: one line, whatever the document holds."""
        oid = f" (operationId {self.op_id})" if self.op_id else ""
        return _c(f"{self.method} {self.path}{oid}")

    def fields(self) -> list[Field]:
        return self.params + self.body


# ---------------------------------------------------------------------- reading
def load_document(source: str, timeout: float = 10.0) -> tuple[dict[str, Any], str | None]:
    """The document, and its URL when it was fetched. Raises OpenAPIError."""
    url = source if re.match(r"^https?://", source) else None
    try:
        if url is not None:
            req = urllib.request.Request(url, headers={"Accept": "application/json, */*"})
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (http only)
                text = resp.read().decode("utf-8")
        else:
            text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise OpenAPIError(f"cannot read {source}: {exc}") from None
    except UnicodeDecodeError:
        raise OpenAPIError(f"{source} is not UTF-8 text") from None
    try:
        doc = json.loads(text)
    except ValueError:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise OpenAPIError(f"{source} is neither JSON nor YAML: {exc}") from None
    if not isinstance(doc, dict) or not ("openapi" in doc or "swagger" in doc):
        raise OpenAPIError(f"{source} is not an OpenAPI document (no 'openapi' or 'swagger' key)")
    if not isinstance(doc.get("paths"), dict):
        raise OpenAPIError(f"{source} has no 'paths'")
    return doc, url


def _resolve(doc: dict[str, Any], node: Any, depth: int = 0) -> Any:
    """Follow local ``$ref``s (``#/components/...``, ``#/definitions/...``)."""
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and depth < 20:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            return {}
        target: Any = doc
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, dict) else None
        node, depth = target, depth + 1
    return node if node is not None else {}


def _properties(
    doc: dict[str, Any], schema: Any, depth: int = 0
) -> tuple[dict[str, str], set[str]]:
    """Top-level properties (name → type) and the required ones, through allOf
    (a schema that includes itself ends at a depth of 10)."""
    schema = _resolve(doc, schema)
    props: dict[str, str] = {}
    required: set[str] = set()
    if not isinstance(schema, dict) or depth > 10:
        return props, required
    for sub in _list(schema.get("allOf")):
        p, r = _properties(doc, sub, depth + 1)
        props.update(p)
        required |= r
    for name, prop in _dict(schema.get("properties")).items():
        prop = _resolve(doc, prop)
        kind = ""
        if isinstance(prop, dict):
            kind = str(prop.get("type", "") or ("object" if "properties" in prop else ""))
        props[str(name)] = kind
    required |= {str(r) for r in _list(schema.get("required"))}
    return props, required


def _dict(value: Any) -> dict[str, Any]:
    """A mapping of the document, or an empty one where it holds something else."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def operations(doc: dict[str, Any]) -> list[Operation]:
    """Every operation of the document, its parameters and body fields."""
    swagger2 = "swagger" in doc
    out: list[Operation] = []
    for path, item in _dict(doc["paths"]).items():
        item = _resolve(doc, item)
        if not isinstance(item, dict):
            continue
        shared = _list(item.get("parameters"))
        for method in HTTP_METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            summary = str(op.get("summary", "") or op.get("description", "") or "")
            o = Operation(method.upper(), str(path), str(op.get("operationId", "") or ""), summary)
            for p in [*shared, *_list(op.get("parameters"))]:
                p = _resolve(doc, p)
                if not isinstance(p, dict) or "name" not in p:
                    continue
                where = str(p.get("in", ""))
                if where == "body":  # Swagger 2's body parameter
                    props, req = _properties(doc, p.get("schema"))
                    o.body += [Field(n, "body", n in req, t) for n, t in props.items()]
                elif where == "formData":
                    o.body_kind = "form"
                    o.body.append(Field(str(p["name"]), "body", bool(p.get("required"))))
                else:
                    o.params.append(Field(str(p["name"]), where, bool(p.get("required"))
                                          or where == "path"))  # fmt: skip
            body = _resolve(doc, op.get("requestBody"))
            if isinstance(body, dict) and isinstance(body.get("content"), dict):
                content = {k: _dict(v) for k, v in body["content"].items()}
                kind = next((k for k in content if "json" in k), None)
                if kind is None and any("form" in k for k in content):
                    kind = next(k for k in content if "form" in k)
                    o.body_kind = "form"
                if kind is not None:
                    props, req = _properties(doc, (content[kind] or {}).get("schema"))
                    o.body += [Field(n, "body", n in req, t) for n, t in props.items()]
            o.answer = _answer(doc, op, swagger2)
            out.append(o)
    return out


def _answer(doc: dict[str, Any], op: dict[str, Any], swagger2: bool) -> dict[str, str]:
    for code, resp in _dict(op.get("responses")).items():
        if not str(code).startswith("2"):
            continue
        resp = _resolve(doc, resp)
        if not isinstance(resp, dict):
            continue
        if swagger2:
            schema = resp.get("schema")
        else:
            content = _dict(resp.get("content"))
            kind = next((k for k in content if "json" in k), None)
            schema = _dict(content[kind]).get("schema") if kind else None
        if schema is not None:
            return _properties(doc, schema)[0]
    return {}


def _c(text: str) -> str:
    """Text of the document made safe for one line of a YAML comment."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text)[:300]


# ---------------------------------------------------------------------- guessing
def words(text: str) -> list[str]:
    """``joinRoomUsingPOST`` / ``join_room`` / ``/rooms/{id}`` → lower-case words."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text)
    return [w.lower() for w in re.split(r"[^A-Za-z0-9]+", text) if w]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def segments(path: str) -> list[str]:
    return [s for s in path.strip("/").split("/") if s]


def _is_param(seg: str) -> bool:
    return seg.startswith("{") and seg.endswith("}")


def room_params(op: Operation) -> set[str]:
    """Path parameters that name the room: by their name, or by following
    a room-like word (``/rooms/{id}``)."""
    found = set()
    segs = segments(op.path)
    for i, seg in enumerate(segs):
        if not _is_param(seg):
            continue
        name = seg[1:-1]
        before = segs[i - 1].lower() if i else ""
        if _norm(name) in ROOM_NAMES or (before in ROOM_WORDS and _norm(name) not in USER_NAMES):
            found.add(name)
    return found


def user_param(op: Operation) -> str | None:
    segs = segments(op.path)
    for i, seg in enumerate(segs):
        if _is_param(seg):
            name = seg[1:-1]
            before = segs[i - 1].lower() if i else ""
            if _norm(name) in USER_NAMES or (
                before in MEMBER_WORDS and name not in room_params(op)
            ):
                return name
    return None


def score(role: str, op: Operation) -> tuple[int, str]:
    """How well ``op`` fits ``role``, and why (for the comment)."""
    if any(w in NOT_GAME for w in words(op.path)):
        return 0, ""
    m = op.method
    if role == "state" and m != "GET":
        return 0, ""
    if role != "state" and m == "GET":
        return 0, ""
    if m == "DELETE" and role != "leave":
        return 0, ""
    strong, weak = WORDS[role]
    segs = segments(op.path)
    literal = [s.lower() for s in segs if not _is_param(s)]
    last = words(literal[-1]) if literal else []
    points, why = 0, []
    for source, ws, big, small in (("operation id", words(op.op_id), 6, 1),
                                   ("path", last, 5, 2),
                                   ("summary", words(op.summary), 3, 1)):  # fmt: skip
        hit = next((w for w in ws if w in strong), None)
        if hit is not None:
            points += big
            why.append(f'"{hit}" in its {source}')
        elif any(w in weak for w in ws):
            points += small
    ends_in_param = bool(segs) and _is_param(segs[-1])
    member_last = bool(literal) and literal[-1] in MEMBER_WORDS
    if role == "join" and m in ("POST", "PUT") and member_last and not ends_in_param:
        points += 4
        why.append("a POST to a collection of members")
    if role == "leave" and m == "DELETE":
        one_member = user_param(op) is not None or any(
            _norm(f.name) in USER_NAMES for f in op.fields() if f.where != "path"
        )
        if not one_member:  # a DELETE of the room, or of every member: never a leave
            return 0, ""
        if ends_in_param and len(literal) and literal[-1] in MEMBER_WORDS:
            points += 8
            why.append("a DELETE of one member")
        else:
            points += 1
    if role == "state" and ends_in_param and segs[-1][1:-1] in room_params(op):
        points += 6
        why.append("a GET of one room")
    return points, ", ".join(why) or "its words"


def assign(ops: list[Operation]) -> dict[str, tuple[Operation, str]]:
    """The best pairs first; each operation serves one role."""
    pairs = []
    for role in ROLES:
        for i, op in enumerate(ops):
            points, why = score(role, op)
            if points >= FLOOR:
                pairs.append((points, -ROLES.index(role), i, role, why))
    pairs.sort(reverse=True)
    chosen: dict[str, tuple[Operation, str]] = {}
    used: set[int] = set()
    for _points, _order, i, role, why in pairs:
        if role in chosen or i in used:
            continue
        chosen[role] = (ops[i], why)
        used.add(i)
    return chosen


# ---------------------------------------------------------------------- the draft
@dataclass
class Identity:
    """How the app knows a user."""

    #: the join's answer field holding an id the app mints (None: not minted)
    minted: str | None = None
    #: the app keys users by their name (the join takes only a name)
    by_name: bool = False

    @property
    def user(self) -> str:
        return "{user.appId}" if self.minted else "{userId}"


def identity(join: Operation | None) -> Identity:
    if join is None:
        return Identity()
    takes_user = any(_norm(f.name) in USER_NAMES for f in join.fields()) or user_param(join)
    if takes_user:
        return Identity()
    for name in join.answer:
        n = _norm(name)
        if (
            n in USER_NAMES
            or n in {"id", "token"}
            or n.endswith(("userid", "participantid", "playerid", "memberid"))
        ):
            return Identity(minted=name)
    if any(_norm(f.name) in NAME_NAMES for f in join.fields()):
        return Identity(by_name=True)
    return Identity()


@dataclass
class Route:
    lines: list[str]
    todos: int = 0


def value_for(f: Field, role: str, who: Identity) -> tuple[str | None, str]:
    """The placeholder for a field, and a comment (``TODO`` when no guess)."""
    n = _norm(f.name)
    if n in ROOM_NAMES:
        return "{sessionId}", ""
    if n in USER_NAMES or n.endswith(("userid", "participantid", "playerid", "memberid")):
        return who.user, ""
    if n in NAME_NAMES:
        if who.by_name:
            return "{userId}", f"{f.name}: the app keys users by name (userId = the name)"
        # optional at the app: a client that gives no ?name= sends none
        return (
            "{params.name}" if f.required else "{params.name?}",
            f"{f.name}: the connect parameter ?name=",
        )
    if role == "vote" and n in VOTE_NAMES:
        return "{payload.vote}", ""
    if f.required:
        return "TODO", f"TODO: {f.name} ({f.where}, required): no guess"
    return None, ""


def _path(op: Operation, who: Identity) -> tuple[str, list[str]]:
    rooms = room_params(op)
    user = user_param(op)
    notes = []

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in rooms:
            return "{sessionId}"
        if name == user:
            return who.user
        notes.append(f"TODO: path parameter {name}: no guess")
        return "TODO-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)

    return re.sub(r"\{([^}]+)\}", sub, op.path), notes


def route_lines(role: str, op: Operation, why: str, who: Identity, indent: str) -> Route:
    path, notes = _path(op, who)
    body: dict[str, str] = {}
    query: dict[str, str] = {}
    for f in op.fields():
        if f.where == "path" or f.where in ("header", "cookie"):
            if f.where in ("header", "cookie") and f.required:
                notes.append(f"TODO: {f.where} {f.name} is required: forward it from the "
                             "browser (upstream.forward_headers) or capture it")  # fmt: skip
            continue
        value, note = value_for(f, role, who)
        if note:
            notes.append(note)
        if value is None:
            continue
        (query if f.where == "query" else body)[f.name] = value
    lines = [f"{indent}# {role}: {op.label}, from {_c(why)}"]
    lines += [f"{indent}# {_c(n)}" for n in notes]
    spec: dict[str, Any] = {}
    default_method = "GET" if role == "state" else "POST"
    if op.method != default_method:
        spec["method"] = op.method
    spec["path"] = path
    if query:
        spec["query"] = query
    if body:
        spec["form" if op.body_kind == "form" else "json"] = body
    return Route(
        lines + [f"{indent}{k}: {json.dumps(v)}" for k, v in spec.items()],
        sum(1 for n in notes if n.startswith("TODO")),
    )


def _server_url(server: Any) -> tuple[str, bool]:
    """A server's URL with its variables' defaults put in (False: one had none)."""
    if not isinstance(server, dict):
        return "", True
    variables = _dict(server.get("variables"))
    complete = True

    def put(m: re.Match[str]) -> str:
        nonlocal complete
        default = _dict(variables.get(m.group(1))).get("default")
        if default is None:
            complete = False
            return ""
        return str(default)

    return re.sub(r"\{([^}]*)\}", put, str(server.get("url", "") or "")), complete


def _base_url(doc: dict[str, Any], fetched: str | None) -> tuple[str, str]:
    if "swagger" in doc:
        host = doc.get("host")
        base = str(doc.get("basePath", "") or "").rstrip("/")
        if host:
            schemes = _list(doc.get("schemes")) or ["http"]
            return f"{schemes[0]}://{host}{base}", "host and basePath"
        servers: list[Any] = [{"url": base}] if base else []
    else:
        servers = _list(doc.get("servers"))
    url, complete = _server_url(servers[0]) if servers else ("", True)
    why = "servers[0]"
    if len(servers) > 1:
        others = ", ".join(_server_url(s)[0] for s in servers[1:4])
        why = f"TODO: servers[0] of {len(servers)} (the others: {others})"
    if not complete:
        return "http://127.0.0.1:8000", "TODO: the app's address (a server variable has no default)"
    if fetched is not None:
        if not url:
            parts = urllib.parse.urlsplit(fetched)
            return f"{parts.scheme}://{parts.netloc}", "where the document was fetched"
        return urllib.parse.urljoin(fetched, url).rstrip("/"), f"{why}, from the document's URL"
    if re.match(r"^https?://[^/{}\s]+", url):
        return url.rstrip("/"), why
    return "http://127.0.0.1:8000" + url.rstrip("/"), "TODO: the app's address"


def draft(doc: dict[str, Any], source: str, fetched: str | None = None) -> tuple[str, int]:
    """The YAML text of a draft config, and how many TODOs it holds."""
    ops = operations(doc)
    chosen = assign(ops)
    join = chosen.get("join", (None, ""))[0]
    who = identity(join)
    info = doc.get("info") or {}
    version = f"OpenAPI {doc['openapi']}" if "openapi" in doc else f"Swagger {doc.get('swagger')}"
    url, url_why = _base_url(doc, fetched)
    todos = 1 if url_why.startswith("TODO") else 0
    out = [
        _c(
            f"# Drafted by `session-bridge init --openapi {source}` from "
            f"{json.dumps(str(info.get('title', 'an app')))} "
            f"{json.dumps(str(info.get('version', '')))}"
        ),
        _c(f"# ({version}, {len(ops)} operations). Every route is a guess: read the"),
        "# comments, fix each TODO, then try it on the running app:",
        "#   session-bridge check-config THIS.yaml --probe --session ROOM --user alice",
    ]
    global_game = not any(room_params(op) or _room_field(op) for op, _ in chosen.values())
    if global_game and chosen:
        out.append("# No route names a room: the app looks like one global game, so every")
        out.append("# sessionId the clients use maps onto it (say, all use 'main').")
    if who.minted:
        minted = f"# The join answers {who.minted!r} and takes no user id: the app mints ids;"
        out.append(_c(minted))
        out.append("# the draft keeps it per user ({user.appId}) for the later requests.")
    out += ["upstream:", f"  url: {json.dumps(url)}  # {_c(url_why)}"]
    out.append("  commands:")
    for role in COMMANDS:
        if role not in chosen:
            out.append(f"    # {role}: TODO: no operation looked like a {role}")
            todos += 1
            if role == "join" and not any(r in chosen for r in COMMANDS):
                out.append('    join: {path: "/TODO-join"}  # a config needs one command')
            continue
        op, why = chosen[role]
        r = route_lines(role, op, why, who, "      ")
        out.append(f"    {role}:")
        out += r.lines
        if role == "join" and who.minted:
            out.append("      # the id the app mints, kept for this user's later requests")
            out.append(f"      capture: {{user: {{appId: {json.dumps(who.minted)}}}}}")
        todos += r.todos
    if "keepalive" in chosen:
        op, why = chosen["keepalive"]
        r = route_lines("keepalive", op, why, who, "    ")
        out.append("  keepalive:")
        out += r.lines + ["    every: 10s  # TODO: shorter than the time the app forgets a user"]
        todos += r.todos + 1
    else:
        out.append(
            "  # no operation looked like a keep-alive (heartbeat, ping, touch): none is sent"
        )
        out.append("  keepalive: null")
    out.append("  state:")
    out.append("    every: 1s")
    state = chosen.get("state")
    if state is not None and not (global_game and _plain_gets(ops, state[0])):
        op, why = state
        r = route_lines("state", op, why, who, "    ")
        out += r.lines
        todos += r.todos
        if any(f.where == "query" and f.required and _norm(f.name) in USER_NAMES
               for f in op.params):  # fmt: skip
            out.append("    # only a member may read it: ask as one of the present users")
            out.append("    as: present_user")
        wrapper = _wrapper(op)
        if wrapper:
            out.append(f"    # the answer wraps the state in {wrapper!r}")
            out.append(f"    select: {json.dumps(wrapper)}")
    elif state is not None:
        gets = _plain_gets(ops, state[0])
        out.append("    # TODO: one state from several GETs (a global game): check each part")
        out.append("    parts:")
        for op in gets:
            name = "_".join(words(segments(op.path)[-1])) or "root"
            out.append(f"      {name}: {{path: {json.dumps(op.path)}}}  # {op.label}")
        todos += 1
    else:
        out.append("    # TODO: no operation looked like the state (a GET of the room)")
        out.append('    path: "/TODO-state"')
        todos += 1
    return "\n".join(out) + "\n", todos


def _room_field(op: Operation) -> bool:
    return any(_norm(f.name) in ROOM_NAMES for f in op.fields())


def _plain_gets(ops: list[Operation], best: Operation) -> list[Operation]:
    """GETs with no parameters in the path, not documentation: a global game's state."""
    gets = [op for op in ops if op.method == "GET" and "{" not in op.path
            and not any(w in NOT_GAME for w in words(op.path))]  # fmt: skip
    return gets if len(gets) > 1 and best in gets else []


def _wrapper(op: Operation) -> str | None:
    """The one object property a state answer wraps the state in (``{"room": {...}}``)."""
    if len(op.answer) == 1:
        name, kind = next(iter(op.answer.items()))
        if kind in ("object", ""):
            return name
    return None
