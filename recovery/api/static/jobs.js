// The Jobs view: active jobs with per-partition progress, rate, ETA and stalls, and
// their controls (pause, resume, abort, continue a staged rollout, retry a failed
// partition) for principals allowed to operate them; then the jobs that ended.
//
// A job's card is made once and updated in place at each poll, so a keyboard user's
// focus on one of its buttons survives the 2-second refresh.
import {
  allowed, api, badge, duration, el, fill, number, onTick, postWithReason, progressBar,
  shortId, shown, stateTone, timeEl,
} from "./common.js";

const ENDED_SHOWN = 25;
const ENDED = ["completed", "aborted"];

/** Events a partition is done with, against those in its scope (as the CLI counts). */
export function partitionProgress(partition) {
  const scope = partition.events_in_scope ?? Math.max(
    0, (partition.target_position || 0) - partition.start_position);
  if (partition.status === "completed") return { done: scope, scope };
  if (partition.events_in_scope === null || partition.events_in_scope === undefined) {
    return { done: Math.max(0, partition.position - partition.start_position), scope };
  }
  return { done: Math.min(partition.events_applied + partition.parked, scope), scope };
}

/** "120 ev/s" (or "–" when nothing runs). */
export function rate(value) {
  return value ? `${Number(value).toLocaleString("en", { maximumFractionDigits: 1 })} ev/s` : "–";
}

/** The job's ETA as text: "done", "stalled", or a duration. */
export function eta(job) {
  if (job.state === "completed") return "done";
  if (job.stalled) return "stalled: no worker";
  if (job.state === "paused") return "paused";
  if (job.state === "planned" && !job.live_workers) return "waiting for a worker";
  return job.eta_seconds === null || job.eta_seconds === undefined ? "–" : duration(job.eta_seconds);
}

function jobTitle(job) {
  return `${job.kind} ${job.projection} → build ${job.build ?? "–"}`;
}

/** The controls a job's state allows: [operation, label, path, tone]. */
function actionsFor(job) {
  const actions = [];
  const held = (job.partitions || []).some((p) => p.status === "held");
  if (job.state === "running" && held) {
    actions.push(["continue", "Continue rollout", "continue", ""]);
  }
  if (job.state === "planned" || job.state === "running") {
    actions.push(["pause", "Pause", "pause", "secondary"]);
  }
  if (job.state === "paused") actions.push(["resume", "Resume", "resume", ""]);
  if (["planned", "running", "paused", "failed"].includes(job.state)) {
    actions.push(["abort", "Abort", "abort", "danger"]);
  }
  return actions;
}

const EXPLAIN = {
  pause: "Its workers stop at their next batch and keep their place; Resume goes on from there.",
  resume: "Workers take its partitions again from where they stopped.",
  abort: "Its workers stop at their next batch and the job ends, aborted; its build is " +
    "left as it is (not live).",
  continue: "The canary partitions verified: release the held partitions to the workers.",
};

function control(job, operation, path, label) {
  return postWithReason(
    `${label} job ${shortId(job.job_id)}?`,
    `${jobTitle(job)}. ${EXPLAIN[operation]}`,
    label,
    `/api/jobs/${encodeURIComponent(job.job_id)}/${path}`,
  );
}

async function retry(job, partition) {
  await postWithReason(
    `Retry partition ${partition.partition_index} of job ${shortId(job.job_id)}?`,
    `It failed: ${partition.last_error || "no error recorded"}. A worker runs it again from ` +
      "where it stopped.",
    "Retry",
    `/api/jobs/${encodeURIComponent(job.job_id)}/partitions/${partition.partition_index}/retry`,
  );
}

