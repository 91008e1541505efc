// The lockstep daemon's status page: keeps the live part of a page (<main id="live">) up to
// date while runs progress, by fetching the same page again every few seconds and swapping
// that part in. Without JavaScript the pages read the same, only without updates.
(function () {
  "use strict";
  var PERIOD = 3000;
  function busy() {
    var el = document.activeElement;
    return el && el.closest && el.closest("form") !== null;
  }
  function tick() {
    var live = document.getElementById("live");
    if (!live || !live.dataset.live || document.hidden || busy()) {
      return;
    }
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Lockstep-Live": "1" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("live");
        if (fresh && !busy()) {
          live.replaceWith(fresh);
        }
        var stamp = document.getElementById("updated");
        if (stamp) { stamp.textContent = "updated " + new Date().toLocaleTimeString(); }
      })
      .catch(function (error) {
        var stamp = document.getElementById("updated");
        if (stamp) { stamp.textContent = "not updated: " + error.message; }
      });
  }
  window.setInterval(tick, PERIOD);
})();
