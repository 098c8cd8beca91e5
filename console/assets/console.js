// Meridian operator consoles: live sections over server-sent events, and
// operator actions behind a confirmation dialog. No framework, no network
// access beyond the serving replica.
(function () {
  "use strict";

  var live = document.getElementById("live");
  var toast = document.getElementById("action-result");
  var dialog = document.getElementById("confirm");
  var lastHtml = {};
  var pending = null;

  function setLive(state, text) {
    if (!live) return;
    live.className = "live " + state;
    live.textContent = text;
  }

  function showResult(ok, message) {
    if (!toast) return;
    toast.hidden = false;
    toast.className = "toast " + (ok ? "ok" : "error");
    toast.textContent = message;
    toast.dataset.outcome = ok ? "ok" : "error";
  }

  // Live updates: the server sends re-rendered sections by element id.
  var stream = document.body.dataset.stream;
  if (stream && window.EventSource) {
    var source = new EventSource(stream);
    source.addEventListener("sections", function (event) {
      var sections = JSON.parse(event.data);
      Object.keys(sections).forEach(function (id) {
        var el = document.getElementById(id);
        if (el && lastHtml[id] !== sections[id]) {
          el.innerHTML = sections[id];
          lastHtml[id] = sections[id];
        }
      });
      setLive("on", "Live · " + new Date().toLocaleTimeString());
    });
    source.onopen = function () { setLive("on", "Live"); };
    source.onerror = function () { setLive("off", "Reconnecting…"); };
  } else if (!stream) {
    setLive("off", "Static page");
  }

  // Actions: every button with data-action asks for confirmation first.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-action]");
    if (!button || !dialog) return;
    pending = {
      url: button.dataset.url,
      evacuate: button.dataset.evacuate === "true",
      label: button.getAttribute("aria-label") || button.textContent
    };
    document.getElementById("confirm-title").textContent = pending.label;
    document.getElementById("confirm-text").textContent = button.dataset.confirm || "";
    document.getElementById("confirm-reason").value = "";
    document.getElementById("confirm-evacuate").checked = false;
    document.getElementById("confirm-evacuate-row").hidden = !pending.evacuate;
    document.getElementById("confirm-ok").textContent = button.textContent.replace("…", "");
    dialog.showModal();
    document.getElementById("confirm-reason").focus();
  });

  function perform() {
    if (!pending) return;
    var action = pending;
    pending = null;
    var body = {
      reason: document.getElementById("confirm-reason").value,
      evacuate: action.evacuate && document.getElementById("confirm-evacuate").checked
    };
    dialog.close("confirm");
    showResult(true, action.label + "…");
    fetch(action.url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().then(function (json) {
        showResult(response.ok && json.ok, (json.message || response.statusText));
      }, function () {
        showResult(false, action.label + ": HTTP " + response.status);
      });
    }, function (error) {
      showResult(false, action.label + ": " + error);
    });
  }

  if (dialog) {
    document.getElementById("confirm-ok").addEventListener("click", perform);
    dialog.addEventListener("close", function () {
      if (dialog.returnValue !== "confirm") pending = null;
    });
    dialog.querySelector("form").addEventListener("submit", function (event) {
      // Enter in the reason field confirms; the Cancel button cancels.
      if (event.submitter && event.submitter.id === "confirm-cancel") return;
      event.preventDefault();
      perform();
    });
  }
})();
