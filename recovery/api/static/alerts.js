// Alerts: what the stall and anomaly rules raised, when, and when it cleared.
import {
  api, badge, el, fill, number, onTick, shortId, shown, timeEl, unavailable,
} from "./common.js";

function tone(severity) {
  return severity === "critical" ? "bad" : severity === "warning" ? "warn" : "info";
}

function alertsTable(alerts) {
  return el("table", { id: "alerts-table" },
    el("thead", {}, el("tr", {},
      ...["Severity", "Rule", "Subject", "Message", "Value", "Threshold", "Raised", "Cleared"]
        .map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, alerts.map((a) => el("tr", { "data-alert-id": a.alert_id },
      el("td", {}, badge(a.severity, a.cleared_at ? "info" : tone(a.severity))),
      el("td", {}, a.rule),
      el("td", {}, a.subject,
        a.job_id ? el("div", { class: "small muted" }, `job ${shortId(a.job_id)}`) : null),
      el("td", {}, a.message),
      el("td", { class: "num" }, number(a.value)),
      el("td", { class: "num" }, number(a.threshold)),
      el("td", {}, timeEl(a.raised_at)),
      el("td", {}, a.cleared_at ? timeEl(a.cleared_at) : badge("open", tone(a.severity)))))));
}

export function mountAlerts(section) {
  const summary = el("p", { class: "muted" }, "Loading…");
  const body = el("div");
  section.append(summary, body);

  onTick(async () => {
    if (!shown(section)) return;
    let listed;
    try {
      listed = await api("/api/alerts?include_cleared=true");
    } catch (failure) {
      fill(summary, `Alerts: ${unavailable(failure)}.`);
      fill(body);
      return;
    }
    const alerts = listed.alerts || [];
    const open = alerts.filter((a) => !a.cleared_at);
    fill(summary, `${open.length} open, ${alerts.length - open.length} cleared; evaluated `,
      timeEl(listed.evaluated_at), ".");
    fill(body, alerts.length ? alertsTable([...open, ...alerts.filter((a) => a.cleared_at)])
      : el("p", {}, "No alert has been raised."));
  });
}
