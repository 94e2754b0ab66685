// The Audit log page: every change made through the API, newest first, with
// the name of the token that made it.

import { api } from "./api.js";
import { byId, el, fillTable, numberCell, timeElement } from "./dom.js";
import { clearError, showError } from "./notices.js";

const PAGE_SIZE = 50;

const state = { actor: "", cursors: [""], next: null };

function auditRow(event) {
  return el("tr", { attrs: { "data-id": String(event.id) } }, [
    el("td", {}, [timeElement(event.occurred_at)]),
    el("td", { text: event.actor }),
    el("td", { className: "mono", text: event.action }),
    numberCell(event.status_code),
    el("td", { className: "mono clamp-cell", text: event.detail }),
  ]);
}

async function load() {
  try {
    const cursor = state.cursors[state.cursors.length - 1];
    const body = await api.get("/audit", { limit: PAGE_SIZE, cursor, actor: state.actor });
    state.next = body.next_cursor;
    fillTable(byId("audit-body"), byId("audit-empty"), body.events.map(auditRow));
    byId("audit-next").disabled = !state.next;
    byId("audit-first").disabled = state.cursors.length <= 1;
    clearError();
  } catch (error) {
    showError(error);
  }
}

export function setup() {
  const form = byId("audit-filters");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    state.actor = String(new FormData(form).get("actor") || "").trim();
    state.cursors = [""];
    load();
  });
  byId("audit-next").addEventListener("click", () => {
    if (!state.next) return;
    state.cursors.push(state.next);
    load();
  });
  byId("audit-first").addEventListener("click", () => {
    state.cursors = [""];
    load();
  });
}

export function show() {
  return load();
}

export function hide() {}
