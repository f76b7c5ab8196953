"""``session-bridge init --openapi``: drafts from OpenAPI documents of our own test
apps in three styles (FastAPI 3.1 served by the app, springdoc 3.0 YAML, a
swagger-jsdoc 2.0 file), each run unchanged in front of its app through a
whole round; and what it says when it cannot tell or cannot read."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bridge.app import make_app
from bridge.cli import main
from bridge.config import config_from_dict
from bridge.demo.backend import BACKEND, make_backend_app
from bridge.openapi import draft, load_document, operations, words
from tests.apps import minted, spread
from tests.conftest import deep_merge
from tests.examples.test_examples import FAST, ROOM_SHAPE, Harness, N, Shape, play_round, serve

DOCS = Path(__file__).parent / "apps" / "openapi"


async def init(tmp_path: Path, source: str, capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    out = tmp_path / "draft.yaml"
    # in a thread: the command blocks (as a command does), and the app is in this loop
    argv = ["init", "--openapi", source, "-o", str(out), "--force"]
    assert await asyncio.to_thread(main, argv) == 0
    err = capsys.readouterr().err
    text = out.read_text()
    assert main(["check-config", str(out)]) == 0  # the draft passes check-config as it is
    return yaml.safe_load(text), text + err


async def bridge_for(aiohttp_server, data: dict[str, Any]) -> str:
    server = await aiohttp_server(make_app(config_from_dict(deep_merge(data, FAST))))
    return str(server.make_url("")).rstrip("/")


async def test_a_fastapi_app_fetched_by_url_plays_a_round_unchanged(
    aiohttp_server, tmp_path, capsys
):
    app = minted.make_app()
    app_url = await serve(aiohttp_server, app)
    data, text = await init(tmp_path, app_url + "/openapi.json", capsys)
    # what it guessed, and said so
    up = data["upstream"]
    assert up["url"] == app_url  # no servers: where the document came from
    assert up["commands"]["join"]["capture"] == {"user": {"appId": "user_id"}}
    assert up["commands"]["vote"]["json"] == {"user_id": "{user.appId}", "value": "{payload.vote}"}
    assert up["commands"]["leave"] == {
        "method": "DELETE", "path": "/api/v1/rooms/{sessionId}/participants/{user.appId}",
    }  # fmt: skip
    assert up["state"]["as"] == "present_user" and up["state"]["select"] == "room"
    assert up["keepalive"] is None
    assert "the app mints ids" in text and '"join" in its operation id' in text
    assert "0 TODOs" in text
    # and it works: ten clients through join, vote, reveal, reset, leave
    bridge_url = await bridge_for(aiohttp_server, data)
    async with aiohttp.ClientSession() as http:
        async with http.post(app_url + "/api/v1/rooms", json={"name": "r"}) as r:
            room = (await r.json())["room_id"]
        h = Harness(http, bridge_url, room)
        clients = await play_round(h, ROOM_SHAPE, [f"P{i}" for i in range(N)])
        for c in clients:
            await c.close()
    log = app[minted.STATE]
    assert {n: log.count(n) for n in ("join", "vote", "reveal", "reset", "leave")} == {
        "join": N, "vote": N, "reveal": 1, "reset": 1, "leave": N,
    }  # fmt: skip


PARTS_SHAPE = Shape(
    members=lambda s: [u["name"] for u in s.get("show_all") or []],
    voted=lambda s: sum(1 for u in s.get("show_all") or [] if u["voted"]),
    votes=lambda s: (
        dict(s["show_results"]["votes"]) if (s.get("current") or {}).get("revealed") else None
    ),
)


async def test_a_spring_global_game_gets_forms_users_by_name_and_parts(
    aiohttp_server, tmp_path, capsys
):
    app = spread.make_app()
    app_url = await serve(aiohttp_server, app)
    data, text = await init(tmp_path, str(DOCS / "spread.yaml"), capsys)
    up = data["upstream"]
    assert up["url"] == "http://localhost:8080"  # servers[0]
    assert up["commands"]["vote"] == {
        "path": "/issue/vote", "form": {"name": "{userId}", "vote": "{payload.vote}"},
    }  # fmt: skip
    assert up["commands"]["reset"]["path"] == "/issue/reset"  # not /admin/reset_all
    assert sorted(up["state"]["parts"]) == ["current", "dealer", "show_all", "show_results"]
    assert "one global game" in text and "keys users by name" in text
    assert "/actuator/health" not in yaml.safe_dump(up)
    up["url"] = app_url  # the one edit: where the app runs here
    bridge_url = await bridge_for(aiohttp_server, data)
    async with aiohttp.ClientSession() as http:
        h = Harness(http, bridge_url, "main")
        clients = await play_round(h, PARTS_SHAPE, [f"u{i}" for i in range(N)],
                                   dealer_leaves=False)  # fmt: skip
        for c in clients:
            await c.close()
    log = app[spread.STATE]
    assert log.count("vote") == N and log.count("reveal") == 1 and log.count("reset_all") == 0


DEMO_SHAPE = Shape(
    members=lambda s: [u["name"] for u in s.get("users") or []],
    voted=lambda s: sum(1 for u in s.get("users") or [] if u["voted"]),
    votes=lambda s: {u["name"]: u["vote"] for u in s["users"]} if s.get("revealed") else None,
)


async def test_a_swagger_2_file_with_body_parameters_and_a_heartbeat(
    aiohttp_server, tmp_path, capsys
):
    backend = make_backend_app()
    app_url = await serve(aiohttp_server, backend)
    data, text = await init(tmp_path, str(DOCS / "demo.yaml"), capsys)
    up = data["upstream"]
    join = up["commands"]["join"]
    assert join["json"] == {"userId": "{userId}", "name": "{params.name?}"}  # optional: ?
    assert up["commands"]["vote"]["method"] == "PUT"
    assert up["keepalive"]["path"] == "/api/sessions/{sessionId}/heartbeat"
    assert "/api/login" not in yaml.safe_dump(up)
    assert "TODO: the app's address" in text and "2 TODOs" in text
    up["url"] = app_url
    bridge_url = await bridge_for(aiohttp_server, data)
    async with aiohttp.ClientSession() as http:
        h = Harness(http, bridge_url, "demo-room")
        clients = await play_round(h, DEMO_SHAPE, [f"N{i}" for i in range(N)])
        for c in clients:
            await c.close()
    paths = [c["path"] for c in backend[BACKEND].commands]
    assert sum(p.endswith("/join") for p in paths) == N
    assert sum("/votes/" in p for p in paths) == N
    assert sum(p.endswith("/leave") for p in paths) == N


async def test_a_document_with_nothing_recognisable_is_all_todo_and_still_valid(tmp_path, capsys):
    doc = {
        "openapi": "3.0.0", "info": {"title": "Pets", "version": "1"},
        "servers": [{"url": "https://pets.example/v2"}],
        "paths": {
            "/pets": {"get": {"operationId": "listPets"}, "post": {"operationId": "createPet"}},
            "/pets/{petId}": {"get": {"operationId": "showPetById"},
                              "delete": {"operationId": "deletePet"}},
        },
    }  # fmt: skip
    src = tmp_path / "pets.json"
    src.write_text(json.dumps(doc))
    data, text = await init(tmp_path, str(src), capsys)
    up = data["upstream"]
    assert up["url"] == "https://pets.example/v2"
    assert up["commands"] == {"join": {"path": "/TODO-join"}}  # nothing guessed, one stand-in
    assert up["state"]["path"] == "/TODO-state" and up["keepalive"] is None
    for role in ("join", "vote", "reveal", "reset", "leave"):
        assert f"# {role}: TODO: no operation looked like a {role}" in text
    assert "6 TODOs" in text


def test_what_it_says_when_it_cannot_read(tmp_path, capsys):
    html = tmp_path / "page.html"
    html.write_text("<html><body>not a document</body></html>")
    assert main(["init", "--openapi", str(html)]) == 1
    assert "is not an OpenAPI document" in capsys.readouterr().err
    assert main(["init", "--openapi", str(tmp_path / "missing.json")]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert main(["init", "--openapi", "http://127.0.0.1:9/openapi.json"]) == 1
    assert "cannot read http://127.0.0.1:9/openapi.json" in capsys.readouterr().err
    no_paths = tmp_path / "np.yaml"
    no_paths.write_text("openapi: 3.0.0\ninfo: {title: x}\n")
    assert main(["init", "--openapi", str(no_paths)]) == 1
    assert "has no 'paths'" in capsys.readouterr().err
    out = tmp_path / "taken.yaml"
    out.write_text("mine")
    assert main(["init", "--openapi", str(DOCS / "demo.yaml"), "-o", str(out)]) == 1
    assert "exists (--force overwrites it)" in capsys.readouterr().err
    assert out.read_text() == "mine"
    assert main(["init", "--openapi", str(DOCS / "demo.yaml"), "-o", str(out), "--force"]) == 0
    assert out.read_text().startswith("# Drafted by")


def test_words_and_refs():
    assert words("joinRoomUsingPOST") == ["join", "room", "using", "post"]
    assert words("leave_room_api_v1__room__delete")[:2] == ["leave", "room"]
    assert words("/api/v1/rooms/{room_id}") == ["api", "v1", "rooms", "room", "id"]
    # a schema that refers to itself, and a reference to elsewhere, end
    doc = {
        "openapi": "3.0.0",
        "paths": {"/r/{room}/join": {"post": {
            "operationId": "join",
            "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/A"}}}},
            "responses": {"200": {"content": {"application/json": {"schema": {"$ref": "other.yaml#/X"}}}}},
        }}},
        "components": {"schemas": {"A": {"$ref": "#/components/schemas/A"}}},
    }  # fmt: skip
    (op,) = operations(doc)
    assert op.body == [] and op.answer == {}
    text, _ = draft(doc, "inline")
    assert "/r/{sessionId}/join" in text


def test_a_yaml_file_loads_and_a_fetched_relative_server_resolves(tmp_path):
    src = tmp_path / "d.yaml"
    src.write_text("openapi: 3.0.0\nservers: [{url: /api}]\npaths: {}\n")
    doc, fetched = load_document(str(src))
    assert fetched is None and doc["servers"] == [{"url": "/api"}]
    text, todos = draft(doc, str(src), "http://127.0.0.1:5000/docs/openapi.json")
    assert 'url: "http://127.0.0.1:5000/api"' in text


ROOM = {
    "/rooms/{roomId}": {"get": {"operationId": "getRoom"}},
    "/rooms/{roomId}/participants": {"post": {"operationId": "joinRoom", "requestBody": {
        "content": {"application/json": {"schema": {"type": "object", "properties": {
            "userId": {"type": "string"}, "name": {"type": "string"}}}}}}}},
    "/rooms/{roomId}/votes": {"post": {"operationId": "castVote"}},
}  # fmt: skip


def _doc(**extra: Any) -> dict[str, Any]:
    return {"openapi": "3.0.3", "info": {"title": "t", "version": "1"},
            "paths": json.loads(json.dumps(ROOM)), **extra}  # fmt: skip


async def _draft(tmp_path: Path, doc: Any, capsys) -> tuple[dict, str]:
    src = tmp_path / "doc.json"
    src.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return await init(tmp_path, str(src), capsys)


async def test_server_variables_take_their_defaults_and_several_servers_are_a_todo(
    tmp_path, capsys
):
    variables = {"scheme": {"default": "https"}, "host": {"default": "poker.example"},
                 "port": {"default": "8443"}}  # fmt: skip
    data, _ = await _draft(tmp_path, _doc(servers=[
        {"url": "{scheme}://{host}:{port}/api", "variables": variables}]), capsys)  # fmt: skip
    assert data["upstream"]["url"] == "https://poker.example:8443/api"
    data, text = await _draft(
        tmp_path,
        _doc(servers=[{"url": "https://api.prod.example.com"}, {"url": "http://localhost:8000"}]),
        capsys,
    )
    assert "TODO: servers[0] of 2 (the others: http://localhost:8000)" in text
    data, text = await _draft(tmp_path, _doc(servers=[{"url": "{host}/x"}]), capsys)
    assert data["upstream"]["url"] == "http://127.0.0.1:8000" and "no default" in text


async def test_text_of_the_document_cannot_break_out_of_a_comment(tmp_path, capsys):
    doc = _doc(info={"title": "t\nupstream: {url: 'http://evil'}", "version": "1.0\nfoo: ["})
    doc["paths"]["/rooms/{roomId}/votes"]["post"]["operationId"] = "vote\nupstream: {url: x}"
    doc["paths"]["/rooms/{roomId}/votes"]["post"]["parameters"] = [
        {"name": "weird\nname", "in": "path", "required": True}
    ]
    doc["openapi"] = "3.0.3\nkeepalive: x"
    data, text = await _draft(tmp_path, doc, capsys)
    assert data["upstream"]["url"] == "http://127.0.0.1:8000"  # not the injected one
    assert set(data) == {"upstream"} and "evil" not in json.dumps(data)


async def test_odd_shapes_and_a_schema_that_includes_itself_still_draft(tmp_path, capsys):
    doc = _doc(
        components={
            "schemas": {
                "A": {
                    "allOf": [{"$ref": "#/components/schemas/A"}],
                    "properties": {"value": {"type": "string"}},
                }
            }
        }
    )
    votes = doc["paths"]["/rooms/{roomId}/votes"]["post"]
    votes["requestBody"] = {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/A"}}}}  # fmt: skip
    votes["responses"] = ["not", "a", "map"]
    doc["paths"]["/rooms/{roomId}"]["get"]["responses"] = {"200": {"content": {
        "application/json": {"schema": {"properties": ["x"]}}}}}  # fmt: skip
    data, _ = await _draft(tmp_path, doc, capsys)
    assert data["upstream"]["commands"]["vote"]["json"] == {"value": "{payload.vote}"}


async def test_a_delete_of_every_member_or_of_the_room_is_never_the_leave(tmp_path, capsys):
    doc = _doc()
    doc["paths"]["/rooms/{roomId}/players"] = {"delete": {
        "operationId": "removePlayers", "summary": "Remove every player"}}  # fmt: skip
    doc["paths"]["/rooms/{roomId}"]["delete"] = {"operationId": "leaveAndDeleteRoom"}
    data, text = await _draft(tmp_path, doc, capsys)
    assert "leave" not in data["upstream"]["commands"]
    assert "# leave: TODO: no operation looked like a leave" in text
    doc["paths"]["/rooms/{roomId}/players/{playerId}"] = {"delete": {"operationId": "kick"}}
    data, _ = await _draft(tmp_path, doc, capsys)
    assert data["upstream"]["commands"]["leave"] == {
        "method": "DELETE",
        "path": "/rooms/{sessionId}/players/{userId}",
    }
