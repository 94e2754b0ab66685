// DOM helpers. Every value from the API reaches the page through
// textContent or setAttribute, never through innerHTML, so markup in alert
// labels or annotations is shown as text.

/**
 * Create an element.
 * @param {string} tag
 * @param {{className?: string, text?: string|number|null, attrs?: Object<string, string>}} [options]
 * @param {Array<Node|string|null|undefined>} [children]
 */
export function el(tag, options = {}, children = []) {
  const node = document.createElement(tag);
  if (options.className) node.className = options.className;
  if (options.text !== undefined && options.text !== null) {
    node.textContent = String(options.text);
  }
  for (const [name, value] of Object.entries(options.attrs || {})) {
    node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child);
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
}

export function button(label, onClick, className = "") {
  const node = el("button", { className, text: label, attrs: { type: "button" } });
  node.addEventListener("click", onClick);
  return node;
}

/** Build a <time> element that shows an RFC 3339 time as "YYYY-MM-DD HH:MM:SS UTC". */
export function timeElement(iso) {
  if (!iso) return el("span", { className: "muted", text: "not set" });
  return el("time", { text: formatTime(iso), attrs: { datetime: iso } });
}

export function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$|Z$/, " UTC");
}

/** Severity shown as text inside a coloured badge, so colour is not the only signal. */
export function severityBadge(severity) {
  const known = ["critical", "warning", "info", "noise"];
  if (!severity) return el("span", { className: "badge badge-none", text: "unclassified" });
  const kind = known.includes(severity) ? severity : "none";
  return el("span", { className: `badge badge-${kind}`, text: severity });
}

export function statusBadge(status) {
  const kind = ["firing", "resolved"].includes(status) ? status : "none";
  return el("span", { className: `badge badge-${kind}`, text: status || "unknown" });
}

export function flagBadge(flag) {
  return el("span", { className: "badge badge-flag", text: flag, attrs: { title: `flag: ${flag}` } });
}

export function percent(value) {
  if (value === null || value === undefined) return "";
  return `${Math.round(Number(value) * 100)} %`;
}

export function seconds(value) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return "";
  const number = Number(value);
  if (number < 1) return `${Math.round(number * 1000)} ms`;
  return `${number.toFixed(2)} s`;
}

/** Fill a table body with rows, or show its "empty" paragraph instead. */
export function fillTable(body, emptyNote, rows) {
  body.replaceChildren(...rows);
  emptyNote.hidden = rows.length > 0;
}

export function row(cells) {
  return el(
    "tr",
    {},
    cells.map((cell) => (cell instanceof Node && cell.nodeName === "TD" ? cell : el("td", {}, [cell]))),
  );
}

export function numberCell(value) {
  return el("td", { className: "number", text: value ?? "" });
}

export function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`missing element #${id}`);
  return node;
}
