// A project's operations, newest first: who did what, when, how many
// changes; undo one and see what was reverted and what was skipped because
// it changed since.

import { fill, api, el, show, loading, ago, projectNav, operationName, undo, undoSummary, skippedList } from "./ui.js";

export async function operationsScreen(pid) {
  loading("the operations");
  const project = await api("GET", `/v1/projects/${pid}`);
  const list = el("ol", { class: "operations", id: "operations" });
  const result = el("div", { id: "undo-result", role: "status", "aria-live": "polite" });
  let cursor = null;
  const more = el(
    "button",
    { type: "button", class: "quiet-dark", hidden: true, onclick: () => load(true) },
    "Older operations",
  );

  function row(o) {
    const state = o.undone_by ? el("span", { class: "tag-undone" }, "undone") : null;
    const button = o.undone_by
      ? null
      : el(
          "button",
          {
            type: "button",
            class: "quiet-dark",
            "data-operation": o.id,
            "aria-label": `Undo ${operationName(o.kind)} by ${o.user}, ${ago(o.at)}`,
            onclick: async () => {
              button.disabled = true;
              try {
                const r = await undo(pid, o.id);
                fill(result, el("p", { class: "notice" }, undoSummary(r)), skippedList(pid, r));
                await load(false);
              } catch (e) {
                fill(result, el("p", { class: "notice error", role: "alert" }, e.message));
                button.disabled = false;
              }
            },
          },
          "Undo",
        );
    return el(
      "li",
      { class: "card operation", "data-kind": o.kind },
      el(
        "div",
        {},
        el("strong", {}, o.user),
        ` ${operationName(o.kind)}`,
        o.count > 1 ? ` · ${o.count} changes` : "",
        o.reason ? ` · “${o.reason}”` : "",
        " ",
        state,
        el("span", { class: "when" }, ago(o.at)),
      ),
      button,
    );
  }

  async function load(older) {
    const query = new URLSearchParams({ limit: "50" });
    if (older && cursor) query.set("cursor", cursor);
    const page = await api("GET", `/v1/projects/${pid}/operations?${query}`);
    cursor = page.next_cursor || null;
    const rows = (page.items || []).map(row);
    if (older) list.append(...rows);
    else
      fill(
        list,
        ...(rows.length ? rows : [el("li", { class: "status" }, "Nothing has been recorded in this project yet.")]),
      );
    more.hidden = !cursor;
  }
  show(projectNav(pid, "/operations"), el("h1", {}, `Operations · ${project.name}`), result, list, more);
  await load(false);
}
