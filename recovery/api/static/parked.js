// Parked events: where each projection set events aside and why (the error's type
// and message, the attempts, what it waits behind), never an event's payload; a
// redrive of a projection's parked events, and a skip of one that can never apply,
// for principals allowed to operate on that projection.
import {
  allowed, api, badge, el, fill, number, onTick, postWithReason, shortId, shown, tickNow,
  timeEl, unavailable,
} from "./common.js";

async function redrive(projection, count) {
  await postWithReason(
    `Re-drive ${projection}'s parked events?`,
    `A job applies its ${count} parked event(s) again, in order (a worker runs it). ` +
      "Do it once the cause is fixed.",
    "Re-drive",
    `/api/projections/${encodeURIComponent(projection)}/parked/redrive`,
  );
}

async function skip(event) {
  await postWithReason(
    `Skip parked event ${event.projection}:${event.position}?`,
    "It is marked resolved and never applied: only for an event that can never apply.",
    "Skip it",
    `/api/parked/${encodeURIComponent(`${event.projection}:${event.position}`)}/skip`,
    { build: event.build },
  );
}

function eventsTable(projection, events, operate) {
  return el("table", { "data-projection": projection },
    el("caption", { class: "visually-hidden" }, `${projection}: parked events`),
    el("thead", {}, el("tr", {},
      ...["Position", "Build", "Partition", "Aggregate", "Event type", "Error", "Attempts",
        "First seen", "Last seen", "State", ""].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, events.map((e) => el("tr", {},
      el("th", { scope: "row", class: "num" }, number(e.position)),
      el("td", { class: "num" }, e.build),
      el("td", {}, e.partition ? `${e.partition.index + 1} of ${e.partition.count}` : "–"),
      el("td", { class: "mono", title: e.aggregate_id }, shortId(e.aggregate_id)),
      el("td", {}, e.event_type),
      el("td", {}, el("strong", {}, e.error_type), el("div", { class: "small" }, e.error_message),
        e.reason ? el("div", { class: "small muted" }, e.reason) : null,
        e.blocked_by ? el("div", { class: "small muted" }, `waits behind ${e.blocked_by}`) : null),
      el("td", { class: "num" }, number(e.attempts)),
      el("td", {}, timeEl(e.first_seen_at)),
      el("td", {}, timeEl(e.last_seen_at)),
      el("td", {}, e.skipped_reason ? badge("skipped", "info")
        : e.resolved_at ? badge("re-driven", "ok") : badge("parked", "warn")),
      el("td", {}, operate && !e.resolved_at ? el("button", {
        type: "button", class: "secondary", onclick: () => skip(e),
      }, "Skip") : null)))));
}

/** Polls between two reads of the lists when nothing changed (reading them is audited). */
const RELOAD_EVERY = 15;

export function mountParked(section) {
  const resolved = el("input", { type: "checkbox", id: "parked-resolved" });
  const refresh = el("button", { type: "button", class: "secondary" }, "Refresh");
  const body = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  section.append(
    el("p", { class: "muted" }, "Events a projection could not apply and set aside: where and " +
      "why, never their content."),
    el("div", { class: "inline" }, resolved,
      el("label", { for: "parked-resolved", class: "inline" }, "Show re-driven and skipped ones too"),
      refresh),
    body);
  let wanted = true;
  resolved.addEventListener("change", () => {
    wanted = true;
    tickNow();
  });
  refresh.addEventListener("click", () => {
    wanted = true;
    tickNow();
  });

  // Listing a projection's parked events is an audited read: the lists are read when
  // the view is shown, when a projection's count of parked events changes, on Refresh,
  // and every 30 s, not at every poll; a projection with nothing parked is not asked.
  let wasShown = false;
  let lastCounts = "";
  let polls = 0;
  onTick(async () => {
    const visible = shown(section);
    const appeared = visible && !wasShown;
    wasShown = visible;
    if (!visible) return;
    const projections = await api("/api/projections");
    const counts = projections.map((p) => `${p.name}:${p.parked_now}`).join(",");
    polls += 1;
    if (!(wanted || appeared || counts !== lastCounts || polls % RELOAD_EVERY === 0)) return;
    wanted = false;
    lastCounts = counts;
    const query = resolved.checked ? "?include_resolved=true" : "";
    const blocks = await Promise.all(projections.map(async (p) => {
      const operate = allowed("operate", p.name);
      const heading = el("h3", {}, `${p.name} `,
        badge(`${p.parked_now} parked`, p.parked_now ? "warn" : "ok"));
      if (!p.parked_now && !resolved.checked) {
        return el("div", { class: "parked-projection" }, heading,
          el("p", { class: "muted" }, "Nothing parked."));
      }
      let listed;
      try {
        listed = await api(`/api/projections/${encodeURIComponent(p.name)}/parked${query}`);
      } catch (failure) {
        return el("div", {}, heading, el("p", { class: "muted" }, unavailable(failure)));
      }
      const open = listed.filter((e) => !e.resolved_at).length;
      return el("div", { class: "parked-projection" }, heading,
        operate && open ? el("p", {}, el("button", {
          type: "button", onclick: () => redrive(p.name, open),
        }, `Re-drive ${p.name}'s parked events`)) : null,
        listed.length ? eventsTable(p.name, listed, operate)
          : el("p", { class: "muted" }, "Nothing parked."));
    }));
    // A button inside keeps its focus: refill only when no control inside has it.
    if (!body.contains(document.activeElement)) fill(body, blocks);
  });
}
