// A planning-poker table on the bridge's React hook, imported by name from the
// npm package. Query: ?s=SESSION&u=USER&t=websocket,sse,poll (the transports).
import { StrictMode, useState } from "react";
import { createRoot } from "react-dom/client";
import type { TransportName } from "session-bridge-client";
import { useConnectionManager } from "session-bridge-client/react";

// The state as the demo app's upstream returns it (what this page reads of it).
interface Table {
  users: { id: string; name?: string; voted: boolean }[];
  revealed: boolean;
}

const q = new URLSearchParams(location.search);
const sessionId = q.get("s") ?? "demo";
const userId = q.get("u") ?? "guest";
const transports = (q.get("t") ?? "websocket,sse,poll").split(",") as TransportName[];

function Poker() {
  const [updates, setUpdates] = useState(0);
  const [events, setEvents] = useState<string[]>([]);
  const log = (line: string) => setEvents((e) => [...e.slice(-4), line]);
  const { isConnected, connectionType, state, presence, sendVote, sendReveal, sendReset } = useConnectionManager<Table>({
    sessionId,
    userId,
    params: { name: "React " + userId },
    transports,
    onSessionUpdate: () => setUpdates((n) => n + 1),
    onConnect: (info) => log(`connected over ${info.transport}${info.resumed ? " (resumed)" : ""}`),
    onDisconnect: (info) => log(`disconnected from ${info.transport}: ${info.reason}`),
  });
  const me = state?.users.find((u) => u.id === userId);
  return (
    <main>
      <h1>Session {sessionId}</h1>
      <p>connected: <span id="connected">{String(isConnected)}</span> over <span id="type">{connectionType}</span></p>
      <p>users: <span id="users">{state ? state.users.length : 0}</span>, online: <span id="online">{presence.join(",")}</span></p>
      <p>voted: <span id="voted">{me?.voted ? "yes" : "no"}</span>, revealed: <span id="revealed">{state?.revealed ? "yes" : "no"}</span></p>
      <p>updates: <span id="updates">{updates}</span></p>
      <button id="vote" onClick={() => void sendVote("13")}>vote 13</button>
      <button id="reveal" onClick={() => void sendReveal()}>reveal</button>
      <button id="reset" onClick={() => void sendReset()}>reset</button>
      <ul id="events">{events.map((e, i) => <li key={i}>{e}</li>)}</ul>
    </main>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <Poker />
  </StrictMode>,
);
