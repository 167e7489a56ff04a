// An agent's availability strip: the part of the window since the agent was first seen, grey
// where it was offline, green where it was online; hovering a stretch tells when and why it
// ended. Drawn from GET /api/agents/{id}/availability (its `timeline`), as SVG.
import { h, s } from "./dom.js";

export function availabilityStrip(v) {
  const W = 600, H = 24;
  const t1 = Date.parse(v.until);
  const t0 = Math.min(t1, Math.max(Date.parse(v.since), Date.parse(v.first_seen_at || v.until)));
  const x = (t) => ((Math.min(Math.max(t, t0), t1) - t0) / Math.max(1, t1 - t0)) * W;
  const pct = v.uptime_ratio === null ? "no data" : (v.uptime_ratio * 100).toFixed(1) + " % up";
  const svg = s("svg", { class: "strip", viewBox: `0 0 ${W} ${H}`, role: "img",
    preserveAspectRatio: "none", "aria-label": `Online over the window: ${pct}, ` +
      `${v.timeline.length} online stretches, ${v.disconnects} disconnects` });
  if (t1 > t0) {
    const grey = s("rect", { class: "observed", x: 0, y: 0, width: W, height: H });
    grey.append(s("title", {}, "offline"));
    svg.append(grey);
  }
  for (const st of v.timeline) {
    const a = x(Date.parse(st.start)), b = x(Date.parse(st.end));
    const up = s("rect", { class: "up", x: a.toFixed(2), y: 0, width: Math.max(0.5, b - a).toFixed(2),
      height: H, "data-ended-by": st.ended_by || "" });
    const when = `online ${new Date(st.start).toLocaleString()} – ${new Date(st.end).toLocaleString()}`;
    up.append(s("title", {}, st.ended_by ? `${when}, ended by ${st.ended_by}` : `${when}, still on`));
    svg.append(up);
  }
  return h("div", {}, svg, h("div", { class: "strip-axis muted" },
    h("span", {}, new Date(t0).toLocaleString()), h("span", {}, new Date(t1).toLocaleString())));
}
