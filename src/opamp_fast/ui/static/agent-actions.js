// The actions on an agent's page: its operator labels and its pinned config (when the server
// has configs), a disconnect and a certificate rotation (admin only). `reload` refreshes the page after a change.
import { h } from "./dom.js";
import { InputError, send } from "./api.js";
import { enc, ref } from "./format.js";
import { hasPage } from "./features.js";
import { actionForm, field, fillConfigNames, optionalInt, pairsText, parsePairs, run } from "./forms.js";

// {card, show(agent)}: show() fills the labels box from the agent, unless the user is editing it.
export function agentActions(id, reload) {
  const path = "/api/agents/" + enc(id);
  const forms = [];
  let labels = null;
  if (hasPage("configs")) {
    labels = labelsForm(path, reload);
    forms.push(labels, pinForm(path, reload));
  }
  forms.push(disconnectForm(path), rotateForm(path, reload));
  const card = h("div", { class: "grid", id: "agent-actions" }, ...forms);
  return {
    card,
    show(a) {
      if (labels) labels.show(a);
    },
  };
}

function labelsForm(path, reload) {
  const box = h("textarea", { rows: 4, spellcheck: "false", autocomplete: "off" });
  let touched = false;
  box.addEventListener("input", () => { touched = true; });
  const form = actionForm("labels-form", "Labels", [field("labels", "Labels (key=value, one a line)",
    box, "Replaces the agent's operator labels; groups select agents by them.")], "Save labels",
  async () => {
    const data = await send("PUT", path + "/labels", { labels: parsePairs(box.value, "labels") });
    touched = false;
    box.value = pairsText(data.labels);
    reload();
    return `Labels saved (${Object.keys(data.labels).length}).`;
  });
  form.show = (a) => {
    if (!touched) box.value = pairsText(a.labels);
  };
  return form;
}

function pinForm(path, reload) {
  const configs = h("datalist", { id: "pin-configs" });
  const pinName = h("input", { list: "pin-configs", autocomplete: "off" });
  const pinVersion = h("input", { inputmode: "numeric", autocomplete: "off" });
  const unpin = h("button", { type: "button", id: "pin-form-unpin" }, "Unpin");
  const form = actionForm("pin-form", "Pin a config", [configs,
    field("pin-config", "Config name", pinName),
    field("pin-version", "Version (optional)", pinVersion, "Empty: the latest version now.")],
  "Pin", async () => {
    const body = { config: pinName.value.trim() };
    if (!body.config) throw new InputError("Config name: required (or press Unpin).");
    const version = optionalInt(pinVersion, "Version");
    if (version !== undefined) body.version = version;
    const data = await send("PUT", path + "/config", body);
    reload();
    return `Pinned to ${ref(data.pinned)}.`;
  }, unpin);
  unpin.addEventListener("click", () => run(form.msg, async () => {
    await send("PUT", path + "/config", { config: null });
    reload();
    return "Unpinned: the agent follows its group again.";
  }));
  fillConfigNames(configs);
  return form;
}

function disconnectForm(path) {
  return actionForm("disconnect-form", "Disconnect", [h("p", { class: "muted" },
    "Closes the agent's connection (needs the admin role); it may reconnect at once.")],
  "Disconnect", async () => {
    const data = await send("POST", path + "/disconnect");
    return `Disconnect sent to ${data.serving_instance || "its instance"}.`;
  });
}

function rotateForm(path, reload) {
  return actionForm("rotate-form", "Rotate client certificate", [h("p", { class: "muted" },
    "Offers the agent a new key and a certificate signed by the agent CA (needs the admin " +
    "role, the agent connected and accepting OpAMP connection settings).")],
  "Rotate", async () => {
    const data = await send("POST", path + "/rotate-certificate");
    setTimeout(reload, 1500); // the new serial once signed and stored
    return `Rotation sent to ${data.serving_instance || "its instance"}.`;
  });
}
