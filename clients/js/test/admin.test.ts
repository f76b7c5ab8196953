// The admin page's pure parts: reading server-sent events from a fetch stream,
// and the chart's lines (the page itself is tested in Chromium:
// tests/browser/test_admin_page.py).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { KEPT, lines, parseEvents, usersText } from "session-bridge-client/admin";

describe("parseEvents", () => {
  it("splits complete events and keeps the rest for the next chunk", () => {
    const first = parseEvents('event: overview\ndata: {"a":1}\n\nevent: overview\ndata: {"a"');
    assert.deepEqual(first.events, [{ event: "overview", data: '{"a":1}' }]);
    const second = parseEvents(first.rest + ':2}\n\n');
    assert.deepEqual(second.events, [{ event: "overview", data: '{"a":2}' }]);
    assert.equal(second.rest, "");
  });

  it("skips comments, joins data lines, defaults the event, takes CRLF", () => {
    const { events } = parseEvents(": still here\r\n\r\ndata: one\r\ndata:two\r\n\r\nid: 3\n\n");
    assert.deepEqual(events, [{ event: "message", data: "one\ntwo" }]);
  });
});

describe("lines", () => {
  it("scales to the highest count and ends at the right edge", () => {
    const out = lines([{ websocket: 0, sse: 1, poll: 2 }, { websocket: 4, sse: 0, poll: 0 }], 600, 140);
    const ws = (out.websocket ?? "").split(" ").map((p) => p.split(",").map(Number));
    assert.equal(ws.length, 2);
    assert.equal(ws[1]?.[0], 600); // the newest point at the right edge
    assert.equal(ws[1]?.[1], 140 - 4 - 128); // 4 of 4: the top
    assert.equal(ws[0]?.[1], 136); // 0: the bottom
    assert.ok((ws[0]?.[0] ?? 0) < 600);
  });

  it("is empty for no points and never divides by zero", () => {
    assert.deepEqual(lines([], 600, 140), { websocket: "", sse: "", poll: "" });
    const flat = lines([{ websocket: 0, sse: 0, poll: 0 }], 600, 140);
    assert.equal(flat.poll, "600.0,136.0");
    assert.equal(KEPT, 300);
  });
});

describe("usersText", () => {
  it("lists the users shown and says how many more there are", () => {
    assert.equal(usersText([], 0), "–");
    assert.equal(usersText(["a", "b"], 2), "a, b");
    assert.equal(usersText(["a", "b"], 30), "a, b and 28 more");
  });
});
