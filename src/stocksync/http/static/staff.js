// The staff page's live part: one EventSource on /v1/stream (the session cookie authorises it) for this
// store's looked-up sku and the nearby stores shown, numbers updated in place, a badge while it is down, and
// a catch-up (fresh positions, the reservation list reloaded) when it comes back. No build step.
(function () {
  "use strict";
  var app = document.getElementById("app");
  if (!app) return;
  var store = app.dataset.store;
  var badge = document.getElementById("live");
  var banner = document.getElementById("offline");
  var source = null, retry = null, wasDown = false, reloadSoon = null;
  var NO_SKU = "STAFF-PAGE"; // the feed needs a sku; this one only carries the store's reservation changes

  function status(state) {
    badge.className = "badge " + state;
    badge.textContent = {live: "Live", down: "Offline", connecting: "Connecting…"}[state];
    banner.hidden = state !== "down";
  }

  function watched() {
    var locations = [store], skus = [];
    document.querySelectorAll("[data-live-location]").forEach(function (el) {
      if (locations.indexOf(el.dataset.liveLocation) < 0) locations.push(el.dataset.liveLocation);
      if (skus.indexOf(el.dataset.liveSku) < 0) skus.push(el.dataset.liveSku);
    });
    if (!skus.length) skus.push(NO_SKU);
    var query = new URLSearchParams();
    locations.slice(0, 50).forEach(function (l) { query.append("location_id", l); });
    skus.forEach(function (s) { query.append("sku", s); });
    return "/v1/stream?" + query.toString();
  }

  function connect() {
    clearTimeout(retry);
    if (source) source.close();
    source = new EventSource(watched());
    source.onopen = function () {
      status("live");
      if (wasDown) reloadReservations(); // what changed while away
      wasDown = false;
    };
    source.onerror = function () {
      status("down");
      wasDown = true;
      if (source.readyState === EventSource.CLOSED) retry = setTimeout(connect, 3000); // refused: try again
    };
    source.addEventListener("availability", function (event) { show(JSON.parse(event.data)); });
    source.addEventListener("reservation", reloadReservations);
  }

  function show(position) {
    var selector = '[data-live-location="' + CSS.escape(position.location_id) + '"][data-live-sku="' +
      CSS.escape(position.sku) + '"]';
    document.querySelectorAll(selector).forEach(function (el) {
      if (Number(el.dataset.version || 0) > position.version) return; // the page is newer already
      el.dataset.version = position.version;
      el.querySelectorAll("[data-field]").forEach(function (field) {
        var value = String(position[field.dataset.field]);
        if (field.textContent !== value) {
          field.textContent = value;
          field.classList.remove("changed"); void field.offsetWidth; field.classList.add("changed");
        }
      });
    });
  }

  function reloadReservations() {
    clearTimeout(reloadSoon);
    reloadSoon = setTimeout(function () { htmx.trigger(document.body, "refresh-reservations"); }, 150);
  }

  function countdowns() {
    var now = Date.now();
    document.querySelectorAll("time[data-expires]").forEach(function (el) {
      var left = Math.round((Date.parse(el.dataset.expires) - now) / 1000);
      el.classList.toggle("soon", left < 600);
      if (left <= 0) { el.textContent = "Expired: being released"; return; }
      var h = Math.floor(left / 3600), m = Math.floor(left % 3600 / 60), s = left % 60;
      el.textContent = (h ? h + " h " + m + " min" : m ? m + " min " + s + " s" : s + " s") + " left";
    });
    document.querySelectorAll("time[data-local]").forEach(function (el) {
      el.textContent = new Date(el.getAttribute("datetime")).toLocaleString([], {dateStyle: "medium", timeStyle: "short"});
      el.removeAttribute("data-local");
    });
  }

  function addLine(sku) {
    var lines = document.getElementById("lines");
    var empty = Array.prototype.find.call(lines.querySelectorAll(".line-sku"), function (i) { return !i.value; });
    if (!empty) {
      var line = lines.querySelector(".line").cloneNode(true);
      line.querySelector(".line-sku").value = "";
      line.querySelector(".line-qty").value = "1";
      lines.appendChild(line);
      empty = line.querySelector(".line-sku");
    }
    if (sku) empty.value = sku;
    empty.focus();
  }

  document.getElementById("add-line").addEventListener("click", function () { addLine(""); });
  document.body.addEventListener("click", function (event) {
    var use = event.target.closest(".use-sku");
    if (use) addLine(use.dataset.sku);
  });
  document.body.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target.id === "lookup-result") connect(); // watch what is shown now
    countdowns();
  });
  document.body.addEventListener("htmx:afterRequest", function (event) {
    var form = event.detail.elt;
    if (form.id !== "reserve-form" || !event.detail.successful || event.detail.xhr.status !== 200) return;
    var lines = form.querySelectorAll(".line");
    for (var i = 1; i < lines.length; i++) lines[i].remove();
    form.querySelector(".line-sku").value = "";
    form.querySelector(".line-qty").value = "1";
    form.querySelector("#reference").value = "";
  });
  document.body.addEventListener("htmx:sendError", function () {
    var notice = document.getElementById("settle-result");
    status("down");
    notice.innerHTML = '<div class="notice error" role="alert"><p>Cannot reach the stock system. ' +
      "Check the Wi-Fi and try again: nothing was changed.</p></div>";
  });
  setInterval(countdowns, 1000);
  countdowns();
  connect();
})();
