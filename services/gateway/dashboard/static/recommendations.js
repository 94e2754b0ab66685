// The Recommendations page: suggested alert rule and route changes, with
// their YAML, and buttons to mark them applied or rejected.

import { api } from "./api.js";
import { button, byId, el, percent, timeElement } from "./dom.js";
import { clearError, runAction, showError, showNotice } from "./notices.js";

const PAGE_SIZE = 20;

const state = { filters: { status: "pending" }, cursors: [""], next: null };

function statusBadge(status) {
  return el("span", { className: `badge badge-rec-${status || "none"}`, text: status || "unknown" });
}

function configTable(item) {
  const fields = Object.keys(item.recommended).filter(
    (name) => item.recommended[name] !== null || item.current[name] !== null,
  );
  if (!fields.length) return null;
  const rows = fields.map((name) =>
    el("tr", {}, [
      el("th", { text: name, attrs: { scope: "row" } }),
      el("td", { className: "mono", text: item.current[name] ?? "not set" }),
      el("td", { className: "mono", text: item.recommended[name] ?? "not set" }),
    ]),
  );
  return el("table", { className: "compact" }, [
    el("caption", { text: "Configuration" }),
    el("thead", {}, [
      el("tr", {}, [
        el("th", { text: "Setting", attrs: { scope: "col" } }),
        el("th", { text: "Current", attrs: { scope: "col" } }),
        el("th", { text: "Recommended", attrs: { scope: "col" } }),
      ]),
    ]),
    el("tbody", {}, rows),
  ]);
}

async function copySnippet(code) {
  const text = code.textContent;
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      showNotice("Snippet copied to the clipboard.");
      return;
    } catch {
      // Fall through to selecting the text for a manual copy.
    }
  }
  const range = document.createRange();
  range.selectNodeContents(code);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
  showNotice("Snippet selected: press Ctrl+C to copy it.");
}

function snippetBlock(item) {
  if (!item.snippet) return null;
  const code = el("code", { text: item.snippet });
  const pre = el("pre", { className: "snippet", attrs: { tabindex: "0", "aria-label": `YAML for ${item.alert_name}` } }, [code]);
  const copy = button("Copy YAML", () => copySnippet(code));
  copy.setAttribute("aria-label", `Copy the YAML for ${item.alert_name}`);
  return el("div", { className: "snippet-wrap" }, [pre, copy]);
}

function setStatus(item, status, control) {
  return runAction(
    control,
    () => api.patch(`/recommendations/${item.id}/status`, { status }),
    `Recommendation ${item.id} for ${item.alert_name} marked ${status}.`,
  ).then((updated) => {
    if (updated) load();
  });
}

function card(item) {
  const title = item.namespace ? `${item.alert_name} (${item.namespace})` : item.alert_name;
  const apply = button("Mark applied", (event) => setStatus(item, "applied", event.currentTarget), "primary");
  const reject = button("Reject", (event) => setStatus(item, "rejected", event.currentTarget));
  apply.disabled = item.status === "applied";
  reject.disabled = item.status === "rejected";
  apply.setAttribute("aria-label", `Mark recommendation for ${title} applied`);
  reject.setAttribute("aria-label", `Reject recommendation for ${title}`);

  const problems = item.problems.map((problem) => el("span", { className: "badge badge-flag", text: problem }));
  return el("article", { className: "card", attrs: { "data-id": String(item.id), "data-alert-name": item.alert_name, "aria-label": title } }, [
    el("header", { className: "card-head" }, [
      el("h3", { text: title }),
      statusBadge(item.status),
    ]),
    el("p", { className: "badges" }, [
      ...problems,
      el("span", { className: "source", text: `confidence ${percent(item.confidence)}` }),
      el("span", { className: "source", text: `from ${item.origin || "unknown"}` }),
      el("span", { className: "source" }, ["updated ", timeElement(item.updated_at)]),
    ]),
    item.reasons.length ? el("ul", { className: "advice" }, item.reasons.map((text) => el("li", { text }))) : null,
    item.reasoning ? el("p", { text: item.reasoning }) : null,
    item.impact_estimate ? el("p", { className: "muted", text: `Impact: ${item.impact_estimate}` }) : null,
    configTable(item),
    snippetBlock(item),
    el("div", { className: "actions" }, [apply, reject]),
  ]);
}

async function load() {
  try {
    const cursor = state.cursors[state.cursors.length - 1];
    const body = await api.get("/recommendations", { ...state.filters, limit: PAGE_SIZE, cursor });
    state.next = body.next_cursor;
    byId("recommendation-list").replaceChildren(...body.recommendations.map(card));
    byId("recommendations-empty").hidden = body.recommendations.length > 0;
    byId("recommendations-next").disabled = !state.next;
    byId("recommendations-first").disabled = state.cursors.length <= 1;
    clearError();
  } catch (error) {
    showError(error);
  }
}

function generateSummary(result) {
  return (
    `Generated from ${result.analyzed} alerts: ${result.created} new, ` +
    `${result.updated} updated, ${result.unchanged} unchanged.`
  );
}

export function setup() {
  const filters = byId("recommendation-filters");
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(filters);
    state.filters = {
      status: String(data.get("status") || ""),
      alert_name: String(data.get("alert_name") || "").trim(),
    };
    state.cursors = [""];
    load();
  });
  const generate = byId("generate-form");
  generate.addEventListener("submit", async (event) => {
    event.preventDefault();
    const hours = String(new FormData(generate).get("window_hours") || "").trim();
    const body = hours ? { window_hours: Number(hours) } : {};
    const result = await runAction(
      byId("generate"),
      () => api.post("/recommendations/generate", body),
      generateSummary,
    );
    if (result) load();
  });
  byId("recommendations-next").addEventListener("click", () => {
    if (!state.next) return;
    state.cursors.push(state.next);
    load();
  });
  byId("recommendations-first").addEventListener("click", () => {
    state.cursors = [""];
    load();
  });
}

export function show() {
  return load();
}

export function hide() {}
