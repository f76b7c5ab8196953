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

export class BridgeError extends Error { code: string; constructor(code: string, message: string) }

export function backoffDelay(
  attempt: number,
  cfg: { initial_ms: number; max_ms: number; factor: number; jitter: number },
  rnd?: number,
): number;

export class ConnectionManager {
  constructor(options: ConnectionManagerOptions);
  onSessionUpdate(fn: (state: unknown, seq: number) => void): this;
  onPresence(fn: (online: string[], seq: number) => void): this;
  onConnect(fn: (info: { resumed: boolean; epoch: string }) => void): this;
  onDisconnect(fn: (reason: { code: number; reason: string }) => void): this;
  onError(fn: (err: BridgeError) => void): this;
  onTransportChange(fn: (type: TransportName) => void): this;
  connect(): Promise<ConnectionState>;
  send(type: string, payload?: Record<string, unknown>): Promise<Ack>;
  sendVote(vote: string | number): Promise<Ack>;
  sendReveal(): Promise<Ack>;
  sendReset(): Promise<Ack>;
  getState(): ConnectionState;
  close(): void;
}
export default ConnectionManager;
