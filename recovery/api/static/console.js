// The no-code recovery console: pick a recovery procedure (a shipped runbook or one of
// the organisation's stored templates), set only the parameters it declares, see its
// plan, rehearse it as a drill in a sandbox, apply it with a reason, watch its canary
// and release the rest once the canary verified; re-drive parked events.
//
// The server decides: the form shows each parameter's bounds and default (from the
// same model the command line's --set is checked with), but what it sends is checked
// again by the server, whose refusal (422, naming the parameter and the bound) is
// what the form shows. Buttons that change something show only to principals allowed
// to operate on the projection, and ask for a reason (kept in the audit trail).
import {
  allowed, api, askReason, badge, duration, el, fill, me, missingRoute, number, onTick,
  postWithReason, progressBar, reportProblem, shortId, shown, stateTone, tickNow,
} from "./common.js";

const ENDED = ["completed", "failed", "aborted"];
// The jobs started here (ids, no secret), per principal, for this tab only: a reload
// keeps watching them.
const STARTED_KEY = "safereplay.console.started";
const KEEP = 10;

function startedSteps(principal) {
  try {
    const all = JSON.parse(sessionStorage.getItem(STARTED_KEY) || "{}");
    return Array.isArray(all[principal]) ? all[principal] : [];
  } catch {
    return [];
  }
}

function rememberStep(principal, step) {
  let all = {};
  try {
    all = JSON.parse(sessionStorage.getItem(STARTED_KEY) || "{}") || {};
  } catch {
    all = {};
  }
  const kept = (Array.isArray(all[principal]) ? all[principal] : [])
    .filter((s) => s.job_id !== step.job_id);
  kept.push({ job_id: step.job_id, operation: step.operation, projection: step.projection });
  all[principal] = kept.slice(-KEEP);
  sessionStorage.setItem(STARTED_KEY, JSON.stringify(all));
}
let uid = 0;

/** An id unique in the page (labels point at their inputs with it). */
function newId(prefix) {
  uid += 1;
  return `console-${prefix}-${uid}`;
}

/** A <dl> of [term, description] pairs (descriptions: anything el() takes). */
function facts(pairs) {
  return el("dl", { class: "console-facts" },
    pairs.filter(Boolean).map(([term, description]) => [el("dt", {}, term), el("dd", {}, description)]));
}

function rate(value) {
  return value ? `${number(Math.round(value))} events/s` : "–";
}

// -- 1. the procedure --------------------------------------------------------------------

function templateOption(template) {
  const text = template.description ? `${template.name} — ${template.description}` : template.name;
  return el("option", { value: template.name }, text);
}

// -- 2. its parameters ----------------------------------------------------------------------

/** What a parameter accepts, in words: bounds, default, description. */
function hintOf(parameter) {
  const parts = [parameter.bounds];
  parts.push(parameter.default === null || parameter.default === undefined
    ? "default: as the template says" : `default ${parameter.default}`);
  return parts.join(" · ");
}

/** A form field for one declared parameter; `value()` is its text ("" = the default). */
function parameterField(parameter) {
  const id = newId(`param-${parameter.name}`);
  const hintId = `${id}-hint`;
  const adviceId = `${id}-advice`;
  const schema = parameter.schema || {};
  let input;
  if (parameter.type === "projection") {
    input = el("select", { id, name: parameter.name, "aria-describedby": `${hintId} ${adviceId}` },
      el("option", { value: "" }, parameter.default ? `${parameter.default} (default)` : "(default)"),
      (schema.enum || []).filter((name) => name !== parameter.default)
        .map((name) => el("option", { value: name }, name)));
  } else {
    input = el("input", {
      id, name: parameter.name, type: "number", inputmode: parameter.type === "integer"
        ? "numeric" : "decimal",
      step: parameter.type === "integer" ? "1" : "any",
      min: schema.minimum, max: schema.maximum,
      placeholder: parameter.default === null || parameter.default === undefined
        ? "" : String(parameter.default),
      "aria-describedby": `${hintId} ${adviceId}`,
    });
  }
  const advice = el("span", { id: adviceId, class: "console-advice", "aria-live": "polite" });
  // A hint only: the form is sent anyway, and the server's answer is what refuses.
  input.addEventListener("input", () => {
    const text = input.value.trim();
    const value = Number(text);
    let said = "";
    if (parameter.type !== "projection" && text !== "") {
      if (!Number.isFinite(value)) said = "not a number";
      else if (parameter.type === "integer" && !Number.isInteger(value)) said = "not a whole number";
      else if (schema.minimum !== undefined && value < schema.minimum) said = `below ${schema.minimum}`;
      else if (schema.maximum !== undefined && value > schema.maximum) said = `above ${schema.maximum}`;
    }
    advice.textContent = said ? `Looks out of bounds: ${said}.` : "";
  });
  const field = el("div", { class: "console-field" },
    el("label", { for: id }, parameter.name),
    input,
    el("div", { id: hintId, class: "small muted" }, hintOf(parameter),
      parameter.description ? ` — ${parameter.description}` : ""),
    advice);
  return { field, input, name: parameter.name, value: () => input.value.trim() };
}

