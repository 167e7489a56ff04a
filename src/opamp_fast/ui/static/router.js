// The router: the address's hash picks the page (#/overview, #/agents, #/agents/{id},
// #/availability, #/x/{feature}/...), and the page shown receives the live events. A page is an object
// {refresh(), onEvent(ev)} that has already drawn its skeleton into #page.
import { banner } from "./dom.js";
import { bearer, onSignOut } from "./session.js";
import { hasPage } from "./features.js";
import { overviewPage } from "./page-overview.js";
import { agentsPage } from "./page-agents.js";
import { agentPage } from "./page-agent.js";
import { availabilityPage } from "./page-availability.js";
import { configsPage } from "./page-configs.js";
import { groupsPage } from "./page-groups.js";
import { packagesPage } from "./page-packages.js";
import { auditPage } from "./page-audit.js";
import { genericPage } from "./page-generic.js";

// Feature pages take (args: the path's further segments, params: the query, name).
const FEATURE_PAGES = { configs: configsPage, groups: groupsPage, packages: packagesPage,
  audit: auditPage };

let view = null; // the page shown

onSignOut(() => {
  view = null;
});

export function route() {
  if (!bearer()) return;
  banner("");
  const hash = location.hash || "#/overview";
  const [path, query] = hash.slice(2).split("?");
  const parts = path.split("/");
  markCurrent(path);
  const params = new URLSearchParams(query || "");
  if (parts[0] === "agents" && parts[1]) view = agentPage(decodeURIComponent(parts[1]));
  else if (parts[0] === "agents") view = agentsPage(params);
  else if (parts[0] === "availability") view = availabilityPage(params);
  else if (parts[0] === "x" && hasPage(parts[1])) {
    const args = parts.slice(2).filter(Boolean).map(decodeURIComponent);
    view = (FEATURE_PAGES[parts[1]] || genericPage)(args, params, parts[1]);
  }
  else view = overviewPage();
  view.refresh();
}

function markCurrent(path) {
  for (const a of document.querySelectorAll("#nav a[data-page]")) {
    const current = path === a.dataset.page || path.startsWith(a.dataset.page + "/");
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

// What the event stream delivers to: the page shown, if any.
export const toView = {
  onEvent(ev) {
    if (view) view.onEvent(ev);
  },
  onResync() {
    if (view) view.refresh();
  },
};
