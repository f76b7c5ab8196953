// Resume: token, epoch and lastSeq on the reconnect; resumed:false starts the
// stream over; a refused token is dropped once, a refused fresh connect is final.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it } from "node:test";
import {
  FAST, FakeEventSource, FakeWebSocket, answerFetch, closeManagers, connected, installFakes, manager, settle, waitFor,
} from "./fakes.js";

async function reconnect(): Promise<FakeWebSocket> {
  const n = FakeWebSocket.instances.length;
  FakeWebSocket.instances[n - 1]?.serverClose(1006);
  await waitFor("the reconnect", () => FakeWebSocket.instances.length === n + 1);
  const ws = FakeWebSocket.last();
  ws.open();
  return ws;
}

describe("resume", () => {
  beforeEach(installFakes);
  afterEach(closeManagers);

  it("connects first without a token, with the session, user and params", async () => {
    const m = manager({ params: { name: "Ada" } });
    const ws = await connected(m);
    assert.equal(ws.url.origin + ws.url.pathname, "ws://bridge.test/api/websocket");
    assert.deepEqual([...ws.url.searchParams], [["sessionId", "s1"], ["userId", "u1"], ["name", "Ada"]]);
    assert.deepEqual(ws.protocols, ["bridge.v1.json"]);
  });

  it("reconnects with the token, the epoch and the last seq seen", async () => {
    const m = manager();
    const ws1 = await connected(m, { resumeToken: "tok-A", epoch: "e7" });
    ws1.message({ type: "session", seq: 1, payload: { n: 1 } });
    ws1.message({ type: "presence", seq: 2, payload: { online: ["u1"] } });
    const ws2 = await reconnect();
    const q = ws2.url.searchParams;
    assert.equal(q.get("resumeToken"), "tok-A");
    assert.equal(q.get("epoch"), "e7");
    assert.equal(q.get("lastSeq"), "2");
    assert.equal(q.get("transport"), "websocket");
    ws2.message({ type: "welcome", clientId: "c1", resumeToken: "tok-A", epoch: "e7", resumed: true });
    await settle();
    assert.equal(m.getState().seq, 2);
  });

  it("keeps the seq on resumed:true, so a replayed message is not applied twice", async () => {
    const m = manager();
    const seqs: number[] = [];
    m.onSessionUpdate((_s, seq) => seqs.push(seq));
    const ws1 = await connected(m);
    ws1.message({ type: "session", seq: 3, payload: {} });
    const ws2 = await reconnect();
    ws2.message({ type: "welcome", clientId: "c1", resumeToken: "tok-1", epoch: "e1", resumed: true });
    await settle();
    assert.equal(m.getState().seq, 3);
    ws2.message({ type: "session", seq: 3, payload: {} });
    ws2.message({ type: "session", seq: 4, payload: {} });
    assert.deepEqual(seqs, [3, 4]);
  });

  it("starts the stream over on resumed:false: seq 0, and the snapshot that follows applies", async () => {
    const m = manager();
    const states: unknown[] = [];
    m.onSessionUpdate((s) => states.push(s));
    const ws1 = await connected(m);
    ws1.message({ type: "session", seq: 9, payload: "old" });
    const ws2 = await reconnect();
    ws2.message({ type: "welcome", clientId: "c2", resumeToken: "tok-2", epoch: "e2", resumed: false });
    await settle();
    assert.equal(m.getState().seq, 0);
    assert.equal(m.getState().epoch, "e2");
    ws2.message({ type: "session", seq: 1, payload: "snapshot" });
    assert.deepEqual(states, ["old", "snapshot"]);
  });

  it("also starts over on resumed:true with another epoch", async () => {
    const m = manager();
    const ws1 = await connected(m, { epoch: "e1" });
    ws1.message({ type: "session", seq: 5, payload: {} });
    const ws2 = await reconnect();
    ws2.message({ type: "welcome", clientId: "c1", resumeToken: "tok-1", epoch: "e9", resumed: true });
    await settle();
    assert.equal(m.getState().seq, 0);
  });

  it("drops a token refused with 4401 and connects afresh at once, keeping the outbox", async () => {
    const m = manager({ transports: ["websocket"] });
    const ws1 = await connected(m, { resumeToken: "tok-old" });
    ws1.message({ type: "session", seq: 4, payload: {} });
    const vote = m.sendVote("8");
    const id = ws1.sent[0]?.id;
    const ws2 = await reconnect();
    assert.equal(ws2.url.searchParams.get("resumeToken"), "tok-old");
    const before = m.delays.length;
    ws2.serverClose(4401); // e.g. a bridge restarted without a shared secret
    await waitFor("the fresh connect", () => FakeWebSocket.instances.length === 3);
    const ws3 = FakeWebSocket.last();
    assert.equal(m.delays.length, before, "no backoff: at once");
    for (const key of ["resumeToken", "epoch", "lastSeq"]) assert.equal(ws3.url.searchParams.get(key), null, key);
    ws3.open();
    ws3.message({ type: "welcome", clientId: "c9", resumeToken: "tok-new", epoch: "e1", resumed: false });
    await settle();
    assert.equal(m.getState().isConnected, true);
    assert.equal(m.error, null);
    assert.deepEqual(ws3.sent.map((c) => c.id), [id], "the queued vote, same id");
    ws3.message({ type: "ack", id, status: "ok" });
    assert.equal((await vote).status, "ok");
  });

  it("stops when the fresh connect after a refused token is refused too", async () => {
    const m = manager({ transports: ["websocket"] });
    const errors: string[] = [];
    m.onError((e) => errors.push(e.code));
    await connected(m, { resumeToken: "tok-old" });
    const ws2 = await reconnect();
    ws2.serverClose(4401);
    await waitFor("the fresh connect", () => FakeWebSocket.instances.length === 3);
    const ws3 = FakeWebSocket.last();
    ws3.open();
    ws3.serverClose(4401); // without a token: the app refused the join
    await settle();
    assert.equal(m.error?.code, "close_4401");
    assert.equal(m.error?.fatal, true);
    assert.deepEqual(errors, ["close_4401"]);
    await new Promise((resolve) => setTimeout(resolve, 40));
    assert.equal(FakeWebSocket.instances.length, 3, "no retry after a final refusal");
  });

  it("treats 4401 on a first connect (no token) as final", async () => {
    const m = manager();
    const p = m.connect();
    await waitFor("a WebSocket", () => FakeWebSocket.instances.length === 1);
    FakeWebSocket.last().open();
    FakeWebSocket.last().serverClose(4401);
    await assert.rejects(p, (e: unknown) => e === m.error && m.error?.tokenRefused === false);
    await new Promise((resolve) => setTimeout(resolve, 40));
    assert.equal(FakeWebSocket.instances.length, 1);
    assert.deepEqual(m.delays, []);
  });
});

