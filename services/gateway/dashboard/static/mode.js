// The Enrichment mode page: the current mode and a switch.

import { api } from "./api.js";
import { byId } from "./dom.js";
import { clearError, runAction, showError } from "./notices.js";

const SOURCES = {
  redis: "set through the API, shared by every replica through Redis",
  memory: "set through the API, held by this gateway only",
  default: "the ENRICHMENT_MODE default",
};

function showMode(body) {
  byId("mode-current").textContent = body.mode;
  byId("mode-source").textContent = SOURCES[body.source] || body.source;
  const choice = document.querySelector(`input[name="mode"][value="${CSS.escape(body.mode)}"]`);
  if (choice) choice.checked = true;
}

export function setup() {
  const form = byId("mode-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const mode = new FormData(form).get("mode");
    if (!mode) {
      showError("Choose a mode first.");
      return;
    }
    const body = await runAction(
      byId("mode-submit"),
      () => api.post("/enrichment/mode", { mode }),
      (result) => `Enrichment mode is now ${result.mode}.`,
    );
    if (body) showMode(body);
  });
}

export async function show() {
  try {
    showMode(await api.get("/enrichment/mode"));
    clearError();
  } catch (error) {
    showError(error);
  }
}

export function hide() {}
