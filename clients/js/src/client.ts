// The bridge's browser client: ConnectionManager (protocol v1, docs/protocol.md).
// ES module, no dependencies. Source: clients/js/src/client.ts (the npm package
// session-bridge-client), compiled by tsc; the bridge serves the build at
// /bridge/client.js and its types at /bridge/client.d.ts.
//
// - Transports in order (default WebSocket → SSE → poll); each attempt must
//   open within 8 s and bring a welcome within 5 s, else the next is tried.
// - On a fallback, WebSocket is retried in the background every
//   upgrade_interval; when it welcomes, it takes over and the fallback closes.
// - Reconnects follow the bridge's advertised backoff:
//   min(max, initial·factor^(n−1))·(1 − jitter·U); after a drain (1012, a
//   `reconnect` notice with reason draining) uniform(0, retry_after), after
//   1013 or a 503 at least retry_after (bridge/protocol/backoff.py has the
//   same rules). The attempt counter resets once a connection stayed up
//   10 s; the browser's `online` event retries at once (jittered).
// - A connect that carried the resume token and was refused 4401 / 401 (a
//   bridge restarted without a shared secret) drops token, epoch and seq and
//   connects once afresh, keeping the outbox; a POST answered 401 does the
//   same. Only a refusal without a token (the app refused the join) is final:
//   the manager stops and rejects the queued commands with that error.
// - Liveness is judged by wall-clock time (background tabs throttle timers).
// - Commands wait in an outbox (bounded, expiring, overflow reported) until
//   their ack; they are flushed after every welcome and re-sent with the
//   same id, which the bridge de-duplicates.
// - Resume with token + epoch + lastSeq; on resumed:false the stream state is
//   dropped and rebuilt from the snapshot that follows.

// ---------------------------------------------------------------- types

export type TransportName = "websocket" | "sse" | "poll";

export interface ConnectionManagerOptions {
  sessionId: string;
  userId: string;
  /** extra connect parameters ({params.name} upstream) */
  params?: Record<string, string | number>;
  /** default: the page's origin */
  baseUrl?: string;
  paths?: { websocket?: string; events?: string; poll?: string; messages?: string };
  /** the fallback order (default websocket, sse, poll) */
  transports?: TransportName[];
  /** logs every step to the console */
  debug?: boolean;
  /** the seed's spelling: ws://host/api/websocket (baseUrl is derived from it) */
  websocketUrl?: string;
  pollWaitSeconds?: number;
  outboxLimit?: number;
  outboxTtlMs?: number;
  openTimeoutMs?: number;
  welcomeTimeoutMs?: number;
}

export interface ConnectionState {
  isConnected: boolean;
  connectionType: TransportName | "none";
  lastHeartbeat: number | null;
  reconnectAttempts: number;
  seq: number;
  epoch: string | null;
  queued: number;
}

export interface Ack {
  type: "ack";
  id: string;
  status: "ok" | "error";
  error?: { code: string; message: string };
}

export interface ConnectInfo {
  resumed: boolean;
  epoch: string | null;
  transport: TransportName;
}

export interface DisconnectInfo {
  code: number | null;
  reason: string;
  transport: TransportName;
}

/** The backoff the bridge advertises in its welcome (`reconnect`). */
export interface BackoffConfig {
  initial_ms: number;
  max_ms: number;
  factor: number;
  jitter: number;
}

export type Ending = "lost" | "draining" | "overloaded";

export interface BridgeErrorOptions {
  fatal?: boolean;
  status?: number | null;
  closeCode?: number | null;
  reason?: string | null;
  retryAfterMs?: number | null;
  tokenRefused?: boolean;
}

interface ReconnectConfig extends BackoffConfig {
  upgrade_interval_ms: number;
}

interface HeartbeatConfig {
  interval_ms: number;
  timeout_ms: number;
}

// What the bridge sends (docs/protocol.md, "Server → client"). Parsed JSON is
// taken to be one of these; the fields the client relies on are checked where read.
interface WelcomeMessage {
  type: "welcome";
  clientId: string;
  resumeToken: string;
  epoch: string;
  resumed: boolean;
  seq?: number;
  reconnect?: ReconnectConfig;
  heartbeat?: HeartbeatConfig;
  synthetic?: false;
}
// What a poll client the bridge still holds gets instead of a welcome.
interface SyntheticWelcome {
  type: "welcome";
  resumed: true;
  epoch: string | null;
  clientId: string | null;
  resumeToken: string | null;
  synthetic: true;
}
type Welcome = WelcomeMessage | SyntheticWelcome;
interface SessionMessage {
  type: "session";
  seq: number;
  payload: unknown;
}
interface PresenceMessage {
  type: "presence";
  seq: number;
  payload: { online?: string[] } | null;
}
interface PingMessage {
  type: "ping" | "heartbeat";
  ts?: number;
}
interface ErrorMessage {
  type: "error";
  code: string;
  message: string;
  id?: string;
}
interface ReconnectMessage {
  type: "reconnect";
  reason?: string;
  retry_after_ms?: number;
}
type ServerMessage = WelcomeMessage | SessionMessage | PresenceMessage | Ack | PingMessage | ErrorMessage | ReconnectMessage;

