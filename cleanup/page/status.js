// Model Launcher status page. Served by the app itself (no CDN, no build step).
// Security rules: every piece of data (file names, folder names, log text, reasons) is user
// input and reaches the DOM only through textContent or createElement; the function key stays
// in memory and this tab's sessionStorage and travels only as the x-functions-key header.
"use strict";

const REFRESH_MS = 5000;
const STALE_MS = 20000;
const PAGE_SIZE = 50;
// Per-profile done/failed counts and cost come from GET ops/costs (the history index): read
// again when the first page of batches shows a batch finished since the last read, and at least
// every COSTS_MS; never on every 5-s refresh.
const COSTS_DAYS = 1;
const COSTS_MS = 60000;

const state = {
  key: "",
  filter: "",
  rows: [],
  token: null,
  extraPages: false,
  lastOk: 0,
  lastError: null,
  detail: null,
  openLog: null,
  pending: null,
  costs: null,
  costsAt: 0,
  costsError: null,
  finishedSeen: new Set(),
};

const $ = (id) => document.getElementById(id);

function readKey() {
  const fromUrl = new URLSearchParams(window.location.search).get("code");
  const key = fromUrl || window.sessionStorage.getItem("ml-key") || "";
  if (key) window.sessionStorage.setItem("ml-key", key);
  return key;
}

async function api(path, method = "GET") {
  const response = await fetch(path, {
    method,
    headers: { "x-functions-key": state.key },
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const message = body && (body.message || body.error);
    const err = new Error(`${method} ${path.split("?")[0]}: HTTP ${response.status}` +
      (message ? ` (${message})` : ""));
    err.status = response.status;
    throw err;
  }
  return body;
}

// -- formatting ----------------------------------------------------------------------------

function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  s = Number(s);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().replace("T", " ").slice(0, 19);
}

function text(value) {
  return value === null || value === undefined || value === "" ? "–" : String(value);
}

function el(tag, content, className) {
  const node = document.createElement(tag);
  if (content !== undefined && content !== null) node.textContent = String(content);
  if (className) node.className = className;
  return node;
}

function fillList(ul, items, render) {
  ul.replaceChildren(...items.map((item) => el("li", render(item))));
  if (!items.length) ul.replaceChildren(el("li", "none", "muted"));
}

// -- freshness -----------------------------------------------------------------------------

function showFreshness() {
  const node = $("freshness");
  const age = state.lastOk ? Date.now() - state.lastOk : null;
  node.classList.remove("stale", "error");
  if (state.lastError) {
    node.textContent = `call failed: ${state.lastError}` +
      (age !== null ? ` — data from ${Math.round(age / 1000)} s ago` : "");
    node.classList.add("error");
  } else if (age === null) {
    node.textContent = "loading…";
  } else if (age > STALE_MS) {
    node.textContent = `stale: last update ${Math.round(age / 1000)} s ago`;
    node.classList.add("stale");
  } else {
    node.textContent = `live, updated ${new Date(state.lastOk).toLocaleTimeString()}`;
  }
}

// -- now -----------------------------------------------------------------------------------

function renderNow(now) {
  const inc = now.incoming;
  $("in-files").textContent = text(inc.files);
  $("in-bytes").textContent = fmtBytes(inc.bytes);
  $("in-oldest").textContent = fmtSeconds(inc.oldest_seconds);
  $("in-claimable").textContent = text(inc.claimable);
  $("in-settling").textContent = text(inc.settling);
  $("in-held").textContent = text(inc.held_for_recovery);
  fillList($("blocked"), inc.blocked, (b) => `${b.name} — ${b.reason}`);
  fillList($("waiting-folders"), inc.waiting_folders, (f) => f);
  $("marker").textContent = inc.ready_marker ? `their marker ${inc.ready_marker}` : "settling";
  const g = now.groups;
  $("groups-active").textContent = text(g.active);
  $("groups-max").textContent = text(g.max);
  $("groups-creates").textContent = text(g.created_last_5_min);
  $("groups-error").hidden = !g.error;
  $("groups-error").textContent = g.error || "";
  $("active-batches").textContent = Object.entries(now.active_batches)
    .map(([k, v]) => `${v} ${k}`).join(", ");
  const alarm = now.alarm;
  const banner = $("alarm");
  banner.hidden = !alarm.stalled;
  document.body.classList.toggle("stalled", Boolean(alarm.stalled));
  banner.textContent = alarm.stalled
    ? `Stalled: ${alarm.files} claimable file(s) have waited longer than ` +
      `${fmtSeconds(alarm.threshold_seconds)} (oldest ${fmtSeconds(alarm.oldest_seconds)}). ` +
      "Is the poll timer running?"
    : "";
}

