// One component: record work by its workflow, keep a conflicting value,
// read its history and undo an operation from it; another device's change
// appears at once, highlighted with who made it.

import {
  fill,
  api,
  request,
  el,
  show,
  loading,
  percent,
  ago,
  setWidths,
  meter,
  projectNav,
  toast,
  undo,
  undoSummary,
  skippedList,
  present,
  projectEvents,
} from "./ui.js";

/** What a milestone holds, as a person reads it. */
function milestoneValue(c, m) {
  if (c.workflow_type === "discrete") return m.completed ? "Done" : "Not done";
  if (c.workflow_type === "percentage") return percent(m.percent);
  const of = c.quantity_total != null ? ` of ${c.quantity_total}` : "";
  return `${m.quantity ?? 0}${of} ${c.unit || ""}`.trim();
}

/** The body of a write of `value` (as a conflict shows it) to milestone m. */
function valueBody(c, value) {
  if (c.workflow_type === "discrete") return { completed: Boolean(value) };
  if (c.workflow_type === "percentage") return { percent: Number(value) };
  return { quantity: Number(value) };
}

/** A history value as a person reads it. */
function shown(v) {
  if (v === null || v === undefined) return "—";
  if (v === true) return "done";
  if (v === false) return "not done";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

/** One history entry as a sentence after the person's name. */
function historyWhat(c, e) {
  if (e.field === "created") return "created this component";
  if (e.field === "deleted") return e.new ? "deleted this component" : "restored this component";
  const name = e.milestone ? (c.milestones.find((m) => m.key === e.milestone) || {}).name || e.milestone : e.field;
  return `${name}: ${shown(e.old)} → ${shown(e.new)}`;
}

export async function componentScreen(pid, cid) {
  loading("the component");
  let c = await api("GET", `/v1/projects/${pid}/components/${cid}`);
  const reason = el("input", { id: "reason", name: "reason", maxlength: 200, autocomplete: "off" });
  const effective = el("input", { id: "effective", name: "effective_date", type: "date" });
  const head = el("div", {});
  const list = el("ul", { class: "milestones" });
  const changedBy = el("p", { class: "changed-by", id: "changed-by", role: "status", hidden: true });
  const historyList = el("ol", { class: "history", id: "history" });
  const historyMessage = el("div", { id: "history-result", role: "status", "aria-live": "polite" });
  // The history comes a page at a time: a pipe logged every shift for
  // years has thousands of entries.
  let historyCursor = null;
  const olderHistory = el(
    "button",
    { type: "button", class: "quiet-dark", id: "history-older", hidden: true, onclick: () => loadHistory(true) },
    "Older history",
  );
  // One "Undo" per operation, on its newest entry (across pages).
  const offered = new Set();

  function renderHead() {
    fill(
      head,
      el(
        "p",
        { class: "component-meta" },
        [c.kind, c.attributes?.area, c.deleted ? "deleted" : null].filter(Boolean).join(" · "),
      ),
      el("span", { class: "big", id: "component-completion" }, percent(c.completion_percent)),
      meter(c.completion_percent),
    );
    setWidths(head);
  }

  /** One write; the answer is the component, shown at once, and a toast
   * offers to undo exactly this write. */
  async function write(m, body, message) {
    message.hidden = true;
    const full = { ...body };
    if (reason.value.trim()) full.reason = reason.value.trim();
    if (effective.value) full.effective_date = effective.value;
    kept = placeOfFocus();
    for (const b of list.querySelectorAll("button")) b.disabled = true;
    try {
      const r = await request(
        "PUT",
        `/v1/projects/${pid}/components/${cid}/milestones/${encodeURIComponent(m.key)}`,
        full,
      );
      c = r.data;
      render();
      const op = r.headers.get("Operation-Id");
      toast(
        `${m.name}: ${milestoneValue(c, c.milestones.find((x) => x.key === m.key) || m)}. ${c.tag} is ${percent(c.completion_percent)} complete.`,
        op ? { pid, op, after: reload } : null,
      );
      loadHistory(false);
    } catch (e) {
      for (const b of list.querySelectorAll("button")) b.disabled = false;
      refocus(kept);
      kept = null;
      message.textContent = e.message;
      message.hidden = false;
    }
  }

  async function reload() {
    c = await api("GET", `/v1/projects/${pid}/components/${cid}`);
    render();
    await loadHistory(false);
  }

  function controls(m, message) {
    if (c.workflow_type === "discrete") {
      return el(
        "button",
        {
          type: "button",
          class: m.completed ? "done" : "",
          "aria-pressed": String(Boolean(m.completed)),
          onclick: () => write(m, { completed: !m.completed }, message),
        },
        m.completed ? `${m.name}: done` : `Mark ${m.name} done`,
      );
    }
    if (c.workflow_type === "percentage") {
      // No min/max: the daemon's own refusal, shown beside the control, says
      // what is allowed (the browser's bubble would say less, differently).
      const exact = el("input", {
        type: "number",
        step: "any",
        inputmode: "decimal",
        placeholder: "exact %",
        "aria-label": `${m.name} exact percent`,
      });
      return el(
        "div",
        { class: "steps" },
        [0, 25, 50, 75, 100].map((p) =>
          el(
            "button",
            {
              type: "button",
              class: m.percent === p ? "done" : "quiet-dark",
              "aria-pressed": String(m.percent === p),
              onclick: () => write(m, { percent: p }, message),
            },
            `${p}%`,
          ),
        ),
        el(
          "form",
          {
            class: "inline",
            onsubmit: (ev) => {
              ev.preventDefault();
              write(m, { percent: Number(exact.value) }, message);
            },
          },
          exact,
          el("button", { type: "submit" }, "Set"),
        ),
      );
    }
    const delta = el("input", {
      type: "number",
      step: "any",
      inputmode: "decimal",
      placeholder: "+ qty",
      "aria-label": `${m.name}: quantity to add (${c.unit || "units"})`,
    });
    const total = el("input", {
      type: "number",
      step: "any",
      inputmode: "decimal",
      placeholder: "total",
      "aria-label": `${m.name}: total installed (${c.unit || "units"})`,
    });
    return el(
      "div",
      { class: "steps" },
      el(
        "form",
        {
          class: "inline",
          onsubmit: (ev) => {
            ev.preventDefault();
            write(m, { quantity_delta: Number(delta.value) }, message);
          },
        },
        delta,
        el("button", { type: "submit" }, `Add ${c.unit || ""}`.trim()),
      ),
      el(
        "form",
        {
          class: "inline",
          onsubmit: (ev) => {
            ev.preventDefault();
            write(m, { quantity: Number(total.value) }, message);
          },
        },
        total,
        el("button", { type: "submit", class: "quiet-dark" }, "Set total"),
      ),
    );
  }

  /** Where the focus is among the milestones' controls: [key, index]. */
  let kept = null;
  function placeOfFocus() {
    const focused = document.activeElement;
    const item = focused && list.contains(focused) ? focused.closest("li[data-key]") : null;
    return item ? [item.dataset.key, [...item.querySelectorAll("button, input")].indexOf(focused)] : null;
  }

  function render() {
    renderHead();
    // The controls are drawn anew: a keyboard user keeps their place (a
    // write disables the controls, which drops focus; it kept the place).
    const place = placeOfFocus() || kept;
    kept = null;
    fill(
      list,
      ...c.milestones.map((m) => {
        const message = el("p", { class: "field-message", role: "alert", hidden: true });
        const conflicts = (m.conflicts || []).map((x) =>
          el(
            "li",
            {},
            `${x.updated_by} recorded ${milestoneValue(c, { completed: x.value, percent: x.value, quantity: x.value })}, ${ago(x.updated_at)}`,
            el("span", { class: "when" }, `device ${String(x.device_id || "").slice(0, 8)}`),
            el(
              "button",
              { type: "button", class: "quiet-dark", onclick: () => write(m, valueBody(c, x.value), message) },
              "Keep this",
            ),
          ),
        );
        return el(
          "li",
          { class: "card milestone", "data-key": m.key },
          el(
            "div",
            { class: "milestone-head" },
            el("strong", {}, m.name),
            el("span", { class: "milestone-value" }, milestoneValue(c, m)),
          ),
          m.updated_by ? el("p", { class: "by" }, `by ${m.updated_by}, ${ago(m.updated_at)}`) : null,
          controls(m, message),
          message,
          conflicts.length
            ? el(
                "div",
                { class: "conflicts" },
                el("p", {}, el("strong", {}, "Recorded differently elsewhere:")),
                el("ul", {}, conflicts),
              )
            : null,
        );
      }),
    );
    refocus(place);
  }

  function refocus(place) {
    if (!place) return;
    const again = list.querySelector(`li[data-key="${CSS.escape(place[0])}"]`);
    const controls = again ? again.querySelectorAll("button, input") : [];
    (controls[place[1]] || controls[0])?.focus();
  }

  function historyRow(e) {
    const what = historyWhat(c, e);
    const button = offered.has(e.operation_id)
      ? null
      : el(
          "button",
          {
            type: "button",
            class: "quiet-dark",
            "data-operation": e.operation_id,
            onclick: () => undoFromHistory(e.operation_id, button),
          },
          "Undo",
        );
    offered.add(e.operation_id);
    return el(
      "li",
      {},
      el("span", {}, el("strong", {}, e.user), ` ${what}`, e.reason ? ` (“${e.reason}”)` : ""),
      el("span", { class: "when" }, ago(e.at), e.effective_date ? ` · done on ${e.effective_date}` : ""),
      button,
    );
  }

  /** The newest page of the history, or (`older`) the page after those shown. */
  async function loadHistory(older) {
    const query = new URLSearchParams({ limit: "50" });
    if (older && historyCursor) query.set("cursor", historyCursor);
    const h = await api("GET", `/v1/projects/${pid}/components/${cid}/history?${query}`);
    historyCursor = h.next_cursor || null;
    if (!older) offered.clear();
    const rows = (h.items || []).map(historyRow);
    if (older) historyList.append(...rows);
    else fill(historyList, ...(rows.length ? rows : [el("li", { class: "status" }, "No history yet.")]));
    olderHistory.hidden = !historyCursor;
  }

  async function undoFromHistory(op, button) {
    button.disabled = true;
    try {
      const result = await undo(pid, op);
      fill(historyMessage, el("p", { class: "notice" }, undoSummary(result)), skippedList(pid, result));
      await reload();
    } catch (e) {
      fill(historyMessage, el("p", { class: "field-message", role: "alert" }, e.message));
      button.disabled = false;
    }
  }

  render();
  show(
    projectNav(pid, null),
    el("h1", {}, c.tag),
    changedBy,
    head,
    el(
      "details",
      { class: "card" },
      el("summary", {}, "Reason and date of the work (optional)"),
      el("label", { for: "reason" }, "Reason"),
      reason,
      el("label", { for: "effective" }, "Done on (when recorded late)"),
      effective,
    ),
    list,
    el(
      "section",
      { class: "card", "aria-labelledby": "history-title" },
      el("h2", { id: "history-title" }, "History"),
      historyMessage,
      historyList,
      olderHistory,
    ),
  );
  await loadHistory(false);
  // "editing" while a control of a milestone has the focus.
  const doing = present(pid, cid);
  list.addEventListener("focusin", () => doing("editing"));
  list.addEventListener("focusout", (ev) => {
    if (!list.contains(ev.relatedTarget)) doing("viewing");
  });

  // Another device's change to this component: shown at once, with who.
  let flash = null;
  projectEvents(pid, {
    "component.updated": (data) => {
      if (!data || !data.component || data.component.id !== cid) return;
      c = data.component;
      render();
      loadHistory(false).catch(() => {});
      if (data.origin !== "local") {
        changedBy.textContent = `${c.updated_by || "Someone"} changed this on another device just now.`;
        changedBy.hidden = false;
        head.classList.add("fresh");
        clearTimeout(flash);
        flash = setTimeout(() => head.classList.remove("fresh"), 4000);
      }
    },
    resync: () => reload().catch(() => {}),
  });
}