// -- 3. the plan ----------------------------------------------------------------------------

function planView(plan, titleId) {
  const scope = plan.projections.length
    ? plan.projections.map((p) => `${p.projection} (build ${p.live_build ?? "none"} live, ` +
      `writes build ${p.writes_build ?? "–"})`).join("; ")
    : "the events table (every event)";
  const notes = plan.projections.flatMap((p) => p.notes.map((note) => `${p.projection}: ${note}`));
  return el("div", { class: "console-plan", "data-template": plan.template },
    el("h3", { id: titleId, tabindex: "-1" }, `Plan: ${plan.template}`),
    el("p", { class: "muted" }, `${plan.origin} · ${plan.kind} · changes ${plan.changes}`),
    facts([
      ["Scope", `${scope}; ${plan.partition_count} partition(s); head at position ${number(plan.head)}`],
      ["Events", `${number(plan.events)} event(s) in scope`],
      ["Tables touched", plan.tables.length
        ? el("ul", { class: "console-list" }, plan.tables.map((t) => el("li", { class: "mono" }, t)))
        : "none"],
      ["Estimate", `${duration(plan.estimate.seconds)} at ${rate(plan.estimate.events_per_second)} ` +
        `(${plan.estimate.basis})`],
      ["On error", `${plan.failure_policy.on_error}` +
        (plan.failure_policy.attempts ? `, ${plan.failure_policy.attempts} attempt(s)` : "")],
      ["Throttle", [
        plan.throttle.events_per_second ? rate(plan.throttle.events_per_second) : "no rate cap",
        plan.throttle.max_concurrent_partitions
          ? `, ${plan.throttle.max_concurrent_partitions} partition(s) at a time` : ""].join("")],
    ]),
    el("table", { class: "console-stages" },
      el("caption", {}, "Rollout stages"),
      el("thead", {}, el("tr", {}, ["Stage", "Partitions", "When"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, plan.stages.map((stage) => el("tr", { "data-stage": stage.stage },
        el("th", { scope: "row" }, stage.stage),
        el("td", {}, stage.partitions.join(", ")),
        el("td", {}, stage.when))))),
    plan.projections.some((p) => p.partitions.length) ? el("table", { class: "console-partitions" },
      el("caption", {}, "Events per partition"),
      el("thead", {}, el("tr", {}, ["Projection", "Partition", "Positions", "Events"]
        .map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, plan.projections.flatMap((p) => p.partitions.map((part) => el("tr", {},
        el("td", {}, p.projection),
        el("td", {}, `${part.partition}`),
        el("td", {}, `${number(part.after + 1)}–${number(part.upto)}`),
        el("td", { class: "num" }, number(part.events))))))) : null,
    notes.length ? el("ul", { class: "console-list small muted" }, notes.map((n) => el("li", {}, n)))
      : null);
}

function drillView(result) {
  return el("div", { class: "console-drills", role: "status" },
    el("h3", {}, "Rehearsal"),
    result.drills.map((drill) => el("div", { class: "console-drill", "data-match": String(drill.match) },
      el("p", {}, badge(drill.match ? "matches live" : "DIVERGES from live", drill.match ? "ok" : "bad"),
        ` ${drill.projection}: rebuilt into a sandbox in ${drill.partition_count} partition(s) up to ` +
        `position ${number(drill.position)} and compared with build ${drill.build}`),
      facts([
        ["Checksums", `${drill.comparisons.length} compared, ` +
          `${drill.comparisons.filter((c) => !c.match).length} differ`],
        ["Events applied", number(drill.events_applied)],
        ["Parked", `${number(drill.sandbox_parked)} in the sandbox, ${number(drill.live_parked)} live`],
      ]),
      drill.match ? null : el("ul", { class: "console-list" }, drill.comparisons.filter((c) => !c.match)
        .map((c) => el("li", {}, `${c.table} partition ${c.partition}: ${number(c.differing_rows)} row(s) differ`))))));
}

// -- 4. the started jobs --------------------------------------------------------------------

function partitionProgress(p, job) {
  const scope = p.events_in_scope ?? Math.max(0, (p.target_position ?? 0) - p.start_position);
  const done = p.status === "completed" ? scope : Math.min(scope, p.events_applied + p.parked);
  return { done, scope, of: job.partition_count };
}

/** A started job's live panel: made once, updated in place at each poll (focus stays). */
function jobPanel(step) {
  const jobId = step.job_id;
  const state = el("span");
  const detail = el("p", { class: "console-rollout", role: "status" });
  const rows = el("tbody");
  const release = el("button", { type: "button", disabled: true }, "Release the rest");
  const abort = el("button", { type: "button", class: "danger", disabled: true }, "Abort");
  const operate = allowed("operate", step.projection);
  let current = null;
  let rollout = null;

  release.addEventListener("click", () => postWithReason(
    `Release the rest of job ${shortId(jobId)}?`,
    `The canary partitions verified (${rollout ? rollout.detail : ""}): the held partitions ` +
      "go to the workers now.",
    "Release the rest",
    `/api/jobs/${encodeURIComponent(jobId)}/continue`,
  ));
  abort.addEventListener("click", () => postWithReason(
    `Abort job ${shortId(jobId)}?`,
    "Workers stop at their next batch; the live build is not touched.",
    "Abort",
    `/api/jobs/${encodeURIComponent(jobId)}/abort`,
  ));

  const root = el("article", { class: "job console-job", "data-job-id": jobId,
    "aria-label": `job ${shortId(jobId)}` },
  el("header", {}, el("h4", {}, `${step.operation} ${step.projection ?? ""} · job ${shortId(jobId)}`),
    state,
    operate ? el("div", { class: "controls", role: "group", "aria-label": "Rollout controls" },
      release, abort) : null),
  detail,
  el("table", { class: "partitions" },
    el("caption", { class: "visually-hidden" }, "Partitions"),
    el("thead", {}, el("tr", {}, ["Partition", "Stage", "Status", "Progress", "Events"]
      .map((h) => el("th", { scope: "col" }, h)))),
    rows));

  async function update() {
    let status;
    let stage;
    try {
      [status, stage] = await Promise.all([
        api(`/api/jobs/${encodeURIComponent(jobId)}`),
        api(`/api/jobs/${encodeURIComponent(jobId)}/rollout`),
      ]);
    } catch (failure) {
      // Said on this job's panel: the other panels still update.
      fill(detail, el("span", { class: "error" }, `Cannot read job ${shortId(jobId)}: ` +
        failure.message));
      return;
    }
    current = status.job;
    rollout = stage;
    root.dataset.state = current.state;
    root.dataset.verified = String(stage.verified);
    fill(state, badge(current.state, stateTone(current.state)),
      stage.staged ? [" ", stage.verified ? badge("canary verified", "ok")
        : stage.canary_ended ? badge("canary not verified", "bad") : badge("canary running", "info")]
        : null);
    const releasable = stage.staged && stage.verified && stage.held_partitions.length > 0 &&
      !ENDED.includes(current.state);
    release.disabled = !releasable;
    abort.disabled = ENDED.includes(current.state) || current.state === "aborting";
    fill(detail, stage.staged
      ? `${stage.detail}. Held: ${stage.held_partitions.length ? stage.held_partitions.join(", ")
        : stage.released ? "none (released)" : "none"}.`
      : "One stage: every partition runs at once.",
    current.error ? el("span", { class: "error" }, ` Error: ${current.error}`) : null);
    const canary = new Set(stage.canary_partitions);
    fill(rows, status.partitions.map((p) => {
      const { done, scope, of } = partitionProgress(p, current);
      return el("tr", { "data-partition": String(p.partition_index), "data-status": p.status },
        el("th", { scope: "row" }, `${p.partition_index} (of ${of})`),
        el("td", {}, stage.staged ? (canary.has(p.partition_index) ? "canary" : "rest") : "all"),
        el("td", {}, badge(p.status, stateTone(p.status)),
          p.last_error ? el("div", { class: "error small" }, p.last_error) : null),
        el("td", {}, progressBar(done, scope, `partition ${p.partition_index} of job ${shortId(jobId)}`)),
        el("td", { class: "num" }, `${number(done)} / ${number(scope)}`));
    }));
  }

  return { root, update, ended: () => current !== null && ENDED.includes(current.state) };
}

// -- 5. parked events ----------------------------------------------------------------------

/** The redrive part; `onStarted(step)` gets the redrive's job, for the live panels. */
function parkedPart(onStarted) {
  const selectId = newId("parked-projection");
  const select = el("select", { id: selectId });
  const list = el("div", { class: "console-parked-list", "aria-live": "polite" },
    el("p", { class: "muted" }, "Pick a projection."));
  // Shown once a projection the principal may operate on is picked.
  const redrive = el("button", { type: "button", disabled: true, hidden: true },
    "Redrive parked events");
  let open = 0;

  async function load() {
    await listParked(select.value);
    list.dataset.projection = select.value;
  }

  async function listParked(projection) {
    redrive.disabled = true;
    redrive.hidden = !projection || !allowed("operate", projection);
    if (!projection) {
      fill(list, el("p", { class: "muted" }, "Pick a projection."));
      return;
    }
    let events;
    try {
      events = await api(`/api/projections/${encodeURIComponent(projection)}/parked`);
    } catch (failure) {
      fill(list, el("p", { class: "muted" }, missingRoute(failure)
        ? "Parked events are not available yet on this server." : failure.message));
      return;
    }
    open = events.filter((e) => !e.resolved_at).length;
    redrive.disabled = !(open && allowed("operate", projection));
    if (!events.length) {
      fill(list, el("p", { class: "muted" }, `Nothing parked in ${projection}.`));
      return;
    }
    // Where and why each was parked: never an event's payload.
    fill(list, el("table", { class: "console-parked" },
      el("caption", { class: "visually-hidden" }, `${projection}: parked events`),
      el("thead", {}, el("tr", {}, ["Position", "Event type", "Why", "Attempts"]
        .map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, events.map((e) => el("tr", {},
        el("td", { class: "num" }, number(e.position)),
        el("td", {}, e.event_type),
        el("td", {}, el("strong", {}, e.error_type), " ", e.error_message,
          e.reason ? el("div", { class: "small muted" }, e.reason) : null),
        el("td", { class: "num" }, number(e.attempts)))))));
  }

  redrive.addEventListener("click", async () => {
    const projection = select.value;
    const reason = await askReason(`Re-drive ${projection}'s parked events?`,
      `A job applies its ${open} parked event(s) again, in order (a worker runs it). ` +
      "Do it once the cause is fixed.", { confirmLabel: "Re-drive" });
    if (reason === null) return;
    try {
      const started = await api(
        `/api/projections/${encodeURIComponent(projection)}/parked/redrive`,
        { method: "POST", body: { reason } },
      );
      reportProblem(null);
      onStarted({ job_id: started.job_id, operation: "parked.redrive", projection,
        detail: started.state });
    } catch (failure) {
      reportProblem(missingRoute(failure)
        ? "re-driving parked events is not available yet on this server" : failure);
    }
    await load();
    await tickNow();
  });
  select.addEventListener("change", load);

  async function projections() {
    if (select.options.length) return;
    const listed = await api("/api/projections");
    fill(select, el("option", { value: "" }, "(pick a projection)"),
      listed.map((p) => el("option", { value: p.name }, p.name)));
  }

  const root = el("div", { class: "console-step" },
    el("h3", {}, "Redrive parked events"),
    el("p", { class: "muted" }, "Events a projection set aside, with why; after the fix, apply " +
      "them again in order."),
    el("label", { for: selectId }, "Projection"), select, " ", redrive, list);
  return { root, projections, load };
}

// -- the console -----------------------------------------------------------------------------

export function mountConsole(section) {
  const templateId = newId("template");
  const picker = el("select", { id: templateId, "aria-describedby": `${templateId}-about` });
  const about = el("p", { id: `${templateId}-about`, class: "muted" });
  const fields = el("div", { class: "console-fields" });
  const refusal = el("p", { class: "error console-refusal", role: "alert" });
  const planButton = el("button", { type: "submit" }, "Plan");
  const form = el("form", { class: "console-form", novalidate: true, "aria-label": "Parameters" },
    el("fieldset", {}, el("legend", {}, "Parameters (empty: the template's value)"), fields),
    el("div", { class: "buttons start" }, planButton), refusal);
  const planArea = el("div", { class: "console-plan-area" });
  const actions = el("div", { class: "buttons start console-actions", role: "group",
    "aria-label": "Plan actions" });
  const drillArea = el("div", { "aria-live": "polite" });
  const jobsArea = el("div", { class: "console-jobs" });
  const parked = parkedPart((step) => addStep(step));
  const planTitle = newId("plan-title");

  let templates = [];
  let formFields = [];
  let planned = null; // {template, settings, plan}
  const panels = new Map();

  section.setAttribute("aria-labelledby", "console-title");
  section.append(
    el("h2", { id: "console-title" }, "Recovery console"),
    el("p", { class: "muted" }, "Pick a recovery procedure, set what it lets you set, see its " +
      "plan, rehearse it in a sandbox, then apply it canary first."),
    el("div", { class: "console-step" },
      el("label", { for: templateId }, "Recovery procedure"), picker, about),
    el("div", { class: "console-step" }, form),
    el("div", { class: "console-step" }, planArea, actions, drillArea),
    el("div", { class: "console-step" }, el("h3", {}, "Started jobs"), jobsArea),
    parked.root);

  function settings() {
    const given = {};
    for (const field of formFields) {
      if (field.value() !== "") given[field.name] = field.value();
    }
    return given;
  }

  function clearPlan() {
    planned = null;
    fill(planArea);
    fill(actions);
    fill(drillArea);
  }

  async function chooseTemplate() {
    clearPlan();
    refusal.textContent = "";
    const name = picker.value;
    const listed = templates.find((t) => t.name === name);
    fill(about, listed ? `${listed.source === "stored" ? `stored template v${listed.version} by ${listed.author}`
      : "shipped runbook"} · ${listed.kind}${listed.description ? ` · ${listed.description}` : ""}` : "");
    fill(fields, el("p", { class: "muted" }, "Loading…"));
    formFields = [];
    if (!name) return;
    try {
      const described = await api(`/api/templates/${encodeURIComponent(name)}/parameters`);
      if (picker.value !== name) return; // another one was picked meanwhile
      formFields = described.parameters.map(parameterField);
      fill(fields, formFields.length ? formFields.map((f) => f.field)
        : el("p", { class: "muted" }, "This procedure declares nothing to set."),
      described.canary_partitions.length ? el("p", { class: "small muted" },
        `Canary partitions: ${described.canary_partitions.join(", ")} run first.`) : null);
    } catch (failure) {
      fill(fields, el("p", { class: "error" }, failure.message));
    }
  }

  async function plan(event) {
    event.preventDefault();
    const name = picker.value;
    if (!name) return;
    const given = settings();
    clearPlan();
    refusal.textContent = "";
    planButton.disabled = true;
    try {
      const result = await api(`/api/templates/${encodeURIComponent(name)}/plan`, {
        method: "POST", body: { settings: given },
      });
      planned = { template: name, settings: given, plan: result };
      fill(planArea, planView(result, planTitle));
      showActions();
      document.getElementById(planTitle).focus();
    } catch (failure) {
      // The server refused (a value out of bounds, a parameter not declared): say why.
      refusal.textContent = failure.message;
      const field = formFields.find((f) => failure.message.includes(`'${f.name}'`));
      if (field) field.input.focus();
    } finally {
      planButton.disabled = false;
    }
  }

  function operable() {
    const names = planned.plan.projections.map((p) => p.projection);
    return names.length ? names.every((n) => allowed("operate", n)) : allowed("operate", "keys");
  }

  function showActions() {
    if (!planned || !operable()) {
      fill(actions, planned ? el("p", { class: "muted" },
        "You may plan this procedure but not apply it here (it needs the operate permission).")
        : null);
      return;
    }
    const rehearse = el("button", { type: "button", class: "secondary" }, "Rehearse as a drill");
    const apply = el("button", { type: "button" }, "Apply…");
    const forPlan = planned;
    rehearse.addEventListener("click", async () => {
      const reason = await askReason(`Rehearse ${forPlan.template}?`,
        "Its projections are rebuilt into a sandbox and compared with the live build; " +
        "nothing live is touched.", { confirmLabel: "Rehearse" });
      if (reason === null) return;
      rehearse.disabled = true;
      fill(drillArea, el("p", { class: "muted" }, "Rehearsing in a sandbox…"));
      try {
        const result = await api(`/api/templates/${encodeURIComponent(forPlan.template)}/drill`, {
          method: "POST", body: { reason, settings: forPlan.settings },
        });
        fill(drillArea, drillView(result));
      } catch (failure) {
        fill(drillArea, el("p", { class: "error" }, `Rehearsal refused: ${failure.message}`));
      } finally {
        rehearse.disabled = false;
      }
    });
    apply.addEventListener("click", async () => {
      const stages = forPlan.plan.stages.map((s) => `${s.stage}: ${s.partitions.join(", ")}`)
        .join("; ");
      const reason = await askReason(`Apply ${forPlan.template}?`,
        `Its job(s) start now (${stages}); a worker runs them. With a canary, the rest waits ` +
        "until you release it.", { confirmLabel: "Apply" });
      if (reason === null) return;
      apply.disabled = true;
      try {
        const result = await api(`/api/templates/${encodeURIComponent(forPlan.template)}/apply`, {
          method: "POST", body: { reason, settings: forPlan.settings },
        });
        reportProblem(null);
        for (const step of result.steps) addStep(step);
        await tickNow();
      } catch (failure) {
        refusal.textContent = failure.message;
      } finally {
        apply.disabled = false;
      }
    });
    fill(actions, rehearse, apply);
  }

  function addStep(step, { remember = true } = {}) {
    if (!step.job_id) {
      jobsArea.prepend(el("p", { class: "muted" }, `${step.operation} ${step.projection ?? ""}: ` +
        `nothing to run (${step.detail})`));
      return;
    }
    if (panels.has(step.job_id)) return;
    const none = jobsArea.querySelector(".console-none");
    if (none) none.remove();
    const panel = jobPanel(step);
    panels.set(step.job_id, panel);
    jobsArea.prepend(panel.root);
    if (remember) me().then((who) => rememberStep(who.principal, step), () => {});
  }

  picker.addEventListener("change", chooseTemplate);
  form.addEventListener("submit", plan);
  form.addEventListener("input", () => {
    // A plan is of the values it was made with: changed values need a new plan.
    if (planned) clearPlan();
  });
  fill(jobsArea, el("p", { class: "muted console-none" }, "Nothing applied from here yet."));

  async function loadTemplates() {
    templates = await api("/api/templates");
    const shipped = templates.filter((t) => t.source === "shipped");
    const stored = templates.filter((t) => t.source === "stored");
    fill(picker, el("option", { value: "" }, "(pick a procedure)"),
      stored.length ? el("optgroup", { label: "Your organisation's templates" },
        stored.map(templateOption)) : null,
      el("optgroup", { label: "Shipped runbooks" }, shipped.map(templateOption)));
  }

  let loaded = false;
  onTick(async () => {
    if (!shown(section)) return;
    if (!loaded) {
      loaded = true;
      try {
        const [who] = await Promise.all([me(), loadTemplates(), parked.projections()]);
        for (const step of startedSteps(who.principal)) addStep(step, { remember: false });
      } catch (failure) {
        loaded = false;
        throw failure;
      }
    }
    const live = [...panels.values()].filter((panel) => !panel.ended());
    await Promise.all(live.map((panel) => panel.update()));
  });
}
