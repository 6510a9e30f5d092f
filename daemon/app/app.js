// sitesync field app: modern ES modules and the daemon's own API, no build
// step and nothing fetched from the network (it runs on air-gapped sites).
// This module signs in and routes; each screen has its own module.
//
// Signing in: the daemon prints a one-time URL, `/#login=<code>`. The code
// stays in the fragment (never sent to a server log); this page posts it to
// POST /v1/session and gets an HttpOnly session cookie, then removes the
// code from the address bar and history.

import { api, el, show, leaveScreen, userName, setUserName } from "./ui.js";
import { projectsScreen } from "./projects.js";
import { dashboardScreen } from "./dashboard.js";
import { componentScreen } from "./component.js";
import { componentsScreen } from "./components.js";
import { operationsScreen } from "./operations.js";
import { filesScreen } from "./files.js";

const signOut = document.getElementById("sign-out");
const who = document.getElementById("who");

/** The page for a browser that is not signed in. */
function signedOut(message) {
  signOut.hidden = true;
  who.hidden = true;
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

const ID = "([0-9a-f-]{36})";
/** Each screen: its address, and the function that shows it. */
const ROUTES = [
  [new RegExp(`^#/projects/${ID}/components/${ID}$`), componentScreen],
  [new RegExp(`^#/projects/${ID}/components(?:\\?(.*))?$`), componentsScreen],
  [new RegExp(`^#/projects/${ID}/operations$`), operationsScreen],
  [new RegExp(`^#/projects/${ID}/files$`), filesScreen],
  [new RegExp(`^#/projects/${ID}$`), dashboardScreen],
];

async function route() {
  leaveScreen();
  const hash = location.hash;
  try {
    const found = ROUTES.map(([re, screen]) => [hash.match(re), screen]).find(([m]) => m);
    if (found) await found[1](...found[0].slice(1));
    else await projectsScreen();
    // The screen is shown and usable: the benchmark reads this mark.
    performance.mark("sitesync:screen-ready", { detail: hash });
    signOut.hidden = false;
    showWho();
  } catch (e) {
    if (e.status === 401) signedOut();
    else
      show(
        el("h1", {}, e.status === 404 ? "Not found" : "Something went wrong"),
        el("p", { class: "notice error", role: "alert" }, e.message),
        el("p", { class: "crumbs" }, el("a", { href: "#/" }, "All projects")),
      );
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

/** The name work is recorded under, shown in the bar; a tap changes it. */
function showWho() {
  who.hidden = false;
  who.textContent = userName() ? `You: ${userName()}` : "Set your name";
}

const nameDialog = document.getElementById("name-dialog");
const nameInput = document.getElementById("name-input");
who.addEventListener("click", () => {
  nameInput.value = userName();
  nameDialog.showModal();
});
document.getElementById("name-form").addEventListener("submit", () => {
  setUserName(nameInput.value.trim().slice(0, 200));
  showWho();
});
document.getElementById("name-cancel").addEventListener("click", () => nameDialog.close());

signOut.addEventListener("click", async () => {
  leaveScreen();
  try {
    await api("DELETE", "/v1/session");
  } finally {
    signedOut("Signed out.");
  }
});

window.addEventListener("hashchange", route);
// Leaving the page closes its event stream at once: a browser holds six
// connections to one host, and streams left to linger (a page kept for the
// back button) made the next page wait a minute for a free one.
window.addEventListener("pagehide", leaveScreen);
start();
