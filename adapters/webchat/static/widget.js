/* omnirelay web chat widget: <script src="https://HOST/chat/ACCOUNT/widget.js" async></script>
 *
 * One file, no dependencies, no eval, no inline styles or handlers: a page with a strict
 * Content-Security-Policy needs only script-src, style-src and connect-src for HOST.
 * Everything shown is set with textContent (never parsed as HTML), so no visitor or agent text
 * can become markup. The widget lives in a shadow root, so the shop's CSS and ours stay apart.
 * It talks only to HOST: no fonts, images or analytics from anywhere else.
 * A file waiting to be sent is kept in IndexedDB (text in localStorage, one key per message
 * so the visitor's tabs share the queue), so a reload while offline loses nothing; see
 * "files kept offline" below.
 * It speaks English, Korean or Japanese: the tag's data-language, else the account's
 * language, else the browser's first supported one, else English. The file stays ASCII
 * (\u escapes) so a shop page in EUC-KR or Shift_JIS cannot garble it; the strings in
 * readable form are in docs/webchat.md.
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
  // The queue of messages not yet confirmed is shared by the visitor's tabs: one key per
  // message ("...:q:<client id>", the item with its creation time), so a tab adds and removes
  // only its own and never writes over another's; the order is the items' "at", then id.
  // An item may say "filing": true (its tab is keeping its file in IndexedDB, see keep) or,
  // a moment before its key goes, "failed": {code, message} (refused, or its file lost), so
  // that every tab shows why in the message's place.
  var itemKey = storeKey + ":q:";
  function readQueue() {  // every tab's queued items, in order
    var items = [];
    try {
      for (var i = 0; i < window.localStorage.length; i++) {
        var key = window.localStorage.key(i);
        if (key && key.indexOf(itemKey) === 0) {
          var item = parseItem(window.localStorage.getItem(key));
          if (item && !item.failed) { items.push(item); }
        }
      }
    } catch (e) { /* private mode */ }
    return ordered(items);
  }
  function parseItem(raw) {
    try {
      var item = JSON.parse(raw);
      return item && typeof item.id === "string" && typeof item.at === "number" ? item : null;
    } catch (e) { return null; }
  }
  function ordered(items) {
    return items.sort(function (a, b) { return a.at - b.at || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0); });
  }
  function putItem(item) {
    try { window.localStorage.setItem(itemKey + item.id, JSON.stringify(item)); return true; } catch (e) { return false; }
  }
  function isQueued(id) {  // still in the shared queue (no tab had it confirmed)
    try { return window.localStorage.getItem(itemKey + id) !== null; } catch (e) { return false; }
  }
  function removeItem(id) {
    try { window.localStorage.removeItem(itemKey + id); } catch (e) { /* private mode */ }
  }
  function migrateQueue() {  // the one-key queue of earlier versions: each item gets its key
    var old = load("queue", null);
    if (!old) { return []; }
    var left = (Array.isArray(old) ? old : []).filter(function (item) {
      return item && typeof item.id === "string" && !putItem({id: item.id, text: item.text || "",
        at: typeof item.at === "number" ? item.at : 0, files: item.files});
    });
    if (!left.length) {
      try { window.localStorage.removeItem(storeKey + ":queue"); } catch (e) { /* private mode */ }
    }
    return left;  // not written (storage full): kept in the old key, queued from memory
  }
  var unwritten = {};                         // client id -> true: an old queue's item storage could not take
  var token = load("token", null);
  var profile = load("profile", null);        // {name, email} from the pre-chat form, or {} skipped
  var queue = (function () {                  // messages not yet confirmed, every tab's, in order
    var left = migrateQueue(), items = readQueue();
    left.forEach(function (item) {
      unwritten[item.id] = true;
      if (!items.some(function (q) { return q.id === item.id; })) { items.push(item); }
    });
    return ordered(items);
  })();
  var settings = load("settings", {});        // what the server said last: title, pre_chat_form, language, limits
  var files = {};                              // client id -> attachments as sent (base64), in memory

  // ------------------------------------------------------------ languages
  var STRINGS = {
    en: {
      title: "Chat with us",
      open: "Open chat",
      close: "Close chat",
      messages: "Messages",
      connecting: "Connecting\u2026",
      online: "Online",
      offline: "Offline \u2014 your messages are kept and sent when the connection returns.",
      prechat: "Before we start",
      intro: "Tell us who you are (optional).",
      name: "Name",
      email: "E-mail",
      start: "Start chat",
      skip: "Skip",
      composer: "Write a message",
      message: "Message",
      placeholder: "Write a message\u2026",
      attach: "Attach a file",
      send: "Send",
      support: "Support",
      you: "You:",
      pending: "Not sent yet",
      refused: "Not sent: {reason}",
      tooLarge: "{name} is too large (at most {mb} MB).",
      offlineFull: "{name} was not attached: at most {files} files ({mb} MB) can wait to be sent. Attach it again once your messages are sent.",
      unsaved: "Not sent yet \u2014 this file is lost if you reload the page",
      fileLost: "Not sent: {name} could not be kept. Please attach it again.",
      file: "file",
      image: "image"
    },
    ko: {
      title: "\ucc44\ud305 \uc0c1\ub2f4",
      open: "\ucc44\ud305 \uc0c1\ub2f4 \uc5f4\uae30",
      close: "\ucc44\ud305 \uc0c1\ub2f4 \ub2eb\uae30",
      messages: "\uba54\uc2dc\uc9c0",
      connecting: "\uc5f0\uacb0 \uc911\u2026",
      online: "\uc628\ub77c\uc778",
      offline: "\uc624\ud504\ub77c\uc778 \u2014 \uc791\uc131\ud558\uc2e0 \uba54\uc2dc\uc9c0\ub294 \ubcf4\uad00\ud574 \ub450\uc5c8\ub2e4\uac00 \ub2e4\uc2dc \uc5f0\uacb0\ub418\uba74 \ubcf4\ub0b4 \ub4dc\ub9bd\ub2c8\ub2e4.",
      prechat: "\uc0c1\ub2f4\uc744 \uc2dc\uc791\ud558\uae30 \uc804\uc5d0",
      intro: "\uc131\ud568\uacfc \uc774\uba54\uc77c\uc744 \ub0a8\uaca8 \uc8fc\uc138\uc694(\uc120\ud0dd \uc0ac\ud56d).",
      name: "\uc774\ub984",
      email: "\uc774\uba54\uc77c",
      start: "\uc0c1\ub2f4 \uc2dc\uc791\ud558\uae30",
      skip: "\uac74\ub108\ub6f0\uae30",
      composer: "\uba54\uc2dc\uc9c0 \uc791\uc131",
      message: "\uba54\uc2dc\uc9c0",
      placeholder: "\uba54\uc2dc\uc9c0\ub97c \uc785\ub825\ud558\uc138\uc694\u2026",
      attach: "\ud30c\uc77c \ucca8\ubd80",
      send: "\ubcf4\ub0b4\uae30",
      support: "\uc0c1\ub2f4\uc6d0",
      you: "\ub098:",
      pending: "\uc804\uc1a1 \ub300\uae30 \uc911",
      refused: "\ubcf4\ub0b4\uc9c0 \ubabb\ud588\uc2b5\ub2c8\ub2e4",
      tooLarge: "{name} \ud30c\uc77c\uc774 \ub108\ubb34 \ud07d\ub2c8\ub2e4(\ucd5c\ub300 {mb}MB).",
      offlineFull: "{name} \ud30c\uc77c\uc744 \ucca8\ubd80\ud558\uc9c0 \ubabb\ud588\uc2b5\ub2c8\ub2e4. \uc804\uc1a1\uc744 \uae30\ub2e4\ub9ac\ub294 \ud30c\uc77c\uc740 \ucd5c\ub300 {files}\uac1c({mb}MB)\uae4c\uc9c0 \ubcf4\uad00\ub429\ub2c8\ub2e4. \uba54\uc2dc\uc9c0\uac00 \uc804\uc1a1\ub41c \ub4a4 \ub2e4\uc2dc \ucca8\ubd80\ud574 \uc8fc\uc138\uc694.",
      unsaved: "\uc804\uc1a1 \ub300\uae30 \uc911 \u2014 \ud398\uc774\uc9c0\ub97c \uc0c8\ub85c \uace0\uce58\uba74 \uc774 \ud30c\uc77c\uc740 \uc0ac\ub77c\uc9d1\ub2c8\ub2e4",
      fileLost: "\ubcf4\ub0b4\uc9c0 \ubabb\ud588\uc2b5\ub2c8\ub2e4: {name} \ud30c\uc77c\uc744 \ubcf4\uad00\ud558\uc9c0 \ubabb\ud588\uc2b5\ub2c8\ub2e4. \ub2e4\uc2dc \ucca8\ubd80\ud574 \uc8fc\uc138\uc694.",
      file: "\ud30c\uc77c",
      image: "\uc774\ubbf8\uc9c0"
    },
    ja: {
      title: "\u30c1\u30e3\u30c3\u30c8\u3067\u304a\u554f\u3044\u5408\u308f\u305b",
      open: "\u30c1\u30e3\u30c3\u30c8\u3092\u958b\u304f",
      close: "\u30c1\u30e3\u30c3\u30c8\u3092\u9589\u3058\u308b",
      messages: "\u30e1\u30c3\u30bb\u30fc\u30b8",
      connecting: "\u63a5\u7d9a\u4e2d\u2026",
      online: "\u30aa\u30f3\u30e9\u30a4\u30f3",
      offline: "\u30aa\u30d5\u30e9\u30a4\u30f3 \u2014 \u30e1\u30c3\u30bb\u30fc\u30b8\u306f\u4fdd\u5b58\u3055\u308c\u3001\u63a5\u7d9a\u304c\u623b\u308a\u3057\u3060\u3044\u9001\u4fe1\u3055\u308c\u307e\u3059\u3002",
      prechat: "\u30c1\u30e3\u30c3\u30c8\u3092\u59cb\u3081\u308b\u524d\u306b",
      intro: "\u304a\u540d\u524d\u3068\u30e1\u30fc\u30eb\u30a2\u30c9\u30ec\u30b9\u3092\u3054\u5165\u529b\u304f\u3060\u3055\u3044\uff08\u4efb\u610f\uff09\u3002",
      name: "\u304a\u540d\u524d",
      email: "\u30e1\u30fc\u30eb\u30a2\u30c9\u30ec\u30b9",
      start: "\u30c1\u30e3\u30c3\u30c8\u3092\u59cb\u3081\u308b",
      skip: "\u30b9\u30ad\u30c3\u30d7",
      composer: "\u30e1\u30c3\u30bb\u30fc\u30b8\u306e\u5165\u529b",
      message: "\u30e1\u30c3\u30bb\u30fc\u30b8",
      placeholder: "\u30e1\u30c3\u30bb\u30fc\u30b8\u3092\u5165\u529b\u2026",
      attach: "\u30d5\u30a1\u30a4\u30eb\u3092\u6dfb\u4ed8",
      send: "\u9001\u4fe1",
      support: "\u62c5\u5f53\u8005",
      you: "\u3042\u306a\u305f\uff1a",
      pending: "\u672a\u9001\u4fe1",
      refused: "\u9001\u4fe1\u3067\u304d\u307e\u305b\u3093\u3067\u3057\u305f",
      tooLarge: "{name} \u306f\u30b5\u30a4\u30ba\u304c\u5927\u304d\u3059\u304e\u307e\u3059\uff08\u6700\u5927 {mb} MB\uff09\u3002",
      offlineFull: "{name} \u3092\u6dfb\u4ed8\u3067\u304d\u307e\u305b\u3093\u3067\u3057\u305f\u3002\u9001\u4fe1\u5f85\u3061\u306b\u3067\u304d\u308b\u30d5\u30a1\u30a4\u30eb\u306f\u6700\u5927 {files} \u4ef6\uff08{mb} MB\uff09\u307e\u3067\u3067\u3059\u3002\u30e1\u30c3\u30bb\u30fc\u30b8\u304c\u9001\u4fe1\u3055\u308c\u3066\u304b\u3089\u3001\u3082\u3046\u4e00\u5ea6\u6dfb\u4ed8\u3057\u3066\u304f\u3060\u3055\u3044\u3002",
      unsaved: "\u672a\u9001\u4fe1 \u2014 \u30da\u30fc\u30b8\u3092\u518d\u8aad\u307f\u8fbc\u307f\u3059\u308b\u3068\u3001\u3053\u306e\u30d5\u30a1\u30a4\u30eb\u306f\u5931\u308f\u308c\u307e\u3059",
      fileLost: "\u9001\u4fe1\u3067\u304d\u307e\u305b\u3093\u3067\u3057\u305f\uff1a{name} \u3092\u4fdd\u5b58\u3067\u304d\u307e\u305b\u3093\u3067\u3057\u305f\u3002\u3082\u3046\u4e00\u5ea6\u6dfb\u4ed8\u3057\u3066\u304f\u3060\u3055\u3044\u3002",
      file: "\u30d5\u30a1\u30a4\u30eb",
      image: "\u753b\u50cf"
    }
  };
  function supported(tag) {  // "ko-KR" -> "ko"; "auto", "de-DE" or nothing -> null
    var primary = String(tag || "").toLowerCase().split(/[-_]/)[0];
    return Object.prototype.hasOwnProperty.call(STRINGS, primary) ? primary : null;
  }
  function chooseLanguage() {
    var chosen = supported(script.getAttribute("data-language")) || supported(settings.language);
    var wanted = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language];
    for (var i = 0; !chosen && i < wanted.length; i++) { chosen = supported(wanted[i]); }
    return chosen || "en";
  }
  var lang = chooseLanguage();
  var t = STRINGS[lang];
  function fill(template, values) {  // "{name}" -> values.name, as text (no $-patterns)
    return template.replace(/\{(\w+)\}/g, function (all, key) { return key in values ? String(values[key]) : all; });
  }

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
  // A node's data-i18n names the string it shows, data-i18n-label / -placeholder / -title
  // the one in that attribute: localize() sets them all again when the language changes.
  function setText(node, value) {  // only changes: the log and the status are live regions
    if (node.textContent !== value) { node.textContent = value; }
  }
  function tr(node, key) { node.setAttribute("data-i18n", key); setText(node, t[key]); return node; }
  var host = el("div", {"id": "omnirelay-chat", "data-state": "connecting"});
  var root = host.attachShadow ? host.attachShadow({mode: "open"}) : host;
  root.appendChild(el("link", {"rel": "stylesheet", "href": base + "/widget.css"}));
  var widget = el("div", {"class": "widget", "lang": lang});  // screen readers pronounce by it

  var bubble = el("button", {"class": "bubble", "type": "button", "aria-expanded": "false",
                             "aria-controls": "omnirelay-panel", "data-i18n-label": "open"});
  bubble.appendChild(el("span", {"class": "bubble-icon", "aria-hidden": "true"}, "\u2709"));
  var panel = el("section", {"class": "panel", "id": "omnirelay-panel", "role": "dialog",
                             "aria-modal": "false", "aria-labelledby": "omnirelay-title", "hidden": ""});
  var header = el("header", {"class": "header"});
  var title = el("h2", {"id": "omnirelay-title", "class": "title"});  // the account's title, else t.title
  var close = el("button", {"class": "close", "type": "button", "data-i18n-label": "close"}, "\u00d7");
  header.appendChild(title); header.appendChild(close);
  var status = tr(el("p", {"class": "status", "role": "status", "aria-live": "polite"}), "connecting");
  // Notes about what the visitor just did (a file too large, or over what may wait offline):
  // a line of its own, so the status line's next change does not wipe them.
  var notice = el("p", {"class": "notice", "role": "alert", "hidden": ""});
  var log = el("ol", {"class": "log", "role": "log", "aria-live": "polite", "data-i18n-label": "messages",
                      "tabindex": "0"});

  var prechat = el("form", {"class": "prechat", "hidden": "", "data-i18n-label": "prechat"});
  prechat.appendChild(tr(el("p", {"class": "prechat-intro"}), "intro"));
  var nameLabel = tr(el("label", {"for": "omnirelay-name"}), "name");
  var nameInput = el("input", {"id": "omnirelay-name", "name": "name", "autocomplete": "name",
                               "maxlength": "100"});
  var emailLabel = tr(el("label", {"for": "omnirelay-email"}), "email");
  var emailInput = el("input", {"id": "omnirelay-email", "name": "email", "type": "email",
                                "autocomplete": "email", "maxlength": "254"});
  var startButton = tr(el("button", {"type": "submit", "class": "start"}), "start");
  var skipButton = tr(el("button", {"type": "button", "class": "skip"}), "skip");
  [nameLabel, nameInput, emailLabel, emailInput, startButton, skipButton].forEach(function (n) { prechat.appendChild(n); });

  var composer = el("form", {"class": "composer", "data-i18n-label": "composer"});
  var textLabel = tr(el("label", {"for": "omnirelay-text", "class": "visually-hidden"}), "message");
  var text = el("textarea", {"id": "omnirelay-text", "name": "text", "rows": "2",
                             "data-i18n-placeholder": "placeholder", "maxlength": "4000"});
  var fileLabel = el("label", {"for": "omnirelay-file", "class": "file-label", "data-i18n-title": "attach"});
  fileLabel.appendChild(clip());
  fileLabel.appendChild(tr(el("span", {"class": "visually-hidden"}), "attach"));
  var fileInput = el("input", {"id": "omnirelay-file", "type": "file", "class": "visually-hidden"});
  var send = tr(el("button", {"type": "submit", "class": "send"}), "send");
  [textLabel, text, fileLabel, fileInput, send].forEach(function (n) { composer.appendChild(n); });

  [header, status, notice, log, prechat, composer].forEach(function (n) { panel.appendChild(n); });
  widget.appendChild(bubble); widget.appendChild(panel);
  root.appendChild(widget);

  var ATTRIBUTES = {"data-i18n-label": "aria-label", "data-i18n-placeholder": "placeholder",
                    "data-i18n-title": "title"};
  function localize() {
    lang = chooseLanguage(); t = STRINGS[lang];
    widget.setAttribute("lang", lang);
    setText(title, settings.title || t.title);
    Array.prototype.forEach.call(root.querySelectorAll("[data-i18n]"), function (node) {
      setText(node, t[node.getAttribute("data-i18n")]);
    });
    Object.keys(ATTRIBUTES).forEach(function (marker) {
      Array.prototype.forEach.call(root.querySelectorAll("[" + marker + "]"), function (node) {
        node.setAttribute(ATTRIBUTES[marker], t[node.getAttribute(marker)]);
      });
    });
  }
  localize();

  // ------------------------------------------------------------ rendering (text only)
  var shown = {};       // message id or client id -> <li>
  var unreadReplies = []; // reply ids shown while the panel was closed
  var limits = settings.limits || {max_text_chars: 4000, max_file_bytes: 5 * 1024 * 1024};

  function timeOf(iso) {
    var d = iso ? new Date(iso) : new Date();
    return isNaN(d) ? "" : d.toLocaleTimeString(lang, {hour: "2-digit", minute: "2-digit"});
  }
  function renderAttachments(li, attachments) {
    (attachments || []).forEach(function (att) {
      if (!att || typeof att.url !== "string") { return; }
      var url = new URL(att.url, base);
      if (url.origin !== src.origin) { return; }  // only our own links
      var link = el("a", {"href": url.href, "class": "file", "target": "_blank", "rel": "noopener noreferrer",
                          "download": att.filename || t.file}, att.filename || t.file);
      if (/^image\/(png|jpeg|gif|webp)$/.test(att.content_type || "")) {
        var img = el("img", {"src": url.href, "alt": att.filename || t.image, "class": "thumb"});
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
      // A reply's "from" is the account, named in English when it has no title: a reply
      // without an agent is signed with the configured title, else "Support" translated.
      var who = (message.agent && message.agent.name) || settings.title;
      li.appendChild(who ? el("span", {"class": "who"}, who) : tr(el("span", {"class": "who"}), "support"));
    } else {
      li.appendChild(tr(el("span", {"class": "visually-hidden"}), "you"));
    }
    li.appendChild(el("span", {"class": "text"}, message.text || ""));
    renderAttachments(li, message.attachments);
    li.appendChild(el("time", {"class": "when", "datetime": message.sent_at || message.received_at || ""},
                      timeOf(message.sent_at || message.received_at)));
    if (message.id) { shown[message.id] = li; }
    if (clientId && shown[clientId] && shown[clientId] !== li) { shown[clientId].remove(); }
    if (clientId) { delete shown[clientId]; }
    // A waiting message confirmed in its place stays there, unless a message stored after
    // it is already shown before it (this tab heard of that one first).
    if (fresh || (message.id && misplaced(li, message.id))) { insertSorted(li, message.id); }
    return li;
  }
  // Stored messages show in the order of their ids (they sort by the time they were stored,
  // as the history does); a waiting one keeps its place among them, as written. A message
  // goes right after the last stored one before it: a tab may hear of a message before its
  // history brings an older one, whose waiting <li> another tab's confirmation removed.
  function storedBefore(id) {  // the last <li> of a stored message older than id, or null
    var lis = log.querySelectorAll("li.msg:not(.pending)");
    for (var i = lis.length - 1; i >= 0; i--) {
      var other = lis[i].getAttribute("data-id");
      if (other && other < id) { return lis[i]; }
    }
    return null;
  }
  function misplaced(li, id) {
    var lis = log.querySelectorAll("li.msg:not(.pending)"), after = false;
    for (var i = 0; i < lis.length; i++) {
      var other = lis[i].getAttribute("data-id");
      if (lis[i] === li) { after = true; } else if (other && (after ? other < id : other > id)) { return true; }
    }
    return false;
  }
  function insertSorted(li, id) {
    if (li.parentNode) { li.remove(); }
    if (!id) { log.appendChild(li); } else {
      var before = storedBefore(id);
      log.insertBefore(li, before ? before.nextSibling : log.firstChild);
    }
    log.scrollTop = log.scrollHeight;
  }
  function renderPending(item) {
    var li = shown[item.id];
    if (!li) {
      li = el("li", {"class": "msg me pending", "data-client-id": item.id});
      li.appendChild(tr(el("span", {"class": "visually-hidden"}), "you"));
      li.appendChild(el("span", {"class": "text"}, item.text || ""));
      (item.files || []).forEach(function (f) { li.appendChild(el("span", {"class": "file"}, f.filename)); });
      li.appendChild(tr(el("span", {"class": "note"}), "pending"));
      shown[item.id] = li;
      log.appendChild(li);
      log.scrollTop = log.scrollHeight;
    }
    return li;
  }
  function noteOn(li, message, failed) {  // a pending message's own note, instead of "Not sent yet"
    if (!li) { return; }
    if (failed) { li.classList.add("failed"); }
    var note = li.querySelector(".note");
    if (note) { note.removeAttribute("data-i18n"); note.textContent = message; }
  }
  function notify(message) {
    setText(notice, message || "");
    notice.hidden = !message;
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
  function setState(state) {
    host.setAttribute("data-state", state);
    tr(status, state);
    panel.classList.toggle("offline", state !== "online");
  }
  function connect() {
    clearTimeout(timer);
    setState("connecting");
    try { ws = new WebSocket(wsUrl); } catch (e) { schedule(); return; }
    ws.onopen = function () {
      ws.send(JSON.stringify({type: "hello", token: token, name: profile && profile.name || null,
                              email: profile && profile.email || null,
                              page_url: location.href, referrer: document.referrer || null,
                              language: (navigator.languages && navigator.languages[0]) ||
                                        navigator.language || null}));
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
    setState("offline");
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
      if (frame.limits) { limits = frame.limits; text.setAttribute("maxlength", String(limits.max_text_chars)); }
      settings = {title: frame.title || null, pre_chat_form: !!frame.pre_chat_form,
                  language: frame.language || "auto", limits: limits};
      save("settings", settings);
      localize();
      online = true; retry = 0;
      setState("online");
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
      if (frame.client_id) { settle(frame.client_id); }
      if (m.direction === "outbound") {
        sendFrame({type: "ack", ids: [m.id]});
        seen([m.id]);
      }
    } else if (frame.type === "error") {
      if (frame.client_id && frame.code === "invalid") {
        // the server refused it for good (too long, bad file): drop it and say why, in every tab
        fail(frame.client_id, {code: "invalid", message: frame.message});
      } else if (frame.client_id && !retryTimer) {
        // rate limited or the store is busy: the message stays queued and goes again
        retryTimer = setTimeout(function () { retryTimer = null; flushQueue(); },
                                Math.max(1, frame.retry_after || 2) * 1000);
      }
    }
  }
  var flushing = false, retryTimer = null;
  function flushQueue() {
    // Not before the files kept offline are read back: each goes in its place in the queue.
    if (!online || flushing || restoring) { return; }
    flushing = true;
    queue.forEach(sendItem);  // another tab's too: the server stores a client id once
    flushing = false;
  }
  function sendItem(item) {
    if (item.files && !files[item.id]) { return; }  // its file is still being read back: not without it
    var frame = {type: "message", id: item.id, text: item.text};
    // How long it waited here (offline): the server dates it back by that much. A duration,
    // so a device clock that is off changes nothing.
    var waited = item.at ? Date.now() - item.at : 0;
    if (waited > 1000) { frame.waited_ms = Math.round(waited); }
    if (files[item.id]) { frame.attachments = files[item.id]; }
    sendFrame(frame);
  }

  // ------------------------------------------------------------ files kept offline (IndexedDB)
  // A file waiting to be sent is kept in this origin's IndexedDB (binary, and more than
  // localStorage holds) under [widget, visitor, client id]; its place in the order is its
  // item's in the shared queue (localStorage). The item is written first, saying this tab is
  // keeping its file ("filing"), and again once the file is kept, so a tab that sees it then
  // can read its bytes; a tab closed in between leaves a message whose file is lost, which
  // every tab says (awaitFile), never one that vanishes. So a reload while offline shows it
  // pending again and sends it in its place when the connection returns; the server stores a
  // client id once, so sending again after a failure that may have reached it, or from two
  // tabs, is harmless.
  // At most KEEP_FILES files and KEEP_BYTES bytes wait per visitor (all tabs together); an
  // entry goes once the server confirmed its message (in any tab), and at start an entry
  // older than KEEP_DAYS, of another visitor, or that no tab's queued item names (once older
  // than GRACE_MS: an earlier version's tab may have kept it and be about to queue it).
  // Without IndexedDB (some private modes) a file waits in memory only, and its note says a
  // reload loses it.
  var KEEP_FILES = 10, KEEP_BYTES = 25 * 1048576, KEEP_DAYS = 7, GRACE_MS = 60000;
  var HANDOVER_MS = 2000; // another tab's new message is sent from here too if still queued by then
  var DB_NAME = "omnirelay-chat", DB_STORE = "files";
  var kept = {};          // client id -> {visitor, saving: Promise<bool>} of entries in IndexedDB
  var unkept = {};        // client id -> true: this tab's file IndexedDB did not keep (memory only)
  var settled = {};       // client id -> true: confirmed or refused, here or in another tab
  var restoring = true;   // reading entries back: the queue waits
  var reading = {files: 0, bytes: 0};  // files being read from the visitor's disk
  var opening = null;
  var locks = window.navigator.locks || null;  // Web Locks (https pages): see awaitFile
  function fileLock(id) { return storeKey + ":file:" + id; }
  function ignore() { /* refused (an opaque origin): other tabs wait GRACE_MS instead */ }
  function database() {   // Promise of the database, or of null when this browser has none
    if (!opening) {
      opening = new Promise(function (resolve) {
        try {
          var request = window.indexedDB.open(DB_NAME, 1);
          request.onupgradeneeded = function () {
            request.result.createObjectStore(DB_STORE, {keyPath: ["widget", "visitor", "id"]});
          };
          request.onsuccess = function () { resolve(request.result); };
          request.onerror = function (event) { event.preventDefault(); resolve(null); };
        } catch (e) { resolve(null); }
      });
    }
    return opening;
  }
  function transact(work) {  // work(objectStore) in one read-write transaction: Promise of whether it committed
    return database().then(function (db) {
      if (!db) { return false; }
      return new Promise(function (resolve) {
        try {
          var tx = db.transaction(DB_STORE, "readwrite");
          tx.oncomplete = function () { resolve(true); };
          tx.onabort = function () { resolve(false); };  // a failed request (quota exceeded, storage refused)
          work(tx.objectStore(DB_STORE));
        } catch (e) { resolve(false); }
      });
    });
  }
  function visitorId() { return token ? String(token).split(".")[0] : ""; }  // "" before the first welcome
  function keep(item, file) {
    var visitor = visitorId();
    var saving = transact(function (store) {
      store.put({widget: base, visitor: visitor, id: item.id, at: item.at,
                 files: [{filename: file.filename, content_type: file.content_type, data: file.data}]});
    });
    kept[item.id] = {visitor: visitor, saving: saving};
    function finish(saved) {
      if (!queued(item.id)) { return; }  // confirmed meanwhile
      if (!saved) { unkept[item.id] = true; noteOn(shown[item.id], t.unsaved, false); }
      putItem(item);  // the file is kept (or only here): other tabs read it or leave it to this one
    }
    // The key first, saying the file is being kept: a tab closed before IndexedDB has the file
    // leaves a message every tab shows as lost, never one that vanishes. Then the file's lock,
    // held until the key is written again; once granted, the key says so ("locked"), and only
    // then may another tab take the lock as a sign that this one is gone (a lock request is
    // granted asynchronously: asked for before this tab's request is registered, it would be
    // granted at once while this tab is still keeping the file).
    putItem({id: item.id, text: item.text, at: item.at, files: item.files, filing: true});
    if (!locks) { saving.then(finish); return; }
    var granted = false;
    locks.request(fileLock(item.id), function () {
      granted = true;
      if (queued(item.id)) {
        putItem({id: item.id, text: item.text, at: item.at, files: item.files, filing: true, locked: true});
      }
      return saving.then(finish);
    }).then(null, function () { if (!granted) { saving.then(finish); } });
  }
  function forget(id) {  // the server has it (or refused it for good): its entry goes, whichever tab kept it
    var entry = kept[id] || {visitor: visitorId(), saving: Promise.resolve(true)};
    delete kept[id];
    entry.saving.then(function (saved) {
      if (saved) { transact(function (store) { store["delete"]([base, entry.visitor, id]); }); }
    });
  }
  function queued(id) {
    for (var i = 0; i < queue.length; i++) { if (queue[i].id === id) { return queue[i]; } }
    return null;
  }
  function settle(id) {  // confirmed or refused for good: out of every tab's queue
    var item = queued(id);
    settled[id] = true;
    queue = queue.filter(function (q) { return q.id !== id; });
    delete files[id]; delete unkept[id];
    removeItem(id);
    if (kept[id] || (item && item.files)) { forget(id); }
  }
  function failureText(item, failure) {
    if (failure.code === "file_lost") {
      return fill(t.fileLost, {name: (item && item.files || []).map(function (f) { return f.filename; }).join(", ")});
    }
    // The server's reason is English: shown as it is only to English visitors.
    return fill(t.refused, {reason: failure.message || "refused"});
  }
  function fail(id, failure) {  // not sent, for good (refused, or its file lost): say why in every tab
    var item = queued(id);
    // The key says why before it goes: every other tab's storage event shows it in its place.
    if (item && isQueued(id)) {
      putItem({id: id, text: item.text, at: item.at, files: item.files, failed: failure});
    }
    var li = shown[id] || (item ? renderPending(item) : null);
    settle(id);
    noteOn(li, failureText(item, failure), true);
  }
  // Another tab is keeping this message's file (its key says "filing"): it stays waiting here
  // until that tab writes the key again, the file kept. If that tab goes first (closed or
  // reloaded before IndexedDB had the file), the file is lost and every tab says so. Web Locks
  // tell: the keeping tab holds the file's lock until it wrote the key again, so asking for
  // that lock is granted once it did or once that tab is gone. Without them (a page not on
  // https, or the lock refused), GRACE_MS after the message was written.
  function awaitFile(item) {
    function gone(byClock) {
      var now = null;
      try { now = parseItem(window.localStorage.getItem(itemKey + item.id)); } catch (e) { /* private mode */ }
      if (byClock === true && locks && now && now.locked) { return; }  // its lock decides
      if (queued(item.id) && !files[item.id] && now && now.filing && !now.failed) {
        fail(item.id, {code: "file_lost"});
      }
    }
    function later() { setTimeout(function () { gone(true); }, Math.max(0, item.at + GRACE_MS - Date.now())); }
    // Not locked yet: that tab may still be asking for the lock, or closed before it had it.
    if (locks && item.locked) { locks.request(fileLock(item.id), gone).then(null, later); } else { later(); }
  }
  function filesOf(entry) {
    return entry.files.map(function (f) {
      return {filename: f.filename, content_type: f.content_type, content_base64: base64(f.data)};
    });
  }
  function readBack(item) {  // another tab's file, kept before its item was queued
    var visitor = visitorId();
    transact(function (store) {
      var request = store.get([base, visitor, item.id]);
      request.onsuccess = function () {
        var entry = request.result;
        if (entry && queued(item.id) && !files[item.id]) {
          files[item.id] = filesOf(entry);
          kept[item.id] = {visitor: entry.visitor, saving: Promise.resolve(true)};
        }
      };
    });
  }
  function dropPending(id) {  // gone from the queue elsewhere: this tab shows it no more as waiting
    var li = shown[id];
    if (li && li.classList.contains("pending") && !li.classList.contains("failed")) {
      li.remove();
      delete shown[id];
    }
  }
  // Another tab queued a message, or one left the queue (confirmed or refused there).
  window.addEventListener("storage", function (event) {
    if (!event.key || event.key.indexOf(itemKey) !== 0) { return; }
    var id = event.key.slice(itemKey.length), item = queued(id);
    if (event.newValue === null) {
      if (!item) { return; }
      if (unkept[id] && !settled[id]) { putItem(item); return; }  // its file is only here: it stays
      settled[id] = true;
      queue = queue.filter(function (q) { return q.id !== id; });
      delete files[id]; delete kept[id];
      dropPending(id);
      return;
    }
    var added = parseItem(event.newValue);
    if (!added || added.id !== id) { return; }
    if (added.failed) {  // refused, or its file lost, in another tab: said here too
      if (!item && !shown[id]) { return; }
      var li = shown[id] || renderPending(item);
      settled[id] = true;
      queue = queue.filter(function (q) { return q.id !== id; });
      delete files[id]; delete kept[id]; delete unkept[id];
      noteOn(li, failureText(item || added, added.failed), true);
      return;
    }
    if (item) {  // written again by its tab, the file now kept: read it from there
      if (item.filing && !added.filing) { delete item.filing; readBack(item); }
      else if (item.filing && added.locked && !item.locked) { item.locked = true; awaitFile(item); }
      return;
    }
    if (settled[id]) { return; }
    queue.push(added); ordered(queue);
    renderPending(added);
    if (queue[queue.length - 1] !== added) {  // written earlier than this tab's last: in its place
      queue.forEach(function (q) {
        if (shown[q.id] && shown[q.id].classList.contains("pending")) { log.appendChild(shown[q.id]); }
      });
    }
    if (added.files) { if (added.filing) { awaitFile(added); } else { readBack(added); } }
    // Its tab sends it when it can; if that tab is offline or closed and this one is online,
    // this one does (the server confirms it to every tab once, and stores it once).
    setTimeout(function () {
      var still = queued(id);
      if (still && online && !restoring) { sendItem(still); }
    }, HANDOVER_MS);
  });
  function restore() {
    var visitor = visitorId(), now = Date.now(), oldest = now - KEEP_DAYS * 86400000;
    transact(function (store) {
      // this widget's entries: [base] sorts before every [base, visitor, id], and [base, []] after
      var cursor = store.openCursor(IDBKeyRange.bound([base], [base, []]));
      cursor.onsuccess = function () {
        var at = cursor.result;
        if (!at) { return; }
        var entry = at.value;
        // Named by a queued item of any tab, asked now: another tab may have queued it since.
        var named = !!queued(entry.id) || isQueued(entry.id);
        if ((entry.visitor && entry.visitor !== visitor) || !(entry.at >= oldest) ||
            (!named && !(entry.at > now - GRACE_MS))) {
          at["delete"]();
        } else if (named) {
          files[entry.id] = filesOf(entry);
          kept[entry.id] = {visitor: entry.visitor, saving: Promise.resolve(true)};
        }
        at["continue"]();
      };
    }).then(function () {
      // A queued file whose bytes are not here (no IndexedDB then, or cleared): say so, never
      // drop it silently; unless another tab had it confirmed meanwhile (its entry went).
      queue.filter(function (item) { return item.files && !files[item.id]; }).forEach(function (item) {
        if (!unwritten[item.id] && !isQueued(item.id)) {
          queue = queue.filter(function (q) { return q.id !== item.id; });
          settled[item.id] = true; dropPending(item.id);
          return;
        }
        if (item.filing) { awaitFile(item); return; }  // its tab may still be keeping the file
        fail(item.id, {code: "file_lost"});
      });
      restoring = false;
      flushQueue();
    });
  }
  function base64(buffer) {
    var bytes = new Uint8Array(buffer), parts = [];
    for (var i = 0; i < bytes.length; i += 0x8000) {
      parts.push(String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000)));
    }
    return window.btoa(parts.join(""));
  }

  // ------------------------------------------------------------ user actions
  function newId() {
    var bytes = new Uint8Array(12);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }
  function enqueue(body, file) {
    // After every message queued so far (a clock that went back, two in one millisecond).
    var last = queue.length ? queue[queue.length - 1].at + 1 : 0;
    var item = {id: newId(), text: body, at: Math.max(Date.now(), last)};
    queue.push(item);
    if (file) {
      item.files = [{filename: file.filename, size: file.data.byteLength}];
      files[item.id] = [{filename: file.filename, content_type: file.content_type,
                         content_base64: base64(file.data)}];
      keep(item, file);  // its key, then the file
    } else {
      putItem(item);
    }
    notify("");
    renderPending(item);
    if (online && !restoring) { sendItem(item); }
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
      notify(fill(t.tooLarge, {name: file.name, mb: Math.round(limits.max_file_bytes / 1048576)}));
      return;
    }
    // What may wait per visitor: the files queued and those still being read.
    var waiting = queue.filter(function (q) { return q.files; });
    var bytes = waiting.reduce(function (sum, q) {
      return sum + q.files.reduce(function (s, f) { return s + (f.size || 0); }, 0);
    }, reading.bytes);
    if (waiting.length + reading.files >= KEEP_FILES || bytes + file.size > KEEP_BYTES) {
      notify(fill(t.offlineFull, {name: file.name, files: KEEP_FILES, mb: KEEP_BYTES / 1048576}));
      return;
    }
    reading.files += 1; reading.bytes += file.size;
    var reader = new FileReader();
    reader.onloadend = function () {
      reading.files -= 1; reading.bytes -= file.size;
      if (!reader.result) { return; }  // unreadable (removed meanwhile): nothing to send
      enqueue(text.value.trim(), {filename: file.name, content_type: file.type || "application/octet-stream",
                                  data: reader.result});
      text.value = "";
    };
    reader.readAsArrayBuffer(file);
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
    bubble.setAttribute("data-i18n-label", "close"); bubble.setAttribute("aria-label", t.close);
    (prechat.hidden ? text : nameInput).focus();
    flushRead();
  }
  function shut() {
    panel.hidden = true;
    bubble.setAttribute("aria-expanded", "false");
    bubble.setAttribute("data-i18n-label", "open"); bubble.setAttribute("aria-label", t.open);
    bubble.focus();
  }
  bubble.addEventListener("click", function () { if (panel.hidden) { open(); } else { shut(); } });
  close.addEventListener("click", shut);
  panel.addEventListener("keydown", function (event) { if (event.key === "Escape") { shut(); } });

  function mount() {
    document.body.appendChild(host);
    if (script.hasAttribute("data-open")) { open(); }
    queue.forEach(renderPending);  // what waits from the last visit, offline or not
    restore();
    connect();
  }
  if (document.body) { mount(); } else { document.addEventListener("DOMContentLoaded", mount); }
})();
