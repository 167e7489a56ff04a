// The live event stream, /api/events, read with fetch because fetch can send the bearer token
// (EventSource cannot). A dropped stream is resumed from the last event id after a growing
// delay; the indicator in the header says whether the console is live.
import { $, banner } from "./dom.js";
import { APIError, EXPIRED, authorization, explain401 } from "./api.js";
import { bearer, onSignOut, signOut } from "./session.js";

let stream = null; // AbortController of the event stream
let lastEventId = null;

onSignOut(() => {
  if (stream) stream.abort();
  stream = null;
  lastEventId = null;
  $("#live").hidden = true;
});

function setLive(state, text) {
  const el = $("#live");
  el.hidden = false;
  el.className = "live " + state;
  el.textContent = text;
}

// `to` receives the stream: to.onEvent(ev) for each event, to.onResync() when events were lost.
export async function startStream(to) {
  if (stream) stream.abort();
  const controller = new AbortController();
  stream = controller;
  let delay = 1000;
  while (!controller.signal.aborted && bearer()) {
    try {
      await readStream(controller.signal, to);
      delay = 1000;
    } catch (err) {
      if (controller.signal.aborted) return;
      if (err instanceof APIError && (err.status === 401 || err.status === 403)) return;
    }
    if (controller.signal.aborted) return;
    setLive("off", "reconnecting…");
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

async function connect(signal) {
  const headers = authorization();
  if (lastEventId) headers["Last-Event-ID"] = lastEventId;
  const r = await fetch("/api/events", { headers, signal });
  if (r.ok) return r;
  let message = r.statusText;
  try {
    message = (await r.json()).error.message;
  } catch (e) {
    /* keep the status text */
  }
  if (r.status === 401) signOut(explain401(message));
  if (r.status === 403) banner("Your token lacks the role for the event stream: " + message);
  throw new APIError(r.status, "stream", message);
}

async function readStream(signal, to) {
  const r = await connect(signal);
  setLive("on", "live");
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      handleFrame(frame, to);
    }
  }
}

// One server-sent event: its `event`, `id` and `data` lines (comments and other fields skipped).
function parseFrame(frame) {
  const parsed = { type: "message", id: null, data: [] };
  for (const line of frame.split("\n")) {
    if (line.startsWith(":") || line === "") continue;
    const i = line.indexOf(":");
    const name = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (name === "event") parsed.type = value;
    else if (name === "id") parsed.id = value;
    else if (name === "data") parsed.data.push(value);
  }
  return parsed;
}

function handleFrame(frame, to) {
  const { type, id, data } = parseFrame(frame);
  if (id) lastEventId = id;
  if (!data.length) return;
  const ev = JSON.parse(data.join("\n"));
  if (type === "auth_expired") {
    signOut(EXPIRED);
    return;
  }
  if (type === "resync") {
    to.onResync();
    return;
  }
  to.onEvent(ev);
}
