// The Alerts page: filtered, paged alerts with their latest verdict, each
// alert's timeline, and the first page refreshed by polling.

import { api, ApiError, onTokenChange } from "./api.js";
import {
  button, byId, el, fillTable, flagBadge, percent, severityBadge, statusBadge, timeElement,
} from "./dom.js";
import { clearError, showError } from "./notices.js";

const PAGE_SIZE = 50;
// The whole first page is fetched again, not only newer alerts, because an
// alert shown unclassified gets its verdict a moment after it is stored and
// a firing alert can resolve: both change rows already on screen.
const POLL_MILLISECONDS = 4000;
const NEW_ROW_MILLISECONDS = 10000;

const state = {
  filters: {},
  cursors: [""],
  nextCursor: null,
  signature: "",
  // When each occurrence id was first shown, in Date.now() milliseconds;
  // 0 for those on the page when it was (re)loaded, which are never "new".
  firstSeen: new Map(),
  loading: false,
  sequence: 0,
  // Set when a read was rejected for a missing token, so that polling does
  // not open the token dialog again every few seconds.
  blocked: false,
  // Set while the error line shows a failed load, which the next successful
  // poll clears.
  failed: false,
  active: false,
  timer: null,
  timelineFingerprint: null,
};

function readFilters(form) {
  const data = new FormData(form);
  const filters = {};
  for (const name of ["alertname", "status", "severity", "namespace", "min_confidence"]) {
    const value = String(data.get(name) || "").trim();
    if (value) filters[name] = value;
  }
  for (const name of ["since", "until"]) {
    const value = String(data.get(name) || "").trim();
    if (value) filters[name] = asUtc(value);
  }
  return filters;
}

/** Turn a datetime-local value, read as UTC, into RFC 3339. */
function asUtc(value) {
  const withSeconds = /T\d\d:\d\d$/.test(value) ? `${value}:00` : value;
  return `${withSeconds}Z`;
}

function alertName(occurrence) {
  return occurrence.labels.alertname || "(no alertname)";
}

function reasoningCell(occurrence) {
  const verdict = occurrence.classification;
  const cell = el("td", { className: "reasoning" });
  if (!verdict) {
    cell.append(el("span", { className: "muted", text: "not classified yet" }));
    return cell;
  }
  const badges = el("div", { className: "badges" }, verdict.flags.map(flagBadge));
  if (verdict.source) {
    badges.append(el("span", { className: "source", text: `by ${verdict.source}` }));
  }
  if (verdict.model_severity && verdict.model_severity !== verdict.severity) {
    badges.append(el("span", { className: "source", text: `model said ${verdict.model_severity}` }));
  }
  cell.append(el("p", { className: "clamp", text: verdict.reasoning }), badges);
  return cell;
}

function alertRow(occurrence, isNew) {
  const verdict = occurrence.classification;
  const open = button(alertName(occurrence), () => openTimeline(occurrence.fingerprint), "link");
  open.setAttribute("aria-label", `Timeline of ${alertName(occurrence)}, started ${occurrence.starts_at}`);
  const nameCell = el("td", { className: "alertname" }, [open]);
  if (isNew) nameCell.append(" ", el("span", { className: "badge badge-new", text: "new" }));

  const tr = el("tr", { attrs: { "data-fingerprint": occurrence.fingerprint, "data-id": String(occurrence.id) } }, [
    el("td", {}, [timeElement(occurrence.starts_at)]),
    nameCell,
    el("td", { text: occurrence.labels.namespace || "" }),
    el("td", {}, [statusBadge(occurrence.status)]),
    el("td", {}, [severityBadge(occurrence.final_severity)]),
    el("td", { className: "number", text: verdict ? percent(verdict.confidence) : "" }),
    reasoningCell(occurrence),
  ]);
  if (isNew) tr.classList.add("is-new");
  if (occurrence.fingerprint === state.timelineFingerprint) tr.classList.add("is-selected");
  tr.addEventListener("click", (event) => {
    if (event.target instanceof HTMLButtonElement) return;
    openTimeline(occurrence.fingerprint);
  });
  return tr;
}

