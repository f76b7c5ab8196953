// The outbox: bounded (the oldest dropped and reported), expiring, re-sent with
// the same id after a reconnect until acked, failed with the final error.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it } from "node:test";
import { BridgeError, type Ack } from "session-bridge-client";
import { FakeEventSource, FakeWebSocket, closeManagers, connected, installFakes, manager, settle, waitFor } from "./fakes.js";

async function rejection(p: Promise<unknown>): Promise<BridgeError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof BridgeError, String(err));
    return err;
  }
  assert.fail("resolved instead of rejecting");
}

function commands(ws: FakeWebSocket): unknown[] {
  return ws.sent.filter((m) => m.type !== "pong");
}

describe("the outbox", () => {
  beforeEach(installFakes);
  afterEach(closeManagers);

  it("holds outboxLimit commands: the oldest is dropped with outbox_overflow", async () => {
    const m = manager({ outboxLimit: 2 });
    const errors: string[] = [];
    m.onError((e) => errors.push(e.code));
    const first = m.sendVote("1");
    const second = m.sendVote("2");
    assert.equal(m.getState().queued, 2);
    const third = m.sendVote("3");
    assert.equal((await rejection(first)).code, "outbox_overflow");
    assert.deepEqual(errors, ["outbox_overflow"]);
    assert.equal(m.getState().queued, 2);
    // the two kept are the ones sent once connected, in order
    const ws = await connected(m);
    assert.deepEqual(commands(ws).map((c) => (c as { payload: unknown }).payload), [{ vote: "2" }, { vote: "3" }]);
    void second; void third;
  });

  it("expires a command not acked within outboxTtlMs", async () => {
    const m = manager({ outboxTtlMs: 30 });
    const old = m.sendVote("1");
    await new Promise((resolve) => setTimeout(resolve, 50));
    void m.sendVote("2"); // each send first drops what expired
    const err = await rejection(old);
    assert.equal(err.code, "expired");
    assert.equal(m.getState().queued, 1);
  });

  it("keeps a fresh command", async () => {
    const m = manager({ outboxTtlMs: 60_000 });
    void m.sendVote("1");
    void m.sendVote("2");
    assert.equal(m.getState().queued, 2);
  });

  it("re-sends an unacked command with the same id after a reconnect, then resolves with its ack", async () => {
    const m = manager({ transports: ["websocket"] });
    const ws1 = await connected(m);
    const vote = m.sendVote("5");
    const [sent] = commands(ws1) as { id: string; type: string }[];
    assert.ok(sent);
    assert.equal(sent.type, "vote");
    ws1.serverClose(1006); // lost before the ack
    await waitFor("the reconnect", () => FakeWebSocket.instances.length === 2);
    const ws2 = FakeWebSocket.last();
    ws2.open();
    assert.deepEqual(ws2.sent, [], "nothing is sent before the welcome");
    ws2.message({ type: "welcome", clientId: "c1", resumeToken: "tok-1", epoch: "e1", resumed: true });
    await settle();
    assert.deepEqual(commands(ws2), [sent]);
    ws2.message({ type: "ack", id: sent.id, status: "ok" });
    const ack: Ack = await vote;
    assert.equal(ack.id, sent.id);
    assert.equal(m.getState().queued, 0);
  });

  it("rejects with the command's error when the ack says error", async () => {
    const m = manager();
    const ws = await connected(m);
    const vote = m.sendVote("5");
    const [sent] = commands(ws) as { id: string }[];
    ws.message({ type: "ack", id: sent?.id, status: "error", error: { code: "upstream_refused", message: "no" } });
    const err = await rejection(vote);
    assert.equal(err.code, "upstream_refused");
    assert.equal(err.message, "no");
  });

  it("fails every queued command with the final error when the bridge refuses for good", async () => {
    const m = manager();
    const queued = m.sendVote("5");
    const connecting = m.connect();
    await waitFor("a WebSocket", () => FakeWebSocket.instances.length === 1);
    const ws = FakeWebSocket.last();
    ws.open();
    ws.serverClose(4401, "join refused"); // no token: the app refused the join
    const err = await rejection(connecting);
    assert.equal(err.code, "close_4401");
    assert.equal(err.fatal, true);
    assert.equal(await rejection(queued), err);
    assert.equal(m.error, err);
    assert.equal(await rejection(m.sendVote("6")), err, "a stopped manager refuses new commands");
    await new Promise((resolve) => setTimeout(resolve, 30));
    assert.equal(FakeWebSocket.instances.length, 1, "no retry");
    assert.equal(FakeEventSource.instances.length, 0, "no fallback either");
  });
});
