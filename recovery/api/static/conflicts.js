// Conflicts: work an integrity check paused (a tampered or undecryptable row, a
// divergent drill, an audit chain that no longer verifies), and its resolution.
import {
  allowed, api, badge, el, fill, postWithReason, shortId, shown, timeEl, unavailable, onTick,
} from "./common.js";

function where(c) {
  const parts = [];
  if (c.projection) parts.push(`${c.projection} build ${c.build}`);
  if (c.job_id) parts.push(`job ${shortId(c.job_id)} partition ${c.partition_index}`);
  return parts.join(", ") || c.subject;
}

const EVENT_KINDS = new Set(["authentication", "unknown-key", "envelope"]);

function resolveButtons(c) {
  if (c.state !== "open" || !allowed("operate", c.projection || "*")) return null;
  const path = `/api/conflicts/${encodeURIComponent(c.conflict_id)}/resolve`;
  const retry = el("button", { type: "button", class: "secondary" }, "Retry");
  retry.addEventListener("click", () => postWithReason(
    "Retry after fixing the cause",
    `The paused work reads position ${c.position ?? "-"} again (${c.kind}).`,
    "Retry", path, { action: "retry" }));
  if (!EVENT_KINDS.has(c.kind)) return el("div", { class: "buttons" }, retry);
  const park = el("button", { type: "button" }, "Park and go on");
  park.addEventListener("click", () => postWithReason(
    "Park this event and go on",
    `Position ${c.position} is parked with your reason; the paused work resumes.`,
    "Park", path, { action: "park" }));
  return el("div", { class: "buttons" }, retry, park);
}

function conflictsTable(conflicts) {
  return el("table", { id: "conflicts-table" },
    el("thead", {}, el("tr", {},
      ...["State", "Kind", "Where", "Position", "Reason", "Raised", "Resolution", ""]
        .map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, conflicts.map((c) => el("tr", { "data-conflict-id": c.conflict_id },
      el("td", {}, badge(c.state === "open" ? "paused" : "resolved",
        c.state === "open" ? "bad" : "info")),
      el("td", {}, c.kind),
      el("td", {}, where(c)),
      el("td", { class: "num" }, c.position === null ? "–" : String(c.position)),
      el("td", { class: "small" }, c.reason),
      el("td", {}, timeEl(c.raised_at)),
      el("td", {}, c.resolution
        ? el("span", {}, `${c.resolution} by ${c.resolved_by}: ${c.resolution_reason}`) : "–"),
      el("td", {}, resolveButtons(c))))));
}

export function mountConflicts(section) {
  const summary = el("p", { class: "muted" }, "Loading…");
  const body = el("div");
  section.append(summary, body);

  onTick(async () => {
    if (!shown(section)) return;
    let conflicts;
    try {
      conflicts = await api("/api/conflicts?include_resolved=true");
    } catch (failure) {
      fill(summary, `Conflicts: ${unavailable(failure)}.`);
      fill(body);
      return;
    }
    const open = conflicts.filter((c) => c.state === "open");
    fill(summary, `${open.length} open (work paused until an operator resolves it), `,
      `${conflicts.length - open.length} resolved.`);
    fill(body, conflicts.length ? conflictsTable(conflicts)
      : el("p", {}, "No integrity check has paused any work."));
  });
}
