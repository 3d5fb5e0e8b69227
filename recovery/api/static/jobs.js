// The jobs view.
import { el, onTick } from "./common.js";

export function mountJobs(section) {
  section.append(el("p", { class: "muted" }, "Loading…"));
  onTick(() => {});
}
