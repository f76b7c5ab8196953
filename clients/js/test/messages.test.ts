// What the manager does with what the bridge sends: stream messages in seq order
// only, malformed and unknown messages ignored, ping answered, notices obeyed.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it, mock } from "node:test";
import { FakeWebSocket, closeManagers, connected, installFakes, manager, settle } from "./fakes.js";

describe("messages from the bridge", () => {
  beforeEach(installFakes);
  afterEach(() => { closeManagers(); mock.restoreAll(); });

  it("applies a stream seq once and never backwards", async () => {
    const m = manager();
    const seen: [string, number][] = [];
    m.onSessionUpdate((_s, seq) => seen.push(["session", seq]));
    m.onPresence((_o, seq) => seen.push(["presence", seq]));
    const ws = await connected(m);
    for (const seq of [1, 2, 2, 1, 4, 3]) ws.message({ type: "session", seq, payload: {} });
    ws.message({ type: "presence", seq: 4, payload: { online: ["u1"] } });
    ws.message({ type: "presence", seq: 5, payload: { online: ["u1", "u2"] } });
    ws.message({ type: "session", payload: {} }); // no seq: not a stream message
    assert.deepEqual(seen, [["session", 1], ["session", 2], ["session", 4], ["presence", 5]]);
    assert.equal(m.getState().seq, 5);
  });

  it("passes the state and the online users to the handlers", async () => {
    const m = manager<{ round: number }>();
    let state: { round: number } | null = null;
    let online: string[] = [];
    m.onSessionUpdate((s) => { state = s; });
    m.onPresence((o) => { online = o; });
    const ws = await connected(m);
    ws.message({ type: "session", seq: 1, payload: { round: 3 } });
    ws.message({ type: "presence", seq: 2, payload: null });
    assert.deepEqual(state, { round: 3 });
    assert.deepEqual(online, []);
    ws.message({ type: "presence", seq: 3, payload: { online: ["a", "b"] } });
    assert.deepEqual(online, ["a", "b"]);
  });

  it("ignores malformed JSON and unknown types, and stays connected", async () => {
    const m = manager();
    const events: string[] = [];
    m.onError((e) => events.push(`error ${e.code}`));
    m.onDisconnect(() => events.push("disconnect"));
    m.onSessionUpdate((_s, seq) => events.push(`session ${seq}`));
    const ws = await connected(m);
    ws.message("{not json");
    ws.message({ type: "from_a_newer_protocol", seq: 7, payload: {} });
    ws.message({ type: "session", seq: 1, payload: {} });
    await settle();
    assert.deepEqual(events, ["session 1"]);
    assert.equal(m.getState().isConnected, true);
    assert.equal(m.getState().seq, 1, "the unknown message's seq was not taken");
  });

  it("answers ping with pong and records the heartbeat", async () => {
    const m = manager();
    const ws = await connected(m);
    assert.equal(m.getState().lastHeartbeat, null);
    const before = Date.now();
    ws.message({ type: "ping", ts: 1234 });
    assert.deepEqual(ws.sent, [{ type: "pong", ts: 1234 }]);
    assert.ok((m.getState().lastHeartbeat ?? 0) >= before);
  });

  it("reports an error message without leaving", async () => {
    const m = manager();
    const errors: string[] = [];
    m.onError((e) => errors.push(`${e.code}: ${e.message}`));
    const ws = await connected(m);
    ws.message({ type: "error", code: "rate_limited", message: "slow down" });
    assert.deepEqual(errors, ["rate_limited: slow down"]);
    assert.equal(m.getState().isConnected, true);
  });

  it("reconnects after a draining notice within [0, retry_after), not after the backoff", async () => {
    const m = manager();
    const ws = await connected(m, { reconnect: { initial_ms: 50_000, max_ms: 60_000, factor: 2, jitter: 0, upgrade_interval_ms: 60_000 } });
    mock.method(Math, "random", () => 0.25);
    ws.message({ type: "reconnect", reason: "draining", retry_after_ms: 4000 });
    assert.deepEqual(m.delays, [1000]); // 4000 × 0.25; the backoff would be 50 s
    assert.equal(m.getState().isConnected, false);
    await settle();
    assert.equal(ws.readyState, FakeWebSocket.CLOSED, "the manager closed the drained transport");
  });

  it("spreads the draining clients over the whole of retry_after", async () => {
    const delays: number[] = [];
    for (let i = 0; i < 40; i++) {
      const m = manager();
      const ws = await connected(m);
      ws.message({ type: "reconnect", reason: "draining", retry_after_ms: 2000 });
      delays.push(...m.delays);
      m.close();
    }
    assert.equal(delays.length, 40);
    assert.ok(delays.every((d) => d >= 0 && d < 2000), String(delays));
    assert.ok(Math.min(...delays) < 1000 && Math.max(...delays) >= 1000, String(delays));
  });

  it("waits at least retry_after after a notice of another reason", async () => {
    const m = manager();
    const ws = await connected(m); // backoff 10 ms
    ws.message({ type: "reconnect", reason: "overloaded", retry_after_ms: 1500 });
    assert.deepEqual(m.delays, [1500]);
  });
});
