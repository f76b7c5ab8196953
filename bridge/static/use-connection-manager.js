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
const INITIAL = {
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
export function useConnectionManager(options) {
    const { sessionId, userId, baseUrl } = options;
    const [snapshot, setSnapshot] = useState(INITIAL);
    const managerRef = useRef(null);
    const optionsRef = useRef(options);
    optionsRef.current = options;
    useEffect(() => {
        const manager = new ConnectionManager({ ...optionsRef.current });
        managerRef.current = manager;
        let live = true;
        const update = (extra) => {
            if (live)
                setSnapshot((s) => ({ ...s, ...manager.getState(), ...extra }));
        };
        const call = (name, ...args) => {
            const fn = optionsRef.current[name];
            if (typeof fn === "function")
                fn(...args);
        };
        manager.onSessionUpdate((state, seq) => { update({ state }); call("onSessionUpdate", state, seq); });
        manager.onPresence((online, seq) => { update({ presence: online }); call("onPresence", online, seq); });
        manager.onConnect((info) => { update({ error: null }); call("onConnect", info); });
        manager.onDisconnect((reason) => { update(); call("onDisconnect", reason); });
        manager.onTransportChange((type) => { update(); call("onTransportChange", type); });
        manager.onError((error) => { update({ error }); call("onError", error); });
        manager.connect().catch(() => { }); // failures arrive through onError
        return () => {
            live = false;
            manager.close();
            if (managerRef.current === manager)
                managerRef.current = null;
        };
    }, [sessionId, userId, baseUrl]);
    const send = useCallback((type, payload) => {
        const manager = managerRef.current;
        return manager ? manager.send(type, payload) : Promise.reject(new Error("not connected: the component is not mounted"));
    }, []);
    const sendVote = useCallback((vote) => send("vote", { vote }), [send]);
    const sendReveal = useCallback(() => send("reveal", {}), [send]);
    const sendReset = useCallback(() => send("reset", {}), [send]);
    return { ...snapshot, send, sendVote, sendReveal, sendReset };
}
export default useConnectionManager;
