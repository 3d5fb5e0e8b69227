// What every view of the dashboard shares: the API call, who is signed in and what
// they may do, the reason dialog, the 2-second poll and a DOM helper.
//
// Rules every view keeps:
// - data goes into the page as text (el(), textContent), NEVER through innerHTML;
// - the token is only ever sent in the Authorization header, never in a URL;
// - a button that changes something asks for a reason first (askReason), which the
//   API records in the audit trail.

const TOKEN_KEY = "safereplay.token";
const TICK_MS = 2000;

// -- the token (this tab only) ------------------------------------------------------

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
  forgetMe();
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  forgetMe();
}

// -- the API -------------------------------------------------------------------------

/** An API call that failed: the server's message, its HTTP status and error code. */
export class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

/** Fired on `document` when the API says the token is not (or no longer) valid. */
export const SIGNED_OUT = "safereplay:signed-out";

/**
 * Call the API: `api("/api/jobs")`, `api(`/api/jobs/${id}/pause`, {method: "POST",
 * body: {reason}})`. Resolves to the decoded JSON; rejects with an ApiError carrying
 * the server's `error.message` on any non-2xx answer.
 */
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const current = token();
  if (current) headers.Authorization = `Bearer ${current}`;
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (failure) {
    throw new ApiError("the server cannot be reached", 0, "unreachable");
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    const error = data && typeof data === "object" ? data.error : null;
    const message = (error && error.message) || `${response.status} ${response.statusText}`;
    if (response.status === 401) document.dispatchEvent(new CustomEvent(SIGNED_OUT));
    throw new ApiError(message, response.status, error ? error.code : undefined);
  }
  return data;
}

// -- who is signed in -------------------------------------------------------------------

let mePromise = null;
let meValue = null;

function forgetMe() {
  mePromise = null;
  meValue = null;
}

/** The signed-in principal (GET /api/me), fetched once per sign-in. */
export function me() {
  if (!mePromise) {
    mePromise = api("/api/me").then(
      (value) => {
        meValue = value;
        return value;
      },
      (failure) => {
        mePromise = null;
        throw failure;
      },
    );
  }
  return mePromise;
}

function covers(granted, wanted) {
  if (granted === "*" || granted === wanted) return true;
  // "projection:*" covers every projection, "reaction:*" every reaction.
  return granted.endsWith(":*") && wanted !== null && wanted.startsWith(granted.slice(0, -1));
}

/**
 * May the signed-in principal use `permission` ("view", "operate", "administer",
 * "manage-keys") on `projection` (a projection's name, or a scope such as "keys";
 * omitted: the whole store, granted by scope "*" only)? Synchronous: it reads the
 * principal that me() fetched (app.js awaits me() before any view is shown), and
 * says no until then. The API checks again: this only decides what is shown.
 */
export function allowed(permission, projection) {
  if (!meValue || !meValue.permissions) return false;
  const scopes = meValue.permissions[permission] || [];
  let wanted = null;
  if (projection) wanted = projection.includes(":") || projection === "keys" ||
    projection === "audit" ? projection : `projection:${projection}`;
  return scopes.some((scope) => (wanted === null ? scope === "*" : covers(scope, wanted)));
}

// -- asking for a reason -------------------------------------------------------------

/**
 * Ask to confirm an action and say why: a modal <dialog> with the message, a reason
 * field (required: the API records it in the audit trail), Cancel and Confirm.
 * Resolves to the reason, or null if cancelled (Cancel, Esc).
 */
export function askReason(title, message, { confirmLabel = "Confirm" } = {}) {
  return new Promise((resolve) => {
    const reasonId = `reason-${Math.random().toString(36).slice(2)}`;
    const reason = el("textarea", {
      id: reasonId, name: "reason", required: true, maxlength: "1000", rows: "3",
      autocomplete: "off",
    });
    const cancel = el("button", { type: "button", class: "secondary" }, "Cancel");
    const confirm = el("button", { type: "submit", value: "confirm" }, confirmLabel);
    const form = el("form", { method: "dialog" },
      el("h2", {}, title),
      el("p", {}, message),
      el("label", { for: reasonId }, "Reason (kept in the audit trail)"),
      reason,
      el("div", { class: "buttons" }, cancel, confirm),
    );
    const dialog = el("dialog", { class: "ask", "aria-label": title }, form);
    let answer = null;
    reason.addEventListener("input", () => reason.setCustomValidity(""));
    form.addEventListener("submit", (event) => {
      if (!reason.value.trim()) {
        event.preventDefault();
        reason.setCustomValidity("Say why: the reason is kept in the audit trail.");
        reason.reportValidity();
        return;
      }
      answer = reason.value.trim();
    });
    cancel.addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(answer);
    });
    document.body.append(dialog);
    dialog.showModal();
    reason.focus();
  });
}

/**
 * A change confirmed with a reason: ask (askReason), POST the reason and `body` to
 * `path`, show the API's refusal if there is one, then poll at once so every view
 * shows the change. Resolves to false if cancelled, true once sent.
 */
export async function postWithReason(title, message, confirmLabel, path, body = {}) {
  const reason = await askReason(title, message, { confirmLabel });
  if (reason === null) return false;
  try {
    await api(path, { method: "POST", body: { reason, ...body } });
    reportProblem(null);
  } catch (failure) {
    reportProblem(failure);
  }
  await tickNow();
  return true;
}

