// The page-wide status line (polite) and error line (assertive).

import { byId } from "./dom.js";

let noticeTimer = null;

export function showNotice(text) {
  const notice = byId("notice");
  notice.textContent = text;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    notice.textContent = "";
  }, 8000);
}

export function showError(error) {
  const box = byId("error");
  box.textContent = error instanceof Error ? error.message : String(error);
  box.hidden = false;
}

export function clearError() {
  const box = byId("error");
  box.textContent = "";
  box.hidden = true;
}

/**
 * Run an action for a button: disable it meanwhile, report success with
 * `done` (a text or a function of the result) and failure on the error line.
 */
export async function runAction(control, action, done) {
  control.disabled = true;
  clearError();
  try {
    const result = await action();
    showNotice(typeof done === "function" ? done(result) : done);
    return result;
  } catch (error) {
    showError(error);
    return undefined;
  } finally {
    control.disabled = false;
  }
}
