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
  async function api(path) {
    const r = await fetch(path, { headers: { Authorization: "Bearer " + token } });
    if (r.ok) return r.json();
    let code = "http_error";
    let message = r.status + " " + r.statusText;
    try {
      const body = await r.json();
      if (body && body.error) ({ code, message } = body.error);
    } catch (e) {
      /* not JSON: keep the status line */
    }
    if (r.status === 401) signOut(explain401(message));
    else if (r.status === 403) banner("Your token lacks the role for this page: " + message);
    throw new APIError(r.status, code, message);
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
    else if (parts[0] === "x" && extraPages.includes(parts[1])) view = genericList(parts[1]);
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
    page.replaceChildren(h("p", {}, h("a", { href: "#/agents" }, "← Agents")), head, parts,
      h("div", { class: "card" }, h("h2", {}, "Connection history"), history));
    const kv = (obj) => h("dl", { class: "kv" }, ...Object.entries(obj || {}).map(([k, v]) =>
      [h("dt", {}, k), h("dd", {}, typeof v === "object" ? JSON.stringify(v) : String(v))]));
    const section = (title, ...content) => h("div", { class: "card" }, h("h2", {}, title), ...content);
    const describe = (d) => d ? [h("h3", {}, "Identifying"), kv(d.identifying_attributes),
      h("h3", {}, "Non-identifying"), kv(d.non_identifying_attributes)] : h("p", { class: "muted" }, "Not reported.");
    function configText(cfg) {
      if (!cfg || !cfg.config_map) return h("p", { class: "muted" }, "Not reported.");
      return Object.entries(cfg.config_map).map(([name, f]) =>
        [h("h3", {}, name || "(default)"), h("pre", {}, f.body === undefined ? JSON.stringify(f) : f.body)]);
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
      parts.replaceChildren(
        section("Description", describe(a.description)),
        section("Health", a.health ? kv({ healthy: a.health.healthy, status: a.health.status || "—",
          "last error": a.health.last_error || "—" }) : h("p", { class: "muted" }, "Not reported.")),
        section("Capabilities", h("ul", { id: "capabilities" }, ...(a.capabilities || []).map((c) => h("li", {}, c)))),
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
  function genericList(name) {
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

  // ------------------------------------------------------------------ start
  if (token) signIn(token);
  else signOut("");
})();
