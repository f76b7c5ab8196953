// React hook over the bridge's ConnectionManager: `session-bridge-client/react`,
// served by the bridge at /bridge/use-connection-manager.js (types alongside).
// Imports React as "react": the app's bundler or import map resolves it.
//
//   const { isConnected, connectionType, state, presence, sendVote, sendReveal,
//           sendReset, send } = useConnectionManager({ sessionId, userId, ...options });
//
// Connects on mount and closes on unmount. Safe under React's strict mode: the
// double mount closes the first manager before the second one connects. A new
// sessionId/userId/baseUrl starts a new manager; callbacks in the options
// (onSessionUpdate, onPresence, onConnect, onDisconnect, onError,
// onTransportChange) always call the latest ones passed.
import { useCallback, useEffect, useRef, useState } from "react";
import { ConnectionManager } from "./client.js";
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

type Snapshot<S> = Omit<UseConnectionManagerResult<S>, "send" | "sendVote" | "sendReveal" | "sendReset">;
type Callback = "onSessionUpdate" | "onPresence" | "onConnect" | "onDisconnect" | "onError" | "onTransportChange";

const INITIAL: Snapshot<never> = {
  isConnected: false,
  connectionType: "none",
  lastHeartbeat: null,
  reconnectAttempts: 0,
  seq: 0,
  epoch: null,
  queued: 0,
  state: null,
  presence: [],
  error: null,
};

export function useConnectionManager<S = unknown>(options: UseConnectionManagerOptions<S>): UseConnectionManagerResult<S> {
  const { sessionId, userId, baseUrl } = options;
  const [snapshot, setSnapshot] = useState<Snapshot<S>>(INITIAL);
  const managerRef = useRef<ConnectionManager<S> | null>(null);
  const optionsRef = useRef(options);
  optionsRef.current = options;

  useEffect(() => {
    const manager = new ConnectionManager<S>({ ...optionsRef.current });
    managerRef.current = manager;
    let live = true;
    const update = (extra?: Partial<Snapshot<S>>) => {
      if (live) setSnapshot((s) => ({ ...s, ...manager.getState(), ...extra }));
    };
    const call = <K extends Callback>(name: K, ...args: Parameters<NonNullable<UseConnectionManagerOptions<S>[K]>>) => {
      const fn = optionsRef.current[name];
      if (typeof fn === "function") (fn as (...a: typeof args) => void)(...args);
    };
    manager.onSessionUpdate((state, seq) => { update({ state }); call("onSessionUpdate", state, seq); });
    manager.onPresence((online, seq) => { update({ presence: online }); call("onPresence", online, seq); });
    manager.onConnect((info) => { update({ error: null }); call("onConnect", info); });
    manager.onDisconnect((reason) => { update(); call("onDisconnect", reason); });
    manager.onTransportChange((type) => { update(); call("onTransportChange", type); });
    manager.onError((error) => { update({ error }); call("onError", error); });
    manager.connect().catch(() => {}); // failures arrive through onError
    return () => {
      live = false;
      manager.close();
      if (managerRef.current === manager) managerRef.current = null;
    };
  }, [sessionId, userId, baseUrl]);

  const send = useCallback((type: string, payload?: Record<string, unknown>) => {
    const manager = managerRef.current;
    return manager ? manager.send(type, payload) : Promise.reject(new Error("not connected: the component is not mounted"));
  }, []);
  const sendVote = useCallback((vote: string | number) => send("vote", { vote }), [send]);
  const sendReveal = useCallback(() => send("reveal", {}), [send]);
  const sendReset = useCallback(() => send("reset", {}), [send]);

  return { ...snapshot, send, sendVote, sendReveal, sendReset };
}

export default useConnectionManager;
