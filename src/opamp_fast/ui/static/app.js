// opamp-fast console: plain JavaScript, no build step, no external requests.
// Data: the REST API and the /api/events stream (read with fetch, which can send the bearer
// token; EventSource cannot). The token lives in sessionStorage (this tab only).
"use strict";
(() => {
  const TOKEN_KEY = "opamp-fast.token";
  const PAGE_SIZE = 25;
  const EXTRA_PAGES = ["configs", "groups", "packages", "audit"];
  const $ = (sel, root = document) => root.querySelector(sel);
  const page = $("#page");
  let token = sessionStorage.getItem(TOKEN_KEY);
  let view = null; // the current page: {onEvent(ev), refresh()}
  let stream = null; // AbortController of the event stream
  let lastEventId = null;
  let extraPages = [];
  // The signed-in token's role (GET /api/ui/me): forms it may not use are shown disabled, with
  // the role they need (the server checks anyway). Forms not listed need "operator".
  const RANK = { viewer: 0, operator: 1, admin: 2 };
  const FORM_ROLES = { "disconnect-form": "admin" };
  let role = "admin";
  const allowed = (minimum) => (RANK[role] ?? -1) >= RANK[minimum];

  // ------------------------------------------------------------------ small DOM helpers
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const svgNS = "http://www.w3.org/2000/svg";
  function s(tag, attrs, text) {
    const el = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }
  const fmtTime = (t) => (t ? new Date(t).toLocaleString() : "—");
  const pill = (status) => h("span", { class: "pill " + status, "data-status": status }, status);
  function debounce(fn, ms) {
    let timer = null;
    return () => {
      clearTimeout(timer);
      timer = setTimeout(fn, ms);
    };
  }
  function banner(text) {
    const el = $("#banner");
    el.textContent = text || "";
    el.hidden = !text;
  }

  // ------------------------------------------------------------------ API access
  class APIError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }
  class InputError extends Error {} // a form the browser can tell is wrong before sending it
  async function failure(r) {
    let code = "http_error";
    let message = r.status + " " + r.statusText;
    try {
      const body = await r.json();
      if (body && body.error) ({ code, message } = body.error);
    } catch (e) {
      /* not JSON: keep the status line */
    }
    return new APIError(r.status, code, message);
  }
  async function api(path) {
    const r = await fetch(path, { headers: { Authorization: "Bearer " + token } });
    if (r.ok) return r.json();
    const err = await failure(r);
    if (r.status === 401) signOut(explain401(err.message));
    else if (r.status === 403) banner("Your token lacks the role for this page: " + err.message);
    throw err;
  }
  // A change (POST, PUT, DELETE). Its errors are shown by the caller next to its form; only a
  // 401 ends the session here.
  async function send(method, path, body) {
    const headers = { Authorization: "Bearer " + token };
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    if (r.ok) return r.status === 204 ? null : r.json();
    const err = await failure(r);
    if (r.status === 401) signOut(explain401(err.message));
    throw err;
  }
  function describeError(err) {
    if (err instanceof InputError) return err.message;
    if (!(err instanceof APIError)) return "Request failed: " + (err && err.message ? err.message : err);
    const what = { 400: "Rejected", 403: "Not allowed", 404: "Not found", 409: "Conflict",
      413: "Too large" }[err.status] || "Failed";
    return `${what} (${err.status} ${err.code}): ${err.message}`;
  }
  function explain401(message) {
    if (/expired/i.test(message)) return "Your token has expired. Mint a new one and sign in.";
    return "The server rejected the token: " + message;
  }
  function showError(err) {
    if (err instanceof APIError && (err.status === 401 || err.status === 403)) return;
    banner("Could not load: " + (err && err.message ? err.message : err));
  }

  // ------------------------------------------------------------------ sign-in
  function signOut(message) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    if (stream) stream.abort();
    stream = null;
    lastEventId = null;
    view = null;
    $("#nav").hidden = true;
    $("#signout").hidden = true;
    $("#whoami").hidden = true;
    role = "admin";
    $("#live").hidden = true;
    page.hidden = true;
    page.replaceChildren();
    banner("");
    $("#signin").hidden = false;
    $("#signin-error").textContent = message || "";
    $("#token").focus();
  }
  async function signIn(candidate) {
    token = candidate.trim();
    try {
      await api("/api/agents/status/summary");
    } catch (err) {
      if (!(err instanceof APIError && err.status === 401)) {
        $("#signin-error").textContent = "Sign-in failed: " + err.message;
      }
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    try {
      const me = await api("/api/ui/me");
      role = me.role;
      $("#whoami").textContent = `${me.subject || "token"} (${me.role})`;
    } catch (err) {
      role = "admin"; // an older server: offer everything, the API still decides
      $("#whoami").textContent = "";
    }
    $("#whoami").hidden = false;
    $("#signin").hidden = true;
    $("#nav").hidden = false;
    $("#signout").hidden = false;
    page.hidden = false;
    await discoverPages();
    startStream();
    route();
  }
  $("#signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("#token").value);
  });
  $("#signout").addEventListener("click", () => signOut("Signed out."));

  // Pages of other features (configs, groups, packages, audit) appear when the API has them.
  async function discoverPages() {
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

  // ------------------------------------------------------------------ event stream
  function setLive(state, text) {
    const el = $("#live");
    el.hidden = false;
    el.className = "live " + state;
    el.textContent = text;
  }
  async function startStream() {
    if (stream) stream.abort();
    const controller = new AbortController();
    stream = controller;
    let delay = 1000;
    while (!controller.signal.aborted && token) {
      try {
        await readStream(controller.signal);
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
  async function readStream(signal) {
    const headers = { Authorization: "Bearer " + token };
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;
    const r = await fetch("/api/events", { headers, signal });
    if (!r.ok) {
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
        handleFrame(frame);
      }
    }
  }
  function handleFrame(frame) {
    let type = "message";
    let id = null;
    const data = [];
    for (const line of frame.split("\n")) {
      if (line.startsWith(":") || line === "") continue;
      const i = line.indexOf(":");
      const name = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (name === "event") type = value;
      else if (name === "id") id = value;
      else if (name === "data") data.push(value);
    }
    if (id) lastEventId = id;
    if (!data.length) return;
    const ev = JSON.parse(data.join("\n"));
    if (type === "auth_expired") {
      signOut("Your token has expired. Mint a new one and sign in.");
      return;
    }
    if (type === "resync") {
      if (view) view.refresh();
      return;
    }
    if (view) view.onEvent(ev);
  }

  // ------------------------------------------------------------------ router
  function route() {
    if (!token) return;
    banner("");
    const hash = location.hash || "#/overview";
    const [path, query] = hash.slice(2).split("?");
    const parts = path.split("/");
    for (const a of document.querySelectorAll("#nav a[data-page]")) {
      const current = path === a.dataset.page || path.startsWith(a.dataset.page + "/");
      if (current) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    const params = new URLSearchParams(query || "");
    if (parts[0] === "agents" && parts[1]) view = agentDetail(decodeURIComponent(parts[1]));
    else if (parts[0] === "agents") view = agentList(params);
    else if (parts[0] === "x" && extraPages.includes(parts[1])) {
      const args = parts.slice(2).filter(Boolean).map(decodeURIComponent);
      view = (FEATURE_PAGES[parts[1]] || genericList)(args, params, parts[1]);
    }
    else view = overview();
    view.refresh();
  }
  window.addEventListener("hashchange", route);

  // ------------------------------------------------------------------ overview
  function overview() {
    const online = h("span", { class: "n", id: "count-online" }, "…");
    const offline = h("span", { class: "n", id: "count-offline" }, "…");
    const total = h("span", { class: "n", id: "count-total" }, "…");
    const transports = h("tbody", { id: "by-transport" });
    const versions = h("tbody", { id: "by-version" });
    const chart = h("div", { id: "chart" });
    const groupTable = (caption, body) =>
      h("table", {}, h("caption", { class: "muted" }, caption),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, caption.split(" ").pop()),
          h("th", { scope: "col" }, "online"), h("th", { scope: "col" }, "offline"))), body);
    page.replaceChildren(
      h("h1", {}, "Fleet overview"),
      h("div", { class: "card stats" },
        h("div", { class: "stat" }, h("div", { class: "muted" }, "Online"), online),
        h("div", { class: "stat" }, h("div", { class: "muted" }, "Offline"), offline),
        h("div", { class: "stat" }, h("div", { class: "muted" }, "Total"), total)),
      h("div", { class: "grid" },
        h("div", { class: "card" }, h("h2", {}, "By transport"), groupTable("Agents by transport", transports)),
        h("div", { class: "card" }, h("h2", {}, "By version"), groupTable("Agents by version", versions))),
      h("div", { class: "card" }, h("h2", {}, "Online agents, last hour"), chart));
    let data = null;
    const known = new Map();
    const fill = (body, groups) =>
      body.replaceChildren(...groups.map((g) =>
        h("tr", {}, h("td", {}, g.key || "unknown"), h("td", {}, g.online), h("td", {}, g.offline))));
    function render() {
      online.textContent = data.online;
      offline.textContent = data.offline;
      total.textContent = data.total;
      fill(transports, data.by_transport);
      fill(versions, data.by_version);
      chart.replaceChildren(drawChart(data.online_history, data.online));
    }
    async function refresh() {
      try {
        data = await api("/api/ui/overview");
        known.clear();
        render();
      } catch (err) {
        showError(err);
      }
    }
    const reconcile = debounce(refresh, 1500);
    return {
      refresh,
      onEvent(ev) {
        if (!data) return;
        if (ev.type === "agent.connected" && known.get(ev.agent) !== "online") {
          data.online += 1;
          known.set(ev.agent, "online");
          render();
        } else if (ev.type === "agent.disconnected" && known.get(ev.agent) !== "offline") {
          data.online = Math.max(0, data.online - 1);
          known.set(ev.agent, "offline");
          render();
        }
        if (ev.type.startsWith("agent.") || ev.type === "instance.lost") reconcile();
      },
    };
  }
  function drawChart(points, current) {
    const W = 600, H = 160, L = 36, B = 20;
    const now = Date.now();
    const series = points.map((p) => [Date.parse(p.at), p.online]);
    series.push([now, current]);
    const max = Math.max(1, ...series.map((p) => p[1]));
    const x = (t) => L + ((t - (now - 3600e3)) / 3600e3) * (W - L - 4);
    const y = (v) => H - B - (v / max) * (H - B - 10);
    const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": `Online agents over the last hour, now ${current}, peak ${max}` });
    svg.append(s("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
    svg.append(s("text", { x: 2, y: 14 }, String(max)), s("text", { x: 2, y: H - B }, "0"));
    svg.append(s("text", { x: L, y: H - 4 }, "−60 min"), s("text", { x: W - 30, y: H - 4 }, "now"));
    const visible = series.filter((p) => p[0] >= now - 3600e3);
    const pts = visible.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
    if (pts.length === 1) pts.unshift(`${L},${y(visible[0][1]).toFixed(1)}`);
    const first = pts[0].split(",")[0];
    const last = pts[pts.length - 1].split(",")[0];
    svg.append(s("polygon", { class: "area",
      points: `${first},${H - B} ${pts.join(" ")} ${last},${H - B}` }));
    svg.append(s("polyline", { class: "line", points: pts.join(" ") }));
    return svg;
  }

  // ------------------------------------------------------------------ agent list
  function agentList(params) {
    const q = h("input", { id: "search", type: "search", value: params.get("q") || "",
      placeholder: "name prefix" });
    const status = h("select", { id: "status-filter" },
      ...["", "online", "offline"].map((v) => h("option", { value: v,
        selected: (params.get("status") || "") === v }, v || "any")));
    const label = h("input", { id: "label-filter", value: params.get("label") || "",
      placeholder: "key:value" });
    const body = h("tbody", { id: "agent-rows" });
    const info = h("span", { class: "muted", id: "agent-total" });
    const prev = h("button", { type: "button", id: "prev", disabled: true }, "Previous");
    const next = h("button", { type: "button", id: "next", disabled: true }, "Next");
    const form = h("form", { class: "filters card", role: "search" },
      h("div", {}, h("label", { for: "search" }, "Search by name"), q),
      h("div", {}, h("label", { for: "status-filter" }, "Status"), status),
      h("div", {}, h("label", { for: "label-filter" }, "Label"), label),
      h("button", { type: "submit" }, "Apply"));
    page.replaceChildren(h("h1", {}, "Agents"), form,
      h("div", { class: "card" },
        h("table", {}, h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Name"), h("th", { scope: "col" }, "Status"),
          h("th", { scope: "col" }, "Transport"), h("th", { scope: "col", class: "hide-narrow" }, "Id"),
          h("th", { scope: "col", class: "hide-narrow" }, "Last seen"))), body),
        h("div", { class: "pager" }, prev, next, info)));
    const cursors = [null]; // cursor of each page visited; the last one is shown
    let rows = [];
    let hasNext = false;
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const p = new URLSearchParams();
      if (q.value) p.set("q", q.value);
      if (status.value) p.set("status", status.value);
      if (label.value) p.set("label", label.value);
      location.hash = "#/agents" + (p.toString() ? "?" + p : "");
    });
    function row(a, fresh) {
      return h("tr", { id: "row-" + a.id, class: fresh ? "fresh" : null, "data-agent": a.id },
        h("td", {}, h("a", { href: "#/agents/" + a.id }, a.name || "(unnamed)")),
        h("td", { class: "status" }, pill(a.status)),
        h("td", {}, a.transport || "—"),
        h("td", { class: "hide-narrow" }, h("code", {}, a.id)),
        h("td", { class: "hide-narrow" }, fmtTime(a.last_seen_at)));
    }
    async function refresh() {
      const p = new URLSearchParams({ limit: PAGE_SIZE });
      for (const key of ["q", "status", "label"]) if (params.get(key)) p.set(key, params.get(key));
      const cursor = cursors[cursors.length - 1];
      if (cursor) p.set("cursor", cursor);
      try {
        const data = await api("/api/agents?" + p);
        rows = data.agents;
        hasNext = Boolean(data.next_cursor);
        body.replaceChildren(...rows.map((a) => row(a, false)));
        if (!rows.length) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No agents match.")));
        info.textContent = `${data.total} agents`;
        prev.disabled = cursors.length < 2;
        next.disabled = !hasNext;
        next.onclick = () => { cursors.push(data.next_cursor); refresh(); };
        prev.onclick = () => { cursors.pop(); refresh(); };
      } catch (err) {
        showError(err);
      }
    }
    const reconcile = debounce(refresh, 1500);
    function matches(ev) {
      const name = (ev.data.name || "").toLowerCase();
      if (params.get("label")) return false; // labels are not in events: wait for the refresh
      if (params.get("status") === "offline") return false;
      return !params.get("q") || name.startsWith(params.get("q").toLowerCase());
    }
    return {
      refresh,
      onEvent(ev) {
        if (!ev.agent || !ev.type.startsWith("agent.")) return;
        const tr = document.getElementById("row-" + ev.agent);
        if (ev.type === "agent.connected" || ev.type === "agent.disconnected") {
          const st = ev.type === "agent.connected" ? "online" : "offline";
          if (tr) {
            tr.querySelector(".status").replaceChildren(pill(st));
            tr.classList.remove("fresh");
            void tr.offsetWidth; // restart the highlight
            tr.classList.add("fresh");
          } else if (st === "online" && cursors.length === 1 && matches(ev)) {
            const a = { id: ev.agent, name: ev.data.name, status: "online",
              transport: ev.data.transport, last_seen_at: ev.at };
            const before = rows.findIndex((r) => r.id > a.id);
            if (before >= 0 || !hasNext) {
              const placeholder = body.querySelector("td[colspan]");
              if (placeholder) placeholder.parentElement.remove();
              const el = row(a, true);
              if (before >= 0) body.insertBefore(el, document.getElementById("row-" + rows[before].id));
              else body.append(el);
              rows.splice(before >= 0 ? before : rows.length, 0, a);
            }
          }
        }
        reconcile();
      },
    };
  }

  // ------------------------------------------------------------------ agent detail
  function agentDetail(id) {
    const head = h("div", { class: "card", id: "agent-head" }, "Loading…");
    const parts = h("div", { class: "grid", id: "agent-parts" });
    const history = h("ol", { class: "timeline", id: "history" });
    const actions = agentActions(id, () => refresh());
    page.replaceChildren(h("p", {}, h("a", { href: "#/agents" }, "← Agents")), head, parts,
      actions.card, h("div", { class: "card" }, h("h2", {}, "Connection history"), history));
    const kv = (obj) => h("dl", { class: "kv" }, ...Object.entries(obj || {}).map(([k, v]) =>
      [h("dt", {}, k), h("dd", {}, typeof v === "object" ? JSON.stringify(v) : String(v))]));
    const section = (title, ...content) => h("div", { class: "card" }, h("h2", {}, title), ...content);
    const describe = (d) => d ? [h("h3", {}, "Identifying"), kv(d.identifying_attributes),
      h("h3", {}, "Non-identifying"), kv(d.non_identifying_attributes)] : h("p", { class: "muted" }, "Not reported.");
    function configText(cfg) {
      if (!cfg || !cfg.config_map) return h("p", { class: "muted" }, "Not reported.");
      // Stored redacted: secret values read <redacted>; a body that could not be parsed is
      // withheld (only its hash). The sha256 is that of what the agent reported.
      return Object.entries(cfg.config_map).map(([name, f]) => [
        h("h3", {}, name || "(default)"),
        h("p", { class: "muted" }, [f.content_type || "no content type",
          f.size != null ? `${f.size} bytes` : null,
          f.sha256 ? `sha256 ${f.sha256.slice(0, 12)}…` : null,
          f.redacted ? `${f.redacted} secret value${f.redacted === 1 ? "" : "s"} redacted` : null,
        ].filter(Boolean).join(" · ")),
        f.body === undefined ? h("p", { class: "muted" }, `Withheld: ${f.withheld || "not stored"}.`)
          : h("pre", {}, f.body)]);
    }
    function renderAgent(a) {
      head.replaceChildren(
        h("h1", {}, a.name || "(unnamed agent)", " ", h("span", { id: "agent-status" }, pill(a.status))),
        kv({ id: a.id, transport: a.transport || "—", "remote address": a.remote_addr || "—",
          "serving instance": a.serving_instance || "—", "last seen": fmtTime(a.last_seen_at),
          "last connected": fmtTime(a.last_connected_at),
          "last disconnected": fmtTime(a.last_disconnected_at),
          "disconnect reason": a.disconnect_reason || "—",
          labels: Object.keys(a.labels || {}).length ? a.labels : "none" }));
      actions.show(a);
      parts.replaceChildren(
        section("Description", describe(a.description)),
        section("Health", a.health ? kv({ healthy: a.health.healthy, status: a.health.status || "—",
          "last error": a.health.last_error || "—" }) : h("p", { class: "muted" }, "Not reported.")),
        section("Capabilities", h("ul", { id: "capabilities" }, ...(a.capabilities || []).map((c) => h("li", {}, c)))),
        section("Assigned config", h("div", { id: "remote-config" }, a.remote_config ?
          kv(assigned(a.remote_config)) : h("p", { class: "muted" }, "None assigned."))),
        section("Remote config status", a.remote_config_status ? kv(a.remote_config_status) :
          h("p", { class: "muted" }, "Not reported.")),
        section("Effective config", configText(a.effective_config)));
    }
    function renderHistory(items) {
      history.replaceChildren(...items.map((c) => h("li", { class: c.disconnected_at ? "" : "open" },
        h("span", { class: "dot", "aria-hidden": "true" }),
        h("div", {}, h("strong", {}, fmtTime(c.connected_at)), " → ",
          c.disconnected_at ? fmtTime(c.disconnected_at) : "still connected",
          h("div", { class: "muted" }, [c.transport, c.remote_addr, c.serving_instance,
            c.duration_seconds != null ? `${c.duration_seconds.toFixed(1)} s` : null,
            c.disconnect_reason].filter(Boolean).join(" · "))))));
      if (!items.length) history.append(h("li", {}, h("span", {}), "No connections recorded."));
    }
    async function refresh() {
      try {
        const path = "/api/agents/" + encodeURIComponent(id);
        const [a, hist] = await Promise.all([api(path), api(path + "/connection-history?limit=50")]);
        renderAgent(a);
        renderHistory(hist.histories);
      } catch (err) {
        if (err instanceof APIError && err.status === 404) head.replaceChildren(h("p", {}, "No such agent."));
        else showError(err);
      }
    }
    const reconcile = debounce(refresh, 1200);
    return {
      refresh,
      onEvent(ev) {
        if (ev.agent !== id) return;
        const st = { "agent.connected": "online", "agent.disconnected": "offline" }[ev.type];
        const el = document.getElementById("agent-status");
        if (st && el) el.replaceChildren(pill(st));
        reconcile();
      },
    };
  }

  // ------------------------------------------------------------------ other features' lists
  function genericList(args, params, name) {
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

  // ------------------------------------------------------------------ forms and actions
  // Every change is a form (or a button) with a message line next to it: progress, the result,
  // or the API's error in words (status, code and message), announced to screen readers too.
  function say(msg, kind, text) {
    msg.className = "msg " + kind;
    msg.textContent = text || "";
  }
  async function run(msg, act) {
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
  const message = (id) => h("p", { id, class: "msg", role: "status", "aria-live": "polite" });
  function field(id, label, control, hint) {
    control.id = id;
    if (hint) control.setAttribute("aria-describedby", id + "-hint");
    return h("div", { class: "field" }, h("label", { for: id }, label), control,
      hint ? h("div", { class: "hint muted", id: id + "-hint" }, hint) : null);
  }
  // A form: `act` returns the success text (or throws); extra buttons go next to the submit one.
  // A role too low for the form disables its controls and says which role it needs.
  function actionForm(id, title, fields, submitLabel, act, ...buttons) {
    const msg = message(id + "-msg");
    const needs = FORM_ROLES[id] || "operator";
    const controls = h("fieldset", { class: "controls", disabled: !allowed(needs) }, ...fields,
      h("div", { class: "buttons" }, h("button", { type: "submit", id: id + "-submit" }, submitLabel),
        ...buttons));
    const form = h("form", { id, class: "card action", "aria-labelledby": id + "-title" },
      h("h2", { id: id + "-title" }, title),
      allowed(needs) ? null : h("p", { class: "muted needs-role", id: id + "-role" },
        `Needs the ${needs} role; this token is a ${role}.`),
      controls, msg);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      run(msg, act);
    });
    form.msg = msg;
    return form;
  }
  // Deleting takes two presses of the same button (no modal dialog; keyboard friendly).
  function confirmButton(label, msg, act, attrs) {
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
  // A button outside a form that changes something: disabled below `minimum`.
  function lockForRole(button, minimum) {
    if (allowed(minimum)) return button;
    button.disabled = true;
    button.title = `Needs the ${minimum} role`;
    return button;
  }
  // `key=value` lines (blank lines and `#` comments skipped) -> {key: value}.
  function parsePairs(text, what) {
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
  const pairsText = (obj) => Object.entries(obj || {}).map(([k, v]) => `${k}=${v}`).join("\n");
  // `name@version` lines -> [{name, version}]; a bare name means the latest version.
  function parsePackages(text) {
    return text.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#")).map((l) => {
      const at = l.lastIndexOf("@");
      return at > 0 ? { name: l.slice(0, at), version: l.slice(at + 1) } : { name: l };
    });
  }
  function optionalInt(input, what) {
    const v = input.value.trim();
    if (!v) return undefined;
    if (!/^\d+$/.test(v)) throw new InputError(`${what}: a whole number, got "${v}"`);
    return Number(v);
  }
  const short = (hash) => (hash ? h("code", { title: hash }, hash.slice(0, 12)) : "—");
  const ref = (r) => (r ? `${r.name} v${r.version}` : "—");
  const enc = encodeURIComponent;
  function table(id, headers, rows, empty) {
    return h("div", { class: "scroll" }, h("table", { id },
      h("thead", {}, h("tr", {}, ...headers.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length,
        class: "muted" }, empty)))));
  }
  // The config names, for the datalists of the group and pin forms (best effort).
  async function fillConfigNames(list) {
    if (!extraPages.includes("configs")) return;
    try {
      const data = await api("/api/configs");
      list.replaceChildren(...data.configs.map((c) => h("option", { value: c.name })));
    } catch (e) {
      /* the forms still work by typing the name */
    }
  }
  const cut = (hash) => (hash ? hash.slice(0, 16) + "…" : "—");
  function assigned(rc) {
    return { config: rc.name ? `${rc.name} v${rc.version}` : "—", status: rc.status,
      source: rc.source === "group" ? `group ${rc.group}` : rc.source || "—",
      error: rc.error || "—", hash: cut(rc.hash), "reported hash": cut(rc.reported_hash),
      updated: fmtTime(rc.updated_at) };
  }

  // ------------------------------------------------------------------ agent actions
  function agentActions(id, reload) {
    const path = "/api/agents/" + enc(id);
    const forms = [];
    const labels = h("textarea", { rows: 4, spellcheck: "false", autocomplete: "off" });
    let labelsTouched = false;
    labels.addEventListener("input", () => { labelsTouched = true; });
    const configs = h("datalist", { id: "pin-configs" });
    const pinName = h("input", { list: "pin-configs", autocomplete: "off" });
    const pinVersion = h("input", { inputmode: "numeric", autocomplete: "off" });
    if (extraPages.includes("configs")) {
      forms.push(actionForm("labels-form", "Labels", [field("labels", "Labels (key=value, one a line)",
        labels, "Replaces the agent's operator labels; groups select agents by them.")], "Save labels",
      async () => {
        const data = await send("PUT", path + "/labels", { labels: parsePairs(labels.value, "labels") });
        labelsTouched = false;
        labels.value = pairsText(data.labels);
        reload();
        return `Labels saved (${Object.keys(data.labels).length}).`;
      }));
      let pinForm = null;
      const unpin = h("button", { type: "button", id: "pin-form-unpin" }, "Unpin");
      unpin.addEventListener("click", () => run(pinForm.msg, async () => {
        await send("PUT", path + "/config", { config: null });
        reload();
        return "Unpinned: the agent follows its group again.";
      }));
      pinForm = actionForm("pin-form", "Pin a config", [configs,
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
      forms.push(pinForm);
      fillConfigNames(configs);
    }
    forms.push(actionForm("disconnect-form", "Disconnect", [h("p", { class: "muted" },
      "Closes the agent's connection (needs the admin role); it may reconnect at once.")],
    "Disconnect", async () => {
      const data = await send("POST", path + "/disconnect");
      return `Disconnect sent to ${data.serving_instance || "its instance"}.`;
    }));
    const card = h("div", { class: "grid", id: "agent-actions" }, ...forms);
    return {
      card,
      show(a) {
        if (!labelsTouched) labels.value = pairsText(a.labels);
      },
    };
  }

  // ------------------------------------------------------------------ configs
  function configForm(prefill) {
    const name = h("input", { required: true, autocomplete: "off", value: prefill.name || "" });
    const file = h("input", { autocomplete: "off", value: prefill.file ?? "config.yaml" });
    const type = h("input", { list: "content-types", autocomplete: "off",
      value: prefill.content_type || "text/yaml" });
    const body = h("textarea", { rows: 10, spellcheck: "false" });
    body.value = prefill.body || "";
    const form = actionForm("config-form", prefill.name ? "New version" : "Create a config version", [
      h("datalist", { id: "content-types" }, ...["text/yaml", "application/json", "text/plain",
        "application/toml"].map((v) => h("option", { value: v }))),
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
  function configsPage(args) {
    if (args[0]) return configDetail(args[0]);
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
        list.replaceChildren(h("p", { class: "msg error" }, describeError(err)));
        showError(err);
      }
    }
    const reconcile = debounce(refresh, 1000);
    return { refresh, onEvent(ev) { if (ev.type === "config.changed") reconcile(); } };
  }
  function configDetail(name) {
    const path = "/api/configs/" + enc(name);
    const versions = h("div", { id: "config-versions" }, "Loading…");
    const errors = h("div", { id: "config-errors" });
    const files = h("div", { id: "config-files" });
    const msg = message("config-delete-msg");
    const form = configForm({ name });
    let touched = false;
    form.addEventListener("input", () => { touched = true; });
    form.onSaved = () => { touched = false; refresh(); };
    page.replaceChildren(h("p", {}, h("a", { href: "#/x/configs" }, "← Configs")),
      h("h1", {}, "Config ", h("code", {}, name)),
      h("div", { class: "card" }, h("h2", {}, "Versions and agents"), versions, errors),
      h("div", { class: "card" }, h("h2", {}, "Latest files"), files), form,
      h("div", { class: "card" }, h("h2", {}, "Delete"), h("p", { class: "muted" },
        "Deletes every version; refused while a group, a pin or a rollout uses it."),
      confirmButton("Delete config", msg, async () => {
        const data = await send("DELETE", path);
        return `Deleted ${data.name} (${data.deleted_versions} versions).`;
      }, { id: "config-delete" }), msg));
    async function refresh() {
      try {
        const [detail, status] = await Promise.all([api(path), api(path + "/status")]);
        const counts = new Map(status.versions.map((v) => [v.version, v]));
        versions.replaceChildren(table("config-version-rows", ["Version", "Hash", "Size", "Created",
          "Applied", "Applying", "Failed", "Unset"], detail.versions.map((v) => {
          const c = counts.get(v.version) || {};
          return h("tr", { "data-version": v.version }, h("td", {}, "v" + v.version),
            h("td", {}, short(v.hash)), h("td", {}, v.size_bytes + " B"),
            h("td", {}, fmtTime(v.created_at), h("div", { class: "muted" }, v.created_by)),
            h("td", {}, c.applied || 0), h("td", {}, c.applying || 0), h("td", {}, c.failed || 0),
            h("td", {}, c.unset || 0));
        }), "No versions."));
        errors.replaceChildren(...(status.errors.length ? [h("h3", {}, "Failures"),
          h("ul", {}, ...status.errors.map((e) => h("li", {}, `v${e.version}: ${e.agents} agents: `,
            h("code", {}, e.error))))] : []));
        if (!detail.versions.length) return;
        const latest = await api(`${path}/versions/${detail.versions[0].version}`);
        const entries = Object.entries(latest.files);
        files.replaceChildren(...entries.map(([fname, f]) => [h("h3", {}, fname || "(default)",
          " ", h("span", { class: "muted" }, f.content_type)), h("pre", {}, f.body)]));
        if (!touched && entries.length) {
          const [fname, f] = entries[0];
          form.fields.file.value = fname;
          form.fields.type.value = f.content_type;
          form.fields.body.value = f.body;
        }
      } catch (err) {
        if (err instanceof APIError && err.status === 404) versions.replaceChildren(h("p", {}, "No such config."));
        else showError(err);
      }
    }
    const reconcile = debounce(refresh, 1000);
    return { refresh, onEvent(ev) {
      if (ev.type === "config.changed" || ev.type === "agent.config_status") reconcile();
    } };
  }

  // ------------------------------------------------------------------ groups
  function groupsPage() {
    const list = h("div", { id: "groups" }, "Loading…");
    const listMsg = message("groups-msg");
    const configs = h("datalist", { id: "group-configs" });
    const name = h("input", { required: true, autocomplete: "off" });
    const selector = h("textarea", { rows: 3, spellcheck: "false" });
    const config = h("input", { list: "group-configs", autocomplete: "off" });
    const version = h("input", { inputmode: "numeric", autocomplete: "off" });
    const batch = h("input", { inputmode: "numeric", autocomplete: "off" });
    const maxFailed = h("input", { inputmode: "numeric", autocomplete: "off" });
    const packages = h("textarea", { rows: 3, spellcheck: "false" });
    const form = actionForm("group-form", "Create or update a group", [configs,
      field("group-name", "Name", name),
      field("group-selector", "Selector (key=value, one a line)", selector,
        "Labels first, then the agent's attributes. Empty: every agent."),
      field("group-config", "Config name", config, "Empty: the group assigns no config."),
      field("group-version", "Version (optional)", version, "Empty: the latest version now."),
      h("div", { class: "pair" },
        field("group-batch", "Rollout batch %", batch, "Optional: roll out in batches."),
        field("group-max-failed", "Max failed %", maxFailed, "Optional; pauses beyond it.")),
      field("group-packages", "Packages (name@version, one a line)", packages,
        "Optional. A bare name means the latest version.")], "Save group", async () => {
      const body = { selector: parsePairs(selector.value, "Selector"),
        config: config.value.trim() || null };
      const v = optionalInt(version, "Version");
      if (v !== undefined) body.version = v;
      const b = optionalInt(batch, "Rollout batch %");
      const f = optionalInt(maxFailed, "Max failed %");
      if (b !== undefined || f !== undefined) {
        body.rollout = {};
        if (b !== undefined) body.rollout.batch_percent = b;
        if (f !== undefined) body.rollout.max_failed_percent = f;
      }
      const pk = parsePackages(packages.value);
      if (pk.length) body.packages = pk;
      const g = await send("PUT", "/api/groups/" + enc(name.value.trim()), body);
      refresh();
      return `Saved group ${g.name}: ${g.members} members (${g.online_members} online), config ` +
        `${ref(g.config)}` + (g.rollout ? `, rollout ${g.rollout.state}.` : ".");
    });
    function edit(g) {
      name.value = g.name;
      selector.value = pairsText(g.selector);
      config.value = g.config ? g.config.name : "";
      version.value = g.config ? g.config.version : "";
      batch.value = "";
      maxFailed.value = "";
      packages.value = (g.packages || []).map((p) => `${p.name}@${p.version}`).join("\n");
      name.focus();
    }
    page.replaceChildren(h("h1", {}, "Groups"), h("div", { class: "card" }, list, listMsg), form);
    function rollout(r) {
      if (!r) return "—";
      return [h("div", {}, pill(r.state), ` ${ref(r.source)} → ${ref(r.to)}`),
        h("div", {}, `${r.progress_percent.toFixed(0)}%: ${r.applied} applied, ${r.failed} failed, ` +
          `${r.pending} pending of ${r.eligible} (${r.admitted} admitted)`),
        r.reason ? h("div", { class: "muted" }, r.reason) : null];
    }
    async function refresh() {
      fillConfigNames(configs);
      try {
        const data = await api("/api/groups");
        list.replaceChildren(table("group-rows", ["Name", "Selector", "Config", "Members",
          "Packages", "Rollout", "Actions"], data.groups.map((g) => {
          const editButton = lockForRole(h("button", { type: "button" }, "Edit"), "operator");
          editButton.addEventListener("click", () => edit(g));
          const back = lockForRole(h("button", { type: "button", "data-action": "rollback" },
            "Roll back"), "operator");
          back.addEventListener("click", () => run(listMsg, async () => {
            const after = await send("POST", `/api/groups/${enc(g.name)}/rollback`);
            refresh();
            return `Rolled ${g.name} back to ${ref(after.config)}.`;
          }));
          return h("tr", { "data-group": g.name }, h("td", {}, g.name),
            h("td", {}, h("code", {}, pairsText(g.selector) || "(every agent)")),
            h("td", {}, ref(g.config), g.previous ? h("div", { class: "muted" },
              "previous " + ref(g.previous)) : null),
            h("td", {}, `${g.members} (${g.online_members} online)`),
            h("td", {}, (g.packages || []).map((p) => `${p.name}@${p.version}`).join(", ") || "—"),
            h("td", {}, rollout(g.rollout)),
            h("td", { class: "row-actions" }, editButton, back, confirmButton("Delete", listMsg,
              async () => {
                await send("DELETE", "/api/groups/" + enc(g.name));
                refresh();
                return `Deleted group ${g.name}.`;
              })));
        }), "No groups yet."));
      } catch (err) {
        list.replaceChildren(h("p", { class: "msg error" }, describeError(err)));
        showError(err);
      }
    }
    const reconcile = debounce(refresh, 1500);
    return { refresh, onEvent(ev) {
      if (ev.type === "config.changed" || ev.type === "agent.config_status" ||
        ev.type === "agent.connected" || ev.type === "agent.disconnected") reconcile();
    } };
  }

  // ------------------------------------------------------------------ packages
  function uploadPackage(data, progress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest(); // fetch cannot report upload progress
      xhr.open("POST", "/api/packages");
      xhr.setRequestHeader("Authorization", "Bearer " + token);
      xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) progress(e.loaded, e.total); });
      xhr.addEventListener("load", () => {
        let body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch (e) {
          /* not JSON */
        }
        if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
        const e = body && body.error ? body.error : { code: "http_error", message: `${xhr.status} ${xhr.statusText}` };
        if (xhr.status === 401) signOut(explain401(e.message));
        reject(new APIError(xhr.status, e.code, e.message));
      });
      xhr.addEventListener("error", () => reject(new Error(
        "the connection closed during the upload (the server cuts off a file over its size limit)")));
      xhr.send(data);
    });
  }
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
      const v = await uploadPackage(data, (sent, total) => say(form.msg, "busy",
        `Uploading: ${Math.floor((100 * sent) / total)}% (${mb(sent)} of ${mb(total)})`));
      onSaved();
      return `Uploaded ${v.name} ${v.version} (${v.size_bytes} bytes, sha256 ${v.sha256.slice(0, 12)}…).`;
    });
    return form;
  }
  function packagesPage(args) {
    if (args[0]) return packageDetail(args[0]);
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
        list.replaceChildren(h("p", { class: "msg error" }, describeError(err)));
        showError(err);
      }
    }
    const reconcile = debounce(refresh, 1000);
    return { refresh, onEvent(ev) { if (ev.type === "package.changed") reconcile(); } };
  }
  function packageDetail(name) {
    const path = "/api/packages/" + enc(name);
    const list = h("div", { id: "package-versions" }, "Loading…");
    const msg = message("package-versions-msg");
    page.replaceChildren(h("p", {}, h("a", { href: "#/x/packages" }, "← Packages")),
      h("h1", {}, "Package ", h("code", {}, name)),
      h("div", { class: "card" }, h("h2", {}, "Versions"), list, msg), packageForm(name, () => refresh()));
    async function refresh() {
      try {
        const data = await api(path);
        list.replaceChildren(table("package-version-rows", ["Version", "Type", "Size", "SHA-256",
          "Uploaded", ""], data.versions.map((v) => h("tr", { "data-version": v.version },
          h("td", {}, v.version), h("td", {}, v.type), h("td", {}, v.size_bytes + " B"),
          h("td", {}, short(v.sha256)), h("td", {}, fmtTime(v.created_at)),
          h("td", {}, confirmButton("Delete", msg, async () => {
            await send("DELETE", `${path}/${enc(v.version)}`);
            refresh();
            return `Deleted ${name} ${v.version}.`;
          }, { "aria-label": `Delete version ${v.version}` })))), "No versions."));
      } catch (err) {
        if (err instanceof APIError && err.status === 404) list.replaceChildren(h("p", {}, "No such package."));
        else showError(err);
      }
    }
    const reconcile = debounce(refresh, 1000);
    return { refresh, onEvent(ev) { if (ev.type === "package.changed") reconcile(); } };
  }

  // ------------------------------------------------------------------ audit log
  function auditPage(args, params) {
    const inputs = {};
    const filters = ["actor", "action", "target"].map((k) => {
      inputs[k] = h("input", { autocomplete: "off", value: params.get(k) || "",
        placeholder: { actor: "token subject", action: "group.put", target: "group:prod" }[k] });
      return h("div", {}, h("label", { for: "audit-" + k }, k[0].toUpperCase() + k.slice(1)),
        Object.assign(inputs[k], { id: "audit-" + k }));
    });
    const form = h("form", { class: "filters card", role: "search", id: "audit-filters" }, ...filters,
      h("button", { type: "submit" }, "Apply"));
    const list = h("div", { id: "audit" }, "Loading…");
    const msg = message("audit-msg");
    const prev = h("button", { type: "button", id: "audit-prev", disabled: true }, "Newer");
    const next = h("button", { type: "button", id: "audit-next", disabled: true }, "Older");
    page.replaceChildren(h("h1", {}, "Audit log"), form,
      h("div", { class: "card" }, list, h("div", { class: "pager" }, prev, next), msg));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const p = new URLSearchParams();
      for (const [k, el] of Object.entries(inputs)) if (el.value.trim()) p.set(k, el.value.trim());
      location.hash = "#/x/audit" + (p.toString() ? "?" + p : "");
    });
    const cursors = [null];
    const change = (e) => (e.before === null && e.after === null ? "—" : h("details", {},
      h("summary", {}, "before / after"), h("pre", {}, JSON.stringify({ before: e.before, after: e.after }, null, 2))));
    async function refresh() {
      const p = new URLSearchParams({ limit: 50 });
      for (const k of ["actor", "action", "target"]) if (params.get(k)) p.set(k, params.get(k));
      if (cursors[cursors.length - 1]) p.set("cursor", cursors[cursors.length - 1]);
      try {
        const data = await api("/api/audit?" + p);
        say(msg, "", "");
        list.replaceChildren(table("audit-rows", ["When", "Actor", "Action", "Target", "Outcome",
          "Change", "Request"], data.entries.map((e) => h("tr", { "data-id": e.id },
          h("td", {}, fmtTime(e.at)), h("td", {}, e.actor, h("div", { class: "muted" }, e.role)),
          h("td", {}, e.action), h("td", {}, e.target), h("td", {}, e.outcome), h("td", {}, change(e)),
          h("td", { class: "muted" }, e.request_id || "—", h("div", {}, e.client_addr || "")))),
        "No entries match."));
        prev.disabled = cursors.length < 2;
        next.disabled = !data.next_cursor;
        next.onclick = () => { cursors.push(data.next_cursor); refresh(); };
        prev.onclick = () => { cursors.pop(); refresh(); };
      } catch (err) {
        list.replaceChildren();
        say(msg, "error", describeError(err));
        showError(err);
      }
    }
    return { refresh, onEvent() {} };
  }
  const FEATURE_PAGES = { configs: configsPage, groups: groupsPage, packages: packagesPage,
    audit: auditPage };

  // ------------------------------------------------------------------ start
  if (token) signIn(token);
  else signOut("");
})();
