// The bridge's browser client: ConnectionManager (protocol v1, see docs/protocol.md).
// ES module, no dependencies, no build step. Served at /bridge/client.js.
//
// What it does: connects over WebSocket, keeps the connection alive (answers
// ping, judges the bridge dead after timeout_ms of silence measured against
// wall-clock time), reconnects with jittered exponential backoff, resumes with
// token + epoch + lastSeq, and keeps every command in an outbox until its ack.

const DEFAULTS = {
  transports: ["websocket"],
  debug: false,
  outboxLimit: 500,
  outboxTtlMs: 10 * 60 * 1000,
  openTimeoutMs: 8000,
  welcomeTimeoutMs: 5000,
};

const STOP_CODES = new Set([1008, 4400, 4401, 4404]);

export function backoffDelay(attempt, { initial_ms, max_ms, factor, jitter }, rnd = Math.random()) {
  const exp = Math.min(Math.max(attempt - 1, 0), 60);
  return Math.min(max_ms, initial_ms * Math.pow(factor, exp)) * (1 - jitter * rnd);
}

export class BridgeError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "BridgeError";
    this.code = code;
  }
}

export class ConnectionManager {
  constructor(options) {
    if (!options || !options.sessionId || !options.userId) {
      throw new TypeError("ConnectionManager needs sessionId and userId");
    }
    this.opts = { ...DEFAULTS, ...options };
    this.baseUrl = (options.baseUrl || (typeof location !== "undefined" ? location.origin : "")).replace(/\/$/, "");
    this.paths = { websocket: "/api/websocket", ...(options.paths || {}) };
    this.handlers = { session: [], presence: [], connect: [], disconnect: [], error: [], transport: [] };
    this.reconnectCfg = { initial_ms: 1000, max_ms: 30000, factor: 2, jitter: 0.5, upgrade_interval_ms: 60000 };
    this.heartbeatCfg = { interval_ms: 25000, timeout_ms: 60000 };
    this.clientId = null;
    this.token = null;
    this.epoch = null;
    this.seq = 0;
    this.state = null;
    this.online = [];
    this.connected = false;
    this.connectionType = "none";
    this.lastHeartbeat = null;
    this.lastReceived = 0;
    this.reconnectAttempts = 0;
    this.outbox = []; // {id, message, resolve, reject, sent, at}
    this.ws = null;
    this.closed = false;
    this.timers = {};
    this.idCounter = 0;
    this.upSince = 0;
    this._connectWaiters = [];
    this._onOnline = () => this._reconnectSoon(true);
    if (typeof window !== "undefined") window.addEventListener("online", this._onOnline);
  }

  // -- events
  onSessionUpdate(fn) { this.handlers.session.push(fn); return this; }
  onPresence(fn) { this.handlers.presence.push(fn); return this; }
  onConnect(fn) { this.handlers.connect.push(fn); return this; }
  onDisconnect(fn) { this.handlers.disconnect.push(fn); return this; }
  onError(fn) { this.handlers.error.push(fn); return this; }
  onTransportChange(fn) { this.handlers.transport.push(fn); return this; }
  _emit(kind, ...args) {
    for (const fn of this.handlers[kind]) {
      try { fn(...args); } catch (e) { console.error("bridge-client handler failed", e); }
    }
  }
  _log(...args) { if (this.opts.debug) console.debug("[bridge]", ...args); }

  getState() {
    return {
      isConnected: this.connected,
      connectionType: this.connected ? this.connectionType : "none",
      lastHeartbeat: this.lastHeartbeat,
      reconnectAttempts: this.reconnectAttempts,
      seq: this.seq,
      epoch: this.epoch,
      queued: this.outbox.length,
    };
  }

  // -- connecting
  connect() {
    this.closed = false;
    const p = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (!this.ws) this._open();
    return p;
  }

  _url() {
    const q = new URLSearchParams({ sessionId: this.opts.sessionId, userId: this.opts.userId });
    for (const [k, v] of Object.entries(this.opts.params || {})) q.set(k, String(v));
    if (this.token) {
      q.set("resumeToken", this.token);
      if (this.epoch) { q.set("epoch", this.epoch); q.set("lastSeq", String(this.seq)); }
    }
    const base = this.baseUrl.replace(/^http/, "ws");
    return `${base}${this.paths.websocket}?${q}`;
  }

  _open() {
    clearTimeout(this.timers.retry);
    const ws = new WebSocket(this._url(), ["bridge.v1.json"]);
    this.ws = ws;
    this._log("connecting", this._url());
    this.timers.open = setTimeout(() => { if (ws.readyState !== WebSocket.OPEN) ws.close(); }, this.opts.openTimeoutMs);
    ws.onopen = () => {
      clearTimeout(this.timers.open);
      this.timers.welcome = setTimeout(() => ws.close(4000, "no welcome"), this.opts.welcomeTimeoutMs);
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      this.lastReceived = Date.now();
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      this._handle(msg, ws);
    };
    ws.onclose = (ev) => {
      clearTimeout(this.timers.open);
      clearTimeout(this.timers.welcome);
      if (ws !== this.ws) return;
      this.ws = null;
      this._lost(ev.code, ev.reason);
    };
    ws.onerror = () => {};
  }

  _handle(msg, ws) {
    switch (msg.type) {
      case "welcome": return this._welcome(msg);
      case "session":
      case "presence": return this._stream(msg);
      case "ack": return this._ack(msg);
      case "ping": this._sendRaw({ type: "pong", ts: msg.ts }); this.lastHeartbeat = Date.now(); return;
      case "heartbeat": this.lastHeartbeat = Date.now(); return;
      case "error": this._emit("error", new BridgeError(msg.code, msg.message)); return;
      case "reconnect":
        this._serverRetryMs = msg.retry_after_ms;
        ws.close(4000, "reconnect requested");
        return;
      default: this._log("unknown message", msg);
    }
  }

