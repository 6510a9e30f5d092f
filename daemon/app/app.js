// sitesync field app: modern ES modules and the daemon's own API, no build
// step and nothing fetched from the network (it runs on air-gapped sites).
//
// Signing in: the daemon prints a one-time URL, `/#login=<code>`. The code
// stays in the fragment (never sent to a server log); this page posts it to
// POST /v1/session and gets an HttpOnly session cookie, then removes the
// code from the address bar and history.

const main = document.getElementById("main");
const signOut = document.getElementById("sign-out");

/** An API error answer, with the daemon's own code and message. */
class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `the daemon answered ${status}`);
    this.status = status;
    this.code = e.code || "http_" + status;
    this.field = e.field || null;
  }
}

/** Calls the API as this signed-in browser (same origin, cookie). */
async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

/** Builds an element: el("p", {class: "x"}, "text", child...). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function show(...nodes) {
  main.replaceChildren(...nodes);
}

/** A project's status as a person reads it. */
const STATUS = { not_started: "Not started", in_progress: "In progress", completed: "Completed" };

function percent(p) {
  const n = Number(p) || 0;
  return `${Math.round(n * 10) / 10}%`;
}

/** The page for a browser that is not signed in. */
function signedOut(message) {
  signOut.hidden = true;
  show(
    el("h1", {}, "Sign in to sitesync"),
    message ? el("p", { class: "notice error", role: "alert" }, message) : null,
    el(
      "div",
      { class: "notice" },
      el("p", {}, "Open the sign-in link the daemon printed when it started. Each link works once, for 5 minutes."),
      el("p", {}, "For a new one, run ", el("code", {}, "sitesync-daemon open"), " on this laptop."),
    ),
  );
}

async function projectsScreen() {
  show(el("h1", {}, "Projects"), el("p", { class: "status", role: "status" }, "Loading projects…"));
  const list = await api("GET", "/v1/projects?limit=200");
  const items = list.items || [];
  const name = el("input", { id: "new-name", name: "name", required: true, maxlength: 200, autocomplete: "off" });
  const code = el("input", { id: "new-code", name: "code", maxlength: 200, autocomplete: "off" });
  const message = el("p", { class: "field-message", role: "alert", hidden: true });
  const create = el("button", { type: "submit" }, "Create project");
  const form = el(
    "form",
    {
      class: "card",
      "aria-labelledby": "new-project",
      onsubmit: async (ev) => {
        ev.preventDefault();
        create.disabled = true;
        message.hidden = true;
        try {
          const body = { name: name.value };
          if (code.value.trim()) body.code = code.value.trim();
          await api("POST", "/v1/projects", body);
          await projectsScreen();
        } catch (e) {
          message.textContent = e.message;
          message.hidden = false;
          create.disabled = false;
        }
      },
    },
    el("h2", { id: "new-project" }, "New project"),
    el(
      "div",
      { class: "form-row" },
      el("div", {}, el("label", { for: "new-name" }, "Name"), name),
      el("div", {}, el("label", { for: "new-code" }, "Code (optional)"), code),
      create,
    ),
    message,
  );
  const rows = items.map((p) =>
    el(
      "li",
      { class: "project" },
      el("a", { class: "project-name", href: `#/projects/${p.id}` }, p.name),
      el("span", { class: "percent", "aria-label": `${percent(p.completion_percent)} complete` }, percent(p.completion_percent)),
      el(
        "span",
        { class: "meter", role: "presentation" },
        el("span", { style: null, "data-width": p.completion_percent }),
      ),
      el(
        "span",
        { class: "project-meta" },
        [p.code, STATUS[p.status] || p.status, `${p.component_count ?? 0} components`].filter(Boolean).join(" · "),
      ),
    ),
  );
  show(
    el("h1", {}, "Projects"),
    items.length
      ? el("ul", { class: "projects" }, rows)
      : el("p", { class: "notice" }, "No projects yet. Create the first one below, or import one."),
    form,
  );
  // Widths set from script (the page's policy allows no inline styles).
  setWidths(main);
}

/** Live updates of the screen shown, closed when another is shown. */
let live = null;

function stopLive() {
  if (live) live.close();
  live = null;
}

