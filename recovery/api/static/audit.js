// The audit trail: who did what, where, why and how it ended, newest first, with
// the trail's verification (chain, signatures, anchor) for principals who may run it.
import {
  api, badge, el, fill, onTick, shortId, shown, tickNow, timeEl, unavailable,
} from "./common.js";

const PAGE = 1000; // the API's largest page
const KEPT = 500; // entries kept in the page
// Reading the trail is itself audited (and verifying it even more so): the listing
// is read when the view is shown, on Refresh and every 30 s, not at every poll;
// the verification when the view is first shown and on "Verify again".
const LIST_EVERY = 15; // polls (30 s)

function outcomeTone(outcome) {
  if (outcome === "succeeded") return "ok";
  if (outcome === "denied" || outcome === "failed") return "bad";
  return "warn";
}

function verification(report) {
  if (report.ok) {
    return [badge(report.status || "intact", "ok"),
      ` ${report.entries_checked} entries checked: chain and signatures intact. `,
      report.anchor ? el("span", { class: "muted" }, report.anchor) : null,
      report.outcome_unknown && report.outcome_unknown.length
        ? el("div", { class: "small muted" }, `${report.outcome_unknown.length} operation(s) ` +
          "with an intent and no outcome (still running, or their process died).") : null];
  }
  return [badge(report.status || "tampered", "bad"),
    ` ${report.problem || "the trail does not verify"}`,
    report.first_bad_seq ? ` (first bad entry: ${report.first_bad_seq})` : null];
}

export function mountAudit(section) {
  const status = el("div", { id: "audit-verification", role: "status" }, "Verifying…");
  const again = el("button", { type: "button", class: "secondary" }, "Verify again");
  const refresh = el("button", { type: "button", class: "secondary" }, "Refresh");
  const filter = el("input", { type: "search", id: "audit-filter", autocomplete: "off",
    placeholder: "actor, action, scope, reason…" });
  const body = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  section.append(
    el("div", { class: "verify" }, status, again),
    el("label", { for: "audit-filter" }, "Filter"),
    el("div", { class: "inline" }, filter, refresh), body);

  const entries = new Map(); // seq -> entry
  let lastAt = null;
  let polls = 0;
  let verifyWanted = true;
  let listWanted = true;
  let wasShown = false;
  again.addEventListener("click", () => {
    verifyWanted = true;
    tickNow();
  });
  refresh.addEventListener("click", () => {
    listWanted = true;
    tickNow();
  });
  filter.addEventListener("input", () => render());

  function render() {
    const words = filter.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const newest = [...entries.values()].sort((a, b) => Number(b.seq) - Number(a.seq));
    const shownEntries = newest.filter((e) => {
      const text = `${e.actor} ${e.action} ${e.scope} ${e.reason} ${e.outcome} ${e.job_id || ""}`
        .toLowerCase();
      return words.every((w) => text.includes(w));
    });
    fill(body, shownEntries.length ? el("table", { id: "audit-table" },
      el("caption", {}, `${shownEntries.length} of the newest ${entries.size} entries`),
      el("thead", {}, el("tr", {},
        ...["#", "When", "Who", "Action", "Scope", "Outcome", "Reason", "Job"]
          .map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, shownEntries.map((e) => el("tr", { "data-seq": String(e.seq) },
        el("td", { class: "num" }, e.seq),
        el("td", {}, timeEl(e.at)),
        el("td", {}, e.actor),
        el("td", {}, e.action),
        el("td", {}, e.scope),
        el("td", {}, badge(e.outcome, outcomeTone(e.outcome))),
        el("td", {}, e.reason),
        el("td", { class: "mono" }, e.job_id ? shortId(e.job_id) : "–")))))
      : el("p", { class: "muted" }, "No entry matches."));
  }

  async function verify() {
    try {
      fill(status, verification(await api("/api/audit/verify")));
    } catch (failure) {
      fill(status, failure.status === 403 ? "Verification needs an admin."
        : `Verification: ${unavailable(failure)}.`);
    }
  }

  onTick(async () => {
    const visible = shown(section);
    const appeared = visible && !wasShown;
    wasShown = visible;
    if (!visible) return;
    if (verifyWanted) {
      verifyWanted = false;
      verify(); // not awaited: a long verification does not hold the listing back
    }
    polls += 1;
    if (!(listWanted || appeared || polls % LIST_EVERY === 0)) return;
    listWanted = false;
    // The trail grows at its end: read from the newest entry seen on (pages of PAGE).
    for (;;) {
      const since = lastAt ? `&since=${encodeURIComponent(lastAt)}` : "";
      let page;
      try {
        page = await api(`/api/audit?limit=${PAGE}${since}`);
      } catch (failure) {
        fill(body, el("p", { class: "muted" }, `Audit trail: ${unavailable(failure)}.`));
        return;
      }
      const before = entries.size;
      for (const entry of page) entries.set(String(entry.seq), entry);
      if (page.length) lastAt = page[page.length - 1].at;
      if (page.length < PAGE || entries.size === before) break;
    }
    if (entries.size > KEPT) {
      const oldest = [...entries.keys()].sort((a, b) => Number(a) - Number(b));
      for (const seq of oldest.slice(0, entries.size - KEPT)) entries.delete(seq);
    }
    render();
  });
}