interface ClientMessage {
  type: string;
  id?: string;
  payload?: Record<string, unknown>;
  ts?: number | undefined;
}

// What a transport sends; an outbox item is one that waits for its ack.
interface Sendable {
  message: ClientMessage;
  sent: boolean;
}
interface OutboxItem extends Sendable {
  id: string;
  resolve: (ack: Ack) => void;
  reject: (err: BridgeError) => void;
  at: number;
}

type Timer = ReturnType<typeof setTimeout>;

// ---------------------------------------------------------------- constants

const DEFAULTS = {
  transports: ["websocket", "sse", "poll"] as TransportName[],
  debug: false,
  outboxLimit: 500,
  outboxTtlMs: 10 * 60 * 1000,
  openTimeoutMs: 8000,
  welcomeTimeoutMs: 5000,
  pollWaitSeconds: 25,
};
type ResolvedOptions = ConnectionManagerOptions & typeof DEFAULTS;
const PATHS = { websocket: "/api/websocket", events: "/api/events", poll: "/api/poll", messages: "/api/messages" };
type Paths = typeof PATHS;
const STOP_CLOSE_CODES = new Set([1008, 4400, 4401, 4404]);
const SERVER_TYPES: readonly string[] = ["welcome", "session", "presence", "ack", "ping", "heartbeat", "error", "reconnect"];
const UP_RESET_MS = 10000;

// The same formulas as bridge/protocol/backoff.py (delay, ending, reconnect_delay).
export function backoffDelay(attempt: number, { initial_ms, max_ms, factor, jitter }: BackoffConfig, rnd = Math.random()): number {
  let exp = Math.max(attempt - 1, 0);
  if (factor > 1) exp = Math.min(exp, Math.floor(1000 / Math.log2(factor)));
  return Math.min(max_ms, initial_ms * Math.pow(factor, exp)) * (1 - jitter * rnd);
}

// Why a transport ended, for the wait: "draining" (1012, reconnect reason draining),
// "overloaded" (1013, HTTP 503, another reconnect reason) or "lost" (anything else).
export function endingOf({ closeCode = null, status = null, reason = null }: {
  closeCode?: number | null; status?: number | null; reason?: string | null;
} = {}): Ending {
  if (reason != null) return reason === "draining" ? "draining" : "overloaded";
  if (closeCode === 1012) return "draining";
  if (closeCode === 1013 || status === 503) return "overloaded";
  return "lost";
}

// The wait before reconnecting, given the backoff, the bridge's retry_after (ms, or null).
export function reconnectDelay(backoff: number, hintMs: number | null, ending: Ending, rnd = Math.random()): number {
  if (ending === "lost" || hintMs == null) return backoff;
  if (ending === "draining") return hintMs * rnd;
  return Math.max(backoff, hintMs);
}

export class BridgeError extends Error {
  /** the protocol's error code, or close_4401 and the like */
  code: string;
  /** the bridge refused this client for good: the manager stopped */
  fatal: boolean;
  /** HTTP status of a refused request */
  status: number | null;
  /** WebSocket close code */
  closeCode: number | null;
  /** the reason of a `reconnect` notice ("draining" ...) */
  reason: string | null;
  /** the bridge's retry_after (notice or Retry-After), ms */
  retryAfterMs: number | null;
  /** the request carried the resume token and was refused (4401 / 401): the manager connects afresh */
  tokenRefused: boolean;

  constructor(code: string, message: string, { fatal = false, status = null, closeCode = null, reason = null,
    retryAfterMs = null, tokenRefused = false }: BridgeErrorOptions = {}) {
    super(message);
    this.name = "BridgeError";
    this.code = code;
    this.fatal = fatal;
    this.status = status;
    this.closeCode = closeCode;
    this.reason = reason;           // of a `reconnect` notice
    this.retryAfterMs = retryAfterMs;
    this.tokenRefused = tokenRefused; // the request carried the resume token and was refused
  }
}

// The error for an HTTP refusal: 401 on a request with the token is not final.
function httpError(code: string, message: string, status: number, carriedToken: boolean, retryAfter: string | null): BridgeError {
  const tokenRefused = status === 401 && carriedToken;
  const fatal = !tokenRefused && ([400, 401, 403].includes(status) || (status === 404 && code !== "transport_disabled"));
  const retryAfterMs = retryAfter != null && retryAfter !== "" && !Number.isNaN(Number(retryAfter)) ? Number(retryAfter) * 1000 : null;
  return new BridgeError(code, message, { fatal, status, tokenRefused, retryAfterMs: status === 503 ? (retryAfterMs ?? 1000) : null });
}

// ---------------------------------------------------------------- transports

interface Transport {
  readonly kind: TransportName;
  closed: boolean;
  start(): Promise<Welcome>;
  send(items: Sendable[]): boolean | Promise<boolean>;
  sendControl(msg: ClientMessage): void;
  close(code?: number, reason?: string): void;
  activated?(): void;
}