async function route() {
  stopLive();
  const hash = location.hash;
  const component = hash.match(/^#\/projects\/([0-9a-f-]{36})\/components\/([0-9a-f-]{36})$/);
  const project = hash.match(/^#\/projects\/([0-9a-f-]{36})$/);
  try {
    if (component) await componentScreen(component[1], component[2]);
    else if (project) await dashboardScreen(project[1]);
    else await projectsScreen();
    signOut.hidden = false;
  } catch (e) {
    if (e.status === 401) signedOut();
    else show(el("h1", {}, "Something went wrong"), el("p", { class: "notice error", role: "alert" }, e.message));
  }
}

async function start() {
  const login = new URLSearchParams(location.hash.slice(1)).get("login");
  if (login) {
    // Out of the address bar and history before anything else.
    history.replaceState(null, "", location.pathname + location.search);
    try {
      await api("POST", "/v1/session", { code: login });
    } catch (e) {
      signedOut(e.message);
      return;
    }
  }
  await route();
}

/** "3 min ago" for an RFC 3339 time. */
function ago(at) {
  if (!at) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(at)) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(at).toLocaleDateString();
}

function hours(h) {
  return `${Math.round((Number(h) || 0) * 10) / 10} h`;
}

/** Bars a person reads at a glance: one per group, its share done. */
function bars(groups) {
  if (!groups.length) return el("p", { class: "status" }, "Nothing to group here yet.");
  return el(
    "ul",
    { class: "bars" },
    groups.map((g) =>
      el(
        "li",
        {},
        el("span", { class: "bar-key" }, g.label || g.key || "(none)"),
        el("span", { class: "bar-value" }, percent(g.completion_percent)),
        el("span", { class: "meter", role: "presentation" }, el("span", { "data-width": g.completion_percent })),
        el(
          "span",
          { class: "bar-meta" },
          `${hours(g.earned_hours)} of ${hours(g.budget_hours)} · ${g.component_count} components`,
        ),
      ),
    ),
  );
}

function setWidths(root) {
  for (const bar of root.querySelectorAll("[data-width]")) {
    bar.style.width = `${Math.max(0, Math.min(100, Number(bar.dataset.width) || 0))}%`;
  }
}

/** The connection badge: how this laptop reaches the others, and what waits. */
function connection(status, pid) {
  const peers = status.peers || [];
  const up = peers.filter((p) => p.state === "connected");
  const relay = up.find((p) => p.kind === "relay");
  const lan = up.filter((p) => p.kind === "lan");
  let state, label;
  if (relay) [state, label] = ["online", "Online through the relay"];
  else if (lan.length) [state, label] = ["lan", `LAN: ${lan.length} ${lan.length === 1 ? "peer" : "peers"}`];
  else [state, label] = ["offline", "Offline"];
  const pending = (status.pending || {})[pid] || 0;
  const latency = relay && relay.latency_ms != null ? ` · ${relay.latency_ms} ms` : "";
  return el(
    "div",
    { class: `badge badge-${state}`, role: "status", "aria-live": "polite", id: "connection" },
    el("strong", {}, label + latency),
    el(
      "span",
      {},
      `${pending} ${pending === 1 ? "change" : "changes"} waiting to sync · last sync ${ago(status.last_synced_at)}`,
    ),
  );
}

const ROLLUPS = [
  ["area", "Area"],
  ["system", "System"],
  ["test_package", "Test package"],
  ["drawing", "Drawing"],
];

async function dashboardScreen(pid) {
  show(el("p", { class: "status", role: "status" }, "Loading the project…"));
  let groupBy = sessionStorage.getItem("rollup") || "area";
  const [project, total, status, presence, ops] = await Promise.all([
    api("GET", `/v1/projects/${pid}`),
    api("GET", `/v1/projects/${pid}/progress`),
    api("GET", "/v1/sync/status"),
    api("GET", `/v1/projects/${pid}/presence`),
    api("GET", `/v1/projects/${pid}/operations?limit=10`),
  ]);
  const rollup = el("div", { id: "rollup" });
  const tabs = el(
    "div",
    { class: "tabs", role: "group", "aria-label": "Group progress by" },
    ROLLUPS.map(([key, name]) =>
      el(
        "button",
        {
          type: "button",
          class: "tab",
          "data-group": key,
          "aria-pressed": key === groupBy ? "true" : "false",
          onclick: () => {
            groupBy = key;
            sessionStorage.setItem("rollup", key);
            for (const t of tabs.children) t.setAttribute("aria-pressed", String(t.dataset.group === key));
            loadRollup();
          },
        },
        name,
      ),
    ),
  );
  async function loadRollup() {
    const p = await api("GET", `/v1/projects/${pid}/progress?group_by=${groupBy}`);
    rollup.replaceChildren(bars(p.groups || []));
    setWidths(rollup);
  }
  const here = el("ul", { class: "people", id: "presence" });
  function showPresence(items) {
    here.replaceChildren(
      ...(items.length
        ? items.map((p) => el("li", {}, el("strong", {}, p.user), ` ${p.activity}`, p.component_id ? " a component" : ""))
        : [el("li", { class: "status" }, "Nobody else right now.")]),
    );
  }
  showPresence(presence.items || []);
  const activity = el("ol", { class: "activity", id: "activity" });
  function showOps(items) {
    activity.replaceChildren(
      ...(items.length
        ? items.map((o) =>
            el(
              "li",
              {},
              el("strong", {}, o.user),
              ` ${o.kind.replaceAll("_", " ")}`,
              o.count > 1 ? ` (${o.count})` : "",
              el("span", { class: "when" }, ago(o.at)),
            ),
          )
        : [el("li", { class: "status" }, "No activity yet.")]),
    );
  }
  showOps(ops.items || []);
  const summary = el(
    "section",
    { class: "card summary", "aria-label": "Completion" },
    el("span", { class: "big", id: "completion" }, percent(total.completion_percent)),
    el("span", { class: "meter", role: "presentation" }, el("span", { "data-width": total.completion_percent, id: "completion-bar" })),
    el("span", { id: "earned" }, `${hours(total.earned_hours)} earned of ${hours(total.budget_hours)} budgeted`),
  );
  const badge = connection(status, pid);
  show(
    el("p", { class: "crumbs" }, el("a", { href: "#/" }, "All projects")),
    el("h1", {}, project.name),
    badge,
    findComponent(pid),
    summary,
    el("section", { class: "card", "aria-labelledby": "rollup-title" }, el("h2", { id: "rollup-title" }, "Progress by"), tabs, rollup),
    el(
      "div",
      { class: "columns" },
      el("section", { class: "card", "aria-labelledby": "here-title" }, el("h2", { id: "here-title" }, "Who is here"), here),
      el("section", { class: "card", "aria-labelledby": "activity-title" }, el("h2", { id: "activity-title" }, "Recent activity"), activity),
    ),
  );
  setWidths(main);
  await loadRollup();

  // Live: another device's change, a sync, a presence heartbeat refresh
  // what they touch, a few at a time.
  let pending = null;
  const refresh = () => {
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      try {
        const [t, st, pr, op] = await Promise.all([
          api("GET", `/v1/projects/${pid}/progress`),
          api("GET", "/v1/sync/status"),
          api("GET", `/v1/projects/${pid}/presence`),
          api("GET", `/v1/projects/${pid}/operations?limit=10`),
        ]);
        document.getElementById("completion").textContent = percent(t.completion_percent);
        const bar = document.getElementById("completion-bar");
        bar.dataset.width = t.completion_percent;
        document.getElementById("earned").textContent =
          `${hours(t.earned_hours)} earned of ${hours(t.budget_hours)} budgeted`;
        document.getElementById("connection").replaceWith(connection(st, pid));
        showPresence(pr.items || []);
        showOps(op.items || []);
        setWidths(main);
        await loadRollup();
      } catch (e) {
        if (e.status === 401) signedOut();
      }
    }, 250);
  };
  const source = new EventSource(`/v1/events?project_id=${pid}`);
  for (const type of ["component.updated", "component.created", "component.deleted", "progress.updated", "sync.status", "presence.updated"]) {
    source.addEventListener(type, refresh);
  }
  // The badge's "last sync" and the peers' state also change with no event.
  const tick = setInterval(refresh, 10_000);
  live = { close: () => { source.close(); clearInterval(tick); } };
}

