// The projects list: each with completion, status and size; create one.

import { main, api, el, show, loading, percent, setWidths, meter, STATUS } from "./ui.js";

export async function projectsScreen() {
  loading("projects");
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
          const p = await api("POST", "/v1/projects", body);
          location.hash = `#/projects/${p.id}`;
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
      el(
        "span",
        { class: "percent", "aria-label": `${percent(p.completion_percent)} complete` },
        percent(p.completion_percent),
      ),
      meter(p.completion_percent),
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
      : el("p", { class: "notice" }, "No projects yet. Create the first one below, then import its components."),
    form,
  );
  setWidths(main);
}