// What the transports use of their manager.
interface Host {
  readonly opts: ResolvedOptions;
  readonly token: string | null;
  readonly epoch: string | null;
  readonly seq: number;
  readonly clientId: string | null;
  lastReceived: number;
  _postRetry?: number | undefined;
  _upgradeGate?: Promise<void> | null | undefined;
  _url(kind: "websocket" | "events" | "poll", resume: boolean): string;
  _endpoint(name: keyof Paths): string;
  _query(resume: boolean): URLSearchParams;
  _receive(msg: ServerMessage, transport: Transport, fromPost?: boolean): void;
  _lost(transport: Transport, err: BridgeError): void;
  _retryFlush(sender: Transport): void;
  _tokenRefused(token: string | null): Promise<boolean>;
  _log(...args: unknown[]): void;
}

// Each transport: start() resolves once the bridge answered (welcome), or
// rejects; messages go to manager._receive(msg, transport); lost(reason) is
// reported once; send(items) delivers outbox items; close() ends it.
class WebSocketTransport implements Transport {
  mgr: Host;
  readonly kind: "websocket";
  closed: boolean;
  carriedToken = false;
  ws?: WebSocket;

  constructor(mgr: Host) {
    this.mgr = mgr;
    this.kind = "websocket";
    this.closed = false;
  }

  start(): Promise<Welcome> {
    return new Promise((resolve, reject) => {
      const mgr = this.mgr;
      this.carriedToken = !!mgr.token;
      const ws = new WebSocket(mgr._url("websocket", true), ["bridge.v1.json"]);
      this.ws = ws;
      let welcomed = false;
      const fail = (err: BridgeError) => { if (!welcomed) { welcomed = true; reject(err); } };
      const openTimer = setTimeout(() => { fail(new BridgeError("open_timeout", "WebSocket did not open")); ws.close(); }, mgr.opts.openTimeoutMs);
      let welcomeTimer: Timer | undefined;
      ws.onopen = () => {
        clearTimeout(openTimer);
        welcomeTimer = setTimeout(() => { fail(new BridgeError("welcome_timeout", "no welcome")); ws.close(4000, "no welcome"); }, mgr.opts.welcomeTimeoutMs);
      };
      ws.onmessage = (ev: MessageEvent<string>) => {
        let msg: ServerMessage;
        try { msg = JSON.parse(ev.data); } catch { return; }
        if (msg.type === "welcome" && !welcomed) {
          welcomed = true;
          clearTimeout(welcomeTimer);
          resolve(msg);
        }
        mgr._receive(msg, this);
      };
      ws.onclose = (ev: CloseEvent) => {
        clearTimeout(openTimer);
        clearTimeout(welcomeTimer);
        const tokenRefused = ev.code === 4401 && this.carriedToken;
        const fatal = STOP_CLOSE_CODES.has(ev.code) && !tokenRefused;
        const err = new BridgeError(`close_${ev.code}`, ev.reason || `closed (${ev.code})`,
          { fatal, closeCode: ev.code, tokenRefused });
        if (!welcomed) fail(err);
        else this._lost(err);
      };
      ws.onerror = () => {};
    });
  }

  _lost(err: BridgeError): void {
    if (this.closed) return;
    this.closed = true;
    this.mgr._lost(this, err);
  }

  send(items: Sendable[]): boolean {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    for (const item of items) { this.ws.send(JSON.stringify(item.message)); item.sent = true; }
    return true;
  }

  sendControl(msg: ClientMessage): void {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  close(code = 1000, reason = "client closed"): void {
    this.closed = true;
    if (this.ws) try { this.ws.close(code, reason); } catch { /* already closed */ }
  }
}

// SSE and poll send commands with POST /api/messages; the answer holds the acks.
abstract class HttpSender implements Transport {
  abstract mgr: Host;
  abstract readonly kind: TransportName;
  abstract closed: boolean;
  abstract start(): Promise<Welcome>;
  abstract close(): void;

  async send(items: Sendable[]): Promise<boolean> {
    const mgr = this.mgr;
    const token = mgr.token;
    if (!token || this.closed) return false;
    for (const item of items) item.sent = true;
    try {
      const r = await fetch(mgr._endpoint("messages") + "?" + new URLSearchParams({ resumeToken: token }), {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(items.map((i) => i.message)),
        credentials: "include",
      });
      if (r.status === 401 && token === mgr.token) {
        // The bridge no longer takes this token (restarted without a shared secret,
        // another instance's secret): retrying would be refused forever. End this
        // transport; the manager connects afresh, the commands stay queued.
        for (const item of items) item.sent = false;
        this._end(new BridgeError("unauthorized", "the bridge refused the token of a POST", { status: 401, tokenRefused: true }));
        return false;
      }
      if (!r.ok) throw new BridgeError(`http_${r.status}`, `POST answered ${r.status}`, { status: r.status });
      const answer: { acks?: Ack[]; errors?: ErrorMessage[] } = await r.json();
      mgr._postRetry = 250;
      for (const ack of answer.acks || []) mgr._receive(ack, this, true);
      for (const e of answer.errors || []) mgr._receive(e, this, true);
      return true;
    } catch (err) {
      for (const item of items) item.sent = false;
      mgr._log("POST failed; commands stay queued", err);
      mgr._retryFlush(this);
      return false;
    }
  }

