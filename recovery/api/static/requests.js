// Change requests (four-eyes approval): operations that wait for a second person.
// Each pending request can be approved (its operation then runs as the principal who
// asked) or rejected, with a reason, by a principal with the approve permission on
// its scope who did not ask for it.
import {
  allowed, api, badge, el, fill, me, onTick, postWithReason, shortId, shown, timeEl,
  unavailable,
} from "./common.js";

function tone(state) {
  return { pending: "warn", approved: "ok", rejected: "info", expired: "info", failed: "bad" }[
    state] || "info";
}

async function decide(request, verb) {
  const approving = verb === "approve";
  await postWithReason(
    `${approving ? "Approve" : "Reject"} change request ${shortId(request.request_id)}?`,
    approving
      ? `${request.operation} on ${request.scope} runs now, as ${request.requester} ` +
        `(who asked: “${request.reason}”).`
      : `${request.operation} on ${request.scope} never runs.`,
    approving ? "Approve" : "Reject",
    `/api/requests/${encodeURIComponent(request.request_id)}/${verb}`,
  );
}

function parameters(request) {
  const shown = Object.entries(request.parameters || {})
    .filter(([key]) => key !== "toml" && key !== "diff")
    .map(([key, value]) => `${key}=${typeof value === "string" ? value : JSON.stringify(value)}`);
  return shown.join(", ") || "–";
}

function requestsTable(requests, principal) {
  return el("table", { id: "requests-table" },
    el("thead", {}, el("tr", {},
      ...["Request", "State", "Operation", "Parameters", "Asked by", "Asked", "Expires",
        "Decided by", ""].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, requests.map((r) => {
      const mayDecide = r.state === "pending" && r.requester !== principal &&
        allowed("approve", r.scope);
      return el("tr", { "data-request-id": r.request_id },
        el("th", { scope: "row", class: "mono", title: r.request_id }, shortId(r.request_id)),
        el("td", {}, badge(r.state, tone(r.state)),
          r.error ? el("div", { class: "small" }, r.error) : null),
        el("td", {}, r.operation, el("div", { class: "small muted" }, r.scope)),
        el("td", { class: "small" }, parameters(r)),
        el("td", {}, r.requester, el("div", { class: "small muted" }, r.reason)),
        el("td", {}, timeEl(r.created_at)),
        el("td", {}, timeEl(r.expires_at)),
        el("td", {}, r.decided_by || "–",
          r.decision_reason ? el("div", { class: "small muted" }, r.decision_reason) : null),
        el("td", {}, mayDecide ? el("div", { class: "inline" },
          el("button", { type: "button", onclick: () => decide(r, "approve") }, "Approve"),
          el("button", { type: "button", class: "secondary", onclick: () => decide(r, "reject") },
            "Reject")) : null));
    })));
}

export function mountRequests(section) {
  const summary = el("p", { class: "muted" }, "Loading…");
  const body = el("div");
  section.append(
    el("p", { class: "muted" }, "Operations waiting for a second person's approval: " +
      "approving one runs it as the principal who asked; nobody approves their own."),
    summary, body);

  let lastSeen = "";
  onTick(async () => {
    if (!shown(section)) return;
    let listed;
    let principal;
    try {
      principal = (await me()).principal;
      listed = await api("/api/requests?limit=200");
    } catch (failure) {
      fill(summary, `Change requests: ${unavailable(failure)}.`);
      fill(body);
      return;
    }
    const pending = listed.filter((r) => r.state === "pending").length;
    fill(summary, `${pending} pending, ${listed.length - pending} decided or expired.`);
    // A button inside keeps its focus: refill only when no control inside has it, or
    // when the requests changed (a decision was made).
    const seen = JSON.stringify(listed.map((r) => [r.request_id, r.state]));
    if (body.contains(document.activeElement) && seen === lastSeen) return;
    lastSeen = seen;
    fill(body, listed.length ? requestsTable(listed, principal)
      : el("p", {}, "No change request."));
  });
}
