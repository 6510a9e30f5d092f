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
      el("span", { class: "project-name" }, p.name),
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
  for (const bar of main.querySelectorAll("[data-width]")) {
    bar.style.width = `${Math.max(0, Math.min(100, Number(bar.dataset.width) || 0))}%`;
  }
}

async function route() {
  try {
    await projectsScreen();
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

signOut.addEventListener("click", async () => {
  try {
    await api("DELETE", "/v1/session");
  } finally {
    signedOut("Signed out.");
  }
});

window.addEventListener("hashchange", route);
start();
