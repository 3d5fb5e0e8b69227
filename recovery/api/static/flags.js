// Flags: the recovery flags that are set, their history, and the operations switch
// (with a banner on every view while operations are frozen). Read-only: flags and the
// switch are changed with `safereplay flags set` / `safereplay switch freeze` or the API.
import {
  api, badge, el, fill, onTick, shown, timeEl, unavailable,
} from "./common.js";

function rollout(r) {
  if (r.partitions) return `partitions ${r.partitions.join(",")}`;
  if (r.share !== null && r.share !== undefined) return `${r.share}% of partitions`;
  return "all partitions";
}

function thresholds(flag) {
  return ["backlog_threshold", "max_restarts", "window_seconds"]
    .filter((name) => flag[name] !== null && flag[name] !== undefined)
    .map((name) => `${name}=${flag[name]}`).join(" ") || "–";
}

function value(v) {
  if (!v) return "unset";
  if ("frozen" in v) return v.frozen ? `frozen by ${v.held_by || "?"}` : "not frozen";
  return `${v.enabled ? "on" : "off"}, ${rollout(v.rollout)}, ${thresholds(v)}`;
}

function flagsTable(flags) {
  return el("table", { id: "flags-table" },
    el("thead", {}, el("tr", {},
      ...["Flag", "Target", "State", "Rollout", "Thresholds"]
        .map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, flags.map((f) => el("tr", { "data-flag": `${f.name} ${f.target}` },
      el("td", {}, f.name),
      el("td", {}, f.target),
      el("td", {}, badge(f.enabled ? "on" : "off", f.enabled ? "ok" : "info")),
      el("td", {}, rollout(f.rollout)),
      el("td", {}, thresholds(f))))));
}

function historyTable(history) {
  return el("table", { id: "flags-history" },
    el("thead", {}, el("tr", {},
      ...["#", "Subject", "Who", "When", "Old", "New", "Reason"]
        .map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, history.map((h) => el("tr", {},
      el("td", { class: "num" }, String(h.seq)),
      el("td", {}, h.subject),
      el("td", {}, h.actor),
      el("td", {}, timeEl(h.at)),
      el("td", {}, value(h.old_value)),
      el("td", {}, value(h.new_value)),
      el("td", {}, h.reason)))));
}

function frozenText(s) {
  return `Operations are frozen by ${s.held_by} (${s.reason}): every change is refused `
    + "for everyone else until they, or an admin, unfreeze them.";
}

export function mountFlags(section) {
  const banner = document.getElementById("frozen-banner");
  const switchState = el("p", { id: "switch-state" }, "Loading…");
  const flagsBody = el("div");
  const historyBody = el("div");
  section.append(
    el("h3", {}, "The operations switch"), switchState,
    el("h3", {}, "Flags that are set"), flagsBody,
    el("h3", {}, "History"), historyBody,
  );

  onTick(async () => {
    // The banner shows on every view: the switch is read on every tick.
    let listed;
    try {
      listed = await api("/api/flags");
    } catch (failure) {
      banner.hidden = true;
      if (shown(section)) {
        fill(switchState, `Flags: ${unavailable(failure)}.`);
        fill(flagsBody);
        fill(historyBody);
      }
      return;
    }
    const s = listed.switch;
    banner.hidden = !s.frozen;
    fill(banner, s.frozen ? frozenText(s) : "");
    if (!shown(section)) return;
    fill(switchState, s.frozen
      ? el("span", {}, badge("frozen", "bad"), " ", frozenText(s), " Since ", timeEl(s.since), ".")
      : el("span", {}, badge("not frozen", "ok"), " Every operation runs as its grants allow."));
    fill(flagsBody, listed.flags.length ? flagsTable(listed.flags)
      : el("p", {}, "No flag is set: every automatic action is off."));
    try {
      const history = (await api("/api/flags/history?limit=50")).history;
      fill(historyBody, history.length ? historyTable(history)
        : el("p", {}, "No change recorded."));
    } catch (failure) {
      fill(historyBody, `History: ${unavailable(failure)}.`);
    }
  });
}
