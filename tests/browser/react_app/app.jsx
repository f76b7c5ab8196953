// A React page on the bridge's hook, bundled by esbuild for the browser test.
import React, { StrictMode, useState } from "react";
import { createRoot } from "react-dom/client";
import { useConnectionManager } from "../../../bridge/static/use-connection-manager.js";

function Poker() {
  const q = new URLSearchParams(location.search);
  const [renders, setRenders] = useState(0);
  const { isConnected, connectionType, state, presence, sendVote, sendReveal } = useConnectionManager({
    sessionId: q.get("s"),
    userId: q.get("u"),
    params: { name: "React " + q.get("u") },
    transports: (q.get("t") || "websocket,sse,poll").split(","),
    onSessionUpdate: () => setRenders((n) => n + 1),
  });
  const me = state?.users?.find((u) => u.id === q.get("u"));
  return (
    <main>
      <p id="connected">{String(isConnected)}</p>
      <p id="type">{connectionType}</p>
      <p id="users">{state ? state.users.length : 0}</p>
      <p id="online">{presence.join(",")}</p>
      <p id="voted">{me?.voted ? "yes" : "no"}</p>
      <p id="revealed">{state?.revealed ? "yes" : "no"}</p>
      <p id="updates">{renders}</p>
      <button id="vote" onClick={() => sendVote("13")}>vote 13</button>
      <button id="reveal" onClick={() => sendReveal()}>reveal</button>
    </main>
  );
}

createRoot(document.getElementById("root")).render(
  <StrictMode>
    <Poker />
  </StrictMode>,
);
