// The audit log (#/x/audit?actor=&action=&target=, operator and up): every change made through
// the API, newest first, filtered from the address and paged by cursor. Not live: an audit
// entry has no event of its own.
import { h, page, pager, table } from "./dom.js";
import { api, describeError, showError } from "./api.js";
import { fmtTime } from "./format.js";
import { filterOnSubmit, message, say } from "./forms.js";

const FILTERS = ["actor", "action", "target"];
const EXAMPLES = { actor: "token subject", action: "group.put", target: "group:prod" };

export function auditPage(args, params) {
  const ui = { form: filters(params), list: h("div", { id: "audit" }, "Loading…"),
    msg: message("audit-msg"),
    prev: h("button", { type: "button", id: "audit-prev", disabled: true }, "Newer"),
    next: h("button", { type: "button", id: "audit-next", disabled: true }, "Older") };
  page.replaceChildren(h("h1", {}, "Audit log"), ui.form,
    h("div", { class: "card" }, ui.list, h("div", { class: "pager" }, ui.prev, ui.next), ui.msg));
  const cursors = [null];
  async function refresh() {
    const p = new URLSearchParams({ limit: 50 });
    for (const k of FILTERS) if (params.get(k)) p.set(k, params.get(k));
    if (cursors[cursors.length - 1]) p.set("cursor", cursors[cursors.length - 1]);
    try {
      const data = await api("/api/audit?" + p);
      say(ui.msg, "", "");
      ui.list.replaceChildren(table("audit-rows", ["When", "Actor", "Action", "Target", "Outcome",
        "Change", "Request"], data.entries.map(row), "No entries match."));
      pager(ui.prev, ui.next, cursors, data.next_cursor, refresh);
    } catch (err) {
      ui.list.replaceChildren();
      say(ui.msg, "error", describeError(err));
      showError(err);
    }
  }
  return { refresh, onEvent() {} };
}

function filters(params) {
  const inputs = {};
  const fields = FILTERS.map((k) => {
    inputs[k] = h("input", { autocomplete: "off", value: params.get(k) || "",
      placeholder: EXAMPLES[k] });
    return h("div", {}, h("label", { for: "audit-" + k }, k[0].toUpperCase() + k.slice(1)),
      Object.assign(inputs[k], { id: "audit-" + k }));
  });
  const form = h("form", { class: "filters card", role: "search", id: "audit-filters" }, ...fields,
    h("button", { type: "submit" }, "Apply"));
  filterOnSubmit(form, "#/x/audit", () =>
    Object.fromEntries(Object.entries(inputs).map(([k, el]) => [k, el.value.trim()])));
  return form;
}

const change = (e) => (e.before === null && e.after === null ? "—" : h("details", {},
  h("summary", {}, "before / after"), h("pre", {}, JSON.stringify({ before: e.before, after: e.after }, null, 2))));

const row = (e) => h("tr", { "data-id": e.id },
  h("td", {}, fmtTime(e.at)), h("td", {}, e.actor, h("div", { class: "muted" }, e.role)),
  h("td", {}, e.action), h("td", {}, e.target), h("td", {}, e.outcome), h("td", {}, change(e)),
  h("td", { class: "muted" }, e.request_id || "—", h("div", {}, e.client_addr || "")));