  sendControl(msg: ClientMessage): void {
    if (msg.type === "pong") return; // only WebSocket clients answer pings
    void this.send([{ message: msg, sent: false }]);
  }

  // End this transport with err: the manager decides what comes next.
  _end(err: BridgeError): void {
    if (this.closed) return;
    this.close();
    this.mgr._lost(this, err);
  }
}

class SSETransport extends HttpSender {
  override mgr: Host;
  override readonly kind: "sse";
  override closed: boolean;
  carriedToken = false;
  es?: EventSource;

  constructor(mgr: Host) {
    super();
    this.mgr = mgr;
    this.kind = "sse";
    this.closed = false;
  }

  override start(): Promise<Welcome> {
    return new Promise((resolve, reject) => {
      const mgr = this.mgr;
      this.carriedToken = !!mgr.token;
      const token = mgr.token;
      const es = new EventSource(mgr._url("events", true), { withCredentials: false });
      this.es = es;
      let welcomed = false;
      const fail = (err: BridgeError) => { if (!welcomed) { welcomed = true; reject(err); } };
      const timer = setTimeout(() => { fail(new BridgeError("open_timeout", "SSE did not welcome")); es.close(); }, mgr.opts.openTimeoutMs + mgr.opts.welcomeTimeoutMs);
      for (const type of SERVER_TYPES) {
        es.addEventListener(type, (ev: MessageEvent<string>) => {
          let msg: ServerMessage;
          try { msg = JSON.parse(ev.data); } catch { return; }
          if (msg.type === "welcome" && !welcomed) { welcomed = true; clearTimeout(timer); resolve(msg); }
          mgr._receive(msg, this);
        });
      }
      es.onerror = () => {
        // EventSource would reconnect by itself; the manager decides instead.
        es.close();
        const err = new BridgeError("sse_error", "the event stream failed");
        if (welcomed) { clearTimeout(timer); this._lost(err); return; }
        if (!this.carriedToken) { clearTimeout(timer); fail(err); return; }
        // EventSource hides the status of a refused stream. Ask the bridge whether
        // it still takes the token (a POST of no messages): a 401 says it does not.
        void mgr._tokenRefused(token).then((refused) => {
          clearTimeout(timer);
          fail(refused ? new BridgeError("unauthorized", "the bridge refused the resume token",
            { status: 401, tokenRefused: true }) : err);
        });
      };
    });
  }

  _lost(err: BridgeError): void {
    if (this.closed) return;
    this.closed = true;
    this.mgr._lost(this, err);
  }

  override close(): void {
    this.closed = true;
    if (this.es) this.es.close();
  }
}

class PollTransport extends HttpSender {
  override mgr: Host;
  override readonly kind: "poll";
  override closed: boolean;
  carriedToken = false;
  abort: AbortController;
  cursor: number | null;
  _pending?: ServerMessage[] | null;

  constructor(mgr: Host) {
    super();
    this.mgr = mgr;
    this.kind = "poll";
    this.closed = false;
    this.abort = new AbortController();
    this.cursor = null;
  }

  async _poll(first: boolean): Promise<ServerMessage[]> {
    const mgr = this.mgr;
    const q = mgr._query(!first || mgr.token != null);
    this.carriedToken = q.has("resumeToken");
    if (this.cursor != null) q.set("cursor", String(this.cursor));
    else if (mgr.token && mgr.epoch) q.set("cursor", String(mgr.seq));
    q.delete("lastSeq");
    if (!first) q.set("wait", String(mgr.opts.pollWaitSeconds));
    const timeout = first ? mgr.opts.openTimeoutMs + mgr.opts.welcomeTimeoutMs : (mgr.opts.pollWaitSeconds + 10) * 1000;
    const timer = setTimeout(() => this.abort.abort(), timeout);
    try {
      const r = await fetch(mgr._endpoint("poll") + "?" + q, {
        headers: { Accept: "application/json" }, signal: this.abort.signal, credentials: "include",
      });
      if (!r.ok) {
        let code = `http_${r.status}`;
        try { code = (await r.json()).error.code; } catch { /* not JSON */ }
        throw httpError(code, `poll answered ${r.status}`, r.status, this.carriedToken, r.headers.get("Retry-After"));
      }
      const body: { messages: ServerMessage[]; cursor: number } = await r.json();
      this.cursor = body.cursor;
      return body.messages;
    } finally {
      clearTimeout(timer);
    }
  }

  override async start(): Promise<Welcome> {
    const messages = await this._poll(true);
    this._pending = messages;
    // A client the bridge still holds gets no new welcome: it simply resumes.
    return messages.find((m): m is WelcomeMessage => m.type === "welcome") || { type: "welcome", resumed: true,
      epoch: this.mgr.epoch, clientId: this.mgr.clientId, resumeToken: this.mgr.token, synthetic: true };
  }

  // Called once the manager made this the active transport.
  activated(): void {
    void this._loop();
  }

