// Forms and actions, shared by every page that changes something. Every change is a form (or a
// button) with a message line next to it: progress, the result, or the API's error in words
// (status, code and message), announced to screen readers too. Also the parsing of what the
// forms take as text (key=value lines, name@version lines, whole numbers).
import { h } from "./dom.js";
import { APIError, InputError, api, describeError, showError } from "./api.js";
import { hasPage } from "./features.js";
import { allowed, formRole, lockForRole, roleNote } from "./roles.js";

export function say(msg, kind, text) {
  msg.className = "msg " + kind;
  msg.textContent = text || "";
}

// Runs `act` (which returns the success text or throws) unless the line is busy with another.
export async function run(msg, act) {
  if (msg.dataset.busy) return;
  msg.dataset.busy = "1";
  say(msg, "busy", "Working…");
  try {
    say(msg, "ok", await act());
  } catch (err) {
    if (err instanceof APIError && err.status === 401) return; // signed out, saying why
    say(msg, "error", describeError(err));
  } finally {
    delete msg.dataset.busy;
  }
}

export const message = (id) => h("p", { id, class: "msg", role: "status", "aria-live": "polite" });

export function field(id, label, control, hint) {
  control.id = id;
  if (hint) control.setAttribute("aria-describedby", id + "-hint");
  return h("div", { class: "field" }, h("label", { for: id }, label), control,
    hint ? h("div", { class: "hint muted", id: id + "-hint" }, hint) : null);
}

// A form: `act` returns the success text (or throws); extra buttons go next to the submit one.
// A role too low for the form disables its controls and says which role it needs.
export function actionForm(id, title, fields, submitLabel, act, ...buttons) {
  const msg = message(id + "-msg");
  const needs = formRole(id);
  const controls = h("fieldset", { class: "controls", disabled: !allowed(needs) }, ...fields,
    h("div", { class: "buttons" }, h("button", { type: "submit", id: id + "-submit" }, submitLabel),
      ...buttons));
  const form = h("form", { id, class: "card action", "aria-labelledby": id + "-title" },
    h("h2", { id: id + "-title" }, title), roleNote(id, needs), controls, msg);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    run(msg, act);
  });
  form.msg = msg;
  return form;
}

// A filter form: submitting it puts its non-empty `values()` ({key: value}) into the address
// after `base`, and the router loads the page from there (so a filtered page can be bookmarked).
export function filterOnSubmit(form, base, values) {
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(values())) if (v) p.set(k, v);
    location.hash = base + (p.toString() ? "?" + p : "");
  });
}

// Deleting takes two presses of the same button (no modal dialog; keyboard friendly).
export function confirmButton(label, msg, act, attrs) {
  const b = h("button", { type: "button", class: "danger", ...(attrs || {}) }, label);
  lockForRole(b, "operator");
  let timer = null;
  b.addEventListener("click", () => {
    if (!timer) {
      b.textContent = "Press again to " + label.toLowerCase();
      timer = setTimeout(() => { timer = null; b.textContent = label; }, 5000);
      return;
    }
    clearTimeout(timer);
    timer = null;
    b.textContent = label;
    run(msg, act);
  });
  return b;
}

// A list that could not load: the error in words in its place, and on the banner.
export function listFailed(list, err) {
  list.replaceChildren(h("p", { class: "msg error" }, describeError(err)));
  showError(err);
}

// `key=value` lines (blank lines and `#` comments skipped) -> {key: value}.
export function parsePairs(text, what) {
  const out = {};
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith("#")) return;
    const at = line.indexOf("=");
    if (at <= 0) throw new InputError(`${what}, line ${i + 1}: expected key=value, got "${line}"`);
    out[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  });
  return out;
}
export const pairsText = (obj) => Object.entries(obj || {}).map(([k, v]) => `${k}=${v}`).join("\n");

// `name@version` lines -> [{name, version}]; a bare name means the latest version.
export function parsePackages(text) {
  return text.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#")).map((l) => {
    const at = l.lastIndexOf("@");
    return at > 0 ? { name: l.slice(0, at), version: l.slice(at + 1) } : { name: l };
  });
}

export function optionalInt(input, what) {
  const v = input.value.trim();
  if (!v) return undefined;
  if (!/^\d+$/.test(v)) throw new InputError(`${what}: a whole number, got "${v}"`);
  return Number(v);
}

// The config names, for the datalists of the group and pin forms (best effort).
export async function fillConfigNames(list) {
  if (!hasPage("configs")) return;
  try {
    const data = await api("/api/configs");
    list.replaceChildren(...data.configs.map((c) => h("option", { value: c.name })));
  } catch (e) {
    /* the forms still work by typing the name */
  }
}
