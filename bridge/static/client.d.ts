export type TransportName = "websocket" | "sse" | "poll";
export interface ConnectionManagerOptions {
    sessionId: string;
    userId: string;
    /** extra connect parameters ({params.name} upstream) */
    params?: Record<string, string | number>;
    /** default: the page's origin */
    baseUrl?: string;
    paths?: {
        websocket?: string;
        events?: string;
        poll?: string;
        messages?: string;
    };
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
    error?: {
        code: string;
        message: string;
    };
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
export declare function backoffDelay(attempt: number, { initial_ms, max_ms, factor, jitter }: BackoffConfig, rnd?: number): number;
export declare function endingOf({ closeCode, status, reason }?: {
    closeCode?: number | null;
    status?: number | null;
    reason?: string | null;
}): Ending;
export declare function reconnectDelay(backoff: number, hintMs: number | null, ending: Ending, rnd?: number): number;
export declare class BridgeError extends Error {
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
    constructor(code: string, message: string, { fatal, status, closeCode, reason, retryAfterMs, tokenRefused }?: BridgeErrorOptions);
}
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
export declare class ConnectionManager<S = unknown> {
    /** the final error, once the manager stopped (null while it runs or retries) */
    error: BridgeError | null;
    /** reconnect delays chosen (ms), for debugging and tests */
    delays: number[];
    constructor(options: ConnectionManagerOptions);
    onSessionUpdate(fn: ConnectionEvents<S>["session"]): this;
    onPresence(fn: ConnectionEvents<S>["presence"]): this;
    onConnect(fn: ConnectionEvents<S>["connect"]): this;
    onDisconnect(fn: ConnectionEvents<S>["disconnect"]): this;
    onError(fn: ConnectionEvents<S>["error"]): this;
    onTransportChange(fn: ConnectionEvents<S>["transport"]): this;
    getState(): ConnectionState;
    /** Resolves on the first welcome; rejects only when the bridge refused the client for good. */
    connect(): Promise<ConnectionState>;
    /** Resolves with the command's ack, rejects with its error (or the manager's final one). */
    send(type: string, payload?: Record<string, unknown>): Promise<Ack>;
    sendVote(vote: string | number): Promise<Ack>;
    sendReveal(): Promise<Ack>;
    sendReset(): Promise<Ack>;
    close(): void;
}
export default ConnectionManager;