function expireNewRows() {
  const now = Date.now();
  for (const tr of byId("alerts-body").querySelectorAll("tr.is-new")) {
    const seen = state.firstSeen.get(Number(tr.dataset.id)) ?? 0;
    if (now - seen < NEW_ROW_MILLISECONDS) continue;
    tr.classList.remove("is-new");
    tr.querySelector(".badge-new")?.remove();
  }
}

function render(occurrences, firstLoad) {
  const focusedId = document.activeElement?.closest?.("tr")?.dataset?.id;
  const now = Date.now();
  const shown = new Set(occurrences.map((occurrence) => occurrence.id));
  for (const id of state.firstSeen.keys()) {
    if (!shown.has(id)) state.firstSeen.delete(id);
  }
  for (const occurrence of occurrences) {
    if (!state.firstSeen.has(occurrence.id)) state.firstSeen.set(occurrence.id, firstLoad ? 0 : now);
  }
  const rows = occurrences.map((occurrence) => {
    const isNew = now - state.firstSeen.get(occurrence.id) < NEW_ROW_MILLISECONDS;
    return alertRow(occurrence, isNew);
  });
  fillTable(byId("alerts-body"), byId("alerts-empty"), rows);
  if (focusedId) {
    byId("alerts-body").querySelector(`tr[data-id="${CSS.escape(focusedId)}"] button`)?.focus();
  }
  if (rows.some((tr) => tr.classList.contains("is-new"))) {
    setTimeout(expireNewRows, NEW_ROW_MILLISECONDS);
  }
  byId("alerts-next").disabled = !state.nextCursor;
  byId("alerts-first").disabled = state.cursors.length <= 1;
}

/**
 * Fetch the current page and render it when it changed. A newer call makes
 * the response of an older one stale, so a poll never overwrites a page that
 * the visitor asked for after it.
 */
async function load({ firstLoad = false, quiet = false } = {}) {
  state.sequence += 1;
  const sequence = state.sequence;
  state.loading = true;
  if (!quiet) byId("alerts-table").setAttribute("aria-busy", "true");
  const cursor = state.cursors[state.cursors.length - 1];
  try {
    const body = await api.get("/history/enriched", { ...state.filters, limit: PAGE_SIZE, cursor });
    if (sequence !== state.sequence) return;
    state.nextCursor = body.next_cursor;
    const signature = JSON.stringify(body);
    if (signature !== state.signature || firstLoad) {
      state.signature = signature;
      render(body.occurrences, firstLoad);
    }
    if (!quiet || state.failed) clearError();
    state.failed = false;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) state.blocked = true;
    if (sequence === state.sequence) {
      state.failed = true;
      showError(error);
    }
  } finally {
    if (sequence === state.sequence) {
      state.loading = false;
      byId("alerts-table").setAttribute("aria-busy", "false");
    }
  }
}

function restart(filters) {
  state.filters = filters;
  state.cursors = [""];
  state.signature = "";
  state.firstSeen = new Map();
  return load({ firstLoad: true });
}

function poll() {
  const onFirstPage = state.cursors.length === 1;
  const idle = !state.loading && !state.blocked;
  if (idle && state.active && onFirstPage && document.visibilityState === "visible") {
    load({ quiet: true });
  }
}

function timelineEvents(occurrences) {
  const events = [];
  for (const occurrence of occurrences) {
    for (const change of occurrence.state_changes) events.push({ change, occurrence });
  }
  events.sort((a, b) => String(b.change.changed_at).localeCompare(String(a.change.changed_at)));
  return events;
}

