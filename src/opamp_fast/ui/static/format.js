// How values read on every page: times in the browser's locale, hashes shortened (the full
// one in the tooltip), config references, path segments.
import { h } from "./dom.js";

export const fmtTime = (t) => (t ? new Date(t).toLocaleString() : "—");
export const short = (hash) => (hash ? h("code", { title: hash }, hash.slice(0, 12)) : "—");
export const cut = (hash) => (hash ? hash.slice(0, 16) + "…" : "—");
export const ref = (r) => (r ? `${r.name} v${r.version}` : "—");
export const enc = encodeURIComponent;
