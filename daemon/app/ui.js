// The app's shared parts: calling the API, building elements, the words
// and numbers a person reads, and the toast that offers undo after a write.

export const main = document.getElementById("main");

/** An API error answer, with the daemon's own code and message. */
export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `the daemon answered ${status}`);
    this.status = status;
    this.code = e.code || "http_" + status;
    this.field = e.field || null;
  }
}

/** The name this browser records work under (`X-User`); empty means the
 * daemon's own `--user`. Kept per browser, like a login name. */
export function userName() {
  return localStorage.getItem("sitesync-user") || "";
}

export function setUserName(name) {
  if (name) localStorage.setItem("sitesync-user", name);
  else localStorage.removeItem("sitesync-user");
}

/** Calls the API as this signed-in browser (same origin, cookie) and
 * answers `{data, headers}`. `body` is JSON unless it is a Blob (a file). */
export async function request(method, path, body, contentType) {
  const init = { method, credentials: "same-origin", headers: {} };
  const user = userName();
  if (user) init.headers["X-User"] = user;
  if (body instanceof Blob) {
    init.headers["Content-Type"] = contentType || body.type || "application/octet-stream";
    init.body = body;
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!r.ok) throw new ApiError(r.status, data);
  return { data, headers: r.headers };
}

/** The API's answer body. */
export async function api(method, path, body) {
  return (await request(method, path, body)).data;
}

/** Builds an element: el("p", {class: "x"}, "text", child...). */
export function el(tag, attrs = {}, ...children) {
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

/** Replaces what `node` holds with `children`, leaving out the null and
 * false a conditional part gives (`replaceChildren` would show "null"). */
export function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

/** Replaces the screen; the heading gets focus so a keyboard or screen
 * reader user starts at the top of what changed. */
export function show(...nodes) {
  fill(main, ...nodes);
  const h1 = main.querySelector("h1");
  if (h1) {
    h1.setAttribute("tabindex", "-1");
    h1.focus({ preventScroll: true });
  }
}

/** What the screen shown keeps running (event streams, timers), stopped
 * when another screen is shown. */
const running = [];

export function whileShown(stop) {
  running.push(stop);
}

export function leaveScreen() {
  for (const stop of running.splice(0)) stop();
}

/** Tells the other devices this person is here (`PUT /v1/presence`), now
 * and every 10 s while the screen is shown; presence expires 30 s after
 * the last heartbeat. Answers a function that changes the activity
 * ("viewing" or "editing"), told at once. */
export function present(pid, componentId, activity = "viewing") {
  const beat = () => {
    const body = { project_id: pid, activity };
    if (componentId) body.component_id = componentId;
    api("PUT", "/v1/presence", body).catch(() => {});
  };
  beat();
  const timer = setInterval(beat, 10_000);
  whileShown(() => clearInterval(timer));
  // A change is told after 0.5 s of quiet: focus passing between
  // controls (or dropped and restored by a write) sends nothing.
  let told = activity;
  let soon = null;
  whileShown(() => clearTimeout(soon));
  return (now) => {
    activity = now;
    clearTimeout(soon);
    soon = setTimeout(() => {
      if (activity !== told) {
        told = activity;
        beat();
      }
    }, 500);
  };
}

/** The project's event stream while the screen is shown: `handlers` maps
 * an event type to a function of its parsed data. The browser resumes
 * with `Last-Event-ID` after a drop; `resync.required` (the daemon no
 * longer holds the missed events) calls `handlers.resync`. */
export function projectEvents(pid, handlers) {
  const source = new EventSource(`/v1/events?project_id=${pid}`);
  for (const [type, f] of Object.entries(handlers)) {
    const name = type === "resync" ? "resync.required" : type;
    source.addEventListener(name, (ev) => {
      let data = null;
      try {
        data = ev.data ? JSON.parse(ev.data) : null;
      } catch {
        data = null;
      }
      f(data);
    });
  }
  whileShown(() => source.close());
  return source;
}

export function loading(what) {
  fill(main, el("p", { class: "status", role: "status" }, `Loading ${what}…`));
}

/** A project's status as a person reads it. */
export const STATUS = { not_started: "Not started", in_progress: "In progress", completed: "Completed" };

export function percent(p) {
  const n = Number(p) || 0;
  return `${Math.round(n * 10) / 10}%`;
}

export function hours(h) {
  return `${Math.round((Number(h) || 0) * 10) / 10} h`;
}

/** "3 min ago" for an RFC 3339 time. */
export function ago(at) {
  if (!at) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(at)) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(at).toLocaleDateString();
}

/** Meter widths, set from script (the page's policy allows no inline
 * styles in markup). */
export function setWidths(root) {
  for (const bar of root.querySelectorAll("[data-width]")) {
    bar.style.width = `${Math.max(0, Math.min(100, Number(bar.dataset.width) || 0))}%`;
  }
}

/** A completion meter. */
export function meter(value, id) {
  return el("span", { class: "meter", role: "presentation" }, el("span", { "data-width": value, id }));
}

