// The agent list (#/agents?q=&status=&label=&recent=&drifted=): filters kept in the address,
// pages by cursor. `recent=1` hides agents offline for more than a day; `drifted=true` shows
// only the agents whose config drifted (a badge marks them in any list).
// Live: a row changes status when its agent connects or disconnects, an agent that connects
// and belongs on the first page is inserted in order; a debounced reload then checks it all.
import { debounce, h, page, pager, pill } from "./dom.js";
import { api, showError } from "./api.js";
import { fmtTime } from "./format.js";
import { filterOnSubmit } from "./forms.js";

const PAGE_SIZE = 25;
const FILTERS = ["q", "status", "label", "drifted"];
const DAY_S = 86400;

export function agentsPage(params) {
  const ui = layout(params);
  // cursors: the cursor of each page visited, the last one shown; rows: the agents shown.
  const state = { params, ui, cursors: [null], rows: [], hasNext: false };
  const refresh = () => load(state, refresh);
  const reconcile = debounce(refresh, 1500);
  return {
    refresh,
    onEvent(ev) {
      if (!ev.agent || !ev.type.startsWith("agent.")) return;
      if (ev.type === "agent.connected" || ev.type === "agent.disconnected") liveStatus(state, ev);
      reconcile();
    },
  };
}

function layout(params) {
  const ui = { form: filters(params) };
  ui.body = h("tbody", { id: "agent-rows" });
  ui.info = h("span", { class: "muted", id: "agent-total" });
  ui.prev = h("button", { type: "button", id: "prev", disabled: true }, "Previous");
  ui.next = h("button", { type: "button", id: "next", disabled: true }, "Next");
  const th = (text, narrow) => h("th", { scope: "col", class: narrow ? "hide-narrow" : null }, text);
  page.replaceChildren(h("h1", {}, "Agents"), ui.form,
    h("div", { class: "card" },
      h("table", {}, h("thead", {}, h("tr", {}, th("Name"), th("Status"), th("Transport"),
        th("Id", true), th("Last seen", true))), ui.body),
      h("div", { class: "pager" }, ui.prev, ui.next, ui.info)));
  return ui;
}

function filters(params) {
  const q = h("input", { id: "search", type: "search", value: params.get("q") || "",
    placeholder: "name prefix" });
  const status = h("select", { id: "status-filter" },
    ...["", "online", "offline"].map((v) => h("option", { value: v,
      selected: (params.get("status") || "") === v }, v || "any")));
  const label = h("input", { id: "label-filter", value: params.get("label") || "",
    placeholder: "key:value" });
  const recent = h("input", { id: "recent-filter", type: "checkbox",
    checked: params.get("recent") === "1" });
  const drifted = h("input", { id: "drifted-filter", type: "checkbox",
    checked: params.get("drifted") === "true" });
  const form = h("form", { class: "filters card", role: "search" },
    h("div", {}, h("label", { for: "search" }, "Search by name"), q),
    h("div", {}, h("label", { for: "status-filter" }, "Status"), status),
    h("div", {}, h("label", { for: "label-filter" }, "Label"), label),
    h("button", { type: "submit" }, "Apply"),
    h("label", { class: "inline-check" }, recent, "Hide agents offline for more than a day"),
    h("label", { class: "inline-check" }, drifted, "Only agents whose config drifted"));
  filterOnSubmit(form, "#/agents", () => ({ q: q.value, status: status.value, label: label.value,
    recent: recent.checked ? "1" : "", drifted: drifted.checked ? "true" : "" }));
  return form;
}

function row(a, fresh) {
  return h("tr", { id: "row-" + a.id, class: fresh ? "fresh" : null, "data-agent": a.id },
    h("td", {}, h("a", { href: "#/agents/" + a.id }, a.name || "(unnamed)"),
      a.drifted_at ? h("span", { class: "badge", title: "config drifted since " +
        fmtTime(a.drifted_at) }, "drifted") : null),
    h("td", { class: "status" }, pill(a.status)),
    h("td", {}, a.transport || "—"),
    h("td", { class: "hide-narrow" }, h("code", {}, a.id)),
    h("td", { class: "hide-narrow" }, fmtTime(a.last_seen_at)));
}

async function load(state, refresh) {
  const { params, ui, cursors } = state;
  const p = new URLSearchParams({ limit: PAGE_SIZE });
  for (const key of FILTERS) if (params.get(key)) p.set(key, params.get(key));
  if (params.get("recent") === "1") p.set("max_offline_s", DAY_S);
  const cursor = cursors[cursors.length - 1];
  if (cursor) p.set("cursor", cursor);
  try {
    const data = await api("/api/agents?" + p);
    state.rows = data.agents;
    state.hasNext = Boolean(data.next_cursor);
    ui.body.replaceChildren(...state.rows.map((a) => row(a, false)));
    if (!state.rows.length) ui.body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No agents match.")));
    ui.info.textContent = `${data.total} agents`;
    pager(ui.prev, ui.next, cursors, data.next_cursor, refresh);
  } catch (err) {
    showError(err);
  }
}

// Whether an agent the stream announces belongs in this filtered list, as far as the event
// tells (labels are not in events: those wait for the reload).
function matches(params, ev) {
  const name = (ev.data.name || "").toLowerCase();
  if (params.get("label") || params.get("drifted")) return false;
  if (params.get("status") === "offline") return false;
  return !params.get("q") || name.startsWith(params.get("q").toLowerCase());
}

function liveStatus(state, ev) {
  const st = ev.type === "agent.connected" ? "online" : "offline";
  const tr = document.getElementById("row-" + ev.agent);
  if (tr) {
    tr.querySelector(".status").replaceChildren(pill(st));
    tr.classList.remove("fresh");
    void tr.offsetWidth; // restart the highlight
    tr.classList.add("fresh");
  } else if (st === "online" && state.cursors.length === 1 && matches(state.params, ev)) {
    insert(state, { id: ev.agent, name: ev.data.name, status: "online",
      transport: ev.data.transport, last_seen_at: ev.at });
  }
}

// A row for an agent that just connected, in id order, unless it belongs on a later page.
function insert(state, a) {
  const { rows, ui } = state;
  const before = rows.findIndex((r) => r.id > a.id);
  if (before < 0 && state.hasNext) return;
  const placeholder = ui.body.querySelector("td[colspan]");
  if (placeholder) placeholder.parentElement.remove();
  const el = row(a, true);
  if (before >= 0) ui.body.insertBefore(el, document.getElementById("row-" + rows[before].id));
  else ui.body.append(el);
  rows.splice(before >= 0 ? before : rows.length, 0, a);
}
