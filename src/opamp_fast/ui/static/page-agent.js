// An agent's page (#/agents/{id}): what it reported (description, health, capabilities,
// remote config status, effective config, components, custom capabilities), what is assigned
// to it, its connection settings (own telemetry, OpAMP, client certificate), its custom
// messages, its availability over the last day (a strip), a drift badge, its connection
// history, and the actions on it (agent-actions.js). Live: its status pill follows connects
// and disconnects at once, a debounced reload brings the rest.
import { debounce, h, page, pill, table } from "./dom.js";
import { APIError, api, showError } from "./api.js";
import { cut, fmtTime } from "./format.js";
import { agentActions } from "./agent-actions.js";
import { availabilityStrip } from "./strip.js";

export function agentPage(id) {
  const ui = {
    head: h("div", { class: "card", id: "agent-head" }, "Loading…"),
    parts: h("div", { class: "grid", id: "agent-parts" }),
    history: h("ol", { class: "timeline", id: "history" }),
    messages: h("div", { id: "custom-messages" }),
    strip: h("div", { id: "availability-strip" }),
    uptime: h("p", { class: "muted", id: "agent-uptime" }),
    actions: agentActions(id, () => refresh()),
  };
  page.replaceChildren(h("p", {}, h("a", { href: "#/agents" }, "← Agents")), ui.head,
    h("div", { class: "card" }, h("h2", {}, "Availability, last 24 hours"), ui.strip, ui.uptime),
    ui.parts, ui.actions.card,
    h("div", { class: "card" }, h("h2", {}, "Custom messages"), ui.messages),
    h("div", { class: "card" }, h("h2", {}, "Connection history"), ui.history));
  async function refresh() {
    try {
      const path = "/api/agents/" + encodeURIComponent(id);
      const strip = loadStrip(ui, path); // on its own: the rest never waits for it
      const [a, hist, msgs] = await Promise.all([api(path),
        api(path + "/connection-history?limit=50"), api(path + "/custom-messages")]);
      renderAgent(ui, a);
      renderHistory(ui.history, hist.histories);
      renderMessages(ui.messages, msgs.messages);
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
      "last restart requested": fmtTime(a.last_restart_requested_at),
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
    section("Effective config", configText(a.effective_config)),
    section("Available components", components(a.available_components)),
    section("Custom capabilities", a.custom_capabilities && a.custom_capabilities.length ?
      h("ul", { id: "custom-capabilities-list" }, ...a.custom_capabilities.map((c) =>
        h("li", {}, h("code", {}, c)))) : notReported()),
    a.connection_settings ? connectionSettings(a.connection_settings) : null);
}

// What the agent is offered, part by part, and what it made of it; its client certificate.
// Header values arrive redacted: only their names are shown.
function connectionSettings(cs) {
  const rows = ["opamp", "metrics", "traces", "logs"].map((part) => {
    const p = cs[part];
    const where = p.endpoint || (part === "opamp" ? "(unchanged)" : "—");
    const extra = [Object.keys(p.headers || {}).length ? `headers: ${Object.keys(p.headers).join(", ")}` : null,
      p.heartbeat_interval_seconds ? `heartbeat ${p.heartbeat_interval_seconds} s` : null];
    return h("tr", { "data-part": part }, h("td", {}, part),
      h("td", {}, where, h("div", { class: "muted" }, extra.filter(Boolean).join(" · "))),
      h("td", {}, p.source || "—"), h("td", {}, h("span", { class: "offer-status" }, p.status)));
  });
  const reported = cs.reported ? `${cs.reported.status}${cs.reported.error_message ?
    ": " + cs.reported.error_message : ""} (${fmtTime(cs.reported.reported_at)})` : "not reported";
  return h("div", { class: "card span-all", id: "connection-settings" },
    h("h2", {}, "Connection settings"),
    kv({ group: cs.group || "—", "offered hash": cut(cs.offered_hash), "last reported": reported,
      "own override": cs.override ? "yes" : "no" }),
    table("connection-parts", ["Part", "Offered", "From", "Status"], rows, ""),
    h("h3", {}, "Client certificate"), certificate(cs.certificate));
}

function certificate(c) {
  if (!c) return h("p", { class: "muted", id: "certificate" }, "None issued by this server.");
  return h("div", { id: "certificate" }, kv({ serial: c.serial, "not after": fmtTime(c.not_after),
    "not before": fmtTime(c.not_before), origin: c.origin === "csr" ? "agent's CSR" : "rotation",
    issued: `${fmtTime(c.issued_at)} by ${c.issued_by}` }),
  c.expiring ? h("p", { class: "msg error", id: "certificate-expiring" },
    "Expires within 14 days: rotate it.") : null);
}

// {hash, components: {receivers: {sub_component_map: {otlp: {...}}}, ...}}: the types by kind.
function components(av) {
  if (!av || !av.components) return notReported();
  return h("dl", { class: "kv", id: "components" }, ...Object.entries(av.components).map(
    ([kind, d]) => [h("dt", {}, kind), h("dd", {},
      Object.keys(d.sub_component_map || {}).join(", ") || "—")]));
}

function renderMessages(el, items) {
  if (!items.length) {
    el.replaceChildren(h("p", { class: "muted" }, "None."));
    return;
  }
  el.replaceChildren(table("custom-message-rows", ["When", "Direction", "Capability", "Type",
    "Size", "Data"], items.map((m) => h("tr", {}, h("td", {}, fmtTime(m.at)),
    h("td", {}, m.direction === "to_agent" ? `to agent (${m.sent_by || "?"})` : "from agent"),
    h("td", {}, h("code", {}, m.capability)), h("td", {}, m.type), h("td", {}, `${m.size} B`),
    h("td", {}, h("code", {}, m.data.length > 24 ? cut(m.data) : m.data || "—"))))));
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