  async _loop(): Promise<void> {
    const mgr = this.mgr;
    for (const msg of this._pending || []) if (!this.closed) mgr._receive(msg, this);
    this._pending = null;
    while (!this.closed) {
      // No new poll while a WebSocket upgrade is being opened: a poll reaching the
      // bridge after the WebSocket would replace it again.
      if (mgr._upgradeGate) await mgr._upgradeGate;
      if (this.closed) return;
      try {
        const messages = await this._poll(false);
        mgr.lastReceived = Date.now();
        for (const msg of messages) if (!this.closed) mgr._receive(msg, this);
      } catch (err) {
        if (this.closed) return;
        this.closed = true;
        mgr._lost(this, err instanceof BridgeError ? err : new BridgeError("poll_error", String(err)));
        return;
      }
    }
  }

  override close(): void {
    this.closed = true;
    this.abort.abort();
  }
}

const TRANSPORT_CLASSES: Record<TransportName, new (mgr: Host) => Transport> = {
  websocket: WebSocketTransport, sse: SSETransport, poll: PollTransport,
};

// ---------------------------------------------------------------- the manager

/** What each event passes to its handlers. */
export interface ConnectionEvents<S = unknown> {
  session: (state: S, seq: number) => void;
  presence: (online: string[], seq: number) => void;
  connect: (info: ConnectInfo) => void;
  disconnect: (info: DisconnectInfo) => void;
  error: (err: BridgeError) => void;
  transport: (type: TransportName) => void;
}

/** S: the session state as the app's upstream returns it (unchecked: it comes off the wire). */
export class ConnectionManager<S = unknown> {
  /** @internal */ opts: ResolvedOptions;
  /** @internal */ baseUrl: string;
  /** @internal */ paths: Paths;
  /** @internal */ handlers: { [K in keyof ConnectionEvents<S>]: ConnectionEvents<S>[K][] };
  /** @internal */ reconnectCfg: ReconnectConfig;
  /** @internal */ heartbeatCfg: HeartbeatConfig;
  /** @internal */ clientId: string | null;
  /** @internal */ token: string | null;
  /** @internal */ epoch: string | null;
  /** @internal */ seq: number;
  /** @internal */ state: S | null;
  /** @internal */ online: string[];
  /** @internal */ active: Transport | null;
  /** @internal */ connectionType: TransportName | "none";
  /** @internal */ lastHeartbeat: number | null;
  /** @internal */ lastReceived: number;
  /** @internal */ reconnectAttempts: number;
  /** @internal */ outbox: OutboxItem[];
  /** @internal */ closed: boolean;
  /** @internal */ connecting: boolean;
  /** @internal */ timers: { retry?: Timer; upgrade?: Timer; watchdog?: Timer; postRetry?: Timer };
  /** @internal */ idCounter: number;
  /** @internal */ upSince: number;
  /** the final error, once the manager stopped (null while it runs or retries) */
  error: BridgeError | null;
  /** reconnect delays chosen (ms), for debugging and tests */
  delays: number[];
  /** @internal */ lastTransport?: TransportName;
  /** @internal */ _postRetry?: number;
  /** @internal */ _upgradeGate?: Promise<void> | null;
  /** @internal */ _connectWaiters: { resolve: (state: ConnectionState) => void; reject: (err: BridgeError) => void }[];
  /** @internal */ _onOnline: () => void;

  constructor(options: ConnectionManagerOptions) {
    if (!options || !options.sessionId || !options.userId) {
      throw new TypeError("ConnectionManager needs sessionId and userId");
    }
    this.opts = { ...DEFAULTS, ...options };
    const origin = typeof location !== "undefined" ? location.origin : "";
    this.baseUrl = (options.baseUrl || options.websocketUrl?.replace(/^ws/, "http").replace(/\/api\/websocket.*$/, "") || origin).replace(/\/$/, "");
    this.paths = { ...PATHS, ...(options.paths || {}) };
    this.handlers = { session: [], presence: [], connect: [], disconnect: [], error: [], transport: [] };
    this.reconnectCfg = { initial_ms: 1000, max_ms: 30000, factor: 2, jitter: 0.5, upgrade_interval_ms: 60000 };
    this.heartbeatCfg = { interval_ms: 25000, timeout_ms: 60000 };
    this.clientId = null;
    this.token = null;
    this.epoch = null;
    this.seq = 0;
    this.state = null;
    this.online = [];
    this.active = null;
    this.connectionType = "none";
    this.lastHeartbeat = null;
    this.lastReceived = 0;
    this.reconnectAttempts = 0;
    this.outbox = [];
    this.closed = true;
    this.connecting = false;
    this.timers = {};
    this.idCounter = 0;
    this.upSince = 0;
    this.error = null; // the final error, once the manager stopped
    this.delays = []; // reconnect delays chosen, for debugging and tests
    this._connectWaiters = [];
    this._onOnline = () => { if (!this.active && !this.closed) this._scheduleReconnect(Math.random() * 1000); };
    if (typeof window !== "undefined") window.addEventListener("online", this._onOnline);
  }

