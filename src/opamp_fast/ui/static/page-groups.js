// The groups page (#/x/groups): each group's selector, config, members (and how many could
// take the config, from their reported components), packages and rollout, with edit, restart,
// roll back and delete per row; the form that creates or updates a group, and the one that
// restarts a group's members in batches (with its progress and cancel).
import { debounce, h, page, pill, table } from "./dom.js";
import { InputError, api, send } from "./api.js";
import { enc, fmtTime, ref } from "./format.js";
import { lockForRole } from "./roles.js";
import { actionForm, confirmButton, field, fillConfigNames, listFailed, message, optionalInt,
  pairsText, parsePackages, parsePairs, run } from "./forms.js";

export function groupsPage() {
  const list = h("div", { id: "groups" }, "Loading…");
  const listMsg = message("groups-msg");
  const form = groupForm(() => refresh());
  const restart = restartForm();
  page.replaceChildren(h("h1", {}, "Groups"), h("div", { class: "card" }, list, listMsg), form,
    restart);
  async function refresh() {
    fillConfigNames(form.configs);
    try {
      const data = await api("/api/groups");
      list.replaceChildren(table("group-rows", ["Name", "Selector", "Config", "Members",
        "Packages", "Rollout", "Actions"], data.groups.map((g) => groupRow(g, listMsg, refresh,
        form.edit, restart.pick)), "No groups yet."));
    } catch (err) {
      listFailed(list, err);
    }
  }
  const reconcile = debounce(refresh, 1500);
  return { refresh, onEvent(ev) {
    if (ev.type === "config.changed" || ev.type === "agent.config_status" ||
      ev.type === "agent.connected" || ev.type === "agent.disconnected") reconcile();
  } };
}

const packagesText = (g, sep) => (g.packages || []).map((p) => `${p.name}@${p.version}`).join(sep);

function groupRow(g, listMsg, refresh, edit, pickRestart) {
  const editButton = lockForRole(h("button", { type: "button" }, "Edit"), "operator");
  editButton.addEventListener("click", () => edit(g));
  const restartButton = h("button", { type: "button", "data-action": "restart" }, "Restart…");
  restartButton.addEventListener("click", () => pickRestart(g.name));
  const back = lockForRole(h("button", { type: "button", "data-action": "rollback" },
    "Roll back"), "operator");
  back.addEventListener("click", () => run(listMsg, async () => {
    const after = await send("POST", `/api/groups/${enc(g.name)}/rollback`);
    refresh();
    return `Rolled ${g.name} back to ${ref(after.config)}.`;
  }));
  const remove = confirmButton("Delete", listMsg, async () => {
    await send("DELETE", "/api/groups/" + enc(g.name));
    refresh();
    return `Deleted group ${g.name}.`;
  });
  return h("tr", { "data-group": g.name }, h("td", {}, g.name),
    h("td", {}, h("code", {}, pairsText(g.selector) || "(every agent)")),
    h("td", {}, ref(g.config), g.previous ? h("div", { class: "muted" },
      "previous " + ref(g.previous)) : null),
    h("td", {}, `${g.members} (${g.online_members} online)`, fit(g.components)),
    h("td", {}, packagesText(g, ", ") || "—"),
    h("td", {}, rollout(g.rollout)),
    h("td", { class: "row-actions" }, editButton, restartButton, back, remove));
}

// How many members could take the group's config (their reported components).
function fit(c) {
  if (!c) return null;
  return h("div", { class: "muted", "data-components": c.config },
    `${c.compatible} can take it` + (c.incompatible ? `, ${c.incompatible} lack ` +
      "components" : "") + (c.unreported ? `, ${c.unreported} unreported` : ""));
}

