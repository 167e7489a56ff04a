// The session: the bearer token (kept in this tab's sessionStorage only) and the token's role,
// and signing out. What else a session holds (the event stream, the page shown, the sign-in
// form) belongs to modules that send requests with this token, so they register here what to
// undo on sign-out instead of being imported (which would make a cycle).

const TOKEN_KEY = "opamp-fast.token";
let token = sessionStorage.getItem(TOKEN_KEY);
// Until /api/ui/me says otherwise every form is offered: the API decides anyway.
let role = "admin";
const onEnd = [];

export const bearer = () => token;
export const currentRole = () => role;

export function useToken(candidate) {
  token = candidate;
}
export function keepToken() {
  sessionStorage.setItem(TOKEN_KEY, token);
}
export function setRole(name) {
  role = name;
}

// `undo(message)` runs at every sign-out, in the order registered.
export function onSignOut(undo) {
  onEnd.push(undo);
}

export function signOut(message) {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  role = "admin";
  for (const undo of onEnd) undo(message);
}
