// An agent's page (#/agents/{id}): what it reported (description, health, capabilities,
// remote config status, effective config), what is assigned to it, its connection history,
// and the actions on it (agent-actions.js). Live: its status pill follows connects and
// disconnects at once, a debounced reload brings the rest.
import { debounce, h, page, pill } from "./dom.js";
import { APIError, api, showError } from "./api.js";
import { cut, fmtTime } from "./format.js";
import { agentActions } from "./agent-actions.js";
import { availabilityStrip } from "./strip.js";

export function agentPage(id) {
  const ui = {
    head: h("div", { class: "card", id: "agent-head" }, "Loading…"),
    parts: h("div", { class: "grid", id: "agent-parts" }),
    history: h("ol", { class: "timeline", id: "history" }),
    strip: h("div", { id: "availability-strip" }),
    uptime: h("p", { class: "muted", id: "agent-uptime" }),
    actions: agentActions(id, () => refresh()),
  };
  page.replaceChildren(h("p", {}, h("a", { href: "#/agents" }, "← Agents")), ui.head,
    h("div", { class: "card" }, h("h2", {}, "Availability, last 24 hours"), ui.strip, ui.uptime),
    ui.parts, ui.actions.card,
    h("div", { class: "card" }, h("h2", {}, "Connection history"), ui.history));
  async function refresh() {
    try {
      const path = "/api/agents/" + encodeURIComponent(id);
      const strip = loadStrip(ui, path); // on its own: the rest never waits for it
      const [a, hist] = await Promise.all([api(path), api(path + "/connection-history?limit=50")]);
      renderAgent(ui, a);
      renderHistory(ui.history, hist.histories);
      await strip;
    } catch (err) {
      if (err instanceof APIError && err.status === 404) ui.head.replaceChildren(h("p", {}, "No such agent."));
      else showError(err);
    }
  }
  const reconcile = debounce(refresh, 1200);
  return {
    refresh,
    onEvent(ev) {
      if (ev.agent !== id) return;
      const st = { "agent.connected": "online", "agent.disconnected": "offline" }[ev.type];
      const el = document.getElementById("agent-status");
      if (st && el) el.replaceChildren(pill(st));
      reconcile();
    },
  };
}

const kv = (obj) => h("dl", { class: "kv" }, ...Object.entries(obj || {}).map(([k, v]) =>
  [h("dt", {}, k), h("dd", {}, typeof v === "object" ? JSON.stringify(v) : String(v))]));
const section = (title, ...content) => h("div", { class: "card" }, h("h2", {}, title), ...content);
const notReported = () => h("p", { class: "muted" }, "Not reported.");
const describe = (d) => d ? [h("h3", {}, "Identifying"), kv(d.identifying_attributes),
  h("h3", {}, "Non-identifying"), kv(d.non_identifying_attributes)] : notReported();

function renderAgent(ui, a) {
  ui.head.replaceChildren(
    h("h1", {}, a.name || "(unnamed agent)", " ", h("span", { id: "agent-status" }, pill(a.status)),
      a.drifted_at ? h("span", { class: "badge", id: "drift-badge",
        title: "Its effective config differs from the one it reported APPLIED" },
      "config drifted since " + fmtTime(a.drifted_at)) : null),
    kv({ id: a.id, transport: a.transport || "—", "remote address": a.remote_addr || "—",
      "serving instance": a.serving_instance || "—", "last seen": fmtTime(a.last_seen_at),
      "last connected": fmtTime(a.last_connected_at),
      "last disconnected": fmtTime(a.last_disconnected_at),
      "disconnect reason": a.disconnect_reason || "—",
      labels: Object.keys(a.labels || {}).length ? a.labels : "none" }));
  ui.actions.show(a);
  ui.parts.replaceChildren(
    section("Description", describe(a.description)),
    section("Health", a.health ? kv({ healthy: a.health.healthy, status: a.health.status || "—",
      "last error": a.health.last_error || "—" }) : notReported()),
    section("Capabilities", h("ul", { id: "capabilities" }, ...(a.capabilities || []).map((c) => h("li", {}, c)))),
    section("Assigned config", h("div", { id: "remote-config" }, a.remote_config ?
      kv(assigned(a.remote_config)) : h("p", { class: "muted" }, "None assigned."))),
    section("Remote config status", a.remote_config_status ? kv(a.remote_config_status) :
      notReported()),
    section("Effective config", configText(a.effective_config)));
}

async function loadStrip(ui, path) {
  try {
    const v = await api(path + "/availability");
    ui.strip.replaceChildren(availabilityStrip(v));
    ui.uptime.textContent = uptimeLine(v);
  } catch (err) {
    ui.uptime.textContent = "Availability could not load: " + (err && err.message ? err.message : err);
  }
}

function uptimeLine(v) {
  const pct = v.uptime_ratio === null ? "—" : (v.uptime_ratio * 100).toFixed(1) + " %";
  const reasons = Object.entries(v.disconnects_by_reason).map(([k, n]) => `${k} ${n}`);
  return [`uptime ${pct}`, `${v.sessions} sessions`, `${v.disconnects} disconnects` +
    (reasons.length ? ` (${reasons.join(", ")})` : ""), v.flapping ? "flapping" : null]
    .filter(Boolean).join(" · ");
}

function assigned(rc) {
  return { config: rc.name ? `${rc.name} v${rc.version}` : "—", status: rc.status,
    source: rc.source === "group" ? `group ${rc.group}` : rc.source || "—",
    error: rc.error || "—", hash: cut(rc.hash), "reported hash": cut(rc.reported_hash),
    updated: fmtTime(rc.updated_at) };
}

// Stored redacted: secret values read <redacted>; a body that could not be parsed is withheld
// (only its hash). The sha256 is that of what the agent reported.
function configText(cfg) {
  if (!cfg || !cfg.config_map) return notReported();
  return Object.entries(cfg.config_map).flatMap(([name, f]) => [
    h("h3", {}, name || "(default)"),
    h("p", { class: "muted" }, [f.content_type || "no content type",
      f.size != null ? `${f.size} bytes` : null,
      f.sha256 ? `sha256 ${f.sha256.slice(0, 12)}…` : null,
      f.redacted ? `${f.redacted} secret value${f.redacted === 1 ? "" : "s"} redacted` : null,
    ].filter(Boolean).join(" · ")),
    f.body === undefined ? h("p", { class: "muted" }, `Withheld: ${f.withheld || "not stored"}.`)
      : h("pre", {}, f.body)]);
}

function renderHistory(history, items) {
  history.replaceChildren(...items.map((c) => h("li", { class: c.disconnected_at ? "" : "open" },
    h("span", { class: "dot", "aria-hidden": "true" }),
    h("div", {}, h("strong", {}, fmtTime(c.connected_at)), " → ",
      c.disconnected_at ? fmtTime(c.disconnected_at) : "still connected",
      h("div", { class: "muted" }, [c.transport, c.remote_addr, c.serving_instance,
        c.duration_seconds != null ? `${c.duration_seconds.toFixed(1)} s` : null,
        c.disconnect_reason].filter(Boolean).join(" · "))))));
  if (!items.length) history.append(h("li", {}, h("span", {}), "No connections recorded."));
}