// -- profiles ------------------------------------------------------------------------------

async function loadCosts() {
  const finished = state.rows
    .filter((b) => b.state === "succeeded" || b.state === "failed").map((b) => b.batch);
  const fresh = finished.some((id) => !state.finishedSeen.has(id));
  if (!fresh && state.costsAt && Date.now() - state.costsAt < COSTS_MS) return;
  state.costsAt = Date.now();
  try {
    state.costs = await api(`costs?days=${COSTS_DAYS}`);
    state.costsError = null;
    for (const id of finished) state.finishedSeen.add(id);
  } catch (e) {
    if (e.status === 401) throw e;
    state.costsError = e.message;  // the rest of the page stays live
  }
}

function fmtCost(value, currency) {
  if (value === null || value === undefined) return "–";
  const v = Number(value);
  // Two significant digits below one unit: a local run costs about 0.00001 USD.
  const shown = v >= 1 ? v.toFixed(2) : String(Number(v.toPrecision(2)));
  return `${shown} ${currency || ""}`.trim();
}

function renderProfiles(now) {
  const groups = now.groups.by_profile || {};
  const waiting = now.incoming.claimable_by_profile || {};
  const costs = state.costs;
  const summed = (costs && costs.profiles) || {};
  const names = [...new Set([...Object.keys(groups), ...Object.keys(waiting),
    ...Object.keys(summed)])].sort();
  const rows = names.map((name) => {
    const tr = el("tr");
    tr.dataset.profile = name;
    const g = groups[name];
    const c = summed[name];
    const count = (key) => (costs ? (c ? c[key] : 0) : null);
    const cells = [
      ["name", name],
      ["groups", g ? `${g.active} / ${g.max}` : null],
      ["waiting", waiting[name] || 0],
      ["done", count("succeeded")],
      ["failed", count("failed")],
      ["cost", costs ? fmtCost(c ? c.cost : 0, costs.currency) : null],
    ];
    for (const [cls, v] of cells) tr.appendChild(el("td", text(v), cls));
    if (g && g.active >= g.max) {
      tr.className = "at-cap";
      tr.title = `at its cap of ${g.max} active group(s): its files wait in incoming/`;
    }
    return tr;
  });
  $("profiles").tBodies[0].replaceChildren(...rows);
  let note = `done, failed and estimated cost: batches claimed in the last ${COSTS_DAYS * 24} h ` +
    "that have finished";
  if (costs && costs.truncated) note += " (too many to sum: the newest only)";
  if (state.costsError) note += ` — not available: ${state.costsError}`;
  $("profiles-note").textContent = note;
}

// -- batches -------------------------------------------------------------------------------

function batchLink(id) {
  const a = el("a", id);
  a.href = `#batch=${encodeURIComponent(id)}`;
  return a;
}

function renderBatches() {
  const body = $("batches").tBodies[0];
  const rows = state.rows.map((b) => {
    const tr = document.createElement("tr");
    tr.className = `state-${b.state}`;
    tr.dataset.batch = b.batch;
    const first = el("td");
    first.appendChild(batchLink(b.batch));
    tr.appendChild(first);
    for (const v of [b.label, b.profile, b.files, fmtBytes(b.bytes), b.state, b.attempt,
      fmtTime(b.claimed_at), fmtTime(b.launched_at), fmtTime(b.started_at),
      fmtTime(b.finished_at), fmtSeconds(b.duration_seconds), b.exit_code, b.reason]) {
      tr.appendChild(el("td", text(v)));
    }
    tr.children[1].className = "name";
    tr.children[2].className = "profile";
    tr.children[5].className = "state";
    return tr;
  });
  body.replaceChildren(...rows);
  if (!rows.length) {
    const tr = el("tr");
    const td = el("td", "no batches", "muted");
    td.colSpan = 14;
    tr.appendChild(td);
    body.appendChild(tr);
  }
  $("more").hidden = !state.token;
  renderTimeline();
}

function batchesPath(token) {
  const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (state.filter) q.set("state", state.filter);
  if (token) q.set("continuationToken", token);
  return `batches?${q}`;
}

async function loadFirstPage() {
  const page = await api(batchesPath(null));
  if (!state.extraPages) {
    state.rows = page.batches;
    state.token = page.continuationToken;
  } else {
    // Keep the pages read with "More"; refresh the rows of the first page in place.
    const fresh = new Map(page.batches.map((b) => [b.batch, b]));
    const known = new Set(state.rows.map((b) => b.batch));
    state.rows = page.batches.filter((b) => !known.has(b.batch))
      .concat(state.rows.map((b) => fresh.get(b.batch) || b));
  }
  renderBatches();
}

