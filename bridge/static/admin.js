// The bridge's admin page (served at /bridge/admin/, this script at /bridge/admin.js).
//
// - The login form keeps admin.token in this tab's session storage, never in a
//   URL; every request sends it as `Authorization: Bearer …`.
// - Live: /bridge/admin/events (server-sent events, one overview a second) is
//   read with fetch, since EventSource cannot send a header. A lost stream is
//   read again after 1 s, doubling up to 10 s; a 401 asks for the token again.
// - Everything the bridge sends is shown with textContent: a session id or a
//   user name is never markup.
/** Split a text/event-stream buffer into complete events and what is left. */
export function parseEvents(buffer) {
    const events = [];
    const blocks = buffer.replace(/\r\n?/g, "\n").split("\n\n");
    const rest = blocks.pop() ?? "";
    for (const block of blocks) {
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
            if (line.startsWith(":"))
                continue; // a comment (keep-alive)
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event")
                event = value;
            else if (field === "data")
                data.push(value);
        }
        if (data.length)
            events.push({ event, data: data.join("\n") });
    }
    return { events, rest };
}
export const TRANSPORTS = ["websocket", "sse", "poll"];
const COLOURS = { websocket: "#0969da", sse: "#8250df", poll: "#bf8700" };
/** points kept for the chart: five minutes at one a second */
export const KEPT = 300;
const TOKEN = "sessionBridgeAdminToken";
/** The chart's polylines (SVG ``points``) for a width × height box. */
export function lines(points, width, height) {
    const top = Math.max(1, ...points.flatMap((p) => TRANSPORTS.map((t) => p[t])));
    const step = points.length > 1 ? width / (KEPT - 1) : 0;
    const start = width - step * (points.length - 1);
    const out = {};
    for (const t of TRANSPORTS) {
        out[t] = points
            .map((p, i) => `${(start + i * step).toFixed(1)},${(height - 4 - (p[t] / top) * (height - 12)).toFixed(1)}`)
            .join(" ");
    }
    return out;
}
function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined)
        node.textContent = text;
    if (cls)
        node.className = cls;
    return node;
}
function byId(id) {
    const node = document.getElementById(id);
    if (!node)
        throw new Error(`the admin page has no #${id}`);
    return node;
}
function set(id, text, cls = "") {
    const node = byId(id);
    node.textContent = text;
    node.className = cls;
}
function ago(at) {
    const s = Math.max(0, Math.round(Date.now() / 1000 - at));
    return s < 90 ? `${s} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}
/** The users shown (the overview lists the first few), and how many more. */
export function usersText(users, total) {
    if (!users.length)
        return "–";
    const more = total - users.length;
    return users.join(", ") + (more > 0 ? ` and ${more} more` : "");
}
function num(value, unit = "") {
    return value == null ? "–" : `${value}${unit}`;
}
class AdminPage {
    constructor() {
        this.points = [];
        this.abort = null;
        this.retryMs = 1000;
    }
    start() {
        byId("login").onsubmit = (ev) => {
            ev.preventDefault();
            sessionStorage.setItem(TOKEN, byId("token").value);
            byId("token").value = "";
            this.connect();
        };
        byId("logout").onclick = () => {
            sessionStorage.removeItem(TOKEN);
            this.abort?.abort();
            this.signIn("");
        };
        if (sessionStorage.getItem(TOKEN))
            this.connect();
        else
            this.signIn("");
    }
    signIn(problem) {
        byId("main").hidden = true;
        byId("login").hidden = false;
        set("login-error", problem, "bad");
        set("status", "not signed in", "muted");
    }
    async connect() {
        const token = sessionStorage.getItem(TOKEN);
        if (!token)
            return this.signIn("");
        this.abort?.abort();
        const abort = (this.abort = new AbortController());
        set("status", "connecting…", "muted");
        try {
            const r = await fetch("/bridge/admin/events", {
                headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
                signal: abort.signal, cache: "no-store",
            });
            if (r.status === 401) {
                sessionStorage.removeItem(TOKEN);
                return this.signIn("that is not the admin token");
            }
            if (!r.ok || !r.body)
                throw new Error(`the bridge answered ${r.status}`);
            byId("login").hidden = true;
            byId("main").hidden = false;
            const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
            let buffer = "";
            for (;;) {
                const { value, done } = await reader.read();
                if (done)
                    break;
                const parsed = parseEvents(buffer + value);
                buffer = parsed.rest;
                for (const e of parsed.events) {
                    if (e.event === "overview")
                        this.render(JSON.parse(e.data));
                }
            }
            throw new Error("the stream ended");
        }
        catch (err) {
            if (abort.signal.aborted)
                return;
            set("status", `reconnecting (${err instanceof Error ? err.message : String(err)})`, "warn");
            setTimeout(() => this.connect(), this.retryMs);
            this.retryMs = Math.min(this.retryMs * 2, 10000);
        }
    }
    render(o) {
        this.retryMs = 1000;
        set("status", o.draining ? "draining" : `live · up ${Math.round(o.uptimeSeconds)} s`, o.draining ? "warn" : "ok");
        const point = { websocket: 0, sse: 0, poll: 0 };
        for (const t of TRANSPORTS)
            point[t] = o.connections[t] ?? 0;
        this.points.push(point);
        if (this.points.length > KEPT)
            this.points.shift();
        set("conn-total", String(TRANSPORTS.reduce((n, t) => n + point[t], 0)));
        byId("conn-legend").replaceChildren(...TRANSPORTS.map((t) => {
            const span = el("span");
            const swatch = el("i", undefined, "swatch");
            swatch.style.background = COLOURS[t] ?? "#888";
            span.append(swatch, `${t} `, el("b", String(point[t])));
            span.id = `conn-${t}`;
            return span;
        }));
        set("session-count", String(o.sessionCount));
        set("instance", o.backplane.instance ? `instance ${o.backplane.instance}` : "");
        const up = o.upstream;
        set("up-breaker", up.breaker, up.breaker === "closed" ? "ok" : "bad");
        set("up-flight", `${up.inFlight} / ${up.limit}`);
        set("up-queued", String(up.queued), up.queued > 0 ? "warn" : "");
        set("up-rps", num(up.requestsPerSecond));
        set("up-eps", num(up.errorsPerSecond), up.errorsPerSecond ? "bad" : "");
        set("up-latency", `${num(up.meanMs, " ms")} / ${num(up.p99Ms, " ms")}`);
        set("bp-kind", o.backplane.kind);
        set("bp-health", o.backplane.healthy ? "reachable" : "unreachable", o.backplane.healthy ? "ok" : "bad");
        set("bp-instance", o.backplane.instance ?? "–");
        set("bp-leases", num(o.backplane.leases ?? null));
        this.chart();
        byId("sessions").replaceChildren(...o.sessions.map((s) => {
            const tr = el("tr");
            const transports = Object.entries(s.transports).map(([t, n]) => `${t} ${n}`).join(", ");
            tr.append(el("td", s.sessionId + (s.followed ? " (legacy polls)" : "")), el("td", String(s.clients)), el("td", transports || "–"), el("td", usersText(s.users, s.usersTotal)), el("td", String(s.seq)));
            return tr;
        }));
        const items = o.history.map((h) => {
            const text = h.kind === "drain"
                ? `drain ${ago(h.at)}: ${h.count} connections told to reconnect` +
                    (h.done ? `, done in ${h.seconds.toFixed(1)} s, ${h.other} left` : ", under way")
                : `reconnect wave ${ago(h.at)}: ${h.count} connects in ${h.seconds} s (${h.other} resumed)`;
            return el("li", text);
        });
        byId("history").replaceChildren(...(items.length ? items : [el("li", "none lately", "muted")]));
    }
    chart() {
        const svg = byId("chart");
        const paths = lines(this.points, 600, 140);
        const top = Math.max(1, ...this.points.flatMap((p) => TRANSPORTS.map((t) => p[t])));
        const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
        label.setAttribute("x", "4");
        label.setAttribute("y", "12");
        label.setAttribute("font-size", "11");
        label.setAttribute("fill", "#59636e");
        label.textContent = `max ${top} · ${Math.round(this.points.length / 60 * 10) / 10} of 5 min`;
        svg.replaceChildren(label, ...TRANSPORTS.map((t) => {
            const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
            line.setAttribute("points", paths[t] ?? "");
            line.setAttribute("fill", "none");
            line.setAttribute("stroke", COLOURS[t] ?? "#888");
            line.setAttribute("stroke-width", "2");
            line.setAttribute("data-transport", t);
            return line;
        }));
    }
}
if (typeof document !== "undefined" && document.getElementById("main"))
    new AdminPage().start();
