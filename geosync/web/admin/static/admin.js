// geosync admin UI: the little JavaScript it needs, no library, no build step.
// - [data-refresh]: the element's contents are fetched again from its URL every few seconds
//   (data-interval, in ms) and replaced, so a page updates itself without a full reload; a
//   fragment holding [data-refresh-stop] is final (a finished job) and ends the updates.
// - form[data-confirm]: asks before submitting (bulk actions say how many rows they touch).
"use strict";

function refresh(element) {
  const url = element.dataset.refresh;
  const every = Number(element.dataset.interval || 5000);
  const tick = async () => {
    try {
      const response = await fetch(url, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" });
      if (response.status === 401) { window.location.reload(); return; }
      if (response.ok) {
        element.innerHTML = await response.text();
        if (element.querySelector("[data-refresh-stop]")) { return; }
      }
    } catch (error) {
      // the site is away for a moment: keep what is shown and try again at the next tick
    }
    window.setTimeout(tick, every);
  };
  window.setTimeout(tick, every);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(refresh);
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); }
    });
  });
});
