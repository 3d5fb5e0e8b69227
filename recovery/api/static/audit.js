// The audit view.
import { el, onTick } from "./common.js";

export function mountAudit(section) {
  section.append(el("p", { class: "muted" }, "Loading…"));
  onTick(() => {});
}
