// Every component of a project, filtered by tag, kind, status, area and
// drawing, a page at a time (cursor pagination stays fast at 100,000
// components); tick some or every match, pick a milestone and a value,
// preview the bulk update item by item, then apply it (and undo it).

import { fill, api, el, show, loading, percent, projectNav, toast, STATUS } from "./ui.js";

/** The most updates one bulk call takes (the API answers 413 past it). */
const BULK_MAX = 10000;
const PAGE = 100;

/** A milestone's value in a bulk result, as a person reads it. */
function value(m) {
  if (!m) return "—";
  if (m.completed !== null && m.completed !== undefined) return m.completed ? "done" : "not done";
  if (m.percent !== null && m.percent !== undefined) return percent(m.percent);
  if (m.quantity !== null && m.quantity !== undefined) return String(m.quantity);
  return "—";
}

/** `params`: the filter to start with, from the address
 * (`#/projects/<pid>/components?area=Bay%201`): q, kind, status, area,
 * drawing (its number). */
export async function componentsScreen(pid, params) {
  const start = new URLSearchParams(params || "");
  loading("the components");
  const [project, drawings] = await Promise.all([api("GET", `/v1/projects/${pid}`), allDrawings(pid)]);
  const byNumber = new Map(drawings.map((d) => [d.number, d.id]));
  const prefilled = (input, name) => {
    if (start.get(name)) input.value = start.get(name);
    return input;
  };
  const field = (id, label, input) => el("div", {}, el("label", { for: id }, label), input);
  const q = prefilled(
    el("input", { id: "f-q", type: "search", autocomplete: "off", placeholder: "part of a tag" }),
    "q",
  );
  const kind = prefilled(el("input", { id: "f-kind", autocomplete: "off" }), "kind");
  const status = el(
    "select",
    { id: "f-status" },
    el("option", { value: "" }, "Any"),
    Object.entries(STATUS).map(([k, v]) => el("option", { value: k }, v)),
  );
  prefilled(status, "status");
  const area = prefilled(el("input", { id: "f-area", autocomplete: "off" }), "area");
  const drawing = prefilled(el("input", { id: "f-drawing", autocomplete: "off", list: "drawing-numbers" }), "drawing");
  const numbers = el(
    "datalist",
    { id: "drawing-numbers" },
    drawings.slice(0, 1000).map((d) => el("option", { value: d.number })),
  );
  const filterMessage = el("p", { class: "field-message", role: "alert", hidden: true });
  const filters = el(
    "form",
    {
      class: "card filters",
      role: "search",
      "aria-label": "Filter components",
      onsubmit: (ev) => {
        ev.preventDefault();
        load(false);
      },
    },
    el(
      "div",
      { class: "filter-grid" },
      field("f-q", "Tag", q),
      field("f-kind", "Kind", kind),
      field("f-status", "Status", status),
      field("f-area", "Area", area),
      field("f-drawing", "Drawing", drawing),
      numbers,
      el("button", { type: "submit" }, "Show"),
    ),
    filterMessage,
  );

  /** The filter as API query parameters, or an error naming the field. */
  function query() {
    const p = new URLSearchParams({ sort: "tag" });
    if (q.value.trim()) p.set("q", q.value.trim());
    if (kind.value.trim()) p.set("kind", kind.value.trim());
    if (status.value) p.set("status", status.value);
    if (area.value.trim()) p.set("attr.area", area.value.trim());
    const number = drawing.value.trim();
    if (number) {
      const id = byNumber.get(number);
      if (!id) throw new Error(`No drawing is numbered “${number}”.`);
      p.set("drawing_id", id);
    }
    return p;
  }

  // The selection: id → component (its milestones give the choices).
  const selected = new Map();
  const shown = new Map();
  let cursor = null;
  const count = el("p", { class: "status", id: "list-count", role: "status" });
  const rows = el("ul", { class: "component-rows", id: "components" });
  const more = el("button", { type: "button", class: "quiet-dark", hidden: true, onclick: () => load(true) }, "More");
  const pageBox = el("input", { type: "checkbox", id: "pick-page" });
  const everyMatch = el(
    "button",
    { type: "button", class: "quiet-dark", id: "pick-all", onclick: () => selectEveryMatch() },
    "Select every match",
  );
  const clear = el(
    "button",
    {
      type: "button",
      class: "quiet-dark",
      onclick: () => {
        selected.clear();
        syncTicks();
      },
    },
    "Clear selection",
  );
  pageBox.addEventListener("change", () => {
    for (const [id, c] of shown) pageBox.checked ? selected.set(id, c) : selected.delete(id);
    syncTicks();
  });

  function row(c) {
    const box = el("input", { type: "checkbox", "data-id": c.id, "aria-label": `Select ${c.tag}` });
    box.checked = selected.has(c.id);
    box.addEventListener("change", () => {
      box.checked ? selected.set(c.id, c) : selected.delete(c.id);
      syncTicks();
    });
    return el(
      "li",
      { class: "component-row" },
      el("label", { class: "pick" }, box),
      el("a", { href: `#/projects/${pid}/components/${c.id}` }, c.tag),
      el("span", { class: "when" }, [c.kind, c.attributes?.area, STATUS[c.status]].filter(Boolean).join(" · ")),
      el("span", { class: "percent" }, percent(c.completion_percent)),
    );
  }

  async function load(older) {
    filterMessage.hidden = true;
    let p;
    try {
      p = query();
    } catch (e) {
      filterMessage.textContent = e.message;
      filterMessage.hidden = false;
      return;
    }
    p.set("limit", String(PAGE));
    if (older && cursor) p.set("cursor", cursor);
    const page = await api("GET", `/v1/projects/${pid}/components?${p}`);
    if (!older) {
      shown.clear();
      rows.replaceChildren();
    }
    for (const c of page.items || []) shown.set(c.id, c);
    rows.append(...(page.items || []).map(row));
    cursor = page.next_cursor || null;
    more.hidden = !cursor;
    count.textContent = shown.size
      ? `${shown.size} shown${cursor ? ", more below" : ""}.`
      : "No component matches these filters.";
    syncTicks();
  }

  /** Every match of the filter, a page of 1,000 at a time, up to what one
   * bulk update takes. */
  async function selectEveryMatch() {
    everyMatch.disabled = true;
    try {
      let next = null;
      do {
        const p = query();
        p.set("limit", "1000");
        if (next) p.set("cursor", next);
        const page = await api("GET", `/v1/projects/${pid}/components?${p}`);
        for (const c of page.items || []) if (selected.size < BULK_MAX) selected.set(c.id, c);
        next = page.next_cursor;
      } while (next && selected.size < BULK_MAX);
      syncTicks();
      if (next)
        toast(`Selected the first ${BULK_MAX.toLocaleString()} matches: one bulk update takes at most that many.`);
    } catch (e) {
      filterMessage.textContent = e.message;
      filterMessage.hidden = false;
    } finally {
      everyMatch.disabled = false;
    }
  }

  // The bulk panel.
  const picked = el("p", { id: "picked", role: "status" });
  const milestone = el("select", { id: "b-milestone" });
  const valueBox = el("div", { class: "bulk-value" });
  const reason = el("input", { id: "b-reason", maxlength: 200, autocomplete: "off" });
  const preview = el("button", { type: "button", id: "b-preview", onclick: () => run(true) }, "Preview");
  const apply = el(
    "button",
    { type: "button", id: "b-apply", class: "quiet-dark", disabled: true, onclick: () => run(false) },
    "Apply",
  );
  const bulkMessage = el("p", { class: "field-message", role: "alert", hidden: true });
  const results = el("div", { id: "bulk-results", "aria-live": "polite" });
  let valueOf = () => ({});
  const panel = el(
    "section",
    { class: "card bulk", "aria-labelledby": "bulk-title", hidden: true, id: "bulk" },
    el("h2", { id: "bulk-title" }, "Update the selected components"),
    picked,
    el(
      "div",
      { class: "filter-grid" },
      el("div", {}, el("label", { for: "b-milestone" }, "Milestone"), milestone),
      valueBox,
      el("div", {}, el("label", { for: "b-reason" }, "Reason (optional)"), reason),
    ),
    el("div", { class: "steps" }, preview, apply),
    bulkMessage,
    results,
  );

  /** The milestones the selection has, each with its workflow. */
  function milestones() {
    const found = new Map();
    for (const c of selected.values()) {
      for (const m of c.milestones || [])
        if (!found.has(m.key)) found.set(m.key, { name: m.name, workflow: c.workflow_type, unit: c.unit });
    }
    return found;
  }

  function renderValue() {
    const m = milestones().get(milestone.value);
    apply.disabled = true;
    results.replaceChildren();
    if (!m) return valueBox.replaceChildren();
    if (m.workflow === "discrete") {
      const s = el(
        "select",
        { id: "b-value" },
        el("option", { value: "true" }, "Done"),
        el("option", { value: "false" }, "Not done"),
      );
      fill(valueBox, el("label", { for: "b-value" }, "Value"), s);
      valueOf = () => ({ completed: s.value === "true" });
    } else if (m.workflow === "percentage") {
      const n = el("input", { id: "b-value", type: "number", step: "any", inputmode: "decimal" });
      fill(valueBox, el("label", { for: "b-value" }, "Percent"), n);
      valueOf = () => ({ percent: Number(n.value) });
    } else {
      const mode = el(
        "select",
        { id: "b-mode", "aria-label": "Add or set the total" },
        el("option", { value: "quantity_delta" }, "Add"),
        el("option", { value: "quantity" }, "Set total"),
      );
      const n = el("input", {
        id: "b-value",
        type: "number",
        step: "any",
        inputmode: "decimal",
        "aria-label": `Quantity (${m.unit || "units"})`,
      });
      fill(
        valueBox,
        el("label", { for: "b-value" }, `Quantity (${m.unit || "units"})`),
        el("div", { class: "find-row" }, mode, n),
      );
      valueOf = () => ({ [mode.value]: Number(n.value) });
    }
    for (const input of valueBox.querySelectorAll("input, select"))
      input.addEventListener("input", () => (apply.disabled = true));
    apply.className = "quiet-dark";
  }
  milestone.addEventListener("change", renderValue);

  function syncTicks() {
    for (const box of rows.querySelectorAll("input[type=checkbox]")) box.checked = selected.has(box.dataset.id);
    pageBox.checked = shown.size > 0 && [...shown.keys()].every((id) => selected.has(id));
    panel.hidden = selected.size === 0;
    picked.textContent = `${selected.size.toLocaleString()} ${selected.size === 1 ? "component" : "components"} selected.`;
    const keep = milestone.value;
    const found = milestones();
    fill(milestone, ...[...found].map(([key, m]) => el("option", { value: key }, m.name)));
    if (found.has(keep)) milestone.value = keep;
    if (milestone.value !== keep || !valueBox.firstChild) renderValue();
    apply.disabled = true;
  }

  /** Preview (`validate_only`) or apply; the answer lists every item. */
  async function run(validateOnly) {
    bulkMessage.hidden = true;
    const ids = [...selected.keys()];
    const body = {
      updates: ids.map((id) => ({ component_id: id, milestone: milestone.value, ...valueOf() })),
      options: { validate_only: validateOnly },
    };
    if (reason.value.trim()) body.options.reason = reason.value.trim();
    preview.disabled = apply.disabled = true;
    try {
      const r = await api("POST", `/v1/projects/${pid}/milestones:bulk`, body);
      showResults(r, ids, validateOnly);
      apply.disabled = !validateOnly || r.failed === r.results.length;
      // After a preview, applying it is the next step: it looks like one.
      apply.className = apply.disabled ? "quiet-dark" : "";
      if (!validateOnly) {
        toast(
          `Updated ${r.applied} ${r.applied === 1 ? "component" : "components"}${r.failed ? `; ${r.failed} refused` : ""}.`,
          r.operation_id ? { pid, op: r.operation_id, after: () => load(false) } : null,
        );
        await load(false);
      }
    } catch (e) {
      bulkMessage.textContent = e.message;
      bulkMessage.hidden = false;
    } finally {
      preview.disabled = false;
    }
  }

  function showResults(r, ids, validateOnly) {
    const tag = (i) => (selected.get(ids[i]) || shown.get(ids[i]) || {}).tag || ids[i];
    const heading = validateOnly
      ? `Preview: ${r.results.length - r.failed} would change, ${r.failed} refused. Nothing is written yet.`
      : `Applied: ${r.applied} changed, ${r.failed} refused.`;
    fill(
      results,
      el("p", { class: "notice", id: "bulk-summary" }, heading),
      el(
        "div",
        { class: "table-wrap" },
        el(
          "table",
          { class: "results" },
          el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Component"), el("th", { scope: "col" }, "Result"))),
          el(
            "tbody",
            {},
            r.results
              .slice(0, 500)
              .map((x) =>
                el(
                  "tr",
                  { class: x.status === "ok" ? "" : "bad" },
                  el("td", { "data-label": "Component" }, tag(x.index)),
                  el(
                    "td",
                    { "data-label": "Result" },
                    x.status === "ok" ? `${value(x.before)} → ${value(x.after)}` : x.error?.message || "refused",
                  ),
                ),
              ),
          ),
        ),
      ),
      r.results.length > 500 ? el("p", { class: "status" }, `and ${r.results.length - 500} more.`) : null,
    );
  }

  show(
    projectNav(pid, "/components"),
    el("h1", {}, `Components · ${project.name}`),
    filters,
    panel,
    el(
      "section",
      { class: "card", "aria-label": "Components" },
      el(
        "div",
        { class: "steps" },
        el("label", { class: "pick-all" }, pageBox, " Select all shown"),
        everyMatch,
        clear,
      ),
      count,
      rows,
      more,
    ),
  );
  await load(false);
}

/** Every drawing of the project (numbers to filter by), a page at a time. */
async function allDrawings(pid) {
  const all = [];
  let cursor = null;
  do {
    const page = await api(
      "GET",
      `/v1/projects/${pid}/drawings?limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`,
    );
    all.push(...(page.items || []));
    cursor = page.next_cursor;
  } while (cursor && all.length < 20000);
  return all;
}
