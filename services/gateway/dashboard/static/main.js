// Entry point: switches pages by the URL fragment (#alerts, #publishing,
// #mode, #recommendations, #audit) and wires the token controls.

import { forgetToken, hasToken, askForToken, onTokenChange } from "./api.js";
import * as alerts from "./alerts.js";
import * as audit from "./audit.js";
import { byId } from "./dom.js";
import * as mode from "./mode.js";
import { showNotice } from "./notices.js";
import * as publishing from "./publishing.js";
import * as recommendations from "./recommendations.js";

const PAGES = { alerts, publishing, mode, recommendations, audit };
const DEFAULT_PAGE = "alerts";

let current = null;

function pageName() {
  const name = window.location.hash.replace(/^#/, "");
  return Object.hasOwn(PAGES, name) ? name : DEFAULT_PAGE;
}

function showPage() {
  const name = pageName();
  if (current && current !== name) PAGES[current].hide();
  for (const [other] of Object.entries(PAGES)) {
    byId(`page-${other}`).hidden = other !== name;
  }
  document.querySelectorAll("nav a[data-page]").forEach((link) => {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  });
  document.title = `${byId(`${name}-title`).textContent} - alert-history`;
  current = name;
  PAGES[name].show();
}

function showTokenState(present) {
  byId("token-status").textContent = present ? "API token set for this tab" : "No API token set";
  byId("token-forget").disabled = !present;
}

function setupTokenControls() {
  showTokenState(hasToken());
  onTokenChange(showTokenState);
  byId("token-forget").addEventListener("click", () => {
    forgetToken();
    showNotice("API token forgotten.");
  });
  byId("token-set").addEventListener("click", async () => {
    const token = await askForToken("Enter an API token to send with every request from this tab.");
    if (token) showNotice("API token set for this tab.");
  });
}

function start() {
  setupTokenControls();
  Object.values(PAGES).forEach((page) => page.setup());
  window.addEventListener("hashchange", showPage);
  showPage();
}

start();