/** A job's card: made once, `update(job)` at each poll. */
function jobCard(job) {
  const title = el("h3", {}, jobTitle(job));
  const state = el("span");
  const controls = el("div", { class: "controls", role: "group", "aria-label": "Job controls" });
  const facts = el("p", { class: "facts" });
  const overall = el("div", { class: "overall" });
  const problem = el("p", { class: "error" });
  const rows = el("tbody");
  const table = el("table", { class: "partitions" },
    el("caption", { class: "visually-hidden" }, "Partitions"),
    el("thead", {}, el("tr", {},
      el("th", { scope: "col" }, "Partition"),
      el("th", { scope: "col" }, "Status"),
      el("th", { scope: "col" }, "Progress"),
      el("th", { scope: "col", class: "num" }, "Events"),
      el("th", { scope: "col", class: "num" }, "Rate"),
      el("th", { scope: "col", class: "num" }, "ETA"),
      el("th", { scope: "col", class: "num" }, "Position"),
      el("th", { scope: "col" }, ""))),
    rows);
  const root = el("article", { class: "job", "data-job-id": job.job_id,
    "aria-label": `job ${shortId(job.job_id)}` },
  el("header", {}, title, state, controls), facts, overall, problem, table);
  let controlsKey = null;
  let current = job;

  function update(next) {
    current = next;
    fill(state, badge(next.state, stateTone(next.state)),
      next.stalled ? [" ", badge("stalled", "bad")] : null,
      (next.paused_by_conflict || []).length
        ? [" ", el("a", { href: "#conflicts" }, badge("paused by conflict", "bad"))] : null);
    const actions = allowed("operate", next.projection) ? actionsFor(next) : [];
    const key = actions.map((a) => a[0]).join(",");
    if (key !== controlsKey) {
      const hadFocus = controls.contains(document.activeElement);
      controlsKey = key;
      fill(controls, actions.map(([operation, label, path, tone]) => el("button", {
        type: "button", class: tone, "data-action": operation,
        onclick: () => control(current, operation, path, label),
      }, label)));
      if (hadFocus && controls.firstElementChild) controls.firstElementChild.focus();
    }
    fill(facts,
      `job ${shortId(next.job_id)} · by ${next.principal} · "${next.reason}" · started `,
      timeEl(next.created_at), ` · ${next.partition_count} partition(s) · `,
      `${next.live_workers} live worker(s) · rate ${rate(next.events_per_second)} · `,
      `ETA ${eta(next)}`,
      next.parked ? ` · ${number(next.parked)} parked` : null,
      next.retries ? ` · ${number(next.retries)} retries` : null);
    fill(overall, el("span", { class: "visually-hidden" }, "Whole job"),
      progressBar(next.events_done, next.events_in_scope, `job ${shortId(next.job_id)} progress`),
      el("span", { class: "muted" },
        `${number(next.events_done)} of ${number(next.events_in_scope)} events`));
    problem.textContent = next.error ? `Error: ${next.error}` : "";
    const operate = allowed("operate", next.projection) && next.state === "running";
    fill(rows, (next.partitions || []).map((p) => {
      const { done, scope } = partitionProgress(p);
      const running = p.status === "running";
      const left = Math.max(0, scope - done);
      const partEta = left === 0 ? "done" : running && p.recent_rate
        ? duration(left / p.recent_rate) : "–";
      return el("tr", { "data-partition": String(p.partition_index) },
        el("th", { scope: "row" }, `${p.partition_index + 1} of ${next.partition_count}`),
        el("td", {}, badge(p.status, stateTone(p.status)),
          p.last_error ? el("div", { class: "error small" }, p.last_error) : null),
        el("td", {}, progressBar(done, scope,
          `partition ${p.partition_index + 1} of job ${shortId(next.job_id)}`)),
        el("td", { class: "num" }, `${number(done)} / ${number(scope)}`),
        el("td", { class: "num" }, running ? rate(p.recent_rate) : "–"),
        el("td", { class: "num" }, partEta),
        el("td", { class: "num" }, number(p.position)),
        el("td", {}, operate && p.status === "failed" ? el("button", {
          type: "button", class: "secondary", onclick: () => retry(current, p),
        }, "Retry") : null));
    }));
  }

  update(job);
  return { root, update };
}

function endedTable(jobs) {
  if (!jobs.length) return el("p", { class: "muted" }, "No job has ended yet.");
  return el("table", {},
    el("caption", {}, `Ended jobs (newest ${Math.min(jobs.length, ENDED_SHOWN)})`),
    el("thead", {}, el("tr", {},
      ...["Job", "Kind", "Projection", "Build", "State", "Events", "Avg rate", "By",
        "Reason", "Ended"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, jobs.slice(0, ENDED_SHOWN).map((job) => el("tr", {},
      el("td", { class: "mono" }, shortId(job.job_id)),
      el("td", {}, job.kind),
      el("td", {}, job.projection),
      el("td", { class: "num" }, job.build ?? "–"),
      el("td", {}, badge(job.state, stateTone(job.state)),
        job.error ? el("div", { class: "error small" }, job.error) : null),
      el("td", { class: "num" }, `${number(job.events_done)} / ${number(job.events_in_scope)}`),
      el("td", { class: "num" }, rate(job.events_per_second)),
      el("td", {}, job.principal),
      el("td", {}, job.reason),
      el("td", {}, timeEl(job.updated_at))))));
}

export function mountJobs(section) {
  const active = el("div", { class: "active-jobs", "aria-live": "off" });
  const ended = el("div");
  const empty = el("p", { class: "muted" }, "Loading…");
  section.append(el("h3", {}, "Active jobs"), empty, active, ended);
  const cards = new Map();

  onTick(async () => {
    if (!shown(section)) return;
    const jobs = await api("/api/jobs");
    // A failed job stays with the active ones: it can be retried or aborted.
    const running = jobs.filter((j) => !ENDED.includes(j.state));
    const seen = new Set();
    running.forEach((job, index) => {
      seen.add(job.job_id);
      let card = cards.get(job.job_id);
      if (card) card.update(job);
      else {
        card = jobCard(job);
        cards.set(job.job_id, card);
      }
      if (active.children[index] !== card.root) {
        active.insertBefore(card.root, active.children[index] || null);
      }
    });
    for (const [id, card] of cards) {
      if (!seen.has(id)) {
        card.root.remove();
        cards.delete(id);
      }
    }
    empty.textContent = running.length ? "" : "No job is running.";
    empty.hidden = running.length > 0;
    fill(ended, endedTable(jobs.filter((j) => ENDED.includes(j.state))));
  });
}
