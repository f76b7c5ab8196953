import type { Ack, BridgeError, ConnectionEvents, ConnectionManagerOptions, ConnectionState } from "./client.js";
export interface UseConnectionManagerOptions<S = unknown> extends ConnectionManagerOptions {
    onSessionUpdate?: ConnectionEvents<S>["session"];
    onPresence?: ConnectionEvents<S>["presence"];
    onConnect?: ConnectionEvents<S>["connect"];
    onDisconnect?: ConnectionEvents<S>["disconnect"];
    onError?: ConnectionEvents<S>["error"];
    onTransportChange?: ConnectionEvents<S>["transport"];
}
export interface UseConnectionManagerResult<S = unknown> extends ConnectionState {
    /** the latest session state (null until the first one) */
    state: S | null;
    /** the users present */
    presence: string[];
    /** the last error reported, cleared by the next connect */
    error: BridgeError | null;
    send(type: string, payload?: Record<string, unknown>): Promise<Ack>;
    sendVote(vote: string | number): Promise<Ack>;
    sendReveal(): Promise<Ack>;
    sendReset(): Promise<Ack>;
}
export declare function useConnectionManager<S = unknown>(options: UseConnectionManagerOptions<S>): UseConnectionManagerResult<S>;
export default useConnectionManager;
