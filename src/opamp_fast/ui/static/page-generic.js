// A feature page without a page of its own: its list endpoint's items as a plain table (the
// first eight fields any of the first fifty items has). Every feature the console discovers
// has its own page today; this is what the router falls back to.
import { h, page } from "./dom.js";
import { api, showError } from "./api.js";

export function genericPage(args, params, name) {
  const body = h("div", { class: "card", id: "generic" }, "Loading…");
  page.replaceChildren(h("h1", {}, name[0].toUpperCase() + name.slice(1)), body);
  async function refresh() {
    try {
      const data = await api("/api/" + name);
      const items = Array.isArray(data) ? data : Object.values(data).find(Array.isArray) || [];
      const cols = [...new Set(items.slice(0, 50).flatMap((i) => Object.keys(i)))].slice(0, 8);
      body.replaceChildren(items.length ? h("table", {},
        h("thead", {}, h("tr", {}, ...cols.map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, ...items.map((i) => h("tr", {}, ...cols.map((c) =>
          h("td", {}, typeof i[c] === "object" && i[c] !== null ? JSON.stringify(i[c]) : String(i[c] ?? "—"))))))) :
        h("p", { class: "muted" }, "Nothing here yet."));
    } catch (err) {
      showError(err);
    }
  }
  return { refresh, onEvent() {} };
}
