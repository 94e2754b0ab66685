// Calls to the gateway's JSON API with the visitor's API token.
//
// The token lives in sessionStorage, so it is gone when the tab closes and
// other tabs do not see it (a tab duplicated from this one gets a copy). It is only ever sent as an Authorization header
// and never written into the page. A 401 opens the token dialog and, once a
// token is given, repeats the request.

import { byId } from "./dom.js";

const TOKEN_KEY = "alert-history.api-token";
// A request gets a new token at most this many times before it fails.
const MAX_TOKEN_PROMPTS = 3;

const tokenListeners = new Set();
let pendingPrompt = null;

export class ApiError extends Error {
  constructor(status, message, body = null) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export function hasToken() {
  return Boolean(sessionStorage.getItem(TOKEN_KEY));
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  tokenListeners.forEach((listener) => listener(true));
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  tokenListeners.forEach((listener) => listener(false));
}

export function onTokenChange(listener) {
  tokenListeners.add(listener);
}

/**
 * Open the token dialog and resolve with the token typed in, or null when
 * cancelled. Calls made while the dialog is open share the same result.
 */
export function askForToken(reason) {
  if (pendingPrompt) return pendingPrompt;
  const dialog = byId("token-dialog");
  const form = byId("token-form");
  const input = byId("token-input");
  const cancel = byId("token-cancel");
  byId("token-reason").textContent = reason;
  input.value = "";

  pendingPrompt = new Promise((resolve) => {
    const finish = (token) => {
      form.removeEventListener("submit", onSubmit);
      cancel.removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      input.value = "";
      if (dialog.open) dialog.close();
      pendingPrompt = null;
      resolve(token);
    };
    const onSubmit = (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      setToken(token);
      finish(token);
    };
    const onCancel = (event) => {
      event.preventDefault();
      finish(null);
    };
    form.addEventListener("submit", onSubmit);
    cancel.addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    input.focus();
  });
  return pendingPrompt;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

async function decode(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { error: text.slice(0, 200) };
  }
}

function describe(method, path, status, body) {
  const reason = body && typeof body.error === "string" ? body.error : `HTTP ${status}`;
  return `${method} ${path} failed: ${reason}`;
}

async function send(method, url, headers, body) {
  try {
    return await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "same-origin",
      redirect: "error",
    });
  } catch (error) {
    throw new ApiError(0, `${method} ${url} failed: the gateway cannot be reached (${error.message})`);
  }
}

function tokenReason(method, rejectedToken) {
  if (rejectedToken) return "The gateway rejected the API token. Enter a valid one to continue.";
  if (method === "GET") return "This gateway requires an API token to read data.";
  return "This change requires an API token.";
}

/**
 * Send one request and return the decoded JSON body; raise ApiError for
 * any status other than 2xx. A 401 asks for a token and tries again.
 */
export async function request(method, path, { params, body } = {}) {
  const url = path + query(params);
  for (let prompt = 0; ; prompt += 1) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";

    const response = await send(method, url, headers, body);
    const decoded = await decode(response);
    if (response.ok) return decoded;
    if (response.status !== 401 || prompt >= MAX_TOKEN_PROMPTS) {
      throw new ApiError(response.status, describe(method, path, response.status, decoded), decoded);
    }

    const current = sessionStorage.getItem(TOKEN_KEY);
    if (current && current !== token) continue;

    if (token) forgetToken();
    const entered = await askForToken(tokenReason(method, token));
    if (entered === null) {
      throw new ApiError(401, `${method} ${path} needs an API token, and none was entered`, decoded);
    }
  }
}

export const api = {
  get: (path, params) => request("GET", path, { params }),
  post: (path, body = {}, params) => request("POST", path, { body, params }),
  patch: (path, body) => request("PATCH", path, { body }),
  delete: (path) => request("DELETE", path),
};
