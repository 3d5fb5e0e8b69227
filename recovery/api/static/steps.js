// Step: replay one projection in a sandbox, one event at a time (the live build is never
// touched), and see each event's envelope and the rows it changed, before and after.
// Payloads only for principals allowed to operate on the projection, when asked.
import { allowed, api, badge, el, fill, number, shortId, unavailable } from "./common.js";

function values(row) {
  return row === null ? el("span", { class: "muted" }, "none")
    : el("code", { class: "small" }, JSON.stringify(row));
}

function changedColumns(change) {
  if (change.kind !== "update") return null;
  const moved = Object.keys(change.after).filter(
    (name) => JSON.stringify(change.before[name]) !== JSON.stringify(change.after[name]));
  return el("div", { class: "small" }, moved.map((name) => el("div", {},
    el("strong", {}, name), ": ", JSON.stringify(change.before[name]), " → ",
    JSON.stringify(change.after[name]))));
}

function changesTable(step) {
  return el("table", { class: "step-changes" },
    el("thead", {}, el("tr", {},
      ...["Table", "Key", "Change", "Before", "After"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, step.changes.map((c) => el("tr", { "data-kind": c.kind },
      el("td", {}, c.table),
      el("td", { class: "mono" }, c.key.join(" / ")),
      el("td", {}, badge(c.kind, c.kind === "delete" ? "warn" : "info"), changedColumns(c)),
      el("td", {}, values(c.before)),
      el("td", {}, values(c.after))))));
}

function summary(step) {
  if (step.outcome === "blocked") return `not applied: its aggregate is parked at ${step.blocked_by}`;
  if (step.outcome === "parked") return `parked: ${step.error}`;
  return step.changes.length ? `changed ${step.changes.length} row(s)` : "changed nothing";
}

function stepBlock(step) {
  const e = step.envelope;
  return el("article", { class: "step", "data-position": e.position },
    el("h3", {}, `#${number(e.position)} ${e.event_type || e.topic} `,
      badge(step.outcome, step.outcome === "applied" ? "ok" : "warn")),
    el("p", { class: "small muted" },
      `aggregate ${e.aggregate_id} v${e.aggregate_version} · event ${shortId(e.event_id)} · `,
      `${e.occurred_at || "?"} · correlation ${shortId(e.correlation_id || "")} · `,
      `causation ${e.causation_id ? shortId(e.causation_id) : "none"} · key ${e.key_id || "none"}`),
    step.payload ? el("pre", { class: "payload small" }, JSON.stringify(step.payload, null, 2))
      : null,
    el("p", { class: "step-summary" }, summary(step)),
    step.changes.length ? changesTable(step) : null);
}

export function mountSteps(section) {
  const projection = el("select", { id: "step-projection", required: true });
  const start = el("input", { id: "step-from", type: "number", min: "1", value: "1", required: true });
  const to = el("input", { id: "step-to", type: "number", min: "1" });
  const count = el("input", { id: "step-count", type: "number", min: "1", value: "20" });
  const aggregate = el("input", { id: "step-aggregate", type: "text", spellcheck: "false" });
  const payloads = el("input", { id: "step-payloads", type: "checkbox" });
  const go = el("button", { type: "submit" }, "Step");
  const status = el("p", { class: "muted", role: "status" });
  const body = el("div", { id: "step-results" });
  const field = (label, input) => el("div", { class: "field" },
    el("label", { for: input.id }, label), input);
  const form = el("form", { id: "step-form", class: "inline" },
    field("Projection to step", projection), field("First position", start),
    field("Last position (or)", to), field("Events to show", count),
    field("Only aggregate (optional)", aggregate),
    el("div", { class: "field" }, payloads,
      el("label", { for: "step-payloads", class: "inline" }, "Show payloads (operators)")),
    go);
  section.append(
    el("p", { class: "muted" }, "Replays a projection in a sandbox one event at a time and " +
      "shows the rows each event changed. The live build is never touched."),
    form, status, body);

  let loaded = false;
  async function loadProjections() {
    if (loaded) return;
    try {
      const listed = await api("/api/projections");
      fill(projection, listed.map((p) => el("option", { value: p.name }, p.name)));
      loaded = true;
    } catch (failure) {
      fill(status, `Projections: ${unavailable(failure)}.`);
    }
  }
  new MutationObserver(() => { if (!section.hidden) loadProjections(); })
    .observe(section, { attributes: true, attributeFilter: ["hidden"] });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = projection.value;
    const wanted = { from: Number(start.value) };
    if (to.value) wanted.to = Number(to.value);
    else if (count.value) wanted.count = Number(count.value);
    if (aggregate.value.trim()) wanted.aggregate = aggregate.value.trim();
    if (payloads.checked) wanted.payloads = true;
    go.disabled = true;
    fill(status, "Stepping…");
    fill(body);
    try {
      const result = await api(`/api/projections/${encodeURIComponent(name)}/step`,
        { method: "POST", body: wanted });
      const changed = result.steps.filter((s) => s.changes.length).length;
      fill(status, `${result.projection}: ${result.steps.length} event(s) stepped from ` +
        `${result.start} to ${result.to} (${result.folded} folded before), ${changed} ` +
        "changed rows.",
        result.payloads_shown ? "" : ` Payloads not shown: ${result.payloads_note}.`,
        !allowed("operate", name) ? " (You may view this projection, not operate it.)" : "");
      fill(body, result.steps.length ? result.steps.map(stepBlock)
        : el("p", {}, "No event of this projection in that range."));
    } catch (failure) {
      fill(status, el("span", { class: "error", role: "alert" }, failure.message));
    } finally {
      go.disabled = false;
    }
  });
}
