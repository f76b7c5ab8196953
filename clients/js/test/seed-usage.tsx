// The seed's usage of the client (its design note, "Usage"), as written there,
// type-checked against the package's published declarations by
// `tsc -p tsconfig.types.json` (part of `npm test`). Never run.
import { useState } from "react";
import { ConnectionManager, type ConnectionManagerOptions } from "session-bridge-client";
import { useConnectionManager } from "session-bridge-client/react";

// 1. In a React component
export function EstimationTool() {
  const [session, setSession] = useState<unknown>(null);
  const {
    isConnected,
    connectionType,
    sendVote,
    sendReveal,
    sendReset
  } = useConnectionManager({
    sessionId: 'session-123',
    userId: 'user-456',
    onSessionUpdate: (session) => {
      // handle the session update
      setSession(session);
    },
    onConnect: () => {
      console.log('connected');
    },
    onDisconnect: () => {
      console.log('disconnected');
    }
  });

  const handleVote = (vote: string) => {
    sendVote(vote);
  };

  return (
    <div>
      <div>Connection: {isConnected ? 'connected' : 'not connected'}</div>
      <div>Type: {connectionType}</div>
      <button onClick={() => handleVote('5')}>5</button>
      <button onClick={() => sendReveal()}>reveal</button>
      <button onClick={() => sendReset()}>reset</button>
      <pre>{JSON.stringify(session)}</pre>
    </div>
  );
}

// 2. The connection manager directly
const manager = new ConnectionManager({
  sessionId: 'session-123',
  userId: 'user-456',
  websocketUrl: 'ws://localhost:3000/api/websocket'
});

manager.onSessionUpdate((session) => {
  console.log('session update:', session);
});

await manager.connect();

// 3. Monitoring: the connection state
const state = manager.getState();
console.log('connection state:', {
  isConnected: state.isConnected,
  connectionType: state.connectionType,
  lastHeartbeat: state.lastHeartbeat,
  reconnectAttempts: state.reconnectAttempts
});

// 4. Debug mode
const config: ConnectionManagerOptions = { sessionId: 'session-123', userId: 'user-456' };
const debugManager = new ConnectionManager({
  ...config,
  debug: true // verbose logs
});

// What the types say about it, beyond compiling
const heartbeat: number | null = state.lastHeartbeat;
const attempts: number = state.reconnectAttempts;
const kind: "websocket" | "sse" | "poll" | "none" = state.connectionType;
const acked: Promise<{ status: "ok" | "error" }> = debugManager.sendVote(5);
void [heartbeat, attempts, kind, acked];

// The session state's type, when the app gives it
interface Poker { users: { id: string; voted: boolean }[]; revealed: boolean }
export function Typed() {
  const { state, presence } = useConnectionManager<Poker>({ sessionId: "s", userId: "u" });
  const voted: number = state ? state.users.filter((u) => u.voted).length : 0;
  const online: string[] = presence;
  return <p>{voted} of {online.length}</p>;
}
new ConnectionManager<Poker>(config).onSessionUpdate((s, seq) => s.revealed && seq > 0);

// Wrong usage does not compile
export function Wrong() {
  // @ts-expect-error userId is required
  useConnectionManager({ sessionId: "s" });
  const { sendVote, connectionType } = useConnectionManager({ sessionId: "s", userId: "u" });
  // @ts-expect-error a vote is a string or a number
  void sendVote({ value: 5 });
  // @ts-expect-error the seed's old "http" type is no transport of the bridge
  if (connectionType === "http") return null;
  return null;
}
// @ts-expect-error debug is a boolean
new ConnectionManager({ ...config, debug: "yes" });
// @ts-expect-error getState() has no such field
void manager.getState().isOnline;
// @ts-expect-error the internals are not part of the published types
void manager.outbox;
// @ts-expect-error no such transport
new ConnectionManager({ ...config, transports: ["websocket", "longpoll"] });