  // -- events
  onSessionUpdate(fn: ConnectionEvents<S>["session"]): this { this.handlers.session.push(fn); return this; }
  onPresence(fn: ConnectionEvents<S>["presence"]): this { this.handlers.presence.push(fn); return this; }
  onConnect(fn: ConnectionEvents<S>["connect"]): this { this.handlers.connect.push(fn); return this; }
  onDisconnect(fn: ConnectionEvents<S>["disconnect"]): this { this.handlers.disconnect.push(fn); return this; }
  onError(fn: ConnectionEvents<S>["error"]): this { this.handlers.error.push(fn); return this; }
  onTransportChange(fn: ConnectionEvents<S>["transport"]): this { this.handlers.transport.push(fn); return this; }
  /** @internal */
  _emit<K extends keyof ConnectionEvents<S>>(kind: K, ...args: Parameters<ConnectionEvents<S>[K]>): void {
    for (const fn of this.handlers[kind]) {
      try { (fn as (...a: Parameters<ConnectionEvents<S>[K]>) => void)(...args); } catch (e) { console.error("bridge-client handler failed", e); }
    }
  }
  /** @internal */
  _log(...args: unknown[]): void { if (this.opts.debug) console.debug("[bridge]", ...args); }

  getState(): ConnectionState {
    return {
      isConnected: !!this.active,
      connectionType: this.active ? this.active.kind : "none",
      lastHeartbeat: this.lastHeartbeat,
      reconnectAttempts: this.reconnectAttempts,
      seq: this.seq,
      epoch: this.epoch,
      queued: this.outbox.length,
    };
  }

  // -- URLs
  /** @internal */
  _endpoint(name: keyof Paths): string {
    return this.baseUrl + this.paths[name];
  }

  /** @internal */
  _query(resume: boolean): URLSearchParams {
    const q = new URLSearchParams({ sessionId: this.opts.sessionId, userId: this.opts.userId });
    for (const [k, v] of Object.entries(this.opts.params || {})) q.set(k, String(v));
    // The transport this client was on, or last tried: the bridge counts fallbacks and upgrades.
    if (this.lastTransport) q.set("transport", this.lastTransport);
    if (resume && this.token) {
      q.set("resumeToken", this.token);
      if (this.epoch) { q.set("epoch", this.epoch); q.set("lastSeq", String(this.seq)); }
    }
    return q;
  }

  /** @internal */
  _url(kind: "websocket" | "events" | "poll", resume: boolean): string {
    const path = kind === "websocket" ? this.paths.websocket : this.paths[kind];
    const base = kind === "websocket" ? this.baseUrl.replace(/^http/, "ws") : this.baseUrl;
    return `${base}${path}?${this._query(resume)}`;
  }

