// opamp-fast console: plain JavaScript modules, no build step, no external requests. This is
// the entry (index.html loads it as a module): it wires the router to the address and starts
// the session. Data: the REST API and the /api/events stream, with the bearer token.
//
// The modules, each importing only from those after it (no cycle): signin.js (signing in and
// out), router.js (address -> page), page-*.js (one page each; agent-actions.js: the forms on
// an agent's page; strip.js: its availability strip), forms.js, features.js (which optional
// pages the server has), events.js (the live stream), api.js (requests with the token),
// roles.js (role gating), session.js (token and role), format.js, dom.js.
import { route } from "./router.js";
import { start } from "./signin.js";

window.addEventListener("hashchange", route);
start();
