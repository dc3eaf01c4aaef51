// Live refresh: every 5 s, fetch this page again and swap in the sections marked data-live,
// unless the user is selecting or typing. The server escaped every value already.
"use strict";
(function () {
  const PERIOD_MS = 5000;
  function busy() {
    const a = document.activeElement;
    if (a && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA")) return true;
    return document.querySelector("input[type=checkbox]:checked") !== null;
  }
  async function refresh() {
    if (busy() || document.hidden) return;
    try {
      const resp = await fetch(location.href, { credentials: "same-origin", headers: { "X-Embq-Live": "1" } });
      if (!resp.ok) return;
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      for (const el of document.querySelectorAll("[data-live]")) {
        const fresh = doc.getElementById(el.id);
        if (fresh) el.replaceChildren(...Array.from(fresh.childNodes).map((n) => document.importNode(n, true)));
      }
      document.body.dataset.refreshed = String(Date.now());
    } catch (e) {
      // A failed poll leaves the page as it was; the next one tries again.
    }
  }
  if (document.querySelector("[data-live]")) setInterval(refresh, PERIOD_MS);
})();