/** "Find a component": a tag typed or scanned (a scanner types, then
 * Enter) jumps to the component when it matches one exactly; otherwise the
 * matches are listed, a page at a time. */
function findComponent(pid) {
  const input = el("input", {
    id: "find",
    type: "search",
    name: "q",
    autocomplete: "off",
    enterkeyhint: "search",
    placeholder: "Tag, typed or scanned",
  });
  const results = el("div", { id: "found", "aria-live": "polite" });
  let cursor = null;
  async function search(more) {
    const q = input.value.trim();
    if (!q) return results.replaceChildren();
    const query = new URLSearchParams({ q, limit: "25", sort: "tag" });
    if (more && cursor) query.set("cursor", cursor);
    let page;
    try {
      page = await api("GET", `/v1/projects/${pid}/components?${query}`);
    } catch (e) {
      results.replaceChildren(el("p", { class: "field-message", role: "alert" }, e.message));
      return;
    }
    const items = page.items || [];
    const exact = items.find((c) => c.tag.toLowerCase() === q.toLowerCase());
    if (exact && !more) {
      location.hash = `#/projects/${pid}/components/${exact.id}`;
      return;
    }
    cursor = page.next_cursor || null;
    const list = more ? results.querySelector("ul") : el("ul", { class: "matches" });
    for (const c of items) {
      list.append(
        el(
          "li",
          {},
          el("a", { href: `#/projects/${pid}/components/${c.id}` }, c.tag),
          el("span", { class: "when" }, `${c.kind} · ${percent(c.completion_percent)}`),
        ),
      );
    }
    const moreButton = cursor
      ? el("button", { type: "button", class: "quiet-dark", onclick: () => search(true) }, "More")
      : null;
    if (!more) {
      results.replaceChildren(
        items.length ? list : el("p", { class: "status" }, `No component matches “${q}”.`),
        moreButton,
      );
    } else {
      results.querySelector("button")?.remove();
      if (moreButton) results.append(moreButton);
    }
  }
  return el(
    "form",
    {
      class: "card",
      role: "search",
      "aria-labelledby": "find-title",
      onsubmit: (ev) => {
        ev.preventDefault();
        search(false);
      },
    },
    el("h2", { id: "find-title" }, el("label", { for: "find" }, "Find a component")),
    el("div", { class: "find-row" }, input, el("button", { type: "submit" }, "Find")),
    results,
  );
}

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

