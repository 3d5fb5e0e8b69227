// SLOs: each replay SLO target's last value, whether it is breached, its error
// budget over the window, and the breaches with their start and end (docs/slo.md).
import {
  api, badge, el, fill, number, onTick, shown, timeEl, unavailable,
} from "./common.js";

function percent(share) {
  return `${(share * 100).toFixed(1)}%`;
}

function slosTable(slos) {
  return el("table", { id: "slos-table" },
    el("thead", {}, el("tr", {},
      ...["SLO", "Value", "Target", "State", "Good", "Objective", "Budget left", "Burn (1h)"]
        .map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, slos.map((s) => el("tr", { "data-slo": s.slo },
      el("td", {}, s.slo),
      el("td", { class: "num" }, s.value === null ? "–" : number(s.value)),
      el("td", { class: "num" }, number(s.target)),
      el("td", {}, s.in_breach
        ? [badge("breach", "bad"), " since ", timeEl(s.breach_since)]
        : badge(s.value === null ? "no samples" : "met", s.value === null ? "info" : "ok")),
      el("td", { class: "num" }, `${percent(s.budget.good_share)} of ${s.budget.samples}`),
      el("td", { class: "num" }, percent(s.objective)),
      el("td", { class: "num" }, percent(s.budget.budget_remaining)),
      el("td", { class: "num" },
        `${s.budget.burn_rate.toFixed(2)} (${s.budget.burn_rate_1h.toFixed(2)})`)))));
}

function breachesTable(breaches) {
  return el("table", { id: "slo-breaches-table" },
    el("thead", {}, el("tr", {},
      ...["SLO", "Target", "Worst", "Opened", "Closed"]
        .map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, breaches.map((b) => el("tr", { "data-breach-id": b.breach_id },
      el("td", {}, b.slo),
      el("td", { class: "num" }, number(b.target)),
      el("td", { class: "num" }, number(b.worst)),
      el("td", {}, timeEl(b.opened_at)),
      el("td", {}, b.closed_at ? timeEl(b.closed_at) : badge("open", "bad"))))));
}

export function mountSlos(section) {
  const summary = el("p", { class: "muted" }, "Loading…");
  const body = el("div");
  const history = el("div");
  section.append(summary, body, el("h3", {}, "Breaches in the window"), history);

  onTick(async () => {
    if (!shown(section)) return;
    let status;
    let breaches;
    try {
      status = await api("/api/slos");
      breaches = await api("/api/slos/history");
    } catch (failure) {
      fill(summary, `SLOs: ${unavailable(failure)}.`);
      fill(body);
      fill(history);
      return;
    }
    const slos = status.slos || [];
    const breached = slos.filter((s) => s.in_breach).length;
    const days = status.window_seconds / 86400;
    fill(summary, `${slos.length} targets, ${breached} in breach; window ${days} d; evaluated `,
      timeEl(status.evaluated_at), ".");
    fill(body, slos.length ? slosTable(slos)
      : el("p", {}, "No SLO targets are set (SAFEREPLAY_SLO_TARGETS)."));
    const listed = breaches.breaches || [];
    fill(history, listed.length ? breachesTable(listed) : el("p", {}, "No breach in the window."));
  });
}