  // -- connecting
  /** Resolves on the first welcome; rejects only when the bridge refused the client for good. */
  connect(): Promise<ConnectionState> {
    this.closed = false;
    this.error = null;
    const p = new Promise<ConnectionState>((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (this.active) this._connectWaiters.splice(0).forEach((w) => w.resolve(this.getState()));
    else if (!this.connecting) void this._cycle();
    return p;
  }

  // One reconnect cycle: each transport in order until one welcomes.
  /** @internal */
  async _cycle(): Promise<void> {
    if (this.closed || this.active || this.connecting) return;
    this.connecting = true;
    let lastErr: BridgeError | null = null;
    try {
      for (const kind of this.opts.transports) {
        if (this.closed) return;
        let t: Transport, welcome: Welcome;
        try {
          [t, welcome] = await this._open(kind);
        } catch (caught) {
          const err = caught as BridgeError; // _start turns anything else into one
          this.lastTransport = kind;
          lastErr = err;
          this._log(kind, "failed:", err.code || err);
          if (err.fatal) { this._fatal(err); return; }
          if (endingOf(err) !== "lost") break; // the bridge is there but busy: wait
          continue;
        }
        if (this.closed) { t.close(); return; }
        this._activate(t, welcome);
        return;
      }
      this.reconnectAttempts += 1;
      this._emit("error", lastErr || new BridgeError("unreachable", "no transport could connect"));
      this._scheduleReconnect(null, lastErr);
    } finally {
      this.connecting = false;
    }
  }

  // Connect with kind; a resume refused for its token is tried once afresh.
  /** @internal */
  async _open(kind: TransportName): Promise<[Transport, Welcome]> {
    try {
      return await this._start(kind);
    } catch (err) {
      if (!(err as BridgeError).tokenRefused) throw err;
      this._log(kind, "resume token refused: connecting afresh");
      this._forgetToken();
    }
    return await this._start(kind);
  }

  /** @internal */
  async _start(kind: TransportName): Promise<[Transport, Welcome]> {
    const t = new TRANSPORT_CLASSES[kind](this);
    this._log("trying", kind);
    try {
      return [t, await t.start()];
    } catch (err) {
      t.close();
      // what fetch or the WebSocket / EventSource constructor threw becomes a BridgeError
      throw err instanceof BridgeError ? err : new BridgeError(`${kind}_error`, String(err));
    }
  }

  // The token is no good: the next connect is a fresh one (resumed: false).
  /** @internal */
  _forgetToken(): void {
    this.token = null;
    this.epoch = null;
    this.clientId = null;
    this.seq = 0;
  }

  // POST of no messages with token: true when the bridge answers 401 (refuses it).
  /** @internal */
  async _tokenRefused(token: string | null): Promise<boolean> {
    if (!token) return false;
    const q = new URLSearchParams({ resumeToken: token, sessionId: this.opts.sessionId, userId: this.opts.userId });
    try {
      const r = await fetch(this._endpoint("messages") + "?" + q, {
        method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: "[]", credentials: "include",
      });
      return r.status === 401;
    } catch {
      return false; // unreachable: nothing learned
    }
  }

  /** @internal */
  _scheduleReconnect(delayMs: number | null, err?: BridgeError | null): void {
    if (this.closed) return;
    clearTimeout(this.timers.retry);
    let delay = delayMs;
    if (delay == null) {
      delay = backoffDelay(Math.max(1, this.reconnectAttempts), this.reconnectCfg);
      if (err) {
        const why = endingOf(err);
        // 1012 / 1013 without a notice: the advertised initial delay stands for retry_after
        const hint = err.retryAfterMs ?? (why === "lost" ? null : this.reconnectCfg.initial_ms);
        delay = reconnectDelay(delay, hint, why);
      }
    }
    this.delays.push(Math.round(delay));
    this._log("reconnecting in", Math.round(delay), "ms (attempt", this.reconnectAttempts + ")");
    this.timers.retry = setTimeout(() => this._cycle(), delay);
  }

  // Refused for good: no connect is tried any more, and nothing queued will be acked.
  /** @internal */
  _fatal(err: BridgeError): void {
    this.error = err;
    this._emit("error", err);
    for (const w of this._connectWaiters.splice(0)) w.reject(err);
    for (const item of this.outbox.splice(0)) item.reject(err);
  }

  /** @internal */
  _activate(t: Transport, welcome: Welcome): void {
    const previous = this.active;
    this.active = t;
    this.lastTransport = t.kind;
    if (previous && previous !== t) previous.close(1000, "replaced by " + t.kind);
    this._welcome(welcome);
    if (t.activated) t.activated();
    clearTimeout(this.timers.upgrade);
    if (t.kind !== "websocket" && this.opts.transports.includes("websocket")) {
      this.timers.upgrade = setTimeout(() => this._tryUpgrade(), this.reconnectCfg.upgrade_interval_ms);
    }
    if (this.connectionType !== t.kind) {
      this.connectionType = t.kind;
      this._emit("transport", t.kind);
    }
  }

  // In the background, while on a fallback: WebSocket first, then close the fallback.
  /** @internal */
  async _tryUpgrade(): Promise<void> {
    if (this.closed || !this.active || this.active.kind === "websocket") return;
    const t = new WebSocketTransport(this);
    let release = () => {};
    this._upgradeGate = new Promise((resolve) => { release = resolve; });
    try {
      const welcome = await t.start();
      if (this.closed || !this.active) { t.close(); return; }
      this._log("upgraded to websocket");
      this._activate(t, welcome);
    } catch (err) {
      t.close();
      this._log("websocket still unavailable:", (err as BridgeError).code || err);
      const active = this.active as Transport | null; // it may have changed meanwhile
      if (active && active.kind !== "websocket") {
        this.timers.upgrade = setTimeout(() => this._tryUpgrade(), this.reconnectCfg.upgrade_interval_ms);
      }
    } finally {
      this._upgradeGate = null;
      release();
    }
  }

  /** @internal */
  _welcome(msg: Welcome): void {
    if (!msg.synthetic) {
      this.clientId = msg.clientId;
      this.token = msg.resumeToken;
      if (msg.reconnect) this.reconnectCfg = msg.reconnect;
      if (msg.heartbeat) this.heartbeatCfg = msg.heartbeat;
      if (!msg.resumed || msg.epoch !== this.epoch) this.seq = 0; // a snapshot follows
      this.epoch = msg.epoch;
    }
    this.upSince = Date.now();
    this.lastReceived = Date.now();
    this._startWatchdog();
    this._log("welcome", msg);
    this._emit("connect", { resumed: !!msg.resumed, epoch: this.epoch, transport: (this.active as Transport).kind });
    for (const w of this._connectWaiters.splice(0)) w.resolve(this.getState());
    this._flush();
  }

  /** @internal */
  _receive(msg: ServerMessage, transport: Transport, fromPost = false): void {
    // Only the active transport speaks: a candidate's messages start after its
    // activation, a replaced one is closed (acks from POST answers always count).
    if (!fromPost && transport !== this.active) return;
    if (!fromPost) this.lastReceived = Date.now();
    switch (msg.type) {
      case "welcome": return; // handled when the transport started
      case "session":
      case "presence": return this._stream(msg);
      case "ack": return this._ack(msg);
      case "ping":
        this.lastHeartbeat = Date.now();
        if (transport.kind === "websocket") transport.sendControl({ type: "pong", ts: msg.ts });
        return;
      case "heartbeat": this.lastHeartbeat = Date.now(); return;
      case "error": this._emit("error", new BridgeError(msg.code, msg.message)); return;
      case "reconnect": {
        const reason = typeof msg.reason === "string" ? msg.reason : "";
        const retryAfterMs = typeof msg.retry_after_ms === "number" ? msg.retry_after_ms : null;
        this._lost(transport, new BridgeError(reason === "draining" ? "draining" : "reconnect",
          reason || "the bridge asked to reconnect", { reason, retryAfterMs }));
        transport.close(1000, "reconnect requested");
        return;
      }
      default: this._log("unknown message", msg); // a type of a newer protocol: ignored
    }
  }

  /** @internal */
  _stream(msg: SessionMessage | PresenceMessage): void {
    if (typeof msg.seq !== "number" || msg.seq <= this.seq) return; // never twice, never backwards
    this.seq = msg.seq;
    if (msg.type === "session") { this.state = msg.payload as S; this._emit("session", msg.payload as S, msg.seq); }
    else { this.online = (msg.payload && msg.payload.online) || []; this._emit("presence", this.online, msg.seq); }
  }

  /** @internal */
  _startWatchdog(): void {
    clearInterval(this.timers.watchdog);
    this.timers.watchdog = setInterval(() => {
      if (!this.active) return;
      if (Date.now() - this.lastReceived > this.heartbeatCfg.timeout_ms) {
        this._log("bridge silent for", Date.now() - this.lastReceived, "ms");
        const t = this.active;
        t.close(4000, "heartbeat timeout");
        this._lost(t, new BridgeError("heartbeat_timeout", "nothing received in time"));
      }
    }, Math.min(5000, this.heartbeatCfg.interval_ms));
  }

  /** @internal */
  _lost(transport: Transport, err: BridgeError): void {
    if (transport !== this.active) return;
    this.active = null;
    clearInterval(this.timers.watchdog);
    clearTimeout(this.timers.upgrade);
    for (const item of this.outbox) item.sent = false;
    if (Date.now() - this.upSince >= UP_RESET_MS) this.reconnectAttempts = 0;
    this._emit("disconnect", { code: err.closeCode ?? null, reason: err.message, transport: transport.kind });
    if (this.closed) return;
    if (err.tokenRefused) this._forgetToken(); // the next connect is a fresh one
    else if (err.fatal) { this._fatal(err); return; }
    this.reconnectAttempts += 1;
    this._scheduleReconnect(null, err);
  }

  // -- the outbox
  /** @internal */
  _expireOutbox(): void {
    const now = Date.now();
    const keep = [];
    for (const item of this.outbox) {
      if (now - item.at > this.opts.outboxTtlMs) item.reject(new BridgeError("expired", "command expired before it was acked"));
      else keep.push(item);
    }
    this.outbox = keep;
  }

  // A POST of commands failed while its transport may stay up, and the caller may
  // be waiting for this very ack: nothing else would send them again, so retry.
  /** @internal */
  _retryFlush(sender: Transport): void {
    if (this.timers.postRetry || this.closed) return;
    const delay = this.active === sender ? this._postRetry || 250 : 0;
    this._postRetry = Math.min((this._postRetry || 250) * 2, 5000);
    this.timers.postRetry = setTimeout(() => { delete this.timers.postRetry; this._flush(); }, delay);
  }

  /** @internal */
  _flush(): void {
    this._expireOutbox();
    if (!this.active) return;
    const unsent = this.outbox.filter((item) => !item.sent);
    if (unsent.length) void this.active.send(unsent);
  }

  /** @internal */
  _ack(msg: Ack): void {
    const i = this.outbox.findIndex((item) => item.id === msg.id);
    if (i < 0) return;
    const item = this.outbox.splice(i, 1)[0]!; // i was found just above
    if (msg.status === "ok") item.resolve(msg);
    else item.reject(new BridgeError(msg.error?.code || "error", msg.error?.message || "command failed"));
  }

  /** Resolves with the command's ack, rejects with its error (or the manager's final one). */
  send(type: string, payload: Record<string, unknown> = {}): Promise<Ack> {
    if (this.error) return Promise.reject(this.error);
    const id = `${(this.clientId || "c").slice(0, 16)}-${Date.now().toString(36)}-${(this.idCounter++).toString(36)}`;
    const message = { type, id, payload };
    return new Promise((resolve, reject) => {
      this._expireOutbox();
      if (this.outbox.length >= this.opts.outboxLimit) {
        const dropped = this.outbox.shift();
        const err = new BridgeError("outbox_overflow", "too many unacknowledged commands; the oldest was dropped");
        dropped?.reject(err);
        this._emit("error", err);
      }
      this.outbox.push({ id, message, resolve, reject, sent: false, at: Date.now() });
      this._flush();
    });
  }

  sendVote(vote: string | number): Promise<Ack> { return this.send("vote", { vote }); }
  sendReveal(): Promise<Ack> { return this.send("reveal", {}); }
  sendReset(): Promise<Ack> { return this.send("reset", {}); }

  close(): void {
    this.closed = true;
    for (const t of Object.values(this.timers)) { clearTimeout(t); clearInterval(t); }
    if (typeof window !== "undefined") window.removeEventListener("online", this._onOnline);
    const t = this.active;
    this.active = null;
    if (t) t.close(1000, "client closed");
    if (t) this._emit("disconnect", { code: 1000, reason: "closed by the page", transport: t.kind });
  }
}

export default ConnectionManager;