describe("resume over SSE", () => {
  beforeEach(installFakes);
  afterEach(closeManagers);

  async function welcomeSSE(es: FakeEventSource, token: string): Promise<void> {
    es.emit({ type: "welcome", clientId: "c1", resumeToken: token, epoch: "e1", resumed: false, reconnect: FAST });
    await settle();
  }

  it("drops the token when a POST of commands is answered 401, and connects afresh", async () => {
    const posts: unknown[] = [];
    answerFetch(({ url, body }) => {
      posts.push([url.searchParams.get("resumeToken"), body]);
      return new Response("{}", { status: 401 });
    });
    const m = manager({ transports: ["sse"] });
    void m.connect();
    const es1 = FakeEventSource.last();
    await welcomeSSE(es1, "tok-old");
    const vote = m.sendVote("3");
    await waitFor("the fresh connect", () => FakeEventSource.instances.length === 2);
    assert.equal(es1.closed, true);
    const fresh = FakeEventSource.last();
    assert.equal(fresh.url.searchParams.get("resumeToken"), null, "afresh, without the refused token");
    assert.equal(m.error, null);
    answerFetch(({ body }) => {
      const [cmd] = body as { id: string }[];
      return Response.json({ acks: [{ type: "ack", id: cmd?.id, status: "ok" }] });
    });
    await welcomeSSE(fresh, "tok-new");
    assert.equal((await vote).status, "ok", "the queued vote went again after the new welcome");
    assert.deepEqual(posts.map((p) => (p as unknown[])[0]), ["tok-old"]);
  });
});
