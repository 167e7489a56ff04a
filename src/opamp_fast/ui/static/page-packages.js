// The packages pages: the list (#/x/packages) and one package's versions
// (#/x/packages/{name}), each with the upload form (its progress on the form's message line)
// and, per version, a two-press delete.
import { debounce, h, page, table } from "./dom.js";
import { APIError, InputError, api, send, showError, upload } from "./api.js";
import { enc, fmtTime, short } from "./format.js";
import { actionForm, confirmButton, field, listFailed, message, say } from "./forms.js";

const mb = (n) => (n / 1048576).toFixed(1) + " MiB";

function packageForm(name, onSaved) {
  const pname = h("input", { required: true, autocomplete: "off", value: name || "" });
  const version = h("input", { required: true, autocomplete: "off", placeholder: "1.2.3" });
  const type = h("select", {}, h("option", { value: "top_level" }, "top_level"),
    h("option", { value: "addon" }, "addon"));
  const file = h("input", { type: "file", required: true });
  const form = actionForm("package-form", "Upload a package version", [
    field("package-name", "Name", pname), field("package-version", "Version", version,
      "A semantic version, e.g. 1.2.3 or 2.0.0-rc.1."),
    field("package-type", "Type", type), field("package-file", "File", file)], "Upload", async () => {
    if (!file.files.length) throw new InputError("File: choose a file to upload.");
    const data = new FormData();
    data.append("name", pname.value.trim());
    data.append("version", version.value.trim());
    data.append("type", type.value);
    data.append("file", file.files[0]);
    const v = await upload("/api/packages", data, (sent, total) => say(form.msg, "busy",
      `Uploading: ${Math.floor((100 * sent) / total)}% (${mb(sent)} of ${mb(total)})`));
    onSaved();
    return `Uploaded ${v.name} ${v.version} (${v.size_bytes} bytes, sha256 ${v.sha256.slice(0, 12)}…).`;
  });
  return form;
}

// Both pages reload on a package.changed event, a second after the last.
function livePage(refresh) {
  const reconcile = debounce(refresh, 1000);
  return { refresh, onEvent(ev) { if (ev.type === "package.changed") reconcile(); } };
}

export function packagesPage(args) {
  if (args[0]) return packagePage(args[0]);
  const list = h("div", { class: "card", id: "packages" }, "Loading…");
  page.replaceChildren(h("h1", {}, "Packages"), list, packageForm("", () => refresh()));
  async function refresh() {
    try {
      const data = await api("/api/packages");
      list.replaceChildren(table("package-rows", ["Name", "Latest", "Versions"],
        data.packages.map((p) => h("tr", { "data-package": p.name },
          h("td", {}, h("a", { href: "#/x/packages/" + enc(p.name) }, p.name)),
          h("td", {}, p.latest_version), h("td", {}, p.versions))), "No packages yet."));
    } catch (err) {
      listFailed(list, err);
    }
  }
  return livePage(refresh);
}

function packagePage(name) {
  const path = "/api/packages/" + enc(name);
  const list = h("div", { id: "package-versions" }, "Loading…");
  const msg = message("package-versions-msg");
  page.replaceChildren(h("p", {}, h("a", { href: "#/x/packages" }, "← Packages")),
    h("h1", {}, "Package ", h("code", {}, name)),
    h("div", { class: "card" }, h("h2", {}, "Versions"), list, msg), packageForm(name, () => refresh()));
  const row = (v) => h("tr", { "data-version": v.version },
    h("td", {}, v.version), h("td", {}, v.type), h("td", {}, v.size_bytes + " B"),
    h("td", {}, short(v.sha256)), h("td", {}, fmtTime(v.created_at)),
    h("td", {}, confirmButton("Delete", msg, async () => {
      await send("DELETE", `${path}/${enc(v.version)}`);
      refresh();
      return `Deleted ${name} ${v.version}.`;
    }, { "aria-label": `Delete version ${v.version}` })));
  async function refresh() {
    try {
      const data = await api(path);
      list.replaceChildren(table("package-version-rows", ["Version", "Type", "Size", "SHA-256",
        "Uploaded", ""], data.versions.map(row), "No versions."));
    } catch (err) {
      if (err instanceof APIError && err.status === 404) list.replaceChildren(h("p", {}, "No such package."));
      else showError(err);
    }
  }
  return livePage(refresh);
}
