// The dashboard's shell: sign in and out, the sections and their navigation, the poll.
import {
  SIGNED_OUT, clearToken, fill, me, reportProblem, setToken, startTicking, stopTicking, tickNow,
  token,
} from "./common.js";
import { mountConsole } from "./console.js";
import { mountOverview } from "./overview.js";
import { mountJobs } from "./jobs.js";
import { mountParked } from "./parked.js";
import { mountReactions } from "./reactions.js";
import { mountAlerts } from "./alerts.js";
import { mountSlos } from "./slos.js";
import { mountRequests } from "./requests.js";
import { mountConflicts } from "./conflicts.js";
import { mountAudit } from "./audit.js";
import { mountSteps } from "./steps.js";
import { mountFlags } from "./flags.js";

const SECTIONS = {
  overview: mountOverview,
  jobs: mountJobs,
  parked: mountParked,
  reactions: mountReactions,
  alerts: mountAlerts,
  step: mountSteps,
  slos: mountSlos,
  flags: mountFlags,
  requests: mountRequests,
  conflicts: mountConflicts,
  audit: mountAudit,
  console: mountConsole,
};
const FIRST = "overview";

const $ = (id) => document.getElementById(id);
let mounted = false;

function wanted() {
  const name = location.hash.replace(/^#/, "");
  return Object.hasOwn(SECTIONS, name) ? name : FIRST;
}

/** Show one section (the one the URL's #fragment names), hide the others. */
function show(name, { focus = false } = {}) {
  for (const id of Object.keys(SECTIONS)) {
    $(id).hidden = id !== name;
  }
  for (const link of document.querySelectorAll("#nav a[data-section]")) {
    if (link.dataset.section === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.body.dataset.section = name;
  if (focus) {
    const heading = $(name).querySelector("h2");
    const target = heading || $(name);
    if (!target.hasAttribute("tabindex")) target.setAttribute("tabindex", "-1");
    target.focus();
  }
}

async function signedIn(principal) {
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  fill($("principal"), "signed in as ", principal.principal);
  if (!mounted) {
    mounted = true;
    for (const [id, mount] of Object.entries(SECTIONS)) {
      try {
        mount($(id));
      } catch (failure) {
        console.error(`the ${id} view failed to start`, failure);
      }
    }
  }
  show(wanted());
  startTicking();
}

function signedOutView(message = "") {
  stopTicking();
  $("nav").hidden = true;
  $("who").hidden = true;
  for (const id of Object.keys(SECTIONS)) $(id).hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
  $("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = $("token");
  const value = input.value.trim();
  input.value = "";
  if (!value) return;
  setToken(value);
  try {
    await signedIn(await me());
  } catch (failure) {
    clearToken();
    signedOutView(failure.status === 401 ? "That token is not valid." : failure.message);
  }
}

function signOut() {
  clearToken();
  // A fresh page: nothing the previous principal saw stays in memory or on screen.
  location.reload();
}

// The API said the token is not (or no longer) valid while signed in (revoked,
// expired): start again from the sign-in form. (Signing in handles its own 401.)
document.addEventListener(SIGNED_OUT, () => {
  if (!mounted || !token()) return;
  clearToken();
  location.reload();
});

window.addEventListener("hashchange", () => {
  if (!token()) return;
  show(wanted(), { focus: true });
  tickNow(); // a view polls only while shown: fill the one just shown at once
});

$("sign-in-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", signOut);

if (token()) {
  me().then(signedIn, (failure) => {
    if (failure.status === 401) {
      clearToken();
      signedOutView("Your token is no longer valid: sign in again.");
    } else {
      signedOutView();
      reportProblem(failure);
    }
  });
} else {
  signedOutView();
}
