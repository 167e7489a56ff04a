// Signing in and out: the sign-in form, checking a token before keeping it, the header's
// "who am I", and what the console shows once signed in (navigation, live stream, page).
import { $, banner, page } from "./dom.js";
import { APIError, api } from "./api.js";
import { bearer, keepToken, onSignOut, setRole, signOut, useToken } from "./session.js";
import { discoverPages } from "./features.js";
import { startStream } from "./events.js";
import { route, toView } from "./router.js";

// Back to the sign-in form, saying why (`message`), the token box focused.
onSignOut((message) => {
  $("#nav").hidden = true;
  $("#signout").hidden = true;
  $("#whoami").hidden = true;
  page.hidden = true;
  page.replaceChildren();
  banner("");
  $("#signin").hidden = false;
  $("#signin-error").textContent = message || "";
  $("#token").focus();
});

export async function signIn(candidate) {
  useToken(candidate.trim());
  try {
    await api("/api/agents/status/summary");
  } catch (err) {
    if (!(err instanceof APIError && err.status === 401)) {
      $("#signin-error").textContent = "Sign-in failed: " + err.message;
    }
    return;
  }
  keepToken();
  await whoAmI();
  $("#signin").hidden = true;
  $("#nav").hidden = false;
  $("#signout").hidden = false;
  page.hidden = false;
  await discoverPages();
  startStream(toView);
  route();
}

// The token's subject and role (GET /api/ui/me), for the header and for role gating.
async function whoAmI() {
  try {
    const me = await api("/api/ui/me");
    setRole(me.role);
    $("#whoami").textContent = `${me.subject || "token"} (${me.role})`;
  } catch (err) {
    setRole("admin"); // an older server: offer everything, the API still decides
    $("#whoami").textContent = "";
  }
  $("#whoami").hidden = false;
}

// Wires the form and the sign-out button; signs in with the token this tab kept, if any.
export function start() {
  $("#signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("#token").value);
  });
  $("#signout").addEventListener("click", () => signOut("Signed out."));
  if (bearer()) signIn(bearer());
  else signOut("");
}
