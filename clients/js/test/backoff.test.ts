// The backoff formulas (the same as bridge/protocol/backoff.py) and the waits the
// manager chooses with them after a loss, a drain, an overload and a 503.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it, mock } from "node:test";
import { backoffDelay, endingOf, reconnectDelay } from "session-bridge-client";
import { FAST, FakeWebSocket, answerFetch, closeManagers, connected, installFakes, manager, settle, waitFor } from "./fakes.js";

const CFG = { initial_ms: 1000, max_ms: 30_000, factor: 2, jitter: 0.5 };

describe("backoffDelay", () => {
  it("doubles from initial per attempt, attempt 0 counting as 1", () => {
    assert.deepEqual([0, 1, 2, 3, 4].map((n) => backoffDelay(n, CFG, 0)), [1000, 1000, 2000, 4000, 8000]);
  });

  it("is capped at max", () => {
    assert.equal(backoffDelay(6, CFG, 0), 30_000); // 32 s uncapped
    assert.equal(backoffDelay(60, CFG, 0), 30_000);
  });

  it("caps the exponent, so a zero initial stays 0 instead of 0 × ∞", () => {
    assert.equal(backoffDelay(5000, { ...CFG, initial_ms: 0 }, 0), 0);
  });

  it("takes jitter off the top: (1 − jitter × rnd)", () => {
    assert.equal(backoffDelay(3, CFG, 0.5), 4000 * 0.75);
    assert.equal(backoffDelay(3, { ...CFG, jitter: 0.2 }, 1), 4000 * 0.8);
    assert.equal(backoffDelay(3, { ...CFG, factor: 1 }, 0), 1000); // factor 1: constant
  });

  it("stays within [(1 − jitter) × d, d] with Math.random", () => {
    const samples = Array.from({ length: 500 }, () => backoffDelay(2, CFG));
    assert.ok(samples.every((d) => d > 1000 && d <= 2000), String(samples.find((d) => d <= 1000 || d > 2000)));
    assert.ok(new Set(samples).size > 100, "jittered");
  });
});

describe("endingOf and reconnectDelay", () => {
  it("tells a drain from an overload from a loss", () => {
    assert.equal(endingOf({ closeCode: 1012 }), "draining");
    assert.equal(endingOf({ reason: "draining" }), "draining");
    assert.equal(endingOf({ reason: "overloaded" }), "overloaded");
    assert.equal(endingOf({ reason: "", closeCode: 1012 }), "overloaded"); // a notice's reason wins
    assert.equal(endingOf({ closeCode: 1013 }), "overloaded");
    assert.equal(endingOf({ status: 503 }), "overloaded");
    assert.equal(endingOf({ closeCode: 1006 }), "lost");
    assert.equal(endingOf(), "lost");
  });

  it("waits uniform(0, retry_after) after a drain, at least retry_after when overloaded", () => {
    assert.equal(reconnectDelay(500, 4000, "draining", 0.25), 1000);
    assert.equal(reconnectDelay(500, 4000, "overloaded", 0.25), 4000);
    assert.equal(reconnectDelay(9000, 4000, "overloaded"), 9000);
    assert.equal(reconnectDelay(500, 4000, "lost", 0.25), 500);
    assert.equal(reconnectDelay(500, null, "draining", 0.25), 500);
  });
});

describe("the waits the manager chooses", () => {
  beforeEach(installFakes);
  afterEach(() => { closeManagers(); mock.restoreAll(); });

  it("backs off with the advertised config, doubling per failed attempt", async () => {
    mock.method(Math, "random", () => 0.5);
    const m = manager({ transports: ["websocket"] });
    const ws = await connected(m, { reconnect: { ...FAST, initial_ms: 8, max_ms: 20, jitter: 0.5 } });
    ws.serverClose(1006);
    await waitFor("a second WebSocket", () => FakeWebSocket.instances.length === 2);
    FakeWebSocket.last().serverClose(1006); // never opened: the next attempt waits longer
    await waitFor("a third WebSocket", () => FakeWebSocket.instances.length === 3);
    FakeWebSocket.last().serverClose(1006);
    await settle();
    // 8 × 0.75, then 16 × 0.75, then the cap 20 × 0.75
    assert.deepEqual(m.delays, [6, 12, 15]);
    assert.equal(m.getState().reconnectAttempts, 3);
  });

  it("after 1013 without a notice waits at least the advertised initial delay", async () => {
    mock.method(Math, "random", () => 0);
    const m = manager({ transports: ["websocket"] });
    const ws = await connected(m, { reconnect: { ...FAST, initial_ms: 700, max_ms: 5000 } });
    ws.serverClose(1013);
    assert.deepEqual(m.delays, [700]);
  });

  it("after a 503 waits the Retry-After", async () => {
    mock.method(Math, "random", () => 0);
    answerFetch(() => new Response(JSON.stringify({ error: { code: "overloaded" } }),
      { status: 503, headers: { "Retry-After": "3" } }));
    const m = manager({ transports: ["poll"] });
    const errors: string[] = [];
    m.onError((e) => errors.push(`${e.code} ${e.status} ${e.retryAfterMs}`));
    void m.connect();
    await waitFor("the reconnect", () => m.delays.length === 1);
    assert.deepEqual(m.delays, [3000]); // the backoff alone: 1000
    assert.deepEqual(errors, ["overloaded 503 3000"]);
  });
});
