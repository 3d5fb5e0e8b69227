// The alerts view.
import { el, onTick } from "./common.js";

export function mountAlerts(section) {
  section.append(el("p", { class: "muted" }, "Loading…"));
  onTick(() => {});
}
