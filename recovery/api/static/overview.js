// The overview view.
import { el, onTick } from "./common.js";

export function mountOverview(section) {
  section.append(el("p", { class: "muted" }, "Loading…"));
  onTick(() => {});
}
