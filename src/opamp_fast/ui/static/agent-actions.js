// The actions on an agent's page: its operator labels and its pinned config (when the server
// has configs), a restart and a custom message (operator), a disconnect and a certificate
// rotation (admin only). `reload` refreshes the page after a change.
import { h } from "./dom.js";
import { InputError, send } from "./api.js";
import { enc, fmtTime, ref } from "./format.js";
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
  const restart = restartForm(path, reload);
  const custom = customMessageForm(path, reload);
  forms.push(restart, custom, disconnectForm(path), rotateForm(path, reload));
  const card = h("div", { class: "grid", id: "agent-actions" }, ...forms);
  return {
    card,
    show(a) {
      if (labels) labels.show(a);
      restart.show(a);
      custom.show(a);
    },
  };
}

// The server refuses a restart (409) for an agent without the capability or offline; the form
// says so beforehand, from what the page last read.
function restartForm(path, reload) {
  const note = h("p", { class: "muted", id: "restart-note" });
  const form = actionForm("restart-form", "Restart", [note], "Restart agent", async () => {
    const data = await send("POST", path + "/restart");
    reload();
    const how = { pushed: "pushed now", next_poll: "sent with its next poll",
      routed: `routed to ${data.serving_instance}` }[data.delivery] || data.delivery;
    return `Restart requested (${how}).`;
  });
  form.show = (a) => {
    const accepts = (a.capabilities || []).includes("AcceptsRestartCommand");
    note.textContent = (accepts ? "Sends the agent a Restart command; its reconnect is " +
      "recorded as \"restart requested\"." : "This agent does not report " +
      "AcceptsRestartCommand: the server will refuse.") +
      ` Last requested: ${fmtTime(a.last_restart_requested_at)}.`;
  };
  return form;
}

// Data is taken as text and sent as its UTF-8 bytes (base64 on the wire of the API).
function customMessageForm(path, reload) {
  const caps = h("datalist", { id: "custom-capabilities" });
  const f = {
    capability: h("input", { list: "custom-capabilities", autocomplete: "off" }),
    type: h("input", { autocomplete: "off" }),
    data: h("textarea", { rows: 2, spellcheck: "false" }),
  };
  const form = actionForm("custom-form", "Custom message", [caps,
    field("custom-capability", "Capability", f.capability,
      "One the agent declared (its custom capabilities)."),
    field("custom-type", "Type", f.type),
    field("custom-data", "Data (text)", f.data, "Sent as UTF-8 bytes.")], "Send", async () => {
    const body = { capability: f.capability.value.trim(), type: f.type.value.trim(),
      data: base64(f.data.value) };
    if (!body.capability || !body.type) throw new InputError("Capability and type: required.");
    const data = await send("POST", path + "/custom-messages", body);
    reload();
    return `Custom message ${data.id} sent (${data.delivery.replace("_", " ")}).`;
  });
  form.show = (a) => {
    caps.replaceChildren(...(a.custom_capabilities || []).map((c) => h("option", { value: c })));
  };
  return form;
}

function base64(text) {
  let bin = "";
  for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
  return btoa(bin);
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