async function componentScreen(pid, cid) {
  show(el("p", { class: "status", role: "status" }, "Loading the component…"));
  let c = await api("GET", `/v1/projects/${pid}/components/${cid}`);
  const reason = el("input", { id: "reason", name: "reason", maxlength: 200, autocomplete: "off" });
  const effective = el("input", { id: "effective", name: "effective_date", type: "date" });
  const head = el("div", {});
  const list = el("ul", { class: "milestones" });

  function renderHead() {
    head.replaceChildren(
      el("p", { class: "component-meta" }, [c.kind, c.attributes?.area].filter(Boolean).join(" · ")),
      el("span", { class: "big", id: "component-completion" }, percent(c.completion_percent)),
      el("span", { class: "meter", role: "presentation" }, el("span", { "data-width": c.completion_percent })),
    );
    setWidths(head);
  }

  /** One write; the answer is the component, shown at once. */
  async function write(m, body, message) {
    message.hidden = true;
    const full = { ...body };
    if (reason.value.trim()) full.reason = reason.value.trim();
    if (effective.value) full.effective_date = effective.value;
    for (const b of list.querySelectorAll("button")) b.disabled = true;
    try {
      c = await api("PUT", `/v1/projects/${pid}/components/${cid}/milestones/${encodeURIComponent(m.key)}`, full);
      render();
    } catch (e) {
      for (const b of list.querySelectorAll("button")) b.disabled = false;
      message.textContent = e.message;
      message.hidden = false;
    }
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
      const exact = el("input", { type: "number", step: "any", inputmode: "decimal", placeholder: "exact %", "aria-label": `${m.name} exact percent` });
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
          { class: "inline", onsubmit: (ev) => { ev.preventDefault(); write(m, { percent: Number(exact.value) }, message); } },
          exact,
          el("button", { type: "submit" }, "Set"),
        ),
      );
    }
    const delta = el("input", { type: "number", step: "any", inputmode: "decimal", placeholder: "+ qty", "aria-label": `${m.name}: quantity to add (${c.unit || "units"})` });
    const total = el("input", { type: "number", step: "any", inputmode: "decimal", placeholder: "total", "aria-label": `${m.name}: total installed (${c.unit || "units"})` });
    return el(
      "div",
      { class: "steps" },
      el(
        "form",
        { class: "inline", onsubmit: (ev) => { ev.preventDefault(); write(m, { quantity_delta: Number(delta.value) }, message); } },
        delta,
        el("button", { type: "submit" }, `Add ${c.unit || ""}`.trim()),
      ),
      el(
        "form",
        { class: "inline", onsubmit: (ev) => { ev.preventDefault(); write(m, { quantity: Number(total.value) }, message); } },
        total,
        el("button", { type: "submit", class: "quiet-dark" }, "Set total"),
      ),
    );
  }

  function render() {
    renderHead();
    list.replaceChildren(
      ...c.milestones.map((m) => {
        const message = el("p", { class: "field-message", role: "alert", hidden: true });
        const conflicts = (m.conflicts || []).map((x) =>
          el(
            "li",
            {},
            `${x.updated_by} recorded ${milestoneValue(c, { completed: x.value, percent: x.value, quantity: x.value })}, ${ago(x.updated_at)}`,
            el("button", { type: "button", class: "quiet-dark", onclick: () => write(m, valueBody(c, x.value), message) }, "Keep this"),
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
            ? el("div", { class: "conflicts" }, el("p", {}, el("strong", {}, "Recorded differently elsewhere:")), el("ul", {}, conflicts))
            : null,
        );
      }),
    );
  }

  render();
  show(
    el("p", { class: "crumbs" }, el("a", { href: `#/projects/${pid}` }, "Back to the project")),
    el("h1", {}, c.tag),
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
  );
}

signOut.addEventListener("click", async () => {
  stopLive();
  try {
    await api("DELETE", "/v1/session");
  } finally {
    signedOut("Signed out.");
  }
});

window.addEventListener("hashchange", route);
start();
