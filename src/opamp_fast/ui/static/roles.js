// Role gating: forms and buttons the signed-in token's role may not use are shown disabled,
// with the role they need (the server checks anyway, this only saves a refused request).
import { h } from "./dom.js";
import { currentRole } from "./session.js";

const RANK = { viewer: 0, operator: 1, admin: 2 };
const FORM_ROLES = { "disconnect-form": "admin", "rotate-form": "admin" }; // forms not listed need "operator"

export const allowed = (minimum) => (RANK[currentRole()] ?? -1) >= RANK[minimum];
export const formRole = (formId) => FORM_ROLES[formId] || "operator";

// The note a form shows when the token may not use it; null when it may.
export function roleNote(formId, needs) {
  if (allowed(needs)) return null;
  return h("p", { class: "muted needs-role", id: formId + "-role" },
    `Needs the ${needs} role; this token is a ${currentRole()}.`);
}

// A button outside a form that changes something: disabled below `minimum`.
export function lockForRole(button, minimum) {
  if (allowed(minimum)) return button;
  button.disabled = true;
  button.title = `Needs the ${minimum} role`;
  return button;
}
