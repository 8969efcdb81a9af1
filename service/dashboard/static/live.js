// Live updates: every few seconds, fetch this page again and swap in its <main>. The server
// renders (and escapes) everything; this only moves its HTML in. Paused while the tab is hidden.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var seconds = main && Number(main.dataset.liveSeconds);
  if (!seconds) { return; }
  function refresh() {
    if (document.hidden) { return; }
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Live": "1" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("main");
        if (fresh) { main.replaceChildren.apply(main, Array.from(fresh.childNodes)); }
      })
      .catch(function () { /* the next tick tries again */ });
  }
  window.setInterval(refresh, seconds * 1000);
})();
