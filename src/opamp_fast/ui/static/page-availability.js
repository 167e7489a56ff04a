// The availability page (#/availability?range=24h|7d): the fleet's mean uptime over the range
// as a chart (one bar per hour or per six hours), the flapping agents (worst first), and the
// disconnect reasons and versions as bars. Everything comes from GET /api/fleet/availability
// and is drawn here as SVG: no chart library, no request off this server.
import { debounce, h, page, s } from "./dom.js";
import { api, showError } from "./api.js";

const RANGES = { "24h": { hours: 24, buckets: 24, label: "last 24 hours" },
  "7d": { hours: 168, buckets: 28, label: "last 7 days" } };

export function availabilityPage(params) {
  const range = RANGES[params.get("range")] ? params.get("range") : "24h";
  const ui = layout(range);
  async function refresh() {
    const { hours, buckets } = RANGES[range];
    const until = new Date();
    const since = new Date(until.getTime() - hours * 3600e3);
    const p = new URLSearchParams({ since: since.toISOString(), until: until.toISOString(),
      buckets, limit: 20 });
    try {
      render(ui, await api("/api/fleet/availability?" + p), range);
    } catch (err) {
      showError(err);
    }
  }
  const reconcile = debounce(refresh, 5000);
  return {
    refresh,
    onEvent(ev) {
      if (ev.type === "agent.disconnected" || ev.type === "agent.forgotten") reconcile();
    },
  };
}

function layout(range) {
  const ui = {
    uptime: h("span", { class: "n", id: "fleet-uptime" }, "…"),
    agents: h("span", { class: "n", id: "fleet-agents" }, "…"),
    disconnects: h("span", { class: "n", id: "fleet-disconnects" }, "…"),
    flappingTotal: h("span", { class: "n", id: "fleet-flapping" }, "…"),
    chart: h("div", { id: "uptime-chart" }),
    flapping: h("tbody", { id: "flapping-rows" }),
    reasons: h("div", { id: "reason-bars" }),
    versions: h("div", { id: "version-bars" }),
  };
  const stat = (label, n) => h("div", { class: "stat" }, h("div", { class: "muted" }, label), n);
  const tab = (key) => h("a", { href: "#/availability?range=" + key, id: "range-" + key,
    "aria-current": key === range ? "true" : null, class: "tab" }, RANGES[key].label);
  const th = (text) => h("th", { scope: "col" }, text);
  page.replaceChildren(
    h("h1", {}, "Availability"),
    h("nav", { class: "tabs", "aria-label": "Range" }, tab("24h"), tab("7d")),
    h("div", { class: "card stats" }, stat("Mean uptime", ui.uptime), stat("Agents", ui.agents),
      stat("Disconnects", ui.disconnects), stat("Flapping agents", ui.flappingTotal)),
    h("div", { class: "card" }, h("h2", {}, "Fleet uptime, " + RANGES[range].label), ui.chart),
    h("div", { class: "card" }, h("h2", {}, "Flapping agents (5 disconnects or more)"),
      h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {}, th("Agent"),
        th("Disconnects"), th("Uptime"))), ui.flapping))),
    h("div", { class: "grid" },
      h("div", { class: "card" }, h("h2", {}, "Disconnects by reason"), ui.reasons),
      h("div", { class: "card" }, h("h2", {}, "Uptime by version"), ui.versions)));
  return ui;
}

export const pct = (r) => (r === null || r === undefined ? "—" : (r * 100).toFixed(1) + " %");

function render(ui, data, range) {
  ui.uptime.textContent = pct(data.uptime_ratio);
  ui.agents.textContent = data.agents;
  ui.disconnects.textContent = data.disconnects;
  ui.flappingTotal.textContent = data.flapping_total;
  ui.chart.replaceChildren(uptimeChart(data.series, range));
  ui.flapping.replaceChildren(...data.flapping.map((a) => h("tr", { "data-agent": a.id },
    h("td", {}, h("a", { href: "#/agents/" + a.id }, a.name || a.id)),
    h("td", {}, a.disconnects), h("td", {}, pct(a.uptime_ratio)))));
  if (!data.flapping.length) ui.flapping.append(h("tr", {}, h("td", { colspan: 3,
    class: "muted" }, "No agent is flapping.")));
  const reasons = Object.entries(data.disconnects_by_reason).sort((a, b) => b[1] - a[1]);
  ui.reasons.replaceChildren(bars("Disconnects by reason", reasons.map(([k, n]) =>
    ({ key: k, value: n, text: String(n) }))));
  ui.versions.replaceChildren(bars("Uptime by version", data.by_version.map((v) =>
    ({ key: v.version || "unknown", value: v.uptime_ratio || 0, max: 1,
      text: `${pct(v.uptime_ratio)} · ${v.agents} agents` }))));
}

// One bar per bucket, its height the mean uptime of the agents observed in it (no agent: no
// bar); the hover tells the bucket's time and figure.
function uptimeChart(series, range) {
  const W = 600, H = 160, L = 36, B = 20;
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `Fleet uptime per bucket over the ${RANGES[range].label}` });
  svg.append(s("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
  svg.append(s("text", { x: 2, y: 14 }, "100%"), s("text", { x: 2, y: H - B }, "0%"));
  svg.append(s("text", { x: L, y: H - 4 }, range === "7d" ? "−7 d" : "−24 h"),
    s("text", { x: W - 30, y: H - 4 }, "now"));
  const w = (W - L - 4) / Math.max(1, series.length);
  series.forEach((p, i) => {
    if (p.uptime_ratio === null) return;
    const top = 10 + (1 - p.uptime_ratio) * (H - B - 10);
    const bar = s("rect", { class: "bar", x: (L + i * w + 1).toFixed(1), y: top.toFixed(1),
      width: Math.max(1, w - 2).toFixed(1), height: (H - B - top).toFixed(1) });
    bar.append(s("title", {}, `${new Date(p.since).toLocaleString()}: ${pct(p.uptime_ratio)} of ` +
      `${p.agents} agents`));
    svg.append(bar);
  });
  return svg;
}

// Horizontal bars: a label, a bar scaled to the largest value (or to `max`), the figure. The
// width is set through the CSSOM: the Content-Security-Policy refuses style attributes.
function bars(caption, items) {
  if (!items.length) return h("p", { class: "muted" }, "None in this range.");
  const top = Math.max(...items.map((i) => i.max || i.value), 1e-9);
  const bar = (i) => {
    const el = h("span", { class: "hbar", "aria-hidden": "true" });
    el.style.width = Math.max(1, Math.round((100 * i.value) / top)) + "%";
    return el;
  };
  return h("table", { class: "bars" }, h("caption", { class: "muted" }, caption),
    h("tbody", {}, ...items.map((i) => h("tr", { "data-key": i.key },
      h("th", { scope: "row" }, i.key), h("td", { class: "bar-cell" }, bar(i)),
      h("td", {}, i.text)))));
}
