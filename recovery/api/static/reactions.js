// Reactions: where each reaction is in the log and, per destination, what it
// delivered, still owes (pending, failed), parked, how old the oldest undelivered
// one is, and the destination's breaker. For principals allowed to operate on a
// reaction: plan a re-delivery (a dry run: what would be sent), then run it with a
// reason. Never a payload: a plan's sample shows positions, event types and keys.
import {
  allowed, api, askReason, badge, duration, el, fill, number, onTick, reportProblem, shown,
  tickNow, timeEl, unavailable,
} from "./common.js";

function breakerTone(state) {
  if (!state || state === "closed") return "ok";
  return state === "open" ? "bad" : "warn";
}

function destinationsTable(reaction) {
  return el("table", { class: "reaction-destinations", "data-reaction": reaction.name },
    el("caption", { class: "visually-hidden" }, `${reaction.name}: destinations`),
    el("thead", {}, el("tr", {},
      el("th", { scope: "col" }, "Destination"),
      ...["Pending", "Failed", "Parked", "Delivered"]
        .map((h) => el("th", { scope: "col", class: "num" }, h)),
      el("th", { scope: "col" }, "Oldest undelivered"),
      el("th", { scope: "col" }, "Breaker"))),
    el("tbody", {}, reaction.destinations.map((d) => el("tr", { "data-destination": d.destination },
      el("th", { scope: "row" }, d.destination,
        d.configured ? null : el("div", { class: "small muted" }, "not configured here")),
      el("td", { class: "num", "data-state": "pending" }, number(d.pending)),
      el("td", { class: "num", "data-state": "failed" }, d.failed ? badge(number(d.failed), "bad") : "0"),
      el("td", { class: "num", "data-state": "parked" }, d.parked ? badge(number(d.parked), "warn") : "0"),
      el("td", { class: "num", "data-state": "delivered" }, number(d.delivered)),
      el("td", { "data-state": "oldest" }, d.oldest_owed_at === null || d.oldest_owed_at === undefined
        ? "–" : [duration(d.oldest_owed_age_seconds), el("div", { class: "small muted" },
          "since ", timeEl(d.oldest_owed_at))]),
      el("td", { "data-state": "breaker" }, badge(d.breaker_state || "closed",
        breakerTone(d.breaker_state)))))));
}

function facts(reaction) {
  const lease = reaction.lease;
  return el("p", { class: "facts muted" },
    `version ${reaction.version} · topics ${(reaction.topics || []).join(", ") || "all"} · ` +
      `position ${number(reaction.position)} of ${number(reaction.head)} · `,
    reaction.behind ? badge(`${number(reaction.behind)} behind`, "warn") : badge("caught up", "ok"),
    " · lease: ",
    lease ? el("span", { class: "lease" }, lease.holder, " until ", timeEl(lease.expires_at))
      : el("span", { class: "lease" }, "none"));
}

/** The selection of the form as the API's body (absent fields left out). */
function selection(form) {
  const body = { force: form.force.checked };
  const first = form.first.value.trim();
  const last = form.last.value.trim();
  if (first) body.first = Number(first);
  if (last) body.last = Number(last);
  if (form.since.value) body.since = new Date(form.since.value).toISOString();
  if (form.destination.value) body.destination = form.destination.value;
  return body;
}