function timelineItem({ change, occurrence }) {
  const verdict = change.classification;
  const head = el("div", { className: "event-head" }, [
    timeElement(change.changed_at),
    " ",
    statusBadge(change.status),
    " ",
    el("span", { className: "muted", text: `occurrence ${occurrence.id}` }),
  ]);
  const item = el("li", { className: "event" }, [head]);
  if (!verdict) {
    item.append(el("p", { className: "muted", text: "No classification recorded for this change." }));
    return item;
  }
  const facts = el("p", { className: "badges" }, [
    severityBadge(verdict.severity),
    el("span", { text: ` confidence ${percent(verdict.confidence)}` }),
    verdict.source ? el("span", { className: "source", text: ` by ${verdict.source}` }) : null,
    ...verdict.flags.map(flagBadge),
  ]);
  item.append(facts, el("p", { className: "reasoning-text", text: verdict.reasoning }));
  if (verdict.recommendations.length) {
    item.append(el("ul", { className: "advice" }, verdict.recommendations.map((text) => el("li", { text }))));
  }
  return item;
}

async function fetchTimeline(fingerprint) {
  try {
    return await api.get(`/history/${encodeURIComponent(fingerprint)}`, { limit: 20 });
  } catch (error) {
    // Gateways without the timeline route return 404 without a JSON error.
    if (!(error instanceof ApiError) || error.status !== 404 || error.body?.status === "error") throw error;
    const body = await api.get("/history/enriched", { fingerprint, limit: 20 });
    return { fingerprint, occurrences: body.occurrences, total_occurrences: null, next_cursor: null };
  }
}

async function openTimeline(fingerprint) {
  state.timelineFingerprint = fingerprint;
  const panel = byId("timeline");
  const list = byId("timeline-list");
  panel.hidden = false;
  panel.setAttribute("aria-busy", "true");
  byId("alerts-body").querySelectorAll("tr").forEach((tr) => {
    tr.classList.toggle("is-selected", tr.dataset.fingerprint === fingerprint);
  });
  try {
    const body = await fetchTimeline(fingerprint);
    const latest = body.occurrences[0];
    const name = latest ? alertName(latest) : fingerprint;
    byId("timeline-title").textContent = `Timeline: ${name}`;
    const summary = latest?.annotations?.summary || latest?.annotations?.description || "";
    const totals = body.total_occurrences === null
      ? `${body.occurrences.length} occurrences shown`
      : `${body.total_occurrences} occurrences, ${body.total_state_changes} state changes`;
    byId("timeline-summary").textContent = `${totals}. Fingerprint ${fingerprint}. ${summary}`.trim();
    list.replaceChildren(...timelineEvents(body.occurrences).map(timelineItem));
    byId("timeline-title").focus();
  } catch (error) {
    showError(error);
  } finally {
    panel.setAttribute("aria-busy", "false");
  }
}

function closeTimeline() {
  const fingerprint = state.timelineFingerprint;
  state.timelineFingerprint = null;
  byId("timeline").hidden = true;
  byId("alerts-body").querySelectorAll("tr.is-selected").forEach((tr) => tr.classList.remove("is-selected"));
  const selector = `tr[data-fingerprint="${CSS.escape(fingerprint || "")}"] button`;
  byId("alerts-body").querySelector(selector)?.focus();
}

export function setup() {
  const form = byId("alert-filters");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    restart(readFilters(form));
  });
  form.addEventListener("reset", () => restart({}));
  byId("alerts-next").addEventListener("click", () => {
    if (!state.nextCursor) return;
    state.cursors.push(state.nextCursor);
    state.signature = "";
    load({ firstLoad: true });
  });
  byId("alerts-first").addEventListener("click", () => {
    state.cursors = [""];
    state.signature = "";
    load({ firstLoad: true });
  });
  byId("timeline-close").addEventListener("click", closeTimeline);
  byId("timeline").addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeTimeline();
  });
  onTokenChange((present) => {
    if (present) state.blocked = false;
  });
}

export function show() {
  state.active = true;
  state.blocked = false;
  if (state.timer === null) state.timer = setInterval(poll, POLL_MILLISECONDS);
  return load({ firstLoad: state.signature === "" });
}

export function hide() {
  state.active = false;
  clearInterval(state.timer);
  state.timer = null;
}
