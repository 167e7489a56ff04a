// The configs pages: the list with a form for a new config version (#/x/configs), and one
// config's page (#/x/configs/{name}): its versions with how many agents applied each, the
// failures agents reported, the latest files, a new version prefilled from them, and delete.
import { debounce, h, page, table } from "./dom.js";
import { APIError, api, send, showError } from "./api.js";
import { enc, fmtTime, short } from "./format.js";
import { actionForm, confirmButton, field, listFailed, message } from "./forms.js";

const CONTENT_TYPES = ["text/yaml", "application/json", "text/plain", "application/toml"];

// The form for a new version; `form.onSaved(version)` runs after one is created.
function configForm(prefill) {
  const name = h("input", { required: true, autocomplete: "off", value: prefill.name || "" });
  const file = h("input", { autocomplete: "off", value: prefill.file ?? "config.yaml" });
  const type = h("input", { list: "content-types", autocomplete: "off",
    value: prefill.content_type || "text/yaml" });
  const body = h("textarea", { rows: 10, spellcheck: "false" });
  body.value = prefill.body || "";
  const form = actionForm("config-form", prefill.name ? "New version" : "Create a config version", [
    h("datalist", { id: "content-types" }, ...CONTENT_TYPES.map((v) => h("option", { value: v }))),
    field("config-name", "Name", name),
    field("config-file", "File name", file, "The key in the agent's config map."),
    field("config-type", "Content type", type),
    field("config-body", "Body", body)], "Create version", async () => {
    const data = await send("POST", "/api/configs", { name: name.value.trim(),
      files: { [file.value.trim()]: { body: body.value, content_type: type.value.trim() } } });
    const v = data.version;
    form.onSaved(v);
    return data.created ? `Created version ${v.version} of ${v.name}.`
      : `Identical to version ${v.version} of ${v.name}: nothing created.`;
  });
  form.fields = { name, file, type, body };
  form.onSaved = () => {};
  return form;
}

export function configsPage(args) {
  if (args[0]) return configPage(args[0]);
  const list = h("div", { class: "card", id: "configs" }, "Loading…");
  const form = configForm({});
  page.replaceChildren(h("h1", {}, "Configs"), list, form);
  form.onSaved = () => refresh();
  async function refresh() {
    try {
      const data = await api("/api/configs");
      list.replaceChildren(table("config-rows", ["Name", "Latest", "Versions", "Hash", "Updated"],
        data.configs.map((c) => h("tr", { "data-config": c.name },
          h("td", {}, h("a", { href: "#/x/configs/" + enc(c.name) }, c.name)),
          h("td", {}, "v" + c.latest_version), h("td", {}, c.versions), h("td", {}, short(c.hash)),
          h("td", {}, fmtTime(c.updated_at)))), "No configs yet."));
    } catch (err) {
      listFailed(list, err);
    }
  }
  const reconcile = debounce(refresh, 1000);
  return { refresh, onEvent(ev) { if (ev.type === "config.changed") reconcile(); } };
}

function configPage(name) {
  const path = "/api/configs/" + enc(name);
  const ui = configLayout(name, path);
  let touched = false; // the user typed in the form: the latest files no longer replace it
  ui.form.addEventListener("input", () => { touched = true; });
  ui.form.onSaved = () => { touched = false; refresh(); };
  async function refresh() {
    try {
      const [detail, status] = await Promise.all([api(path), api(path + "/status")]);
      renderVersions(ui, detail, status);
      if (!detail.versions.length) return;
      const latest = await api(`${path}/versions/${detail.versions[0].version}`);
      renderLatest(ui, latest, touched);
    } catch (err) {
      if (err instanceof APIError && err.status === 404) ui.versions.replaceChildren(h("p", {}, "No such config."));
      else showError(err);
    }
  }
  const reconcile = debounce(refresh, 1000);
  return { refresh, onEvent(ev) {
    if (ev.type === "config.changed" || ev.type === "agent.config_status") reconcile();
  } };
}

function configLayout(name, path) {
  const ui = { versions: h("div", { id: "config-versions" }, "Loading…"),
    errors: h("div", { id: "config-errors" }), files: h("div", { id: "config-files" }),
    form: configForm({ name }) };
  const msg = message("config-delete-msg");
  page.replaceChildren(h("p", {}, h("a", { href: "#/x/configs" }, "← Configs")),
    h("h1", {}, "Config ", h("code", {}, name)),
    h("div", { class: "card" }, h("h2", {}, "Versions and agents"), ui.versions, ui.errors),
    h("div", { class: "card" }, h("h2", {}, "Latest files"), ui.files), ui.form,
    h("div", { class: "card" }, h("h2", {}, "Delete"), h("p", { class: "muted" },
      "Deletes every version; refused while a group, a pin or a rollout uses it."),
    confirmButton("Delete config", msg, async () => {
      const data = await send("DELETE", path);
      return `Deleted ${data.name} (${data.deleted_versions} versions).`;
    }, { id: "config-delete" }), msg));
  return ui;
}

function renderVersions(ui, detail, status) {
  const counts = new Map(status.versions.map((v) => [v.version, v]));
  ui.versions.replaceChildren(table("config-version-rows", ["Version", "Hash", "Size", "Created",
    "Applied", "Applying", "Failed", "Unset"], detail.versions.map((v) => {
    const c = counts.get(v.version) || {};
    return h("tr", { "data-version": v.version }, h("td", {}, "v" + v.version),
      h("td", {}, short(v.hash)), h("td", {}, v.size_bytes + " B"),
      h("td", {}, fmtTime(v.created_at), h("div", { class: "muted" }, v.created_by)),
      h("td", {}, c.applied || 0), h("td", {}, c.applying || 0), h("td", {}, c.failed || 0),
      h("td", {}, c.unset || 0));
  }), "No versions."));
  ui.errors.replaceChildren(...(status.errors.length ? [h("h3", {}, "Failures"),
    h("ul", {}, ...status.errors.map((e) => h("li", {}, `v${e.version}: ${e.agents} agents: `,
      h("code", {}, e.error))))] : []));
}

// The latest version's files, and the form prefilled with its first file unless touched.
function renderLatest(ui, latest, touched) {
  const entries = Object.entries(latest.files);
  ui.files.replaceChildren(...entries.flatMap(([fname, f]) => [h("h3", {}, fname || "(default)",
    " ", h("span", { class: "muted" }, f.content_type)), h("pre", {}, f.body)]));
  if (!touched && entries.length) {
    const [fname, f] = entries[0];
    ui.form.fields.file.value = fname;
    ui.form.fields.type.value = f.content_type;
    ui.form.fields.body.value = f.body;
  }
}