// Restarts a group's members in batches; shows the latest restart's progress while it runs.
function restartForm() {
  const f = {
    name: h("input", { autocomplete: "off" }),
    batch: h("input", { inputmode: "numeric", autocomplete: "off", placeholder: "10" }),
    pause: h("input", { inputmode: "numeric", autocomplete: "off", placeholder: "30" }),
  };
  const progress = h("div", { id: "group-restart-progress", "aria-live": "polite" });
  const cancel = h("button", { type: "button", id: "group-restart-cancel" }, "Cancel restart");
  const path = () => {
    const name = f.name.value.trim();
    if (!name) throw new InputError("Group: required.");
    return `/api/groups/${enc(name)}/restart`;
  };
  let timer = null;
  const show = (r) => {
    progress.replaceChildren(h("div", {}, pill(r.state), ` ${r.group}: ${r.requested} ` +
      `requested, ${r.skipped} skipped of ${r.targets} (${r.progress_percent.toFixed(0)}%, ` +
      `${r.batches} batch${r.batches === 1 ? "" : "es"})`),
      r.next_batch_at ? h("div", { class: "muted" }, "next batch " + fmtTime(r.next_batch_at))
        : null);
    clearTimeout(timer);
    if (r.state === "running" && progress.isConnected) {
      timer = setTimeout(() => api(path()).then(show).catch(() => {}), 2000);
    }
  };
  const form = actionForm("group-restart-form", "Restart a group's members", [
    field("group-restart-name", "Group", f.name),
    h("div", { class: "pair" },
      field("group-restart-batch", "Batch %", f.batch, "Of the members, per batch (10)."),
      field("group-restart-pause", "Pause (s)", f.pause, "Between batches (30).")),
    h("p", { class: "muted" }, "Members that are online and accept restarts get a Restart " +
      "command, batch by batch."), progress], "Start restart", async () => {
    const body = {};
    const b = optionalInt(f.batch, "Batch %");
    const p = optionalInt(f.pause, "Pause (s)");
    if (b !== undefined) body.batch_percent = b;
    if (p !== undefined) body.pause_s = p;
    const r = await send("POST", path(), body);
    show(r);
    return `Restart of ${r.group} started: ${r.targets} member(s) to restart.`;
  }, cancel);
  cancel.addEventListener("click", () => run(form.msg, async () => {
    const r = await send("DELETE", path());
    show(r);
    return `Restart of ${r.group} cancelled.`;
  }));
  form.pick = (name) => {
    f.name.value = name;
    f.name.focus();
    api(path()).then(show).catch(() => progress.replaceChildren());
  };
  return form;
}

function rollout(r) {
  if (!r) return "—";
  return [h("div", {}, pill(r.state), ` ${ref(r.source)} → ${ref(r.to)}`),
    h("div", {}, `${r.progress_percent.toFixed(0)}%: ${r.applied} applied, ${r.failed} failed, ` +
      `${r.pending} pending of ${r.eligible} (${r.admitted} admitted)`),
    r.reason ? h("div", { class: "muted" }, r.reason) : null];
}

// The group form; `form.edit(group)` loads a group into it, `form.configs` is its datalist.
function groupForm(onSaved) {
  const f = {
    name: h("input", { required: true, autocomplete: "off" }),
    selector: h("textarea", { rows: 3, spellcheck: "false" }),
    config: h("input", { list: "group-configs", autocomplete: "off" }),
    version: h("input", { inputmode: "numeric", autocomplete: "off" }),
    batch: h("input", { inputmode: "numeric", autocomplete: "off" }),
    maxFailed: h("input", { inputmode: "numeric", autocomplete: "off" }),
    packages: h("textarea", { rows: 3, spellcheck: "false" }),
  };
  const configs = h("datalist", { id: "group-configs" });
  const form = actionForm("group-form", "Create or update a group", [configs,
    field("group-name", "Name", f.name),
    field("group-selector", "Selector (key=value, one a line)", f.selector,
      "Labels first, then the agent's attributes. Empty: every agent."),
    field("group-config", "Config name", f.config, "Empty: the group assigns no config."),
    field("group-version", "Version (optional)", f.version, "Empty: the latest version now."),
    h("div", { class: "pair" },
      field("group-batch", "Rollout batch %", f.batch, "Optional: roll out in batches."),
      field("group-max-failed", "Max failed %", f.maxFailed, "Optional; pauses beyond it.")),
    field("group-packages", "Packages (name@version, one a line)", f.packages,
      "Optional. A bare name means the latest version.")], "Save group", async () => {
    const body = groupBody(f);
    const g = await send("PUT", "/api/groups/" + enc(f.name.value.trim()), body);
    onSaved();
    return `Saved group ${g.name}: ${g.members} members (${g.online_members} online), config ` +
      `${ref(g.config)}` + (g.rollout ? `, rollout ${g.rollout.state}.` : ".");
  });
  form.configs = configs;
  form.edit = (g) => editGroup(f, g);
  return form;
}

// The PUT body from the form's fields (throws InputError on what cannot be right).
function groupBody(f) {
  const body = { selector: parsePairs(f.selector.value, "Selector"),
    config: f.config.value.trim() || null };
  const v = optionalInt(f.version, "Version");
  if (v !== undefined) body.version = v;
  const b = optionalInt(f.batch, "Rollout batch %");
  const m = optionalInt(f.maxFailed, "Max failed %");
  if (b !== undefined || m !== undefined) {
    body.rollout = {};
    if (b !== undefined) body.rollout.batch_percent = b;
    if (m !== undefined) body.rollout.max_failed_percent = m;
  }
  const pk = parsePackages(f.packages.value);
  if (pk.length) body.packages = pk;
  return body;
}

function editGroup(f, g) {
  f.name.value = g.name;
  f.selector.value = pairsText(g.selector);
  f.config.value = g.config ? g.config.name : "";
  f.version.value = g.config ? g.config.version : "";
  f.batch.value = "";
  f.maxFailed.value = "";
  f.packages.value = packagesText(g, "\n");
  f.name.focus();
}
