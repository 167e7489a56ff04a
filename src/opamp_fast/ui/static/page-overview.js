// The overview page (#/overview, the default): agents online, offline and in all, by transport
// and by version, and a chart of the online count over the last hour. Connects and
// disconnects move the counts at once; a debounced reload then brings the rest.
import { debounce, h, page, s } from "./dom.js";
import { api, showError } from "./api.js";

export function overviewPage() {
  const ui = layout();
  const state = { data: null, known: new Map() }; // known: agent -> status counted since loading
  async function refresh() {
    try {
      state.data = await api("/api/ui/overview");
      state.known.clear();
      render(ui, state.data);
    } catch (err) {
      showError(err);
    }
  }
  const reconcile = debounce(refresh, 1500);
  return {
    refresh,
    onEvent(ev) {
      if (!state.data) return;
      if (countLive(state, ev)) render(ui, state.data);
      if (ev.type.startsWith("agent.") || ev.type === "instance.lost") reconcile();
    },
  };
}

function layout() {
  const ui = {
    online: h("span", { class: "n", id: "count-online" }, "…"),
    offline: h("span", { class: "n", id: "count-offline" }, "…"),
    total: h("span", { class: "n", id: "count-total" }, "…"),
    transports: h("tbody", { id: "by-transport" }),
    versions: h("tbody", { id: "by-version" }),
    chart: h("div", { id: "chart" }),
  };
  const stat = (label, n) => h("div", { class: "stat" }, h("div", { class: "muted" }, label), n);
  page.replaceChildren(
    h("h1", {}, "Fleet overview"),
    h("div", { class: "card stats" }, stat("Online", ui.online), stat("Offline", ui.offline),
      stat("Total", ui.total)),
    h("div", { class: "grid" },
      h("div", { class: "card" }, h("h2", {}, "By transport"), groupTable("Agents by transport", ui.transports)),
      h("div", { class: "card" }, h("h2", {}, "By version"), groupTable("Agents by version", ui.versions))),
    h("div", { class: "card" }, h("h2", {}, "Online agents, last hour"), ui.chart));
  return ui;
}

const groupTable = (caption, body) =>
  h("table", {}, h("caption", { class: "muted" }, caption),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, caption.split(" ").pop()),
      h("th", { scope: "col" }, "online"), h("th", { scope: "col" }, "offline"))), body);

function render(ui, data) {
  const fill = (body, groups) =>
    body.replaceChildren(...groups.map((g) =>
      h("tr", {}, h("td", {}, g.key || "unknown"), h("td", {}, g.online), h("td", {}, g.offline))));
  ui.online.textContent = data.online;
  ui.offline.textContent = data.offline;
  ui.total.textContent = data.total;
  fill(ui.transports, data.by_transport);
  fill(ui.versions, data.by_version);
  ui.chart.replaceChildren(drawChart(data.online_history, data.online));
}

// Moves the online count for a connect or disconnect not counted yet; true if it did.
function countLive(state, ev) {
  const { data, known } = state;
  if (ev.type === "agent.connected" && known.get(ev.agent) !== "online") {
    data.online += 1;
    known.set(ev.agent, "online");
    return true;
  }
  if (ev.type === "agent.disconnected" && known.get(ev.agent) !== "offline") {
    data.online = Math.max(0, data.online - 1);
    known.set(ev.agent, "offline");
    return true;
  }
  return false;
}

// An SVG area chart of the last hour, the current count as its last point.
function drawChart(points, current) {
  const W = 600, H = 160, L = 36, B = 20;
  const now = Date.now();
  const series = points.map((p) => [Date.parse(p.at), p.online]);
  series.push([now, current]);
  const max = Math.max(1, ...series.map((p) => p[1]));
  const x = (t) => L + ((t - (now - 3600e3)) / 3600e3) * (W - L - 4);
  const y = (v) => H - B - (v / max) * (H - B - 10);
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `Online agents over the last hour, now ${current}, peak ${max}` });
  svg.append(s("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
  svg.append(s("text", { x: 2, y: 14 }, String(max)), s("text", { x: 2, y: H - B }, "0"));
  svg.append(s("text", { x: L, y: H - 4 }, "−60 min"), s("text", { x: W - 30, y: H - 4 }, "now"));
  const visible = series.filter((p) => p[0] >= now - 3600e3);
  const pts = visible.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
  if (pts.length === 1) pts.unshift(`${L},${y(visible[0][1]).toFixed(1)}`);
  const first = pts[0].split(",")[0];
  const last = pts[pts.length - 1].split(",")[0];
  svg.append(s("polygon", { class: "area",
    points: `${first},${H - B} ${pts.join(" ")} ${last},${H - B}` }));
  svg.append(s("polyline", { class: "line", points: pts.join(" ") }));
  return svg;
}
