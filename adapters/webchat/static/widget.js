/* omnirelay web chat widget: <script src="https://HOST/chat/ACCOUNT/widget.js" async></script>
 *
 * One file, no dependencies, no eval, no inline styles or handlers: a page with a strict
 * Content-Security-Policy needs only script-src, style-src and connect-src for HOST.
 * Everything shown is set with textContent (never parsed as HTML), so no visitor or agent text
 * can become markup. The widget lives in a shadow root, so the shop's CSS and ours stay apart.
 * It talks only to HOST: no fonts, images or analytics from anywhere else.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || !script.src) { return; }
  var src = new URL(script.src);
  var match = src.pathname.match(/^(\/chat\/[^/]+)\/widget\.js$/);
  if (!match) { return; }
  var base = src.origin + match[1];
  var wsUrl = (src.protocol === "https:" ? "wss://" : "ws://") + src.host + match[1] + "/ws";
  var storeKey = "omnirelay-chat:" + base;
  if (window["__omnirelayChat:" + base]) { return; }  // loaded twice: one widget
  window["__omnirelayChat:" + base] = true;

  // ------------------------------------------------------------ saved state (this origin)
  function load(name, fallback) {
    try {
      var raw = window.localStorage.getItem(storeKey + ":" + name);
      return raw === null ? fallback : JSON.parse(raw);
    } catch (e) { return fallback; }
  }
  function save(name, value) {
    try { window.localStorage.setItem(storeKey + ":" + name, JSON.stringify(value)); } catch (e) { /* private mode */ }
  }
  var token = load("token", null);
  var profile = load("profile", null);        // {name, email} from the pre-chat form, or {} skipped
  var queue = load("queue", []);              // messages typed while offline: [{id, text}]
  var settings = load("settings", {});        // what the server said last: title, pre_chat_form
  var files = {};                              // client id -> attachments (memory only)

  // ------------------------------------------------------------ DOM
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    if (attrs) { Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); }); }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function clip() {  // a paperclip drawn in SVG: no icon font, no image request
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24"); svg.setAttribute("width", "22"); svg.setAttribute("height", "22");
    svg.setAttribute("aria-hidden", "true"); svg.setAttribute("focusable", "false");
    var path = document.createElementNS(ns, "path");
    path.setAttribute("d", "M16.5 6.5v10a4.5 4.5 0 0 1-9 0V5a3 3 0 0 1 6 0v10.5a1.5 1.5 0 0 1-3 0V6.5");
    path.setAttribute("fill", "none"); path.setAttribute("stroke", "currentColor");
    path.setAttribute("stroke-width", "1.8"); path.setAttribute("stroke-linecap", "round");
    svg.appendChild(path);
    return svg;
  }
  var host = el("div", {"id": "omnirelay-chat", "data-state": "connecting"});
  var root = host.attachShadow ? host.attachShadow({mode: "open"}) : host;
  root.appendChild(el("link", {"rel": "stylesheet", "href": base + "/widget.css"}));

  var bubble = el("button", {"class": "bubble", "type": "button", "aria-expanded": "false",
                             "aria-controls": "omnirelay-panel", "aria-label": "Open chat"});
  bubble.appendChild(el("span", {"class": "bubble-icon", "aria-hidden": "true"}, "\u2709"));
  var panel = el("section", {"class": "panel", "id": "omnirelay-panel", "role": "dialog",
                             "aria-modal": "false", "aria-labelledby": "omnirelay-title", "hidden": ""});
  var header = el("header", {"class": "header"});
  var title = el("h2", {"id": "omnirelay-title", "class": "title"}, settings.title || "Chat with us");
  var close = el("button", {"class": "close", "type": "button", "aria-label": "Close chat"}, "\u00d7");
  header.appendChild(title); header.appendChild(close);
  var status = el("p", {"class": "status", "role": "status", "aria-live": "polite"}, "Connecting\u2026");
  var log = el("ol", {"class": "log", "role": "log", "aria-live": "polite", "aria-label": "Messages",
                      "tabindex": "0"});

  var prechat = el("form", {"class": "prechat", "hidden": "", "aria-label": "Before we start"});
  prechat.appendChild(el("p", {"class": "prechat-intro"}, "Tell us who you are (optional)."));
  var nameLabel = el("label", {"for": "omnirelay-name"}, "Name");
  var nameInput = el("input", {"id": "omnirelay-name", "name": "name", "autocomplete": "name",
                               "maxlength": "100"});
  var emailLabel = el("label", {"for": "omnirelay-email"}, "E-mail");
  var emailInput = el("input", {"id": "omnirelay-email", "name": "email", "type": "email",
                                "autocomplete": "email", "maxlength": "254"});
  var startButton = el("button", {"type": "submit", "class": "start"}, "Start chat");
  var skipButton = el("button", {"type": "button", "class": "skip"}, "Skip");
  [nameLabel, nameInput, emailLabel, emailInput, startButton, skipButton].forEach(function (n) { prechat.appendChild(n); });

  var composer = el("form", {"class": "composer", "aria-label": "Write a message"});
  var textLabel = el("label", {"for": "omnirelay-text", "class": "visually-hidden"}, "Message");
  var text = el("textarea", {"id": "omnirelay-text", "name": "text", "rows": "2",
                             "placeholder": "Write a message\u2026", "maxlength": "4000"});
  var fileLabel = el("label", {"for": "omnirelay-file", "class": "file-label", "title": "Attach a file"});
  fileLabel.appendChild(clip());
  fileLabel.appendChild(el("span", {"class": "visually-hidden"}, "Attach a file"));
  var fileInput = el("input", {"id": "omnirelay-file", "type": "file", "class": "visually-hidden"});
  var send = el("button", {"type": "submit", "class": "send"}, "Send");
  [textLabel, text, fileLabel, fileInput, send].forEach(function (n) { composer.appendChild(n); });

  [header, status, log, prechat, composer].forEach(function (n) { panel.appendChild(n); });
  root.appendChild(bubble); root.appendChild(panel);

  // ------------------------------------------------------------ rendering (text only)
  var shown = {};       // message id or client id -> <li>
  var unreadReplies = []; // reply ids shown while the panel was closed
  var limits = {max_text_chars: 4000, max_file_bytes: 5 * 1024 * 1024};

  function timeOf(iso) {
    var d = iso ? new Date(iso) : new Date();
    return isNaN(d) ? "" : d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
  }
  function renderAttachments(li, attachments) {
    (attachments || []).forEach(function (att) {
      if (!att || typeof att.url !== "string") { return; }
      var url = new URL(att.url, base);
      if (url.origin !== src.origin) { return; }  // only our own links
      var link = el("a", {"href": url.href, "class": "file", "target": "_blank", "rel": "noopener noreferrer",
                          "download": att.filename || "file"}, att.filename || "file");
      if (/^image\/(png|jpeg|gif|webp)$/.test(att.content_type || "")) {
        var img = el("img", {"src": url.href, "alt": att.filename || "image", "class": "thumb"});
        link.textContent = ""; link.appendChild(img);
      }
      li.appendChild(link);
    });
  }
  function render(message, clientId) {
    var mine = message.direction === "inbound";
    var li = (message.id && shown[message.id]) || (clientId && shown[clientId]) || null;
    var fresh = !li;
    if (fresh) { li = el("li"); }
    li.textContent = "";
    li.className = "msg " + (mine ? "me" : "agent");
    li.setAttribute("data-id", message.id || "");
    if (!mine) {
      var who = (message.agent && message.agent.name) || (message.from && message.from.name) || settings.title || "Support";
      li.appendChild(el("span", {"class": "who"}, who));
    } else {
      li.appendChild(el("span", {"class": "visually-hidden"}, "You:"));
    }
    li.appendChild(el("span", {"class": "text"}, message.text || ""));
    renderAttachments(li, message.attachments);
    li.appendChild(el("time", {"class": "when", "datetime": message.sent_at || message.received_at || ""},
                      timeOf(message.sent_at || message.received_at)));
    if (message.id) { shown[message.id] = li; }
    if (clientId && shown[clientId] && shown[clientId] !== li) { shown[clientId].remove(); }
    if (clientId) { delete shown[clientId]; }
    if (fresh) { insertSorted(li, message.id); }
    return li;
  }
  function insertSorted(li, id) {
    var pendingFirst = log.querySelector("li.pending");
    if (id && pendingFirst) { log.insertBefore(li, pendingFirst); } else { log.appendChild(li); }
    log.scrollTop = log.scrollHeight;
  }
  function renderPending(item) {
    var li = shown[item.id];
    if (!li) {
      li = el("li", {"class": "msg me pending", "data-client-id": item.id});
      li.appendChild(el("span", {"class": "visually-hidden"}, "You:"));
      li.appendChild(el("span", {"class": "text"}, item.text || ""));
      ((files[item.id]) || []).forEach(function (f) { li.appendChild(el("span", {"class": "file"}, f.filename)); });
      li.appendChild(el("span", {"class": "note"}, "Not sent yet"));
      shown[item.id] = li;
      log.appendChild(li);
      log.scrollTop = log.scrollHeight;
    }
  }

  // ------------------------------------------------------------ receipts
  var ws = null, online = false, retry = 0, timer = null;
  function sendFrame(frame) {
    if (ws && online) { ws.send(JSON.stringify(frame)); return true; }
    return false;
  }
  function panelOpen() { return !panel.hidden && document.visibilityState === "visible"; }
  function seen(ids) {
    if (!ids.length) { return; }
    if (panelOpen()) { sendFrame({type: "read", ids: ids}); }
    else { unreadReplies = unreadReplies.concat(ids); bubble.classList.add("unread"); }
  }
  function flushRead() {
    if (panelOpen() && unreadReplies.length) {
      sendFrame({type: "read", ids: unreadReplies});
      unreadReplies = [];
      bubble.classList.remove("unread");
    }
  }
  document.addEventListener("visibilitychange", flushRead);

  // ------------------------------------------------------------ connection
  function setState(state, note) {
    host.setAttribute("data-state", state);
    status.textContent = note;
    panel.classList.toggle("offline", state !== "online");
  }
  function connect() {
    clearTimeout(timer);
    setState("connecting", "Connecting\u2026");
    try { ws = new WebSocket(wsUrl); } catch (e) { schedule(); return; }
    ws.onopen = function () {
      ws.send(JSON.stringify({type: "hello", token: token, name: profile && profile.name || null,
                              email: profile && profile.email || null,
                              page_url: location.href, referrer: document.referrer || null}));
    };
    ws.onmessage = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      handle(frame);
    };
    ws.onclose = function () { online = false; ws = null; schedule(); };
    ws.onerror = function () { /* onclose follows */ };
  }
  function schedule() {
    var delay = Math.min(30000, 1000 * Math.pow(2, retry++)) * (0.5 + Math.random() / 2);
    setState("offline", "Offline \u2014 your messages are kept and sent when the connection returns.");
    timer = setTimeout(connect, delay);
  }
  window.addEventListener("online", function () { if (!ws) { retry = 0; connect(); } });
  window.addEventListener("offline", function () {
    // the device lost its network: say so now rather than when a ping times out
    if (!ws) { return; }
    var old = ws; ws = null; online = false;
    old.onclose = null; old.onmessage = null;
    try { old.close(); } catch (e) { /* already closing */ }
    schedule();
  });

  function handle(frame) {
    if (frame.type === "welcome") {
      token = frame.token; save("token", token);
      settings = {title: frame.title, pre_chat_form: !!frame.pre_chat_form}; save("settings", settings);
      title.textContent = frame.title || "Chat with us";
      if (frame.limits) { limits = frame.limits; text.setAttribute("maxlength", String(limits.max_text_chars)); }
      online = true; retry = 0;
      setState("online", "Online");
    } else if (frame.type === "history") {
      var replies = [];
      (frame.messages || []).forEach(function (m) {
        render(m, null);
        if (m.direction === "outbound") { replies.push(m.id); }
      });
      var unacked = (frame.messages || []).filter(function (m) { return m.direction === "outbound" && m.status === "sent"; })
        .map(function (m) { return m.id; });
      if (unacked.length) { sendFrame({type: "ack", ids: unacked}); }
      var unread = (frame.messages || []).filter(function (m) { return m.direction === "outbound" && m.status !== "read"; })
        .map(function (m) { return m.id; });
      seen(unread);
      showPrechat();
      queue.forEach(renderPending);
      flushQueue();
    } else if (frame.type === "message" && frame.message) {
      var m = frame.message;
      render(m, frame.client_id);
      if (frame.client_id) {
        queue = queue.filter(function (q) { return q.id !== frame.client_id; });
        delete files[frame.client_id];
        save("queue", queue);
      }
      if (m.direction === "outbound") {
        sendFrame({type: "ack", ids: [m.id]});
        seen([m.id]);
      }
    } else if (frame.type === "error") {
      if (frame.client_id && frame.code === "invalid") {
        // the server refused it for good (too long, bad file): drop it and say why
        queue = queue.filter(function (q) { return q.id !== frame.client_id; });
        save("queue", queue);
        var li = shown[frame.client_id];
        if (li) {
          li.classList.add("failed");
          var note = li.querySelector(".note");
          if (note) { note.textContent = "Not sent: " + (frame.message || "refused"); }
        }
      } else if (frame.client_id && !retryTimer) {
        // rate limited or the store is busy: the message stays queued and goes again
        retryTimer = setTimeout(function () { retryTimer = null; flushQueue(); },
                                Math.max(1, frame.retry_after || 2) * 1000);
      }
    }
  }
  var flushing = false, retryTimer = null;
  function flushQueue() {
    if (!online || flushing) { return; }
    flushing = true;
    queue.forEach(function (item) {
      var frame = {type: "message", id: item.id, text: item.text};
      if (files[item.id]) { frame.attachments = files[item.id]; }
      sendFrame(frame);
    });
    flushing = false;
  }

  // ------------------------------------------------------------ user actions
  function newId() {
    var bytes = new Uint8Array(12);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }
  function enqueue(body, attachments) {
    var item = {id: newId(), text: body};
    if (attachments) { files[item.id] = attachments; }
    queue.push(item); save("queue", queue);
    renderPending(item);
    if (online) {
      var frame = {type: "message", id: item.id, text: item.text};
      if (attachments) { frame.attachments = attachments; }
      sendFrame(frame);
    }
  }
  composer.addEventListener("submit", function (event) {
    event.preventDefault();
    var body = text.value.trim();
    if (!body) { return; }
    enqueue(body.slice(0, limits.max_text_chars), null);
    text.value = "";
    text.focus();
  });
  text.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      composer.requestSubmit ? composer.requestSubmit() : send.click();
    }
  });
  fileInput.addEventListener("change", function () {
    var file = fileInput.files && fileInput.files[0];
    fileInput.value = "";
    if (!file) { return; }
    if (file.size > limits.max_file_bytes) {
      status.textContent = file.name + " is too large (at most " + Math.round(limits.max_file_bytes / 1048576) + " MB).";
      return;
    }
    var reader = new FileReader();
    reader.onload = function () {
      var data = String(reader.result);
      var comma = data.indexOf(",");
      enqueue(text.value.trim(), [{filename: file.name, content_type: file.type || "application/octet-stream",
                                   content_base64: data.slice(comma + 1)}]);
      text.value = "";
    };
    reader.readAsDataURL(file);
  });
  function showPrechat() {
    var wanted = settings.pre_chat_form && !profile && !log.querySelector("li");
    prechat.hidden = !wanted;
    composer.hidden = !!wanted;
  }
  function finishPrechat(values) {
    profile = values; save("profile", profile);
    prechat.hidden = true; composer.hidden = false;
    if (ws) {  // say hello again, now with the name and e-mail
      var old = ws; ws = null; online = false;
      old.onclose = null; old.onmessage = null;
      try { old.close(); } catch (e) { /* already closing */ }
      retry = 0; connect();
    }
    text.focus();
  }
  prechat.addEventListener("submit", function (event) {
    event.preventDefault();
    if (!emailInput.checkValidity()) { emailInput.reportValidity(); return; }
    finishPrechat({name: nameInput.value.trim() || null, email: emailInput.value.trim() || null});
  });
  skipButton.addEventListener("click", function () { finishPrechat({}); });

  function open() {
    panel.hidden = false;
    bubble.setAttribute("aria-expanded", "true");
    bubble.setAttribute("aria-label", "Close chat");
    (prechat.hidden ? text : nameInput).focus();
    flushRead();
  }
  function shut() {
    panel.hidden = true;
    bubble.setAttribute("aria-expanded", "false");
    bubble.setAttribute("aria-label", "Open chat");
    bubble.focus();
  }
  bubble.addEventListener("click", function () { if (panel.hidden) { open(); } else { shut(); } });
  close.addEventListener("click", shut);
  panel.addEventListener("keydown", function (event) { if (event.key === "Escape") { shut(); } });

  function mount() {
    document.body.appendChild(host);
    if (script.hasAttribute("data-open")) { open(); }
    connect();
  }
  if (document.body) { mount(); } else { document.addEventListener("DOMContentLoaded", mount); }
})();