/** The crumb back to a project's dashboard, and its other screens. */
export function projectNav(pid, here) {
  const links = [
    ["", "Dashboard"],
    ["/components", "Components"],
    ["/operations", "Operations"],
    ["/files", "Import & export"],
  ];
  return el(
    "nav",
    { class: "crumbs", "aria-label": "Project" },
    el("a", { href: "#/" }, "All projects"),
    links.map(([path, name]) =>
      el("a", { href: `#/projects/${pid}${path}`, "aria-current": path === here ? "page" : null }, name),
    ),
  );
}

/** A kind of operation as a person reads it. */
export function operationName(kind) {
  return String(kind || "").replaceAll("_", " ");
}

/** What an undo did: how many writes it reverted and what it left alone
 * because someone changed it since. */
export function undoSummary(result) {
  const skipped = result.skipped || [];
  let text = `Undone: ${result.reverted} ${result.reverted === 1 ? "change" : "changes"} reverted`;
  if (skipped.length)
    text += `, ${skipped.length} skipped because ${skipped.length === 1 ? "it" : "they"} changed since`;
  return text + ".";
}

/** The skipped items of an undo, each named so a person can check it. */
export function skippedList(pid, result) {
  const skipped = result.skipped || [];
  if (!skipped.length) return null;
  return el(
    "ul",
    { class: "skipped" },
    skipped.map((s) =>
      el(
        "li",
        {},
        s.component_id
          ? el("a", { href: `#/projects/${pid}/components/${s.component_id}` }, "A component")
          : "A drawing",
        `: ${s.milestone || s.field} — ${String(s.reason).replaceAll("_", " ")}`,
      ),
    ),
  );
}

/** Undoes operation `op` of project `pid`. */
export function undo(pid, op) {
  return api("POST", `/v1/projects/${pid}/operations/${op}/undo`);
}

const toastRegion = document.getElementById("toast");
let toastTimer = null;

/** A short message after a write, at the bottom of the screen, with
 * "Undo" when the write made an operation. It stays while focused or
 * hovered and leaves after 10 s otherwise. */
export function toast(message, undoOf) {
  clearTimeout(toastTimer);
  const close = el("button", { type: "button", class: "quiet", "aria-label": "Dismiss", onclick: () => hide() }, "✕");
  const text = el("span", { class: "toast-text" }, message);
  const actions = [];
  if (undoOf) {
    const button = el(
      "button",
      {
        type: "button",
        class: "quiet",
        id: "toast-undo",
        onclick: async () => {
          button.disabled = true;
          try {
            const result = await undo(undoOf.pid, undoOf.op);
            text.textContent = undoSummary(result);
            button.remove();
            if (undoOf.after) await undoOf.after(result);
          } catch (e) {
            text.textContent = e.message;
            button.disabled = false;
          }
          arm();
        },
      },
      "Undo",
    );
    actions.push(button);
  }
  const box = el("div", { class: "toast" }, text, ...actions, close);
  fill(toastRegion, box);
  const hide = () => {
    clearTimeout(toastTimer);
    toastRegion.replaceChildren();
  };
  const arm = () => {
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => {
      if (!box.matches(":hover, :focus-within")) hide();
      else arm();
    }, 10_000);
  };
  arm();
}

/** Follows a job to its end through the project's event stream
 * (`job.updated`), calling `progress(job)` on each step; answers the
 * finished job with its whole result. A poll every 2 s covers a stream
 * that drops (a laptop that slept). */
export function followJob(pid, jobId, progress) {
  return new Promise((resolve, reject) => {
    const source = new EventSource(`/v1/events?project_id=${pid}`);
    let done = false;
    const finish = async (job) => {
      if (done) return;
      done = true;
      source.close();
      clearInterval(poll);
      try {
        resolve(job.result && job.result.rows_at ? await api("GET", `/v1/jobs/${jobId}`) : job);
      } catch (e) {
        reject(e);
      }
    };
    const step = (job) => {
      if (done || job.id !== jobId) return;
      progress(job);
      if (["completed", "failed", "interrupted"].includes(job.state)) finish(job);
    };
    source.addEventListener("job.updated", (ev) => step(JSON.parse(ev.data)));
    const check = async () => {
      try {
        step(await api("GET", `/v1/jobs/${jobId}`));
      } catch (e) {
        done = true;
        source.close();
        clearInterval(poll);
        reject(e);
      }
    };
    const poll = setInterval(check, 2000);
    source.addEventListener("open", check);
  });
}

/** A job's progress bar: a real `<progress>` so assistive tech reads it. */
export function jobProgress(label) {
  const bar = el("progress", { max: 1, value: 0, "aria-label": label });
  const text = el("span", { class: "status" }, "Queued…");
  const box = el("div", { class: "job", role: "status", "aria-live": "polite" }, bar, text);
  return {
    box,
    update(job) {
      if (job.total) {
        bar.max = job.total;
        bar.value = job.current || 0;
      }
      const stage = job.stage ? job.stage.replaceAll("_", " ") : job.state;
      text.textContent = job.total ? `${stage}: ${job.current ?? 0} of ${job.total}` : stage;
      if (job.state === "failed" || job.state === "interrupted") text.textContent = job.message || job.state;
    },
  };
}
