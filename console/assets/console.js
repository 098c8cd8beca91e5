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

  // The session's CSRF token, which every state-changing request carries:
  // a page of another site cannot read it.
  function csrfToken() {
    var meta = document.querySelector("meta[name=csrf-token]");
    return meta ? meta.getAttribute("content") : "";
  }

  function showResult(ok, message) {
    if (!toast) return;
    toast.hidden = false;
    toast.className = "toast " + (ok ? "ok" : "error");
    toast.textContent = message;
    toast.dataset.outcome = ok ? "ok" : "error";
  }

  // The markup `html` as this browser serializes it, to compare with what
  // a section shows: the server's spelling of the same markup may differ.
  var parser = document.createElement("template");
  function serialized(html) {
    parser.innerHTML = html;
    return parser.innerHTML;
  }

  // Live updates: the server sends re-rendered sections by element id. A
  // section is replaced only when its markup changed (the first event
  // repeats what the page was served with): replacing it anyway would
  // swap the buttons under an operator's pointer for identical ones.
  var stream = document.body.dataset.stream;
  if (stream && window.EventSource) {
    var source = new EventSource(stream);
    source.addEventListener("sections", function (event) {
      var sections = JSON.parse(event.data);
      Object.keys(sections).forEach(function (id) {
        var el = document.getElementById(id);
        if (!el || lastHtml[id] === sections[id]) return;
        lastHtml[id] = sections[id];
        var html = serialized(sections[id]);
        if (el.innerHTML !== html) el.innerHTML = html;
      });
      setLive("on", "Live · " + new Date().toLocaleTimeString());
    });
    source.onopen = function () { setLive("on", "Live"); };
    source.onerror = function () { setLive("off", "Reconnecting…"); };
  } else if (!stream) {
    setLive("off", "Static page");
  }

  // Live task output: the federation API's follow stream (server-sent
  // events of TaskLogChunk, served by this replica) appended to the
  // <pre data-follow> of the job page. At most MAX_CHARS characters are
  // kept (the oldest go first), so a chatty task cannot grow the page
  // without bound. The stream ends after the task's last attempt; a stream
  // that fails (the job is not routed yet, a replica restarted) is opened
  // again from the position of the last event received.
  var log = document.querySelector("pre[data-follow]");
  if (log && window.EventSource) {
    var MAX_CHARS = 200000;
    var outputState = document.getElementById("output-state");
    var shown = 0;
    var attempt = 0;
    var decoders = {};
    var position = "";
    var ended = false;
    var say = function (text) { if (outputState) outputState.textContent = text; };
    var append = function (text, cls) {
      if (!text) return;
      var span = document.createElement("span");
      if (cls) span.className = cls;
      span.textContent = text;
      log.appendChild(span);
      shown += text.length;
      while (shown > MAX_CHARS && log.firstChild) {
        shown -= log.firstChild.textContent.length;
        log.removeChild(log.firstChild);
        log.dataset.trimmed = "true";
      }
      log.scrollTop = log.scrollHeight;
    };
    var bytes = function (b64) {
      var raw = atob(b64 || "");
      var out = new Uint8Array(raw.length);
      for (var i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
      return out;
    };
    var open = function () {
      var url = log.dataset.follow;
      var at = position.split(".");
      if (at.length === 3) {
        url += "?offsets_attempt=" + at[0] + "&stdout_offset=" + at[1] + "&stderr_offset=" + at[2];
      }
      var follow = new EventSource(url);
      follow.onmessage = function (event) {
        var c = JSON.parse(event.data);
        position = event.lastEventId || position;
        if (c.attempt !== attempt) {
          if (attempt) append("--- attempt " + c.attempt + " on node " + c.node_id + " ---\n", "note");
          attempt = c.attempt;
          decoders = {};
        }
        var err = c.stream === "LOG_STREAM_STDERR";
        if (c.skipped_bytes && c.skipped_bytes !== "0") {
          append("[... " + c.skipped_bytes + " bytes skipped: the page fell behind the task ...]\n", "note");
        }
        var key = err ? "stderr" : "stdout";
        var decoder = decoders[key] || (decoders[key] = new TextDecoder("utf-8"));
        append(decoder.decode(bytes(c.data), { stream: true }), err ? "stderr" : "");
        say("Live: attempt " + c.attempt + " on node " + c.node_id);
      };
      follow.addEventListener("end", function (event) {
        var c = JSON.parse(event.data);
        position = event.lastEventId || position;
        var st = (c.state || "").replace("TASK_STATE_", "").toLowerCase();
        if (st && st !== "unspecified") {
          ended = true;
          log.dataset.ended = st;
          say("Attempt " + c.attempt + " ended " + st + "; the task has ended.");
          follow.close();
        } else {
          say("Attempt " + c.attempt + " ended; following the task's next attempt…");
        }
      });
      follow.addEventListener("error", function (event) {
        if (event.data) {
          // The server's refusal, as its error body: asking again would
          // get the same answer.
          say("Output not available: " + JSON.parse(event.data).message);
          follow.close();
          return;
        }
        if (!ended) say("Waiting for output…");
        if (follow.readyState === EventSource.CLOSED && !ended) {
          // Refused before the stream began (the job is not routed yet):
          // an EventSource does not retry that by itself.
          setTimeout(open, 2000);
        }
      });
    };
    open();
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
    // An action that records no reason (a schedule's) asks for none.
    var reason = document.getElementById("confirm-reason");
    var asksReason = button.dataset.reason !== "none";
    reason.hidden = !asksReason;
    document.querySelector("label[for=confirm-reason]").hidden = !asksReason;
    dialog.showModal();
    (asksReason ? reason : document.getElementById("confirm-ok")).focus();
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
      headers: { "content-type": "application/json", "x-csrf-token": csrfToken() },
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

  // Sign out: the session's own POST (it needs the CSRF token too), then
  // the sign-in page.
  var signOut = document.getElementById("sign-out");
  if (signOut) {
    signOut.addEventListener("click", function () {
      fetch(signOut.dataset.url, {
        method: "POST",
        headers: { "content-type": "application/json", "x-csrf-token": csrfToken() },
        body: "{}"
      }).then(function () { window.location.assign(signOut.dataset.url.replace(/logout$/, "login")); });
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
