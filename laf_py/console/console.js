// laf-py console: the page's script. No framework, no build step, no HTML from strings: all a
// function or a client produced is put into the page with textContent, so it shows as text.
// Every admin request carries the token (typed in, kept in sessionStorage: this tab only).
"use strict";

(function () {
  const M = window.LafMetrics;
  const TOKEN_KEY = "laf-py-admin-token";
  const POLL_MS = 2000;
  const HISTORY_MS = 5 * 60 * 1000; // charts show the last five minutes
  const MAX_TAIL = 1000; // lines kept in the live log view
  const MAX_BODY = 1024 * 1024; // characters of a response body shown in the run panel
  const CATCH_UP_DELAY_MS = 1500; // after a (re)connect: three times the server's write batching
  const CATCH_UP_SECONDS = 10; // and how far back it reads again

  const $ = (selector) => document.querySelector(selector);
  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    info: null,
    running: false,
    loops: [],
    functions: [],
    functionsKey: "",
    run: { id: 0, abort: null },
    logs: { generation: 0, abort: null, lastId: null, seen: new Set(), paused: false, pending: [] },
    sockets: { data: null, confirmClose: null, key: "" },
    metrics: { shots: [], points: [], available: null, minute: null },
  };

  // -- small helpers --------------------------------------------------------------------------

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  // Replace a node's children; null, undefined and false are left out.
  function put(node, ...children) {
    node.replaceChildren(...children.filter((c) => c !== null && c !== undefined && c !== false));
  }

  const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const pad2 = (n) => String(n).padStart(2, "0");

  function clock(seconds) {
    const d = new Date(seconds * 1000);
    const ms = String(d.getMilliseconds()).padStart(3, "0");
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}.${ms}`;
  }

  function ago(seconds) {
    const s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
    if (s < 60) return `${s}s ago`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s ago`;
    return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m ago`;
  }

  // The server's clock (for "since" in log queries), from the skew seen at log-in.
  function serverNow() {
    return Date.now() / 1000 + (state.skew || 0);
  }

  function fnPath(name) {
    return "/fn/" + name.split("/").map(encodeURIComponent).join("/");
  }

  // -- the admin API ----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function authHeaders(extra = {}) {
    const headers = { ...extra };
    if (state.token) headers.Authorization = "Bearer " + state.token;
    return headers;
  }

  async function request(path, { method = "GET", body, accept = "application/json" } = {}) {
    const headers = authHeaders({ Accept: accept });
    let payload;
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    const response = await fetch(path, {
      method, headers, body: payload, cache: "no-store", credentials: "omit", redirect: "error",
    });
    const text = await response.text();
    if (response.status === 401 && state.running) needLogin("The admin token was refused.");
    if (!response.ok) {
      let message = response.statusText || `HTTP ${response.status}`;
      try {
        message = JSON.parse(text).error || message;
      } catch (_) { /* not JSON */ }
      throw new ApiError(response.status, message);
    }
    return text;
  }

  async function api(path, options) {
    const text = await request(path, options);
    return text ? JSON.parse(text) : null;
  }

  // Run work now and then every `ms` until the console stops (after a refused token).
  function every(ms, work) {
    let timer = null;
    let stopped = false;
    const tick = async () => {
      try {
        await work();
      } catch (error) {
        if (!(error instanceof ApiError)) console.warn("console:", error);
      }
      if (!stopped) timer = setTimeout(tick, ms);
    };
    state.loops.push(() => {
      stopped = true;
      clearTimeout(timer);
    });
    tick();
  }

  // -- logging in -------------------------------------------------------------------------------

  async function boot() {
    bindForms();
    try {
      state.info = await api("/_/api/info");
    } catch (error) {
      if (error.status === 401) return showLogin(state.token ? "That token was refused." : "");
      return showFatal(error.message);
    }
    showApp();
  }

  function showLogin(message) {
    $("#app").hidden = true;
    $("#tiles").hidden = true;
    $("#logout").hidden = true;
    $("#login").hidden = false;
    $("#login-error").textContent = message || "";
    $("#token-input").focus();
  }

  function showFatal(message) {
    $("#app").hidden = true;
    $("#login").hidden = true;
    $("#fatal").hidden = false;
    $("#fatal-message").textContent = message;
  }

  function needLogin(message) {
    stop();
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    showLogin(message);
  }

  async function logIn(event) {
    event.preventDefault();
    const token = $("#token-input").value.trim();
    if (!token) return;
    $("#login-button").disabled = true;
    state.token = token;
    try {
      state.info = await api("/_/api/info");
    } catch (error) {
      state.token = null;
      $("#login-error").textContent =
        error.status === 401 ? "That is not the admin token of this server." : error.message;
      return;
    } finally {
      $("#login-button").disabled = false;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $("#token-input").value = "";
    showApp();
  }

  function stop() {
    state.running = false;
    state.loops.splice(0).forEach((cancel) => cancel());
    state.logs.generation += 1;
    if (state.logs.abort) state.logs.abort.abort();
  }

  function showApp() {
    const info = state.info;
    state.skew = info.time - Date.now() / 1000;
    $("#login").hidden = true;
    $("#fatal").hidden = true;
    $("#app").hidden = false;
    $("#tiles").hidden = false;
    $("#logout").hidden = !info.admin_token_set;
    put($("#server-info"),
      el("span", { text: `node ${info.node}`, title: `process ${info.pid}, v${info.version}` }),
      el("span", { text: info.database, title: "database (password hidden)" }),
      info.redis ? el("span", { text: `cluster ${info.cluster}`, title: info.redis }) : null,
    );
    state.running = true;
    every(POLL_MS, loadFunctions);
    every(POLL_MS, loadSockets);
    every(POLL_MS, loadMetrics);
    every(1000, () => renderSockets()); // "connected 5s ago" keeps counting
    restartLogs();
    showTab();
  }

  // -- tabs ----------------------------------------------------------------------------------------

  function showTab() {
    const wanted = (location.hash || "#run").slice(1);
    const name = ["run", "logs", "connections", "health"].includes(wanted) ? wanted : "run";
    for (const tab of document.querySelectorAll(".tab")) tab.hidden = tab.id !== `tab-${name}`;
    for (const link of document.querySelectorAll("#tabs a")) {
      link.classList.toggle("active", link.dataset.tab === name);
    }
    if (name === "health") drawCharts();
  }

  // -- functions -----------------------------------------------------------------------------------

  async function loadFunctions() {
    const data = await api("/_/api/functions");
    const key = JSON.stringify(data);
    if (key === state.functionsKey) return; // nothing reloaded
    state.functionsKey = key;
    state.functions = data.functions;
    renderFunctions(data.default_timeout);
  }

  function renderFunctions(defaultTimeout) {
    const list = state.functions;
    const failed = list.filter((f) => !f.loaded).length;
    $("#functions-count").textContent = failed ? `${list.length} · ${failed} failed` : `${list.length}`;
    put($("#functions"),
      ...list.map((f) => functionItem(f, defaultTimeout)),
      list.length ? null : el("li", { className: "muted", text: "No function files yet." }),
    );
    fillSelect($("#run-function"), list.filter((f) => f.callable), (f) => [
      f.name, f.loaded ? f.name : `${f.name} (failed to load)`,
    ]);
    fillSelect($("#logs-function"), list, (f) => [f.name, f.name], [["", "all"]]);
  }

  function functionItem(f, defaultTimeout) {
    const meta = [
      f.methods ? f.methods.join(" ") : "any method",
      f.timeout ? `timeout ${f.timeout}s` : `timeout ${defaultTimeout}s (default)`,
    ];
    if (f.kind !== "http") meta.unshift(f.kind);
    if (f.is_stream) meta.push("stream");
    const name = f.callable
      ? el("button", {
        type: "button", className: "link fn-name", text: f.name, title: `run ${fnPath(f.name)}`,
        onclick: () => pickFunction(f.name),
      })
      : el("span", { className: "fn-name", text: f.name, title: "not reachable over HTTP" });
    return el(
      "li",
      { className: f.loaded ? "fn" : "fn failed", dataset: { name: f.name } },
      el("div", { className: "fn-head" },
        name,
        el("span", { className: f.loaded ? "badge ok" : "badge bad", text: f.loaded ? "loaded" : "failed" })),
      el("div", { className: "fn-meta muted", text: meta.join(" · ") }),
      f.schedule ? el("div", { className: "fn-meta schedule", text: `schedule ${f.schedule}` }) : null,
      f.error
        ? el("div", { className: "fn-error" },
          el("div", { className: "where", text: f.error.line ? `${f.error.file}, line ${f.error.line}` : f.error.file }),
          el("div", { className: "why", text: f.error.message }))
        : null,
    );
  }

  function fillSelect(select, items, option, first = []) {
    const current = select.value;
    const options = [...first, ...items.map(option)];
    select.replaceChildren(...options.map(([value, label]) => el("option", { value, text: label })));
    if (options.some(([value]) => value === current)) select.value = current;
  }

  function pickFunction(name) {
    const f = state.functions.find((fn) => fn.name === name);
    $("#run-function").value = name;
    if (f && f.methods && !f.methods.includes($("#run-method").value)) {
      const usable = f.methods.find((m) => [...$("#run-method").options].some((o) => o.value === m));
      if (usable) $("#run-method").value = usable;
    }
    location.hash = "#run";
  }

  // -- the run panel ---------------------------------------------------------------------------

  function parseHeaders(text) {
    const headers = new Headers();
    for (const [i, raw] of text.split("\n").entries()) {
      const line = raw.trim();
      if (!line) continue;
      const colon = line.indexOf(":");
      if (colon < 1) throw new Error(`header line ${i + 1} is not "Name: value"`);
      headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
    }
    return headers;
  }

  async function runFunction(event) {
    event.preventDefault();
    const name = $("#run-function").value;
    if (!name) return;
    const method = $("#run-method").value;
    const note = $("#run-note");
    note.textContent = "";
    let headers;
    let body;
    try {
      headers = parseHeaders($("#run-headers").value);
      const kind = $("#run-body-type").value;
      const text = $("#run-body").value;
      if (kind !== "none" && (method === "GET" || method === "HEAD")) {
        throw new Error(`${method} requests carry no body: pick POST, PUT or PATCH`);
      }
      if (kind === "json") {
        JSON.parse(text); // refuse a typo here, not as a 400 from the function
        body = text;
        if (!headers.has("Content-Type")) headers.set("Content-Type", "application/json");
      } else if (kind === "text") {
        body = text;
        if (!headers.has("Content-Type")) headers.set("Content-Type", "text/plain; charset=utf-8");
      }
      const user = $("#run-user").value.trim();
      if (user) {
        const signed = await api("/_/api/token", { method: "POST", body: { user } });
        headers.set("Authorization", "Bearer " + signed.token);
      }
    } catch (error) {
      note.textContent = error.message;
      note.className = "error";
      return;
    }
    note.className = "muted";
    const query = $("#run-query").value.trim().replace(/^\?/, "");
    const url = fnPath(name) + (query ? `?${query}` : "");
    const run = { id: ++state.run.id, abort: new AbortController() };
    if (state.run.abort) state.run.abort.abort();
    state.run.abort = run.abort;
    $("#run-button").disabled = true;
    $("#run-stop").disabled = false;
    $("#run-result").hidden = false;
    $("#run-status").textContent = "running…";
    $("#run-status").className = "status";
    $("#run-duration").textContent = "";
    $("#run-request-id").textContent = "";
    $("#run-response-headers").textContent = "";
    $("#run-body-out").textContent = "";
    put($("#run-logs"));
    const started = performance.now();
    let requestId = null;
    try {
      // The function's own request: no admin token on it, only what the form says.
      const response = await fetch(url, {
        method, headers, body, signal: run.abort.signal, cache: "no-store", redirect: "manual",
      });
      const firstByte = performance.now() - started;
      requestId = response.headers.get("X-Request-Id");
      $("#run-status").textContent = response.type === "opaqueredirect"
        ? "a redirect (not followed; the browser hides where to)"
        : `${response.status} ${response.statusText}`.trim();
      $("#run-status").className = `status s${String(response.status)[0]}`;
      $("#run-request-id").textContent = requestId || "(none)";
      $("#run-response-headers").textContent =
        [...response.headers].map(([k, v]) => `${k}: ${v}`).join("\n");
      const text = await readBody(response, run);
      const total = performance.now() - started;
      $("#run-duration").textContent =
        `${total.toFixed(1)} ms` + (total - firstByte > 5 ? ` (headers after ${firstByte.toFixed(1)} ms)` : "");
      $("#run-body-out").textContent = pretty(text, response.headers.get("Content-Type") || "");
    } catch (error) {
      const stopped = error.name === "AbortError";
      $("#run-status").textContent = stopped ? "stopped" : `failed: ${error.message}`;
      $("#run-status").className = "status s5";
      $("#run-duration").textContent = `${(performance.now() - started).toFixed(1)} ms`;
    } finally {
      if (state.run.id === run.id) {
        $("#run-button").disabled = false;
        $("#run-stop").disabled = true;
      }
    }
    if (requestId) loadCallLogs(requestId, run.id);
  }

  // The body as it streams in (a function may stream), up to MAX_BODY characters.
  async function readBody(response, run) {
    if (!response.body) return "";
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const out = $("#run-body-out");
    let text = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      text += value;
      if (text.length > MAX_BODY) {
        run.abort.abort();
        return text.slice(0, MAX_BODY) + `\n… (cut at ${MAX_BODY} characters)`;
      }
      out.textContent = text;
    }
    return text;
  }

  function pretty(text, contentType) {
    if (!/json/i.test(contentType)) return text;
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch (_) {
      return text;
    }
  }

  // That call's lines: at once (the API flushes first), then a few times more for lines a
  // thread or task the call started writes later.
  async function loadCallLogs(requestId, runId) {
    const lines = new Map();
    const list = $("#run-logs");
    for (const wait of [0, 500, 1500, 4000]) {
      await delay(wait);
      if (runId !== state.run.id || !state.running) return;
      let data;
      try {
        data = await api(`/_/api/logs?request=${encodeURIComponent(requestId)}&limit=500`);
      } catch (error) {
        put(list, el("li", { className: "muted", text: `log lines unavailable: ${error.message}` }));
        return;
      }
      for (const line of data.lines) lines.set(line.id, line);
      const sorted = [...lines.values()].sort((a, b) => a.id - b.id);
      put(list,
        ...(sorted.length
          ? sorted.map((line) => logLine(line, false))
          : [el("li", { className: "muted", text: "no log lines (yet)" })]),
      );
    }
  }

  // -- log lines, live -------------------------------------------------------------------------

  function logLine(line, full = true) {
    const level = String(line.level || "").toUpperCase();
    return el(
      "li",
      { className: `log level-${level.toLowerCase()}`, dataset: { id: line.id, request: line.request_id || "" } },
      el("span", { className: "time", text: clock(line.time), title: new Date(line.time * 1000).toISOString() }),
      el("span", { className: "level", text: level }),
      full && line.function
        ? el("button", {
          type: "button", className: "link fn", text: line.function, title: "only this function",
          onclick: () => filterLogs({ function: line.function }),
        })
        : null,
      full && line.request_id
        ? el("button", {
          type: "button", className: "link req mono", text: line.request_id, title: "only this request",
          onclick: () => showRequest(line.request_id),
        })
        : null,
      full && line.node ? el("span", { className: "node muted", text: line.node }) : null,
      message(String(line.message)),
    );
  }

  // A one-line message as it is; a longer one (a traceback) folded under its first line,
  // with the last line (the exception) in the summary too.
  function message(text) {
    const lines = text.split("\n");
    if (lines.length < 3) return el("span", { className: "msg", text });
    const last = lines[lines.length - 1].trim() || lines[lines.length - 2].trim();
    return el("details", { className: "msg" },
      el("summary", { text: `${lines[0]}  …  ${last}` }),
      el("pre", { text }));
  }

  function logFilters() {
    const filters = new URLSearchParams();
    const fn = $("#logs-function").value;
    const level = $("#logs-level").value;
    const requestId = $("#logs-request").value.trim();
    if (fn) filters.set("function", fn);
    if (level) filters.set("level", level);
    if (requestId) filters.set("request", requestId);
    return filters;
  }

  function filterLogs({ function: fn = "", level = "", request = "" }) {
    $("#logs-function").value = fn;
    $("#logs-level").value = level;
    $("#logs-request").value = request;
    restartLogs();
    location.hash = "#logs";
  }

  function showRequest(requestId) {
    filterLogs({ request: requestId });
  }

  function restartLogs() {
    const logs = state.logs;
    logs.generation += 1;
    if (logs.abort) logs.abort.abort();
    logs.lastId = null;
    logs.seen = new Set();
    logs.pending = [];
    put($("#logs-lines"));
    if (state.running) tailLogs(logs.generation, logFilters());
  }

  function setLive(live, message) {
    $("#logs-live").classList.toggle("on", live);
    $("#logs-status").textContent = message;
  }

  // The recent lines, then the stream from the last one seen; reconnects with Last-Event-ID.
  async function tailLogs(generation, filters) {
    const logs = state.logs;
    const current = () => generation === logs.generation && state.running;
    try {
      const recent = new URLSearchParams(filters);
      if (!filters.has("request")) recent.set("since", String(serverNow() - 600));
      recent.set("limit", "500");
      const data = await api(`/_/api/logs?${recent}`);
      if (!current()) return;
      data.lines.forEach(addLine);
    } catch (error) {
      if (!current()) return;
      if (error.status === 404) return setLive(false, "function logs are not available on this server");
    }
    let backoff = 500;
    while (current()) {
      const abort = new AbortController();
      logs.abort = abort;
      try {
        const headers = authHeaders({ Accept: "text/event-stream" });
        if (logs.lastId !== null) headers["Last-Event-ID"] = String(logs.lastId);
        const response = await fetch(`/_/api/logs/stream?${filters}`, {
          headers, signal: abort.signal, cache: "no-store", credentials: "omit",
        });
        if (response.status === 401) return needLogin("The admin token was refused.");
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        setLive(true, logs.paused ? "paused" : "live");
        backoff = 500;
        catchUp(generation, filters, logs.lastId, serverNow() - CATCH_UP_SECONDS);
        await readEvents(response.body, (event) => {
          if (!current()) return;
          if (event.retry) backoff = event.retry;
          if (!event.data) return;
          const line = JSON.parse(event.data);
          addLine(line);
        });
      } catch (error) {
        if (!current()) return;
      }
      setLive(false, "reconnecting…");
      await delay(backoff);
      backoff = Math.min(backoff * 2, 10000);
    }
  }

  // A line written while the stream was being set up (its follower starts from "now") could
  // fall between the lines read before and the stream; once the stream has run a little,
  // read the last few seconds once more. Lines already shown are skipped by id.
  async function catchUp(generation, filters, lastId, since) {
    await delay(CATCH_UP_DELAY_MS);
    if (generation !== state.logs.generation || !state.running) return;
    const recent = new URLSearchParams(filters);
    if (lastId !== null) recent.set("after", String(lastId));
    else recent.set("since", String(since));
    recent.set("limit", "500");
    try {
      const data = await api(`/_/api/logs?${recent}`);
      if (generation === state.logs.generation) data.lines.forEach(addLine);
    } catch (_) { /* the stream goes on; the next reconnect catches up again */ }
  }

  // Server-Sent Events framing: "field: value" lines, a blank line ends an event.
  async function readEvents(stream, onEvent) {
    const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let event = { data: [], id: null, retry: null };
    const dispatch = () => {
      if (event.data.length || event.id !== null) {
        onEvent({ data: event.data.join("\n"), id: event.id, retry: event.retry });
      }
      event = { data: [], id: null, retry: null };
    };
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      buffer += value;
      for (;;) {
        const match = /\r\n|\r|\n/.exec(buffer);
        if (!match || (match[0] === "\r" && match.index === buffer.length - 1)) break;
        const line = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        if (line === "") {
          dispatch();
          continue;
        }
        if (line[0] === ":") continue; // a comment: a keep-alive ping
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let data = colon < 0 ? "" : line.slice(colon + 1);
        if (data[0] === " ") data = data.slice(1);
        if (field === "data") event.data.push(data);
        else if (field === "id") event.id = data;
        else if (field === "retry" && /^\d+$/.test(data)) event.retry = Number(data);
      }
    }
  }

  function addLine(line) {
    const logs = state.logs;
    if (logs.seen.has(line.id)) return;
    logs.seen.add(line.id);
    if (logs.seen.size > 20 * MAX_TAIL) {
      // Bounded: keep the ids still shown or waiting (a late line is a recent one).
      logs.seen = new Set([
        ...[...document.querySelectorAll("#logs-lines li")].map((li) => Number(li.dataset.id)),
        ...logs.pending.map((pending) => pending.id),
        line.id,
      ]);
    }
    if (logs.lastId === null || line.id > logs.lastId) logs.lastId = line.id;
    if (logs.paused) {
      logs.pending.push(line);
      if (logs.pending.length > 5 * MAX_TAIL) logs.pending.shift();
      $("#logs-pause").textContent = `Resume (${logs.pending.length} new)`;
      return;
    }
    appendLines([line]);
  }

  function appendLines(lines) {
    const list = $("#logs-lines");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    for (const line of lines) {
      // In id order: a line that comes late (caught up, or from a slower node) goes in place.
      let after = list.lastElementChild;
      while (after && Number(after.dataset.id) > line.id) after = after.previousElementSibling;
      if (after) after.after(logLine(line));
      else list.prepend(logLine(line));
    }
    while (list.childElementCount > MAX_TAIL) list.firstElementChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  function togglePause() {
    const logs = state.logs;
    logs.paused = !logs.paused;
    if (!logs.paused) {
      appendLines(logs.pending.splice(0));
    }
    $("#logs-pause").textContent = logs.paused ? "Resume" : "Pause";
    $("#logs-status").textContent = logs.paused ? "paused" : "live";
  }

  // -- connections ------------------------------------------------------------------------------

  async function loadSockets() {
    state.sockets.data = await api("/_/api/sockets");
    renderSockets();
  }

  function renderSockets() {
    const data = state.sockets.data;
    if (!data) return;
    // Rebuilt only when something changed (a click must not land on a replaced button);
    // the "connected ... ago" cells tick in place.
    const key = JSON.stringify([data, state.sockets.confirmClose]);
    if (key === state.sockets.key) {
      for (const cell of document.querySelectorAll("#sockets td.ago")) {
        cell.textContent = ago(Number(cell.dataset.since));
      }
      return;
    }
    state.sockets.key = key;
    $("#connections-count").textContent = String(data.count);
    const workers = state.info.workers > 1 ? " (this worker's; each worker has its own)" : "";
    $("#sockets-summary").textContent =
      `${data.count} socket${data.count === 1 ? "" : "s"} on node ${data.node}${workers}`;
    const rows = data.sockets.map((s) => {
      const asking = state.sockets.confirmClose === s.id;
      return el(
        "tr",
        { dataset: { socketId: s.id } },
        el("td", { className: "mono", text: s.id }),
        el("td", { text: s.user || "–" }),
        s.connected_at
          ? el("td", {
            className: "ago", text: ago(s.connected_at), dataset: { since: s.connected_at },
            title: new Date(s.connected_at * 1000).toISOString(),
          })
          : el("td", { text: "–" }),
        el("td", { className: "mono", text: s.remote_address || "–" }),
        el("td", { className: "num", text: s.messages_in ?? "–" }),
        el("td", { className: "num", text: s.messages_out ?? "–" }),
        el("td", { text: s.rooms.length ? s.rooms.join(", ") : "–" }),
        el("td", { className: "actions" },
          el("button", {
            type: "button", className: "ghost small", text: "Message",
            onclick: () => sendTo("socket", s.id),
          }),
          el("button", {
            type: "button", className: asking ? "danger small" : "ghost small",
            text: asking ? "Really close?" : "Close", onclick: () => closeSocket(s.id),
          })),
      );
    });
    put($("#sockets tbody"),
      ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 8, className: "muted", text: "No open sockets." }))]),
    );
    $("#online-count").textContent = `(${data.online_users.length})`;
    put($("#online-users"),
      data.online_users.length ? null : el("li", { className: "muted", text: "nobody" }),
      ...data.online_users.map((uid) => el("li", { dataset: { user: uid } },
        el("button", { type: "button", className: "chip", text: uid, title: "send to this user", onclick: () => sendTo("user", uid) }))),
    );
  }

  function sendTo(kind, id) {
    $("#send-kind").value = kind;
    $("#send-to").value = id;
    $("#send-message").focus();
  }

  async function closeSocket(id) {
    const sockets = state.sockets;
    if (sockets.confirmClose !== id) { // first click: ask, for four seconds
      sockets.confirmClose = id;
      setTimeout(() => {
        if (sockets.confirmClose === id) {
          sockets.confirmClose = null;
          renderSockets();
        }
      }, 4000);
      return renderSockets();
    }
    sockets.confirmClose = null;
    try {
      await api(`/_/api/sockets/${encodeURIComponent(id)}/close`, { method: "POST", body: {} });
      $("#send-result").textContent = `closing ${id}`;
    } catch (error) {
      $("#send-result").textContent = `close failed: ${error.message}`;
    }
    await loadSockets().catch(() => {});
  }

  async function sendMessage(event) {
    event.preventDefault();
    const result = $("#send-result");
    const kind = $("#send-kind").value;
    const to = $("#send-to").value.trim();
    let message = $("#send-message").value;
    if ($("#send-json").checked) {
      try {
        message = JSON.parse(message);
      } catch (error) {
        result.textContent = `not JSON: ${error.message}`;
        return;
      }
    }
    const path = kind === "socket"
      ? `/_/api/sockets/${encodeURIComponent(to)}/send`
      : `/_/api/users/${encodeURIComponent(to)}/send`;
    $("#send-button").disabled = true;
    try {
      const answer = await api(path, { method: "POST", body: { message } });
      result.textContent = `delivered to ${answer.delivered} connection${answer.delivered === 1 ? "" : "s"}`;
    } catch (error) {
      result.textContent = `not sent: ${error.message}`;
    } finally {
      $("#send-button").disabled = false;
    }
  }

  // -- health --------------------------------------------------------------------------------

  async function loadMetrics() {
    const metrics = state.metrics;
    let text;
    try {
      text = await request("/_/metrics", { accept: "text/plain" });
    } catch (error) {
      metrics.available = false;
      $("#health-note").textContent = error.status === 404
        ? "This server serves no /_/metrics (start it with --metrics true)."
        : `metrics unavailable: ${error.message}`;
      recordPoint(null);
      return;
    }
    metrics.available = true;
    $("#health-note").textContent = "From /_/metrics every 2 s, over the last five minutes.";
    const shot = M.snapshot(M.parse(text), Date.now());
    metrics.shots.push(shot);
    while (metrics.shots.length > 2 && metrics.shots[0].time < shot.time - HISTORY_MS) metrics.shots.shift();
    const previous = metrics.shots[metrics.shots.length - 2];
    recordPoint(previous ? M.compare(shot, previous) : null, shot);
    // The table: from the oldest scrape of the last minute to this one.
    const minuteAgo = metrics.shots.find((s) => s.time >= shot.time - 61000);
    metrics.minute = minuteAgo && minuteAgo !== shot ? M.compare(shot, minuteAgo) : null;
    renderLatency();
  }

  function recordPoint(change, shot) {
    const points = state.metrics.points;
    const sockets = state.sockets.data ? state.sockets.data.count : null;
    points.push({
      t: Date.now(),
      rps: change ? change.rate : null,
      errors: change ? change.errorRate : null,
      p99: change && change.p99 !== null ? change.p99 * 1000 : null,
      sockets: shot && shot.connections !== null ? shot.connections : sockets,
    });
    while (points.length && points[0].t < Date.now() - HISTORY_MS) points.shift();
    drawCharts();
  }

  const CHARTS = [
    ["rps", "#chart-rps", "#tile-rps", "", 1, "#2563eb"],
    ["errors", "#chart-errors", "#tile-errors", "%", 1, "#b91c1c"],
    ["p99", "#chart-p99", "#tile-p99", " ms", 1, "#9333ea"],
    ["sockets", "#chart-sockets", "#tile-sockets", "", 0, "#15803d"],
  ];

  function drawCharts() {
    const points = state.metrics.points;
    const last = points[points.length - 1] || {};
    for (const [key, chart, tile, unit, digits, color] of CHARTS) {
      const series = points.map((p) => ({ t: p.t, v: p[key] }));
      $(`${tile} .value`).textContent = last[key] === null || last[key] === undefined
        ? "–" : M.format(last[key], digits) + unit;
      M.drawChart($(`${tile} canvas`), series.slice(-60), { color, axis: false });
      if (!$("#tab-health").hidden) M.drawChart($(chart), series, { unit, digits, color });
    }
  }

  function renderLatency() {
    const minute = state.metrics.minute;
    const ms = (s) => (s === null ? "–" : `${M.format(s * 1000, 1)} ms`);
    const rows = minute
      ? Object.entries(minute.functions).sort(([a], [b]) => a.localeCompare(b)).map(([name, f]) =>
        el("tr", { dataset: { function: name } },
          el("td", { text: name }),
          el("td", { className: "num", text: String(f.requests) }),
          el("td", { className: "num", text: M.format(f.rate, 2) }),
          el("td", { className: "num", text: String(f.serverErrors) }),
          el("td", { className: "num", text: String(f.errors) }),
          el("td", { className: "num", text: ms(f.p50) }),
          el("td", { className: "num", text: ms(f.p99) })))
      : [];
    put($("#latency tbody"),
      ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 7, className: "muted", text: "No requests counted yet." }))]),
    );
  }

  // -- wiring ------------------------------------------------------------------------------------

  function bindForms() {
    $("#login-form").addEventListener("submit", logIn);
    $("#logout").addEventListener("click", () => needLogin("Token forgotten."));
    $("#run-form").addEventListener("submit", runFunction);
    $("#run-stop").addEventListener("click", () => state.run.abort && state.run.abort.abort());
    $("#run-request-id").addEventListener("click", () => {
      const id = $("#run-request-id").textContent;
      if (id && id !== "(none)") showRequest(id);
    });
    $("#logs-filters").addEventListener("submit", (event) => event.preventDefault());
    $("#logs-function").addEventListener("change", restartLogs);
    $("#logs-level").addEventListener("change", restartLogs);
    $("#logs-request").addEventListener("change", restartLogs);
    $("#logs-pause").addEventListener("click", togglePause);
    $("#logs-clear").addEventListener("click", () => put($("#logs-lines")));
    $("#send-form").addEventListener("submit", sendMessage);
    window.addEventListener("hashchange", showTab);
    window.addEventListener("resize", drawCharts);
  }

  boot();
})();
