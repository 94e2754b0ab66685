// The Publishing page: targets, delivery statistics and dead letters.

import { api } from "./api.js";
import { button, byId, el, fillTable, numberCell, seconds, timeElement } from "./dom.js";
import { clearError, runAction, showError } from "./notices.js";

const DEAD_PAGE_SIZE = 25;

const dead = { tokens: [""], next: null };

function targetRow(target) {
  const test = button("Send test alert", (event) =>
    runAction(
      event.currentTarget,
      () => api.post(`/publishing/test/${encodeURIComponent(target.name)}`),
      (result) => testOutcome(target.name, result),
    ).then(() => loadStats()),
  );
  test.setAttribute("aria-label", `Send a test alert to ${target.name}`);
  return el("tr", { attrs: { "data-target": target.name } }, [
    el("td", { text: target.name }),
    el("td", { text: target.format }),
    el("td", { className: "endpoint", text: target.endpoint }),
    el("td", { text: target.enabled ? "yes" : "no" }),
    el("td", { text: target.source }),
    el("td", { className: "row-actions" }, [test]),
  ]);
}

function testOutcome(name, result) {
  if (!result.attempted) return `Test alert to ${name} was not sent.`;
  const stateText = result.trigger ? result.trigger.state : "unknown";
  return `Test alert to ${name}: delivery ${stateText}.`;
}

async function loadTargets() {
  const body = await api.get("/publishing/targets");
  byId("publishing-mode").textContent = body.metrics_only
    ? "Mode: metrics only (no target is enabled)."
    : "Mode: publishing. Endpoints show scheme and host only.";
  fillTable(byId("targets-body"), byId("targets-empty"), body.targets.map(targetRow));
}

function statsRow(stats) {
  return el("tr", {}, [
    el("th", { text: stats.target, attrs: { scope: "row" } }),
    numberCell(stats.succeeded),
    numberCell(stats.failed),
    numberCell(stats.dead),
    numberCell(stats.discarded),
    numberCell(stats.pending),
    numberCell(stats.retried),
    numberCell(seconds(stats.latency_seconds.p50)),
    numberCell(seconds(stats.latency_seconds.p99)),
  ]);
}

async function loadStats() {
  const body = await api.get("/publishing/stats");
  byId("stats-window").replaceChildren(
    "From ", timeElement(body.since), " to ", timeElement(body.until), ".",
  );
  fillTable(byId("stats-body"), byId("stats-empty"), body.targets.map(statsRow));
}

function lastResponse(letter) {
  const parts = [];
  if (letter.last_status_code) parts.push(`HTTP ${letter.last_status_code}`);
  if (letter.last_error) parts.push(letter.last_error);
  if (letter.last_response_body) parts.push(letter.last_response_body);
  return parts.join(": ") || "no response";
}

function deadRow(letter) {
  const retry = button("Retry", (event) =>
    runAction(
      event.currentTarget,
      () => api.post(`/publishing/dead-letters/${letter.id}/retry`),
      `Dead letter ${letter.id} queued again.`,
    ).then(refreshDeliveries),
  );
  retry.setAttribute("aria-label", `Retry dead letter ${letter.id}`);
  const discard = button("Discard", (event) =>
    runAction(
      event.currentTarget,
      () => api.delete(`/publishing/dead-letters/${letter.id}`),
      `Dead letter ${letter.id} discarded.`,
    ).then(refreshDeliveries),
    "danger",
  );
  discard.setAttribute("aria-label", `Discard dead letter ${letter.id}`);
  return el("tr", { attrs: { "data-id": String(letter.id) } }, [
    numberCell(letter.id),
    el("td", { text: `${letter.target} (${letter.format})` }),
    numberCell(letter.alert_count),
    numberCell(letter.attempts),
    el("td", { className: "clamp-cell", text: lastResponse(letter) }),
    el("td", {}, [timeElement(letter.created_at)]),
    el("td", { className: "row-actions" }, [retry, discard]),
  ]);
}

async function loadDeadLetters() {
  const token = dead.tokens[dead.tokens.length - 1];
  const body = await api.get("/publishing/dead-letters", { limit: DEAD_PAGE_SIZE, page_token: token });
  dead.next = body.next_page_token;
  fillTable(byId("dead-body"), byId("dead-empty"), body.dead_letters.map(deadRow));
  byId("dead-next").disabled = !dead.next;
  byId("dead-first").disabled = dead.tokens.length <= 1;
}

function refreshDeliveries() {
  return Promise.all([loadDeadLetters(), loadStats()]).catch(showError);
}

export function setup() {
  byId("targets-refresh").addEventListener("click", (event) =>
    runAction(
      event.currentTarget,
      () => api.post("/publishing/targets/refresh"),
      (result) => `Targets reloaded: ${result.targets} targets, ${result.enabled} enabled.`,
    ).then(() => loadTargets().catch(showError)),
  );
  byId("dead-next").addEventListener("click", () => {
    if (!dead.next) return;
    dead.tokens.push(dead.next);
    loadDeadLetters().catch(showError);
  });
  byId("dead-first").addEventListener("click", () => {
    dead.tokens = [""];
    loadDeadLetters().catch(showError);
  });
}

export async function show() {
  try {
    await Promise.all([loadTargets(), loadStats(), loadDeadLetters()]);
    clearError();
  } catch (error) {
    showError(error);
  }
}

export function hide() {}
