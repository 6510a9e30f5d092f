// "Find a component": a tag typed or scanned (a scanner types, then
// Enter) jumps to the component when it matches one exactly; otherwise the
// matches are listed, a page at a time.

import { fill, api, el, percent } from "./ui.js";

export function findComponent(pid) {
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
      fill(results, el("p", { class: "field-message", role: "alert" }, e.message));
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
      fill(results, items.length ? list : el("p", { class: "status" }, `No component matches “${q}”.`), moreButton);
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
    el(
      "p",
      { class: "find-more" },
      el("a", { href: `#/projects/${pid}/components` }, "Browse and filter every component, or update many at once"),
    ),
  );
}
