// The project dashboard: completion, rollups, the connection badge, who is
// here, recent activity and the changes other devices make, live.

import {
  fill,
  main,
  api,
  el,
  show,
  loading,
  percent,
  hours,
  ago,
  setWidths,
  meter,
  projectNav,
  operationName,
  present,
  projectEvents,
  whileShown,
} from "./ui.js";
import { findComponent } from "./find.js";

/** Bars a person reads at a glance: one per group, its share done. */
/** How many bars show before "Show all": a large project has thousands of
 * drawings, more than a person reads on one screen. */
const BARS = 30;

function bars(pid, groupBy, groups, all, showAll) {
  if (!groups.length) return el("p", { class: "status" }, "Nothing to group here yet.");
  // An area's or a drawing's bar opens its components.
  const filter = { area: "area", drawing: "drawing" }[groupBy];
  const name = (g) => {
    const text = g.label || g.key || "(none)";
    if (!filter || !(g.label || g.key)) return text;
    const q = new URLSearchParams({ [filter]: text });
    return el("a", { href: `#/projects/${pid}/components?${q}` }, text);
  };
  const shown = all ? groups : groups.slice(0, BARS);
  const list = el(
    "ul",
    { class: "bars" },
    shown.map((g) =>
      el(
        "li",
        {},
        el("span", { class: "bar-key" }, name(g)),
        el("span", { class: "bar-value" }, percent(g.completion_percent)),
        meter(g.completion_percent),
        el(
          "span",
          { class: "bar-meta" },
          `${hours(g.earned_hours)} of ${hours(g.budget_hours)} · ${g.component_count} components`,
        ),
      ),
    ),
  );
  if (shown.length === groups.length) return list;
  const more = el("button", { type: "button", class: "quiet-dark", onclick: showAll }, `Show all ${groups.length}`);
  return el("div", {}, list, more);
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
    peersApart(up, pid),
  );
}

/**
 * Each connected device and relay with how far it is from this laptop on
 * this project ("the office laptop has everything"), as the daemon last
 * compared them; nothing until it has.
 */
function peersApart(up, pid) {
  const lines = up
    .map((p) => [p, (p.shared_projects || []).find((s) => s.project_id === pid)])
    .filter(([, shared]) => shared)
    .map(([p, shared]) => {
      const who = p.kind === "relay" ? "The relay" : p.name || "A LAN peer";
      const n = shared.documents_differing;
      const apart = n === 0 ? "has everything" : `is ${n} ${n === 1 ? "document" : "documents"} apart`;
      return el("li", { class: n === 0 ? "even" : "apart" }, `${who} ${apart}`);
    });
  return lines.length ? el("ul", { class: "peers-apart", id: "peers-apart" }, ...lines) : null;
}

const ROLLUPS = [
  ["area", "Area"],
  ["system", "System"],
  ["test_package", "Test package"],
  ["drawing", "Drawing"],
];

export async function dashboardScreen(pid) {
  loading("the project");
  let groupBy = sessionStorage.getItem("rollup") || "area";
  let allBars = false;
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
            allBars = false;
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
    fill(
      rollup,
      bars(pid, groupBy, p.groups || [], allBars, () => {
        allBars = true;
        loadRollup();
      }),
    );
    setWidths(rollup);
  }
  const here = el("ul", { class: "people", id: "presence" });
  function showPresence(items) {
    fill(
      here,
      ...(items.length
        ? items.map((p) =>
            el(
              "li",
              {},
              el("strong", {}, p.user),
              ` ${p.activity}`,
              p.component_id
                ? [" ", el("a", { href: `#/projects/${pid}/components/${p.component_id}` }, "a component")]
                : " the project",
            ),
          )
        : [el("li", { class: "status" }, "Nobody else right now.")]),
    );
  }
  showPresence(presence.items || []);
  const activity = el("ol", { class: "activity", id: "activity" });
  function showOps(items) {
    fill(
      activity,
      ...(items.length
        ? items.map((o) =>
            el(
              "li",
              {},
              el("strong", {}, o.user),
              ` ${operationName(o.kind)}`,
              o.count > 1 ? ` (${o.count})` : "",
              o.undone_by ? " — undone" : "",
              el("span", { class: "when" }, ago(o.at)),
            ),
          )
        : [el("li", { class: "status" }, "No activity yet.")]),
    );
  }
  showOps(ops.items || []);
  // Other devices' changes as they arrive, the newest highlighted briefly.
  const changes = el("ol", { class: "activity live-changes", id: "live-changes", "aria-live": "polite" });
  function showChange(data) {
    const c = data && data.component;
    if (!c || data.origin === "local") return;
    const item = el(
      "li",
      { class: "fresh" },
      el("strong", {}, c.updated_by || "someone"),
      " changed ",
      el("a", { href: `#/projects/${pid}/components/${c.id}` }, c.tag),
      ` → ${percent(c.completion_percent)}`,
      el("span", { class: "when" }, "on another device, just now"),
    );
    changes.prepend(item);
    while (changes.children.length > 5) changes.lastChild.remove();
    setTimeout(() => item.classList.remove("fresh"), 4000);
  }
  const summary = el(
    "section",
    { class: "card summary", "aria-label": "Completion" },
    el("span", { class: "big", id: "completion" }, percent(total.completion_percent)),
    meter(total.completion_percent, "completion-bar"),
    el("span", { id: "earned" }, `${hours(total.earned_hours)} earned of ${hours(total.budget_hours)} budgeted`),
  );
  show(
    projectNav(pid, ""),
    el("h1", {}, project.name),
    connection(status, pid),
    findComponent(pid),
    summary,
    el(
      "section",
      { class: "card", "aria-labelledby": "rollup-title" },
      el("h2", { id: "rollup-title" }, "Progress by"),
      tabs,
      rollup,
    ),
    el(
      "div",
      { class: "columns" },
      el(
        "section",
        { class: "card", "aria-labelledby": "here-title" },
        el("h2", { id: "here-title" }, "Who is here"),
        here,
      ),
      el(
        "section",
        { class: "card", "aria-labelledby": "activity-title" },
        el("h2", { id: "activity-title" }, "Recent activity"),
        changes,
        activity,
        el("p", {}, el("a", { href: `#/projects/${pid}/operations` }, "Every operation, with undo")),
      ),
    ),
  );
  setWidths(main);
  await loadRollup();
  present(pid, null);

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
        document.getElementById("completion-bar").dataset.width = t.completion_percent;
        document.getElementById("earned").textContent =
          `${hours(t.earned_hours)} earned of ${hours(t.budget_hours)} budgeted`;
        document.getElementById("connection").replaceWith(connection(st, pid));
        showPresence(pr.items || []);
        showOps(op.items || []);
        setWidths(main);
        await loadRollup();
      } catch (e) {
        if (e.status === 401) location.reload();
      }
    }, 250);
  };
  const handlers = { resync: refresh };
  for (const type of [
    "component.created",
    "component.deleted",
    "progress.updated",
    "sync.status",
    "presence.updated",
  ]) {
    handlers[type] = refresh;
  }
  handlers["component.updated"] = (data) => {
    showChange(data);
    refresh();
  };
  projectEvents(pid, handlers);
  // The badge's "last sync" and the peers' state also change with no event.
  const tick = setInterval(refresh, 10_000);
  whileShown(() => {
    clearInterval(tick);
    clearTimeout(pending);
  });
}
