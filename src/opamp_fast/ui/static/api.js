// The API client: every request carries the bearer token, and a refusal becomes an APIError
// with the API's status, code and message. A 401 ends the session here, saying why; any
// other error is the caller's to show (next to its form, or in the banner).
import { banner } from "./dom.js";
import { bearer, signOut } from "./session.js";

export const EXPIRED = "Your token has expired. Mint a new one and sign in.";

export class APIError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}
export class InputError extends Error {} // a form the browser can tell is wrong before sending it

export const authorization = () => ({ Authorization: "Bearer " + bearer() });

// The API's own error when the body has one, else the status line.
function errorOf(status, statusText, body) {
  const e = body && body.error ? body.error : { code: "http_error", message: `${status} ${statusText}` };
  return new APIError(status, e.code, e.message);
}
async function failure(r) {
  let body = null;
  try {
    body = await r.json();
  } catch (e) {
    /* not JSON: keep the status line */
  }
  return errorOf(r.status, r.statusText, body);
}

export async function api(path) {
  const r = await fetch(path, { headers: authorization() });
  if (r.ok) return r.json();
  const err = await failure(r);
  if (r.status === 401) signOut(explain401(err.message));
  else if (r.status === 403) banner("Your token lacks the role for this page: " + err.message);
  throw err;
}

// A change (POST, PUT, DELETE). Its errors are shown by the caller next to its form; only a
// 401 ends the session here.
export async function send(method, path, body) {
  const headers = authorization();
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

// A multipart POST that reports its progress: XMLHttpRequest, since fetch cannot report an
// upload's progress.
export function upload(path, data, progress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("Authorization", authorization().Authorization);
    xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) progress(e.loaded, e.total); });
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch (e) {
        /* not JSON */
      }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      const err = errorOf(xhr.status, xhr.statusText, body);
      if (xhr.status === 401) signOut(explain401(err.message));
      reject(err);
    });
    xhr.addEventListener("error", () => reject(new Error(
      "the connection closed during the upload (the server cuts off a file over its size limit)")));
    xhr.send(data);
  });
}

export function describeError(err) {
  if (err instanceof InputError) return err.message;
  if (!(err instanceof APIError)) return "Request failed: " + (err && err.message ? err.message : err);
  const what = { 400: "Rejected", 403: "Not allowed", 404: "Not found", 409: "Conflict",
    413: "Too large" }[err.status] || "Failed";
  return `${what} (${err.status} ${err.code}): ${err.message}`;
}

export function explain401(message) {
  if (/expired/i.test(message)) return EXPIRED;
  return "The server rejected the token: " + message;
}

// A page that could not load: the banner says why, unless `api` already told of a 401 (on the
// sign-in form) or a 403 (on the banner).
export function showError(err) {
  if (err instanceof APIError && (err.status === 401 || err.status === 403)) return;
  banner("Could not load: " + (err && err.message ? err.message : err));
}
