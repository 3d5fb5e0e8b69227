// The parked view.
import { el, onTick } from "./common.js";

export function mountParked(section) {
  section.append(el("p", { class: "muted" }, "Loading…"));
  onTick(() => {});
}
