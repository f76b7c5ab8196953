// Small stand-ins for what the client uses of the browser, installed on
// globalThis: WebSocket, EventSource, fetch and window (its `online` event).
// Each test drives the "bridge" side by hand: open, message, close.
import { ConnectionManager, type ConnectionManagerOptions } from "session-bridge-client";

function install(name: string, value: unknown): void {
  Object.defineProperty(globalThis, name, { value, configurable: true, writable: true });
}

interface CloseInit { code: number; reason: string }

export class FakeWebSocket {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSING = 2;
  static readonly CLOSED = 3;
  static instances: FakeWebSocket[] = [];

  readonly url: URL;
  readonly protocols: string[];
  readyState = FakeWebSocket.CONNECTING;
  /** what the client sent, parsed */
  sent: Record<string, unknown>[] = [];
  onopen: (() => void) | null = null;
  onmessage: ((ev: { data: string }) => void) | null = null;
  onclose: ((ev: CloseInit) => void) | null = null;
  onerror: (() => void) | null = null;

  constructor(url: string, protocols: string[]) {
    this.url = new URL(url);
    this.protocols = protocols;
    FakeWebSocket.instances.push(this);
  }

  send(data: string): void {
    if (this.readyState !== FakeWebSocket.OPEN) throw new Error("send on a socket that is not open");
    this.sent.push(JSON.parse(data));
  }

  // The client closes: the close event follows asynchronously, as in a browser.
  close(code?: number, reason = ""): void {
    if (this.readyState === FakeWebSocket.CLOSED) return;
    this.readyState = FakeWebSocket.CLOSED;
    setImmediate(() => this.onclose?.({ code: code ?? 1005, reason }));
  }

  // -- the bridge's side
  open(): void {
    this.readyState = FakeWebSocket.OPEN;
    this.onopen?.();
  }

  message(msg: unknown): void {
    this.onmessage?.({ data: typeof msg === "string" ? msg : JSON.stringify(msg) });
  }

  serverClose(code: number, reason = ""): void {
    if (this.readyState === FakeWebSocket.CLOSED) return;
    this.readyState = FakeWebSocket.CLOSED;
    this.onclose?.({ code, reason });
  }

  static last(): FakeWebSocket {
    const ws = FakeWebSocket.instances.at(-1);
    if (!ws) throw new Error("no WebSocket was opened");
    return ws;
  }
}

export class FakeEventSource {
  static instances: FakeEventSource[] = [];
  readonly url: URL;
  closed = false;
  onerror: (() => void) | null = null;
  private listeners = new Map<string, ((ev: { data: string }) => void)[]>();

  constructor(url: string) {
    this.url = new URL(url);
    FakeEventSource.instances.push(this);
  }

  addEventListener(type: string, fn: (ev: { data: string }) => void): void {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), fn]);
  }

  close(): void {
    this.closed = true;
  }

  // -- the bridge's side: an event named by the message's type
  emit(msg: { type: string } & Record<string, unknown>): void {
    for (const fn of this.listeners.get(msg.type) ?? []) fn({ data: JSON.stringify(msg) });
  }

  fail(): void {
    this.onerror?.();
  }

  static last(): FakeEventSource {
    const es = FakeEventSource.instances.at(-1);
    if (!es) throw new Error("no EventSource was opened");
    return es;
  }
}

export interface FetchCall { url: URL; method: string; body: unknown }
type FetchHandler = (call: FetchCall) => Response | Promise<Response>;

export const fetchCalls: FetchCall[] = [];
let fetchHandler: FetchHandler = () => new Response("no handler", { status: 500 });

// What the fake fetch answers from now on.
export function answerFetch(handler: FetchHandler): void {
  fetchHandler = handler;
}

async function fakeFetch(url: string, init: { method?: string; body?: string; signal?: AbortSignal } = {}): Promise<Response> {
  const call = { url: new URL(url), method: init.method ?? "GET", body: init.body == null ? null : JSON.parse(init.body) };
  fetchCalls.push(call);
  if (init.signal?.aborted) throw new DOMException("aborted", "AbortError");
  return fetchHandler(call);
}

export const fakeWindow = new EventTarget();

/** Fresh fakes for each test. */
export function installFakes(): void {
  FakeWebSocket.instances = [];
  FakeEventSource.instances = [];
  fetchCalls.length = 0;
  answerFetch(() => new Response("no handler", { status: 500 }));
  install("WebSocket", FakeWebSocket);
  install("EventSource", FakeEventSource);
  install("fetch", fakeFetch);
  install("window", fakeWindow);
}

/** A backoff the tests can wait for: 10 ms, doubling up to 40 ms, no jitter. */
export const FAST = { initial_ms: 10, max_ms: 40, factor: 2, jitter: 0, upgrade_interval_ms: 60_000 };

export function welcome(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: "welcome", clientId: "c1", resumeToken: "tok-1", epoch: "e1", seq: 0, resumed: false,
    heartbeat: { interval_ms: 25_000, timeout_ms: 60_000 }, reconnect: FAST, ...extra,
  };
}

const closers: (() => void)[] = [];

export function manager<S = unknown>(options: Partial<ConnectionManagerOptions> = {}): ConnectionManager<S> {
  const m = new ConnectionManager<S>({ sessionId: "s1", userId: "u1", baseUrl: "http://bridge.test", ...options });
  closers.push(() => m.close());
  return m;
}

/** Closes every manager a test made (their timers would keep node running). */
export function closeManagers(): void {
  for (const close of closers.splice(0)) close();
}

/** Lets pending promise callbacks and immediates run. */
export async function settle(rounds = 3): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise((resolve) => setImmediate(resolve));
}

export async function waitFor(what: string, cond: () => boolean, timeoutMs = 2000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/** Connects m over a fake WebSocket that welcomes with `extra`; returns the socket. */
export async function connected<S>(m: ConnectionManager<S>, extra: Record<string, unknown> = {}): Promise<FakeWebSocket> {
  const before = FakeWebSocket.instances.length;
  const done = m.connect();
  await waitFor("a WebSocket", () => FakeWebSocket.instances.length > before);
  const ws = FakeWebSocket.last();
  ws.open();
  ws.message(welcome(extra));
  await done;
  return ws;
}
