// berth console: confirmations, live logs, and refresh while a deployment
// moves. No framework; served from the binary.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  // Every state-changing form asks first.
  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (e) {
      if (!window.confirm(f.getAttribute("data-confirm"))) {
        e.preventDefault();
      }
    });
  });
  document.querySelectorAll("a[data-back]").forEach(function (a) {
    a.addEventListener("click", function (e) {
      if (window.history.length > 1) {
        e.preventDefault();
        window.history.back();
      }
    });
  });
  setupLogs();
  watchDeployment();
  watchProject();
});

function pad(n, w) {
  var s = String(n);
  while (s.length < w) s = "0" + s;
  return s;
}

function fmtTime(iso) {
  var d = new Date(iso);
  if (isNaN(d.getTime())) return "";
  return pad(d.getUTCHours(), 2) + ":" + pad(d.getUTCMinutes(), 2) + ":" +
    pad(d.getUTCSeconds(), 2) + "." + pad(d.getUTCMilliseconds(), 3);
}

function el(tag, cls, text) {
  var e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function setupLogs() {
  var box = document.getElementById("logs");
  if (!box) return;
  var state = document.getElementById("logstate");
  var head = document.getElementById("deployment");
  var live = head && head.getAttribute("data-live") === "true";
  document.querySelectorAll("input[data-stream]").forEach(function (c) {
    c.addEventListener("change", function () {
      box.classList.toggle("hide-" + c.getAttribute("data-stream"), !c.checked);
    });
  });
  box.scrollTop = box.scrollHeight;
  if (!live || !window.EventSource) return;
  var seen = {};
  box.querySelectorAll(".ln[data-seq]").forEach(function (l) {
    seen[l.getAttribute("data-seq")] = true;
  });
  var es = new EventSource(box.getAttribute("data-src"));
  es.onopen = function () {
    state.textContent = "live";
    state.classList.add("on");
  };
  es.onmessage = function (ev) {
    var l;
    try { l = JSON.parse(ev.data); } catch (e) { return; }
    if (seen[l.seq]) return;
    seen[l.seq] = true;
    var stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 30;
    var line = el("div", "ln new s-" + l.stream);
    line.setAttribute("data-seq", l.seq);
    line.appendChild(el("span", "ts", fmtTime(l.ts)));
    line.appendChild(el("span", "tag", l.stream));
    if (l.step) line.appendChild(el("span", "step", l.step));
    line.appendChild(el("span", "tx", l.text));
    box.appendChild(line);
    while (box.childElementCount > 5000) box.removeChild(box.firstElementChild);
    if (stick) box.scrollTop = box.scrollHeight;
  };
  es.onerror = function () {
    state.classList.remove("on");
    // The stream ends when the deployment stops being live; otherwise
    // EventSource reconnects on its own, resuming after the last id.
    fetch("/api/v1/deployments/" + encodeURIComponent(head.getAttribute("data-id")), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) {
        if (!d) { state.textContent = "disconnected"; es.close(); return; }
        var terminal = ["succeeded", "failed", "cancelled"].indexOf(d.status) >= 0;
        var running = ["active", "draining_previous"].indexOf(d.promotionStage) >= 0;
        if (terminal && !running) {
          es.close();
          state.textContent = "ended";
        } else {
          state.textContent = "reconnecting…";
        }
      })
      .catch(function () { state.textContent = "reconnecting…"; });
  };
}

function watchKey(d) {
  return [d.status, d.promotionStage, d.health, String(d.isActive),
    d.steps.map(function (s) { return s.status; }).join(",")].join("|");
}

// Reload the deployment page when its state or a step changes (the page is
// rendered by the server; the log panel keeps streaming meanwhile).
function watchDeployment() {
  var head = document.getElementById("deployment");
  if (!head) return;
  var id = head.getAttribute("data-id");
  var key = head.getAttribute("data-watch");
  var terminal = /^(succeeded|failed|cancelled)\|/.test(key);
  var period = terminal ? 10000 : 1000;
  function tick() {
    fetch("/api/v1/deployments/" + encodeURIComponent(id), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) {
        if (d && watchKey(d) !== key && !busyTyping()) {
          window.location.reload();
          return;
        }
        setTimeout(tick, period);
      })
      .catch(function () { setTimeout(tick, period * 3); });
  }
  setTimeout(tick, period);
}

function busyTyping() {
  var a = document.activeElement;
  return a && (a.tagName === "INPUT" || a.tagName === "TEXTAREA") && a.value !== "";
}

// A project page refreshes while one of its deployments is in flight.
function watchProject() {
  var head = document.querySelector("[data-refresh-while-busy='true']");
  if (!head) return;
  setInterval(function () {
    if (!busyTyping()) window.location.reload();
  }, 3000);
}
