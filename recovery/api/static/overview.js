// The Overview: the log's head, each projection's live position, backlog and lag,
// the jobs running now, and what needs attention (stalled or failed jobs, parked
// events, open alerts).
import {
  ago, api, badge, el, fill, missingRoute, number, onTick, progressBar, shortId, shown,
  stateTone, timeEl,
} from "./common.js";
import { eta, rate } from "./jobs.js";

function card(label, value, note) {
  return el("div", { class: "card" },
    el("div", { class: "value" }, value),
    el("div", { class: "label" }, label),
    note ? el("div", { class: "label" }, note) : null);
}

function projectionsTable(projections, status) {
  const byName = new Map((status.projections || []).map((p) => [p.name, p]));
  return el("table", { id: "projections-table" },
    el("caption", {}, "Projections"),
    el("thead", {}, el("tr", {},
      el("th", { scope: "col" }, "Projection"),
      el("th", { scope: "col" }, "State"),
      el("th", { scope: "col", class: "num" }, "Live build"),
      el("th", { scope: "col", class: "num" }, "Position"),
      el("th", { scope: "col", class: "num" }, "Backlog"),
      el("th", { scope: "col", class: "num" }, "Held back"),
      el("th", { scope: "col", class: "num" }, "Parked now"),
      el("th", { scope: "col" }, "Last commit"),
      el("th", { scope: "col" }, "Job"))),
    el("tbody", {}, projections.map((p) => {
      const live = byName.get(p.name);
      return el("tr", { "data-projection": p.name },
        el("th", { scope: "row" }, p.name),
        el("td", {}, badge(p.state, stateTone(p.state))),
        el("td", { class: "num" }, p.live_build ?? "–"),
        el("td", { class: "num" }, number(p.position)),
        el("td", { class: "num" }, number(p.backlog)),
        el("td", { class: "num" }, number(p.held_back)),
        el("td", { class: "num" }, p.parked_now
          ? el("a", { href: "#parked" }, number(p.parked_now)) : "0"),
        el("td", {}, live && live.last_commit_at
          ? [timeEl(live.last_commit_at), el("span", { class: "muted" }, ` (${ago(live.last_commit_at)})`)]
          : "–"),
        el("td", {}, p.job
          ? el("a", { href: "#jobs" }, `${p.job.kind} ${shortId(p.job.job_id)} (${p.job.state})`)
          : "–"));
    })));
}

function runningTable(jobs) {
  if (!jobs.length) return el("p", { class: "muted" }, "No job is running.");
  return el("table", { id: "running-jobs" },
    el("caption", {}, "Running jobs"),
    el("thead", {}, el("tr", {},
      ...["Job", "Projection", "State", "Progress", "Events", "Rate", "ETA", "Workers"]
        .map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, jobs.map((job) => el("tr", { "data-job-id": job.job_id },
      el("th", { scope: "row" }, el("a", { href: "#jobs" }, `${job.kind} ${shortId(job.job_id)}`)),
      el("td", {}, `${job.projection} → build ${job.build ?? "–"}`),
      el("td", {}, badge(job.state, stateTone(job.state)),
        job.stalled ? [" ", badge("stalled", "bad")] : null),
      el("td", {}, progressBar(job.events_done, job.events_in_scope,
        `job ${shortId(job.job_id)} progress`)),
      el("td", { class: "num" }, `${number(job.events_done)} / ${number(job.events_in_scope)}`),
      el("td", { class: "num" }, rate(job.events_per_second)),
      el("td", { class: "num" }, eta(job)),
      el("td", { class: "num" }, number(job.live_workers))))));
}

function attention(jobs, projections, alerts) {
  const items = [];
  for (const job of jobs) {
    if (job.stalled) {
      items.push([badge("stalled", "bad"), ` job ${shortId(job.job_id)} (${job.kind} ` +
        `${job.projection}): no live worker holds its partitions; start \`safereplay worker\`.`]);
    }
    if (job.state === "failed") {
      items.push([badge("failed", "bad"), ` job ${shortId(job.job_id)} (${job.kind} ` +
        `${job.projection}): ${job.error || "a partition failed"}.`]);
    }
  }
  for (const p of projections) {
    if (p.parked_now) {
      items.push([badge("parked", "warn"), ` ${p.name}: ${number(p.parked_now)} event(s) ` +
        "parked, waiting for a fix and a redrive."]);
    }
    if (p.state === "outdated") {
      items.push([badge("outdated", "warn"), ` ${p.name}: the live build was made by another ` +
        "version of its code; rebuild and swap."]);
    }
  }
  for (const alert of alerts || []) {
    items.push([badge(alert.severity, alert.severity === "critical" ? "bad" : "warn"),
      ` ${alert.message} (since `, timeEl(alert.raised_at), ")"]);
  }
  if (!items.length) return el("p", { class: "muted" }, "Nothing needs attention.");
  return el("ul", { class: "attention" }, items.map((item) => el("li", {}, item)));
}

export function mountOverview(section) {
  const cards = el("div", { class: "cards" });
  const needs = el("div");
  const projections = el("div");
  const running = el("div");
  section.append(cards, el("h3", {}, "Needs attention"), needs, running, projections);
  let alertsAvailable = true;

  onTick(async () => {
    if (!shown(section)) return;
    const [status, lifecycle, jobs] = await Promise.all([
      api("/api/status"), api("/api/projections"), api("/api/jobs?active=true"),
    ]);
    // Alerts are optional here: a server without them, or an evaluation that fails,
    // leaves the rest of the overview as it is and says so in the alerts card.
    let alerts = null;
    let alertsNote = "alerts not available";
    if (alertsAvailable) {
      try {
        alerts = (await api("/api/alerts")).alerts || [];
      } catch (failure) {
        if (missingRoute(failure)) alertsAvailable = false;
        else alertsNote = `alerts: ${failure.message}`;
      }
    }
    const parked = lifecycle.reduce((sum, p) => sum + (p.parked_now || 0), 0);
    const backlog = lifecycle.reduce((sum, p) => sum + (p.backlog || 0), 0);
    fill(cards,
      card("log head", number(status.head_position)),
      card("high-water mark", number(status.high_water_mark),
        status.held_back ? `${number(status.held_back)} held back` : null),
      card("projections", number(lifecycle.length), `${number(backlog)} events behind in all`),
      card("active jobs", number(jobs.length),
        jobs.some((j) => j.stalled) ? "some stalled" : null),
      card("parked now", number(parked)),
      card("open alerts", alerts === null ? "–" : number(alerts.length),
        alerts === null ? alertsNote : null));
    fill(needs, attention(jobs, lifecycle, alerts));
    fill(running, runningTable(jobs));
    fill(projections, projectionsTable(lifecycle, status));
  });
}