  _welcome(msg) {
    clearTimeout(this.timers.welcome);
    this.clientId = msg.clientId;
    this.token = msg.resumeToken;
    if (msg.reconnect) this.reconnectCfg = msg.reconnect;
    if (msg.heartbeat) this.heartbeatCfg = msg.heartbeat;
    if (!msg.resumed || msg.epoch !== this.epoch) {
      this.seq = 0; // the snapshot follows: drop stream state
    }
    this.epoch = msg.epoch;
    this.connected = true;
    this.upSince = Date.now();
    this.lastReceived = Date.now();
    const changed = this.connectionType !== "websocket";
    this.connectionType = "websocket";
    if (changed) this._emit("transport", "websocket");
    this._startWatchdog();
    this._log("welcome", msg);
    this._emit("connect", { resumed: msg.resumed, epoch: msg.epoch });
    for (const w of this._connectWaiters.splice(0)) w.resolve(this.getState());
    this._flush();
  }

  _stream(msg) {
    if (typeof msg.seq !== "number" || msg.seq <= this.seq) return; // never twice, never backwards
    this.seq = msg.seq;
    if (msg.type === "session") { this.state = msg.payload; this._emit("session", msg.payload, msg.seq); }
    else { this.online = (msg.payload && msg.payload.online) || []; this._emit("presence", this.online, msg.seq); }
  }

  _startWatchdog() {
    clearInterval(this.timers.watchdog);
    // Judged by wall-clock time: background tabs throttle timers, not Date.now().
    this.timers.watchdog = setInterval(() => {
      if (!this.connected || !this.ws) return;
      if (Date.now() - this.lastReceived > this.heartbeatCfg.timeout_ms) {
        this._log("bridge silent for", Date.now() - this.lastReceived, "ms");
        this.ws.close(4000, "heartbeat timeout");
      }
    }, Math.min(5000, this.heartbeatCfg.interval_ms));
  }

  _lost(code, reason) {
    clearInterval(this.timers.watchdog);
    const wasConnected = this.connected;
    this.connected = false;
    for (const item of this.outbox) item.sent = false;
    if (wasConnected) {
      if (Date.now() - this.upSince >= 10000) this.reconnectAttempts = 0;
      this._emit("disconnect", { code, reason });
    }
    if (this.closed) return;
    if (STOP_CODES.has(code)) {
      const err = new BridgeError(`close_${code}`, reason || `connection refused (${code})`);
      this._emit("error", err);
      for (const w of this._connectWaiters.splice(0)) w.reject(err);
      return;
    }
    this._reconnectSoon(false, code);
  }

  _reconnectSoon(immediate, code) {
    if (this.closed || this.ws) return;
    clearTimeout(this.timers.retry);
    this.reconnectAttempts += 1;
    let delay = immediate ? Math.random() * 1000 : backoffDelay(this.reconnectAttempts, this.reconnectCfg);
    if (this._serverRetryMs != null) {
      delay = code === 1012 ? Math.random() * this._serverRetryMs : Math.max(delay, this._serverRetryMs);
      this._serverRetryMs = null;
    }
    this._log("reconnecting in", Math.round(delay), "ms (attempt", this.reconnectAttempts + ")");
    this.timers.retry = setTimeout(() => this._open(), delay);
  }

  // -- sending
  _sendRaw(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) { this.ws.send(JSON.stringify(msg)); return true; }
    return false;
  }

  _expireOutbox() {
    const now = Date.now();
    const keep = [];
    for (const item of this.outbox) {
      if (now - item.at > this.opts.outboxTtlMs) item.reject(new BridgeError("expired", "command expired before it was acked"));
      else keep.push(item);
    }
    this.outbox = keep;
  }

  _flush() {
    this._expireOutbox();
    if (!this.connected) return;
    for (const item of this.outbox) {
      if (!item.sent && this._sendRaw(item.message)) item.sent = true;
    }
  }

  _ack(msg) {
    const i = this.outbox.findIndex((item) => item.id === msg.id);
    if (i < 0) return;
    const [item] = this.outbox.splice(i, 1);
    if (msg.status === "ok") item.resolve(msg);
    else item.reject(new BridgeError(msg.error?.code || "error", msg.error?.message || "command failed"));
  }

  send(type, payload = {}) {
    const id = `${this.clientId || "c"}-${Date.now().toString(36)}-${(this.idCounter++).toString(36)}`;
    const message = { type, id, payload };
    return new Promise((resolve, reject) => {
      this._expireOutbox();
      if (this.outbox.length >= this.opts.outboxLimit) {
        const dropped = this.outbox.shift();
        const err = new BridgeError("outbox_overflow", "too many unacknowledged commands");
        dropped.reject(err);
        this._emit("error", err);
      }
      this.outbox.push({ id, message, resolve, reject, sent: false, at: Date.now() });
      this._flush();
    });
  }

  sendVote(vote) { return this.send("vote", { vote }); }
  sendReveal() { return this.send("reveal", {}); }
  sendReset() { return this.send("reset", {}); }

  close() {
    this.closed = true;
    for (const t of Object.values(this.timers)) { clearTimeout(t); clearInterval(t); }
    if (typeof window !== "undefined") window.removeEventListener("online", this._onOnline);
    const ws = this.ws;
    this.ws = null;
    this.connected = false;
    if (ws) ws.close(1000, "client closed");
  }
}

export default ConnectionManager;