// -- polling -------------------------------------------------------------------------

const tickers = new Set();
let timer = null;
let running = false;

/**
 * Call `fn` every 2 seconds while signed in (and once right away if ticking). Each
 * call may return a promise; a tick waits for all of them before the next starts.
 * Returns a function that stops calling `fn`.
 */
export function onTick(fn) {
  tickers.add(fn);
  if (timer !== null) Promise.resolve().then(() => fn()).catch(reportProblem);
  return () => tickers.delete(fn);
}

/** Run every ticker now (after an action, so its effect shows at once). */
export async function tickNow() {
  if (running) return;
  running = true;
  try {
    const results = await Promise.allSettled([...tickers].map((fn) => fn()));
    const failed = results.find((r) => r.status === "rejected");
    reportProblem(failed ? failed.reason : null);
    const updated = document.getElementById("updated");
    if (updated && !failed) updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
  } finally {
    running = false;
  }
}

export function startTicking() {
  if (timer !== null) return;
  timer = setInterval(() => {
    if (!document.hidden) tickNow();
  }, TICK_MS);
  tickNow();
}

export function stopTicking() {
  if (timer !== null) clearInterval(timer);
  timer = null;
}

/** Show (or clear, with null) a problem in the page's status line. */
export function reportProblem(failure) {
  const line = document.getElementById("problem");
  if (!line) return;
  line.textContent = failure ? `Problem: ${failure.message || failure}` : "";
}

// -- building the page -------------------------------------------------------------

/**
 * Make an element: el("button", {type: "button", onclick: fn}, "Pause").
 * Attributes: `class`, `on<event>` (a listener), true (present), false/null/undefined
 * (absent), anything else set as an attribute; children: nodes, strings (as text,
 * never HTML), numbers, arrays of these, null/false (skipped).
 */
export function el(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on") && typeof value === "function") {
      element.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      element.className = value;
    } else if (value === true) {
      element.setAttribute(key, "");
    } else {
      element.setAttribute(key, String(value));
    }
  }
  append(element, children);
  return element;
}

function append(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else if (child instanceof Node) parent.append(child);
    else parent.append(document.createTextNode(String(child)));
  }
}

/** Replace an element's children (same rules as el()). */
export function fill(parent, ...children) {
  parent.replaceChildren();
  append(parent, children);
  return parent;
}

// -- formatting ----------------------------------------------------------------------

export function number(value) {
  return value === null || value === undefined ? "–" : Number(value).toLocaleString("en");
}

/** "2m 05s" for 125 seconds; "–" when unknown. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return "–";
  let s = Math.max(0, Math.round(Number(seconds)));
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(s).padStart(2, "0")}s`;
  return `${s}s`;
}

/** A Date of an ISO 8601 string or of epoch seconds; null when absent or unreadable. */
export function dateOf(value) {
  if (value === null || value === undefined || value === "") return null;
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** A timestamp (ISO 8601 or epoch seconds) as local date and time; "–" when absent. */
export function when(value) {
  const date = dateOf(value);
  if (date) return date.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "medium" });
  return value === null || value === undefined ? "–" : String(value);
}

/** "12s ago", "3m 04s ago" (a time in the future shows as "now"); "–" when absent. */
export function ago(value) {
  const date = dateOf(value);
  if (!date) return "–";
  const seconds = (Date.now() - date.getTime()) / 1000;
  return seconds < 1 ? "now" : `${duration(seconds)} ago`;
}

/** A <time> element for a timestamp (machine-readable, local to read). */
export function timeEl(value) {
  const date = dateOf(value);
  return date ? el("time", { datetime: date.toISOString() }, when(value)) : "–";
}

/** A state badge: `tone` is ok, warn, bad or info (its colour; the text says it all). */
export function badge(text, tone = "info") {
  return el("span", { class: `badge ${tone}` }, text);
}

/** The tone of a job's or partition's state. */
export function stateTone(state) {
  if (["completed", "caught up", "intact"].includes(state)) return "ok";
  if (["failed", "aborted", "aborting", "tampered"].includes(state)) return "bad";
  if (["paused", "held", "behind", "outdated", "planned", "pending"].includes(state)) return "warn";
  return "info";
}

/** A labelled <progress> with its percentage beside it. */
export function progressBar(done, total, label) {
  const max = Math.max(1, Number(total) || 0);
  const value = Math.min(max, Math.max(0, Number(done) || 0));
  const percent = total ? Math.floor((100 * value) / max) : 0;
  return el("div", { class: "bar" },
    el("progress", { max: String(max), value: String(value), "aria-label": label,
      "data-done": String(value), "data-total": String(total || 0) }),
    el("span", {}, `${percent}%`));
}

/** Is this view on screen? (A hidden view skips its poll.) */
export function shown(section) {
  return !section.hidden;
}

/** A short job id (its first 8 hex digits: the CLI accepts it as a prefix). */
export function shortId(id) {
  return id ? String(id).slice(0, 8) : "–";
}

/** Is this the 404 of a route this server does not have (an older server)? */
export function missingRoute(failure) {
  return Boolean(failure && failure.status === 404 && failure.message === "Not Found");
}

/** "not available on this server" for a route it does not have, else the message. */
export function unavailable(failure) {
  if (missingRoute(failure)) return "not available on this server";
  return failure && failure.message ? failure.message : String(failure);
}