function planView(plan) {
  return el("div", { class: "plan", "data-would-send": String(plan.would_send) },
    el("p", {}, el("strong", {}, `${number(plan.would_send)} deliver${plan.would_send === 1 ? "y" : "ies"}`),
      " would be sent."),
    el("table", { class: "plan-destinations" },
      el("caption", {}, "By destination"),
      el("thead", {}, el("tr", {},
        el("th", { scope: "col" }, "Destination"),
        ...["Delivered", "Failed", "Parked", "Pending", "Never attempted", "Would send"]
          .map((h) => el("th", { scope: "col", class: "num" }, h)))),
      el("tbody", {}, plan.destinations.map((d) => el("tr", { "data-destination": d.destination },
        el("th", { scope: "row" }, d.destination),
        ...[d.delivered, d.failed, d.parked, d.pending, d.never_attempted, d.would_send]
          .map((v) => el("td", { class: "num" }, number(v))))))),
    plan.sample && plan.sample.length ? el("table", { class: "plan-sample" },
      el("caption", {}, `First ${plan.sample.length} (at most ${plan.sample_limit})`),
      el("thead", {}, el("tr", {},
        ...["Position", "Event type", "Destination", "State", "Attempts", "Idempotency key"]
          .map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, plan.sample.map((s) => el("tr", {},
        el("th", { scope: "row", class: "num" }, number(s.position)),
        el("td", {}, s.event_type),
        el("td", {}, s.destination),
        el("td", {}, s.state),
        el("td", { class: "num" }, number(s.attempts)),
        el("td", { class: "mono small" }, s.idempotency_key))))) : null);
}

function resultView(result) {
  return el("p", { class: "redelivered", role: "status" },
    `Re-delivered: ${number(result.delivered)} delivered, ${number(result.failed)} failed, ` +
      `${number(result.parked)} parked, ${number(result.still_owed)} still owed ` +
      `(${number(result.reopened)} re-opened, ${number(result.forced)} forced).`);
}

/** The plan-then-redeliver form of one reaction (for principals who may operate). */
function redeliveryForm(reaction) {
  const id = (field) => `redeliver-${reaction.name}-${field}`;
  const field = (name, label, input) => el("div", { class: "field" },
    el("label", { for: id(name) }, label), input);
  const destination = el("select", { id: id("destination"), name: "destination" },
    el("option", { value: "" }, "every destination"),
    reaction.destinations.map((d) => el("option", { value: d.destination }, d.destination)));
  const form = el("form", { class: "redelivery", "data-reaction": reaction.name,
    "aria-label": `Re-deliver ${reaction.name}` },
  el("div", { class: "fields" },
    field("first", "From position", el("input", { id: id("first"), name: "first",
      type: "number", min: "1", inputmode: "numeric" })),
    field("last", "To position", el("input", { id: id("last"), name: "last",
      type: "number", min: "1", inputmode: "numeric" })),
    field("since", "Recorded since", el("input", { id: id("since"), name: "since",
      type: "datetime-local", step: "1" })),
    field("destination", "Destination", destination),
    el("div", { class: "field" }, el("label", { class: "inline", for: id("force") },
      el("input", { id: id("force"), name: "force", type: "checkbox" }),
      "Force: send acknowledged ones again"))),
  el("div", { class: "buttons start" },
    el("button", { type: "submit", class: "secondary" }, "Plan re-delivery")));
  const out = el("div", { class: "plan-out", "aria-live": "polite" });
  let planned = null;

  async function redeliver() {
    const body = planned;
    const reason = await askReason(`Re-deliver ${reaction.name}?`,
      `${body.would_send} deliver${body.would_send === 1 ? "y is" : "ies are"} sent now, in ` +
        "order per aggregate, with their idempotency keys; a destination outside the " +
        "selection is not tried." +
        (body.selection && body.selection.force ? " Acknowledged ones are sent again (forced)." : ""),
      { confirmLabel: "Re-deliver" });
    if (reason === null) return;
    fill(out, el("p", { class: "muted" }, "Re-delivering…"));
    try {
      const result = await api(`/api/reactions/${encodeURIComponent(reaction.name)}/redeliveries`,
        { method: "POST", body: { reason, ...planned.body } });
      reportProblem(null);
      fill(out, resultView(result));
    } catch (failure) {
      fill(out, el("p", { class: "error" }, unavailable(failure)));
    }
    await tickNow();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = selection(form);
    fill(out, el("p", { class: "muted" }, "Planning…"));
    try {
      const plan = await api(`/api/reactions/${encodeURIComponent(reaction.name)}/redelivery-plan`,
        { method: "POST", body });
      planned = { ...plan, body };
      fill(out, planView(plan), plan.would_send ? el("p", {}, el("button", {
        type: "button", class: "danger", onclick: redeliver,
      }, `Re-deliver ${plan.would_send}`)) : el("p", { class: "muted" }, "Nothing to send."));
    } catch (failure) {
      fill(out, el("p", { class: "error" }, unavailable(failure)));
    }
  });
  return el("details", { class: "redeliver", "data-reaction": reaction.name },
    el("summary", {}, `Re-deliver ${reaction.name}…`), form, out);
}

export function mountReactions(section) {
  const summary = el("p", { class: "muted" }, "Loading…");
  const body = el("div");
  section.append(
    el("p", { class: "muted" }, "What each reaction delivered to other systems, what it still " +
      "owes, and re-delivery of what an outage missed: never the content of an event."),
    summary, body);
  const blocks = new Map();
  let shownNames = null;

  onTick(async () => {
    if (!shown(section)) return;
    let listed;
    try {
      listed = await api("/api/reactions");
    } catch (failure) {
      fill(summary, `Reactions: ${unavailable(failure)}.`);
      fill(body);
      shownNames = null;
      return;
    }
    const reactions = listed.reactions || [];
    const owed = reactions.reduce((n, r) => n + r.destinations.reduce(
      (m, d) => m + d.pending + d.failed, 0), 0);
    fill(summary, `${reactions.length} reaction${reactions.length === 1 ? "" : "s"}; ` +
      `${number(owed)} deliver${owed === 1 ? "y" : "ies"} owed.`);
    // Each reaction's block is made once and kept: its facts and table are refilled,
    // its form (what was typed, the plan shown, the focus) stays as it is.
    for (const r of reactions) {
      let block = blocks.get(r.name);
      if (!block) {
        block = { facts: el("div"), table: el("div"),
          form: allowed("operate", `reaction:${r.name}`) ? redeliveryForm(r) : null };
        block.element = el("div", { class: "reaction", "data-reaction": r.name },
          el("h3", {}, r.name), block.facts, block.table, block.form);
        blocks.set(r.name, block);
      }
      fill(block.facts, facts(r));
      fill(block.table, destinationsTable(r));
    }
    const names = reactions.map((r) => r.name).join(",");
    if (names !== shownNames) {
      shownNames = names;
      fill(body, reactions.length ? reactions.map((r) => blocks.get(r.name).element)
        : el("p", { class: "muted" }, "No reaction is registered."));
    }
  });
}