async function loadMore() {
  if (!state.token) return;
  const page = await api(batchesPath(state.token));
  state.rows = state.rows.concat(page.batches);
  state.token = page.continuationToken;
  state.extraPages = true;
  renderBatches();
}

// -- timeline (SVG) ------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function renderTimeline() {
  const svg = $("timeline");
  const rows = state.rows.slice(0, 30).filter((b) => b.claimed_at);
  const width = Math.max(400, svg.clientWidth || 900);  // drawn at the real size: crisp text
  const rowH = 14;
  const left = 170;
  const height = Math.max(30, rows.length * rowH + 24);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("height", String(height));
  svg.replaceChildren();
  if (!rows.length) return;
  const now = Date.now();
  const t = (iso) => (iso ? new Date(iso).getTime() : null);
  const start = Math.min(...rows.map((b) => t(b.claimed_at)));
  const span = Math.max(1000, now - start);
  const x = (ms) => left + ((ms - start) / span) * (width - left - 10);
  rows.forEach((b, i) => {
    const y = i * rowH + 4;
    const label = svgEl("text", { x: 2, y: y + 10, class: "tl-label" });
    label.textContent = b.label ? String(b.label).slice(0, 26) : b.batch;
    svg.appendChild(label);
    const claimed = t(b.claimed_at);
    const began = t(b.started_at) || t(b.launched_at);
    const finished = t(b.finished_at);
    const runEnd = finished || now;
    const waitEnd = began || runEnd;
    const wait = svgEl("rect", { x: x(claimed), y, width: Math.max(1, x(waitEnd) - x(claimed)),
      height: rowH - 4, class: "waiting" });
    svg.appendChild(wait);
    if (began) {
      const done = b.state === "succeeded" || b.state === "failed";
      const run = svgEl("rect", { x: x(began), y, width: Math.max(2, x(runEnd) - x(began)),
        height: rowH - 4, class: done ? b.state : "running" });
      const title = svgEl("title", {});
      title.textContent = `${b.batch} ${b.state}`;
      run.appendChild(title);
      svg.appendChild(run);
    }
  });
  const axis = svgEl("text", { x: left, y: height - 4, class: "tl-axis" });
  axis.textContent = `${fmtTime(new Date(start).toISOString())} → now`;
  svg.appendChild(axis);
}

// -- one batch -----------------------------------------------------------------------------

