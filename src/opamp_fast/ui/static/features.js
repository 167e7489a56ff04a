// The pages of optional features (configs, groups, packages, audit): each appears in the
// navigation when the server's OpenAPI document lists its collection, so a server without a
// feature shows no dead link.
import { $, h } from "./dom.js";
import { allowed } from "./roles.js";

const EXTRA_PAGES = ["configs", "groups", "packages", "audit"];
let extraPages = [];

export const hasPage = (name) => extraPages.includes(name);

export async function discoverPages() {
  extraPages = [];
  try {
    const spec = await (await fetch("/openapi.json")).json();
    for (const name of EXTRA_PAGES) {
      if (name === "audit" && !allowed("operator")) continue; // reading it needs operator
      const path = "/api/" + name;
      if (spec.paths && spec.paths[path] && spec.paths[path].get) extraPages.push(name);
    }
  } catch (e) {
    extraPages = [];
  }
  const nav = $("#extra-nav");
  nav.replaceChildren(
    ...extraPages.map((n) => h("a", { href: "#/x/" + n, "data-page": "x/" + n }, n))
  );
}
