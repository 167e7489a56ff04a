// DOM helpers every page uses: element builders (HTML and SVG), the page's container, the
// banner, and the small pieces of many pages (a status pill, a table, a debounced refresh).
// No state and no requests here.

export const $ = (sel, root = document) => root.querySelector(sel);
export const page = $("#page"); // modules run after the document is parsed: it is there

// h(tag, {attribute: value, onclick: fn}, ...children): an attribute that is false, null or
// undefined is left out; children are strings, nodes or arrays of them (flattened one level).
export function h(tag, attrs, ...children) {
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
export function s(tag, attrs, text) {
  const el = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

export function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

export function banner(text) {
  const el = $("#banner");
  el.textContent = text || "";
  el.hidden = !text;
}

export const pill = (status) => h("span", { class: "pill " + status, "data-status": status }, status);

// The previous/next buttons of a list paged by cursor: `cursors` holds the cursor of each page
// visited, the last one shown; `nextCursor` is the list's, null on the last page.
export function pager(prev, next, cursors, nextCursor, refresh) {
  prev.disabled = cursors.length < 2;
  next.disabled = !nextCursor;
  next.onclick = () => { cursors.push(nextCursor); refresh(); };
  prev.onclick = () => { cursors.pop(); refresh(); };
}

export function table(id, headers, rows, empty) {
  return h("div", { class: "scroll" }, h("table", { id },
    h("thead", {}, h("tr", {}, ...headers.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length,
      class: "muted" }, empty)))));
}