function currentBatchId() {
  const m = /^#batch=(.+)$/.exec(window.location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

async function loadDetail() {
  const id = currentBatchId();
  $("detail").hidden = !id;
  if (!id) {
    state.detail = null;
    return;
  }
  const detail = await api(`batches/${encodeURIComponent(id)}`);
  state.detail = detail;
  renderDetail(detail);
}

function renderDetail(d) {
  const s = d.summary;
  $("detail-id").textContent = s.batch;
  const dl = $("detail-summary");
  const pairs = [["dropped", s.label], ["state", s.state], ["profile", s.profile],
    ["folder", s.folder],
    ["files", s.files], ["bytes", fmtBytes(s.bytes)], ["attempts", s.attempt],
    ["claimed", fmtTime(s.claimed_at)], ["launched", fmtTime(s.launched_at)],
    ["started", fmtTime(s.started_at)], ["finished", fmtTime(s.finished_at)],
    ["duration", fmtSeconds(s.duration_seconds)], ["exit code", s.exit_code],
    ["reason", s.reason]];
  dl.replaceChildren();
  for (const [k, v] of pairs) {
    dl.appendChild(el("dt", k));
    dl.appendChild(el("dd", text(v), k === "state" ? `state-${s.state}` : undefined));
  }
  $("retry").hidden = !d.retryable;
  const files = $("detail-files").tBodies[0];
  files.replaceChildren(...d.files.map((f) => {
    const tr = el("tr");
    tr.appendChild(el("td", f.name, "name"));
    tr.appendChild(el("td", fmtBytes(f.bytes)));
    return tr;
  }));
  const attempts = $("detail-attempts").tBodies[0];
  attempts.replaceChildren(...d.attempts.map((a) => {
    const tr = el("tr");
    for (const v of [a.attempt, a.group, a.outcome || "running", a.exit_code,
      fmtTime(a.launched_at), fmtTime(a.started_at), fmtTime(a.finished_at),
      fmtSeconds(a.duration_seconds), a.reason]) {
      tr.appendChild(el("td", text(v)));
    }
    const td = el("td");
    const button = el("button", `log ${a.attempt}`);
    button.type = "button";
    button.className = "show-log";
    button.addEventListener("click", () => showLog(s.batch, a.attempt));
    td.appendChild(button);
    tr.appendChild(td);
    return tr;
  }));
  $("detail-output-prefix").textContent = d.output_prefix;
  fillList($("detail-outputs"), d.outputs, (o) => `${o.name} (${fmtBytes(o.bytes)})`);
}

async function showLog(batch, attempt) {
  const pre = $("log");
  pre.hidden = false;
  pre.textContent = `loading log of attempt ${attempt}…`;
  try {
    const log = await api(`batches/${encodeURIComponent(batch)}/logs/${attempt}`);
    pre.textContent = (log.live ? "(live, still running)\n" : "") + (log.text || "(empty log)");
    state.openLog = { batch, attempt };
  } catch (e) {
    pre.textContent = String(e.message);
  }
}

// -- actions with a confirmation step ------------------------------------------------------

function ask(question, detail, action) {
  state.pending = action;
  $("confirm-text").textContent = question;
  $("confirm-detail").hidden = !detail;
  $("confirm-detail").textContent = detail || "";
  $("confirm").hidden = false;
}

function reportAction(message, failed) {
  const node = $("action-result");
  node.hidden = false;
  node.textContent = message;
  node.classList.toggle("error", Boolean(failed));
}

async function confirmed() {
  const action = state.pending;
  state.pending = null;
  $("confirm").hidden = true;
  if (!action) return;
  try {
    reportAction(await action(), false);
  } catch (e) {
    reportAction(String(e.message), true);
  }
  refresh();
}

function summarize(report) {
  const parts = [];
  for (const k of ["claimed", "launched", "finished", "relaunched", "failed", "deleted", "errors"]) {
    if (Array.isArray(report[k]) && report[k].length) parts.push(`${report[k].length} ${k}`);
  }
  return parts.length ? parts.join(", ") : "nothing to do";
}

function wireActions() {
  $("confirm-yes").addEventListener("click", confirmed);
  $("confirm-no").addEventListener("click", () => {
    state.pending = null;
    $("confirm").hidden = true;
  });
  $("poll-now").addEventListener("click", () => ask("Run a poll tick now?", null, async () => {
    const r = await api("poll", "POST");
    return `poll: ${summarize(r)}`;
  }));
  $("run-janitor").addEventListener("click", async () => {
    try {
      const dry = await api("janitor?dryRun=true", "POST");
      ask("Dry run done. Run the janitor for real?",
        dry.actions.length ? dry.actions.join("\n") : "(the janitor has nothing to do)",
        async () => `janitor: ${summarize(await api("janitor", "POST"))}`);
    } catch (e) {
      reportAction(String(e.message), true);
    }
  });
  $("retry").addEventListener("click", () => {
    const d = state.detail;
    if (!d) return;
    const id = d.summary.batch;
    ask(`Retry batch ${id}? Its ${d.files.length} input(s) go back into incoming/ and the next ` +
      "poll claims them as a new batch.", null, async () => {
      const r = await api(`batches/${encodeURIComponent(id)}/retry`, "POST");
      return `retry: ${r.restored} input(s) of ${r.batch} put back into incoming/`;
    });
  });
  $("more").addEventListener("click", () => loadMore().catch(failed));
  $("state-filter").addEventListener("change", (ev) => {
    state.filter = ev.target.value;
    state.extraPages = false;
    state.token = null;
    refresh();
  });
  $("detail-close").addEventListener("click", (ev) => {
    ev.preventDefault();
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
    $("detail").hidden = true;
    $("log").hidden = true;
  });
  window.addEventListener("hashchange", () => {
    $("log").hidden = true;
    loadDetail().catch(failed);
  });
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.key = $("key-input").value.trim();
    window.sessionStorage.setItem("ml-key", state.key);
    $("key-input").value = "";
    $("key-form").hidden = true;
    refresh();
  });
}

// -- refresh loop --------------------------------------------------------------------------

function failed(e) {
  state.lastError = e.message || String(e);
  if (e.status === 401) $("key-form").hidden = false;
  showFreshness();
}

let running = false;

async function refresh() {
  if (running || !state.key) {
    showFreshness();
    return;
  }
  running = true;
  try {
    const [now] = await Promise.all([api("now"), loadFirstPage(), loadDetail()]);
    await loadCosts();  // after the first page: it tells whether a batch has finished since
    renderNow(now);
    renderProfiles(now);
    state.lastOk = Date.now();
    state.lastError = null;
  } catch (e) {
    failed(e);
  } finally {
    running = false;
    showFreshness();
  }
}

function start() {
  state.key = readKey();
  wireActions();
  if (!state.key) $("key-form").hidden = false;
  refresh();
  window.setInterval(refresh, REFRESH_MS);
  window.setInterval(showFreshness, 1000);
}

document.addEventListener("DOMContentLoaded", start);
