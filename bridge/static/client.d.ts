// Types for /bridge/client.js (protocol v1).
export type TransportName = "websocket" | "sse" | "poll";

export interface ConnectionManagerOptions {
  sessionId: string;
  userId: string;
  params?: Record<string, string | number>;
  baseUrl?: string;
  paths?: { websocket?: string; events?: string; poll?: string; messages?: string };
  transports?: TransportName[];
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

export interface Ack { type: "ack"; id: string; status: "ok" | "error"; error?: { code: string; message: string } }

export interface BridgeErrorOptions {
  fatal?: boolean;
  status?: number | null;
  closeCode?: number | null;
  reason?: string | null;
  retryAfterMs?: number | null;
  tokenRefused?: boolean;
}

export class BridgeError extends Error {
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
  constructor(code: string, message: string, options?: BridgeErrorOptions);
}

export function backoffDelay(
  attempt: number,
  cfg: { initial_ms: number; max_ms: number; factor: number; jitter: number },
  rnd?: number,
): number;

export type Ending = "lost" | "draining" | "overloaded";
export function endingOf(err?: { closeCode?: number | null; status?: number | null; reason?: string | null }): Ending;
/** draining: hintMs × rnd; overloaded: max(backoff, hintMs); lost or no hint: backoff */
export function reconnectDelay(backoff: number, hintMs: number | null, ending: Ending, rnd?: number): number;

export class ConnectionManager {
  constructor(options: ConnectionManagerOptions);
  onSessionUpdate(fn: (state: unknown, seq: number) => void): this;
  onPresence(fn: (online: string[], seq: number) => void): this;
  onConnect(fn: (info: { resumed: boolean; epoch: string; transport: TransportName }) => void): this;
  onDisconnect(fn: (reason: { code: number | null; reason: string; transport: TransportName }) => void): this;
  onError(fn: (err: BridgeError) => void): this;
  onTransportChange(fn: (type: TransportName) => void): this;
  connect(): Promise<ConnectionState>;
  send(type: string, payload?: Record<string, unknown>): Promise<Ack>;
  sendVote(vote: string | number): Promise<Ack>;
  sendReveal(): Promise<Ack>;
  sendReset(): Promise<Ack>;
  getState(): ConnectionState;
  close(): void;
  /** the final error, once the manager stopped (null while it runs or retries) */
  error: BridgeError | null;
  /** reconnect delays chosen (ms), for debugging and tests */
  delays: number[];
}
export default ConnectionManager;

// /bridge/use-connection-manager.js
export interface UseConnectionManagerOptions extends ConnectionManagerOptions {
  onSessionUpdate?: (state: unknown, seq: number) => void;
  onPresence?: (online: string[], seq: number) => void;
  onConnect?: (info: { resumed: boolean; epoch: string; transport: TransportName }) => void;
  onDisconnect?: (reason: { code: number | null; reason: string; transport: TransportName }) => void;
  onError?: (err: BridgeError) => void;
  onTransportChange?: (type: TransportName) => void;
}
export interface UseConnectionManagerResult extends ConnectionState {
  state: unknown;
  presence: string[];
  error: BridgeError | null;
  send(type: string, payload?: Record<string, unknown>): Promise<Ack>;
  sendVote(vote: string | number): Promise<Ack>;
  sendReveal(): Promise<Ack>;
  sendReset(): Promise<Ack>;
}
export function useConnectionManager(options: UseConnectionManagerOptions): UseConnectionManagerResult;
