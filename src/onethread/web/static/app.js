// onethread web chat: the page side of onethread/platforms/web_protocol.py.
// No dependencies, no build step. The protocol is at-least-once both ways:
// our messages are resent until the server acks them (it drops repeats by id),
// and we ack each bot message so the server stops replaying it.
"use strict";

(function () {
  const KEY_USER = "onethread.user";
  const KEY_NAME = "onethread.name";
  const KEY_OUT = "onethread.outgoing";
  const $ = (id) => document.getElementById(id);

  // ---- storage -------------------------------------------------------------

  function load(key) {
    try {
      return window.localStorage.getItem(key);
    } catch (err) {
      return null; // storage disabled: this visit only
    }
  }

  function store(key, value) {
    try {
      window.localStorage.setItem(key, value);
    } catch (err) {
      console.warn("onethread: cannot save to localStorage", err);
    }
  }

  function randomId(bytes) {
    const raw = new Uint8Array(bytes);
    window.crypto.getRandomValues(raw); // works on plain http too, unlike randomUUID
    return Array.from(raw, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function loadOutgoing() {
    try {
      const list = JSON.parse(load(KEY_OUT) || "[]");
      return Array.isArray(list)
        ? list.filter((m) => m && m.id && (m.text || (m.attachments && m.attachments.length)))
        : [];
    } catch (err) {
      return [];
    }
  }

  // ---- markdown ------------------------------------------------------------
  // The server renders the bot's Markdown (markdown-it, raw HTML off: the
  // model's own HTML arrives escaped) and sends it as `html`. Links open in a
  // new tab; anything but http(s)/mailto links are made plain text.

  function setHtml(body, html) {
    body.innerHTML = html;
    for (const a of body.querySelectorAll("a")) {
      if (!/^(https?:|mailto:)/i.test(a.getAttribute("href") || "")) {
        a.replaceWith(document.createTextNode(a.textContent));
        continue;
      }
      a.target = "_blank";
      a.rel = "noopener noreferrer";
    }
  }

  // ---- state ---------------------------------------------------------------

  let user = load(KEY_USER);
  if (!user || !/^[A-Za-z0-9_-]{1,128}$/.test(user)) {
    user = randomId(16);
    store(KEY_USER, user);
  }
  const state = {
    name: load(KEY_NAME) || "",
    ws: null,
    attempt: 0,
    historyLoaded: false,
    lastFrame: 0,
    reconnectTimer: null,
    typingTimer: null,
    seen: new Set(), // ids of bot messages shown (replays are acked, not shown again)
    outgoing: loadOutgoing(), // our messages not acked yet, oldest first
    files: [], // uploaded, waiting to go with the next message: {file, kind, mime, name, size}
    uploads: 0, // uploads under way
  };
  const token = new URLSearchParams(window.location.search).get("token");

  function saveOutgoing() {
    store(KEY_OUT, JSON.stringify(state.outgoing));
  }

  // ---- rendering -----------------------------------------------------------

  function formatTime(ts) {
    const when = ts ? new Date(ts * 1000) : new Date();
    return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function addMessage(m, extraClass) {
    const list = $("messages");
    const item = document.createElement("li");
    item.className = "msg " + (m.role === "user" ? "user" : "assistant");
    if (extraClass) item.classList.add(extraClass);
    if (m.id) item.dataset.id = m.id;
    const body = document.createElement("div");
    body.className = "body";
    if (m.role !== "user" && m.format !== "plain" && typeof m.html === "string") {
      setHtml(body, m.html);
    } else {
      body.classList.add("plain");
      body.textContent = m.text || "";
    }
    const meta = document.createElement("div");
    const files = renderFiles(m.attachments);
    meta.className = "meta";
    const bits = [formatTime(m.ts)];
    if (m.platform && m.platform !== "web") bits.push("via " + m.platform);
    if (m.source && m.mirror) bits.push(m.source);
    meta.textContent = bits.join(" · ");
    item.append(body);
    if (files) item.append(files);
    item.append(meta);
    const old = m.id && m.role !== "user" ? findMessage(m.id) : null;
    if (old) old.replaceWith(item); // the final text of a streamed reply
    else list.append(item);
    list.scrollTop = list.scrollHeight;
    return item;
  }

  // ---- files ---------------------------------------------------------------
  // Files are uploaded over HTTP (POST files), then named in the message frame;
  // the server serves each one (GET files/<hex>) to this browser id only.

  const INLINE = ["image/png", "image/jpeg", "image/gif", "image/webp"];

  function fileUrl(hex) {
    const url = new URL("files/" + hex, window.location.href);
    url.search = "";
    url.searchParams.set("user", user);
    if (token) url.searchParams.set("token", token);
    return url.toString();
  }

  function sizeText(size) {
    if (!size) return "";
    if (size >= 1e6) return (size / 1e6).toFixed(1) + " MB";
    return Math.max(1, Math.round(size / 1e3)) + " KB";
  }

  function renderFiles(list) {
    if (!Array.isArray(list) || !list.length) return null;
    const box = document.createElement("div");
    box.className = "files";
    for (const f of list) {
      if (!f || !/^[0-9a-f]{64}$/.test(f.file || "")) continue;
      if (f.kind === "image" && INLINE.includes(f.mime)) {
        const img = document.createElement("img");
        img.src = fileUrl(f.file);
        img.alt = f.name || "image";
        img.loading = "lazy";
        box.append(img);
      } else {
        const link = document.createElement("a");
        link.href = fileUrl(f.file);
        link.download = f.name || "file";
        link.textContent = (f.name || "file") + (f.size ? " (" + sizeText(f.size) + ")" : "");
        box.append(link);
      }
    }
    return box;
  }

  function showChips() {
    const box = $("attachments");
    box.textContent = "";
    for (const f of state.files) {
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.textContent = f.name;
      const drop = document.createElement("button");
      drop.type = "button";
      drop.textContent = "×";
      drop.title = "Remove";
      drop.addEventListener("click", () => {
        state.files = state.files.filter((x) => x !== f);
        showChips();
      });
      chip.append(drop);
      box.append(chip);
    }
    box.hidden = !state.files.length && !state.uploads;
    if (state.uploads) {
      const busy = document.createElement("span");
      busy.className = "chip";
      busy.textContent = "uploading…";
      box.append(busy);
    }
  }

  async function upload(file) {
    const url = new URL("files", window.location.href);
    url.search = "";
    url.searchParams.set("user", user);
    url.searchParams.set("name", file.name);
    if (token) url.searchParams.set("token", token);
    state.uploads += 1;
    showChips();
    try {
      const resp = await fetch(url.toString(), { method: "POST", body: file });
      if (!resp.ok) {
        const why = resp.status === 413 ? "too large" : (await resp.text()) || resp.statusText;
        setStatus(file.name + ": " + why);
        return;
      }
      state.files.push(await resp.json());
    } catch (err) {
      setStatus(file.name + ": upload failed");
    } finally {
      state.uploads -= 1;
      showChips();
    }
  }

  // A reply streaming: its text so far, as plain text, with a stop button.
  function addDelta(frame) {
    let item = findMessage(frame.id);
    if (!item) {
      item = addMessage({ role: "assistant", id: frame.id, text: "", format: "plain" }, "streaming");
      const stop = document.createElement("button");
      stop.type = "button";
      stop.className = "stop";
      stop.textContent = "Stop";
      stop.addEventListener("click", () => {
        stop.disabled = true;
        sendFrame({ type: "stop", id: frame.id });
      });
      item.append(stop);
    }
    if (!item.classList.contains("streaming")) return; // the final text came first
    item.querySelector(".body").textContent += frame.text || "";
    const list = $("messages");
    list.scrollTop = list.scrollHeight;
  }

  function findMessage(id) {
    for (const item of $("messages").children) {
      if (item.dataset.id === id) return item;
    }
    return null;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  function showTyping(on) {
    window.clearTimeout(state.typingTimer);
    $("typing").hidden = !on;
    if (on) state.typingTimer = window.setTimeout(() => showTyping(false), 6000);
  }

  // ---- the socket ----------------------------------------------------------

  function socketUrl() {
    const url = new URL("ws", window.location.href);
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    url.search = "";
    url.searchParams.set("user", user);
    url.searchParams.set("name", state.name);
    url.searchParams.set("history", state.historyLoaded ? "0" : "1");
    if (token) url.searchParams.set("token", token);
    return url.toString();
  }

  function sendFrame(frame) {
    const ws = state.ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  function connect() {
    window.clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    if (state.ws) return;
    setStatus(state.attempt ? "reconnecting…" : "connecting…");
    const ws = new WebSocket(socketUrl());
    state.ws = ws;
    ws.onopen = () => {
      state.lastFrame = Date.now();
      setStatus("connected");
      for (const m of state.outgoing) sendFrame(messageFrame(m));
    };
    ws.onmessage = (event) => {
      state.lastFrame = Date.now();
      state.attempt = 0;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (err) {
        console.warn("onethread: bad frame", err);
        return;
      }
      onFrame(frame);
    };
    ws.onclose = () => dropSocket(ws);
    ws.onerror = () => dropSocket(ws);
  }

  function dropSocket(ws) {
    if (state.ws !== ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close();
    } catch (err) {
      console.debug("onethread: close failed", err);
    }
    state.ws = null;
    showTyping(false);
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (state.reconnectTimer !== null) return;
    const delay = Math.min(10000, 500 * 2 ** state.attempt) * (0.5 + Math.random() / 2);
    state.attempt += 1;
    setStatus("reconnecting…");
    state.reconnectTimer = window.setTimeout(connect, delay);
  }

  function onFrame(frame) {
    switch (frame.type) {
      case "history":
        state.historyLoaded = true;
        $("messages").textContent = "";
        for (const m of frame.messages || []) addMessage(m);
        for (const m of state.outgoing) addMessage({ role: "user", ...m }, "pending");
        break;
      case "message":
        if (frame.role === "user") {
          if (!findMessage(frame.id)) addMessage(frame);
          break;
        }
        sendFrame({ type: "ack", id: frame.id });
        if (state.seen.has(frame.id)) break;
        state.seen.add(frame.id);
        showTyping(false);
        addMessage(frame);
        break;
      case "ack": {
        state.outgoing = state.outgoing.filter((m) => m.id !== frame.id);
        saveOutgoing();
        const item = findMessage(frame.id);
        if (item) item.classList.remove("pending");
        break;
      }
      case "delta":
        showTyping(false);
        addDelta(frame);
        break;
      case "abandon": {
        const item = findMessage(frame.id);
        if (item && item.classList.contains("streaming")) item.remove();
        break;
      }
      case "typing":
        showTyping(true);
        break;
      case "error":
        if (frame.id) {
          state.outgoing = state.outgoing.filter((m) => m.id !== frame.id);
          saveOutgoing();
          const item = findMessage(frame.id);
          if (item) {
            item.classList.remove("pending");
            item.classList.add("failed");
            item.title = frame.error || "not delivered";
          }
        }
        setStatus(frame.error || "error");
        break;
      default: // hello, pong
        break;
    }
  }

  // A socket can die without a close event (sleep, network change): ping it,
  // and give up on it when nothing came back for a while.
  window.setInterval(() => {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - state.lastFrame > 45000) dropSocket(state.ws);
    else sendFrame({ type: "ping" });
  }, 20000);
  window.addEventListener("online", () => {
    if (!state.ws) connect();
  });

  // ---- the page ------------------------------------------------------------

  function messageFrame(m) {
    const frame = { type: "message", id: m.id, text: m.text };
    if (m.attachments && m.attachments.length) {
      frame.attachments = m.attachments.map((f) => ({ file: f.file }));
    }
    return frame;
  }

  function sendMessage(text) {
    const m = { id: randomId(16), text: text, ts: Date.now() / 1000 };
    if (state.files.length) m.attachments = state.files;
    state.files = [];
    showChips();
    state.outgoing.push(m);
    saveOutgoing();
    addMessage({ role: "user", ...m }, "pending");
    sendFrame(messageFrame(m));
  }

  function showChat() {
    $("signin").hidden = true;
    $("chat").hidden = false;
    $("who").textContent = state.name;
    $("text").focus();
  }

  function showSignin() {
    $("chat").hidden = true;
    $("signin").hidden = false;
    $("name").value = state.name;
    $("name").focus();
  }

  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("name").value.trim().slice(0, 64);
    if (!name) return;
    const renamed = state.name !== name;
    state.name = name;
    store(KEY_NAME, name);
    showChat();
    if (renamed && state.ws) dropSocket(state.ws); // reconnect under the new name
    connect();
  });

  $("rename").addEventListener("click", showSignin);

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value;
    if (state.uploads) return; // wait for the file to be on the server
    if (!text.trim() && !state.files.length) return;
    $("text").value = "";
    sendMessage(text);
  });

  $("attach").addEventListener("click", () => $("file").click());
  $("file").addEventListener("change", async () => {
    const chosen = Array.from($("file").files || []);
    $("file").value = "";
    for (const file of chosen) await upload(file);
  });

  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });

  window.onethread = { setHtml: setHtml };

  if (state.name) {
    showChat();
    connect();
  } else {
    showSignin();
  }
})();
