// tomato-mqtt dashboard: the live state over one WebSocket, the overview, the controls.
// No framework: the server sends coalesced views ({k, id, v}); each section re-renders
// only the rows whose HTML changed (keyed rows), once per animation frame.
"use strict";

const S = {
  scheduler: null, recorder: null, nodes: {}, components: {}, lasts: {}, pipelines: {}, jobs: {},
  me: null, lostAfter: 10, offset: 0, instance: "",
};
// browser-side timings for the tests and bench/dashboard.py
window.__dash = { firstPaint: null, helloAt: null, drawn: {}, lastSeen: {}, log: [], ws: null };
function timing(kind, id, last, srv) {  // what reached the screen when (bench/dashboard.py)
  const log = window.__dash.log;
  log.push({ kind, id, last, srv, at: Date.now() });
  if (log.length > 5000) log.splice(0, 1000);
}
window.timing = timing;
const MAX_JOB_ROWS = 100;   // newest finished jobs shown (running and queued: all)

const $ = (id) => document.getElementById(id);
const esc = (x) => String(x ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const now = () => Date.now() / 1000 + S.offset;  // the server's clock
const fmtTime = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "");
// an array (a spectrum's 64 values) as its size: printed whole, the overview's table was
// ~7,000 px wide (an integrator's review); the component page shows the values
const fmtVal = (v) => (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(5))
  : Array.isArray(v) ? `[${v.flat(Infinity).length} values]` : esc(v));
const can = (op) => !!(S.me && S.me.controls.includes(op));
// an operator acts on their own jobs only (the scheduler refuses the others: found by a
// user's audit, the page offered cancel and download on other users' jobs all the same)
const mayActOn = (j) => !!S.me && (S.me.open || S.me.role === "admin" || !j.owner || j.owner === S.me.user);
window.mayActOn = mayActOn;

// -- the session's key ---------------------------------------------------------------------
// A sign-in has two halves: the cookie, which the browser sends by itself (to every port
// of this host: any server on this PC got it), and this key, kept in this origin's storage
// (its port included) and sent with every request (sessions.py).
const KEY = "tomato_dashboard_key";
// a browser that keeps no storage: the key is this page's own, until it reloads (it said
// "signed in" and the page stayed anonymous: a review)
let pageKey = null, noStorage = false;
function sessionKey() {
  if (noStorage) return pageKey;
  try { return localStorage.getItem(KEY); } catch { return pageKey; }
}
function setSessionKey(k, ended) {  // this page's own sign-in, sign-out or ended sign-in
  pageKey = k || null;
  keyFollowed = pageKey;
  try {
    // why the key went, for the other tabs: an ended sign-in (the dashboard restarted)
    // read "signed out in another tab" there (a dashboard tour)
    if (!k && ended) localStorage.setItem(KEY + ".ended", ended); else localStorage.removeItem(KEY + ".ended");
    if (k) localStorage.setItem(KEY, k); else localStorage.removeItem(KEY);
  } catch { noStorage = true; }
}
function whyKeyWent() {
  try { return localStorage.getItem(KEY + ".ended"); } catch { return null; }
}
const withKey = (headers) => { const k = sessionKey(); return k ? { ...headers, "X-Tomato-Key": k } : headers; };
window.withKey = withKey;
// another tab of this page signed out, or in as someone else: this one follows at once
// (it kept showing the old sign-in and its controls, and acted as the new one: a page
// showing olga submitted jobs as otto, a review). Noticed by the browser's storage event
// and, as that event can come late or not at all (CI runs: a page signed out in another
// tab said nothing for 10 s), by a look at the key every second and at every connect.
let keyFollowed;  // the key this page acts with (undefined: not connected yet)
function followKey() {
  const k = sessionKey();
  if (keyFollowed === undefined || k === keyFollowed) return false;
  keyFollowed = k;
  if (k) showReply({ success: true, msg: "signed in in another tab: this page follows" });
  else showReply({ success: false, msg: whyKeyWent() || "signed out in another tab" });
  return true;
}
function followAndConnectAgain() {
  if (followKey() && window.__dash.ws) window.__dash.ws.close();  // connects again, as who it is now
}
window.addEventListener("storage", (e) => { if (e.key === KEY || e.key === null) followAndConnectAgain(); });
setInterval(followAndConnectAgain, 1000);

// -- keyed rows: touch only what changed ---------------------------------------------------
// each cell named by its column's heading: a phone shows a row as a card of "heading:
// value" lines (app.css), not a table 1,000 px wide of cells a word a line (a dashboard
// tour at a phone's width)
function labelCells(tbody, tr) {
  const head = tbody.parentNode.tHead && tbody.parentNode.tHead.rows[0];
  if (!head) return;
  for (let i = 0; i < tr.cells.length; i++) {
    const th = head.cells[i];
    tr.cells[i].dataset.label = th ? th.textContent.replace(/ \(.*\)$/, "") : "";
  }
}
function renderRows(tbody, rows) {
  // rows: [[key, html]] in order
  const seen = tbody._rows || (tbody._rows = new Map());
  const keep = new Set();
  let prev = null;
  for (const [key, html] of rows) {
    keep.add(key);
    let r = seen.get(key);
    if (!r) {
      const tr = document.createElement("tr");
      tr.dataset.key = key;
      r = { tr, html: null };
      seen.set(key, r);
    }
    if (r.html !== html) {
      // a keyboard user's focus stays in the row it was in (a row redrawn after its
      // `ready` moved it to the page's start: a dashboard tour)
      const had = r.tr.contains(document.activeElement) ? focusOf(document.activeElement) : null;
      r.tr.innerHTML = html; r.html = html; labelCells(tbody, r.tr);
      if (had) focusInRow(r.tr, had);
    }
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (want !== r.tr) tbody.insertBefore(r.tr, want);
    prev = r.tr;
  }
  for (const [key, r] of seen) if (!keep.has(key)) { r.tr.remove(); seen.delete(key); }
}

// -- state ---------------------------------------------------------------------------------
const dirty = new Set();
let frame = 0;
function mark(what) { dirty.add(what); if (!frame) frame = requestAnimationFrame(render); }

function apply(item) {
  const { k, id, v } = item;
  if (k === "scheduler") S.scheduler = v;
  else if (k === "recorder") S.recorder = v;
  else if (k === "node") { if (v) S.nodes[id] = v; else delete S.nodes[id]; }
  else if (k === "component") { if (v) S.components[id] = v; else delete S.components[id]; mark("component"); }
  else if (k === "last") { if (v) S.lasts[id] = v; else delete S.lasts[id]; mark("component"); }
  else if (k === "pipeline") { if (v) S.pipelines[id] = v; else delete S.pipelines[id]; }
  else if (k === "job") { if (v) S.jobs[id] = v; else delete S.jobs[id]; mark("job"); }
  mark(k === "scheduler" || k === "recorder" || k === "node" ? "presence" : k === "job" ? "jobs" : "pipelines");
}

function setMe(me) {
  S.me = me;
  // (a read-only page named its login's role: "anonymous (admin) · read-only", a tour)
  const role = me.read_only ? "" : ` (${esc(me.role || "no role")})`;
  const who = me.user ? `${esc(me.user)}${role}` : me.role && !me.read_only ? `(${esc(me.role)})` : "";
  $("who").innerHTML = who + (me.read_only ? " · read-only" : "") + (me.open ? " · open stack" : "");
  // what this page may do, said (controls just went missing: "the page never explains
  // the roles", a dashboard tour)
  $("role-note").textContent = me.read_only || me.open ? ""
    : !me.signed_in ? "sign in to load samples, submit or cancel jobs"
    : !can("job_submit") ? `a ${me.role || "login without a role"} watches: loading samples, submitting and cancelling jobs need an operator`
    : "";
  $("login").hidden = me.signed_in || me.open;
  $("logout").hidden = !me.signed_in;
  $("pipeline-controls").hidden = !["pipeline_load", "pipeline_eject", "pipeline_ready"].some(can);
  for (const b of $("pipeline-controls").querySelectorAll("button")) b.hidden = !can(b.dataset.op);
  $("pc-sample").hidden = !can("pipeline_load");
  $("submit-controls").hidden = !can("job_submit");
  document.body.classList.toggle("readonly", !(me.controls || []).length);
  mark("jobs"); mark("pipelines"); mark("job"); mark("component");
}

// -- the socket ----------------------------------------------------------------------------
function connect() {
  // a WebSocket takes no headers: the key goes as a second subprotocol, never chosen
  followKey();  // the server closed this page's socket as another tab signed out: said here
  const k = sessionKey();
  keyFollowed = k;
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`, k ? ["tomato", `key.${k}`] : []);
  window.__dash.ws = ws;
  ws.onopen = () => { $("conn").textContent = "live"; $("conn").className = "pill on"; stale(false); watchRoute(); };
  ws.onclose = () => {
    $("conn").textContent = "disconnected: retrying"; $("conn").className = "pill off";
    stale(true);  // what the page shows is as it was: greyed, said (it kept "online" green)
    // why, as the dashboard says it (a socket refused carries no reason to the page: it
    // said "retrying" while the dashboard had no broker, and after it had stopped: a tour)
    fetch("/ws", { headers: withKey({}) })
      .then((res) => (res.status >= 400 && res.status !== 400 ? res.text() : null))
      .then((why) => { if (why && ws === window.__dash.ws) $("conn").textContent = `disconnected: ${why}; retrying`; })
      .catch(() => { if (ws === window.__dash.ws) $("conn").textContent = "disconnected: the dashboard does not answer (stopped?); retrying"; });
    setTimeout(connect, 1000);
  };
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.now) S.offset = m.now - Date.now() / 1000;
    switch (m.t) {
      case "hello":
        window.__dash.helloAt = performance.now();
        S.nodes = {}; S.components = {}; S.lasts = {}; S.pipelines = {}; S.jobs = {};
        S.lostAfter = m.lost_after; S.instance = m.instance; S.brokerDown = m.broker === false;
        $("instance").textContent = m.title;
        titlePage();
        m.items.forEach(apply);
        setMe(m.me);
        if (m.ended) {  // the cookie signs no one in any more: say so once, and drop it
          showReply({ success: false, msg: m.ended });
          post("/api/logout", {}); setSessionKey(null, m.ended);
        }
        mark("presence"); mark("pipelines"); mark("jobs"); mark("first");
        break;
      case "items": m.items.forEach(apply); break;
      case "me": setMe(m.me); break;
      case "tick": mark("presence"); break;
      case "broker": S.brokerDown = !m.connected; renderConn(); break;
      default: if (window.onPageMessage) window.onPageMessage(m);
    }
  };
}

// -- rendering -----------------------------------------------------------------------------
function presenceState(v, key) {
  if (!v) return ["absent", "off", ""];
  const age = v.rx ? Math.max(0, now() - v.rx) : null;
  let state = v.state;
  if (state === "online" && age !== null && age > S.lostAfter) state = "lost";
  return [state, state === "online" ? "on" : state === "lost" ? "lost" : "off", age === null ? "" : `${age.toFixed(1)} s`];
}

function renderPresence() {
  const rows = [];
  const row = (key, label, v, detail) => {
    const [state, cls, age] = presenceState(v, key);
    rows.push([key, `<td>${esc(label)}</td><td><span class="pill ${cls}" data-state="${esc(state)}">${esc(state)}</span></td><td>${age}</td><td>${esc(v && v.version)}</td><td>${detail}</td>`]);
  };
  const sch = S.scheduler;
  // (a last will, state "lost", carries no counts: it was made when the scheduler connected)
  const warned = sch && sch.broker_warnings && sch.broker_warnings.length ? `<br><span class="err broker-warning">${sch.broker_warnings.map(esc).join("<br>")}</span>` : "";
  row("scheduler", "scheduler", sch, (sch && sch.storage_error ? `<span class="err">${esc(sch.storage_error)}</span>` : sch && sch.state !== "lost" ? `${sch.jobs_running} running, ${sch.jobs_queued} queued` : "") + warned);
  const rec = S.recorder;
  row("recorder", "recorder", rec, rec && rec.storage_error ? `<span class="err">${esc(rec.storage_error)}</span>` : "");
  for (const id of Object.keys(S.nodes).sort(natural)) {
    const n = S.nodes[id];
    row(`node:${id}`, `node ${n.node}`, n, `${n.components.length} component${n.components.length === 1 ? "" : "s"} · ${driversCell(n.drivers || {})}${n.spool_pending ? ` · spool ${n.spool_pending}` : ""}`);
  }
  renderRows($("presence").tBodies[0], rows);
  renderConn();
}

// a node's drivers: those its components use, those that failed (red), and the others
// installed on it, said apart (each installed one read "(not loaded)", as if broken: a
// dashboard tour)
// names with their numbers as numbers: pip-2 before pip-10 (an integrator's tour: 24
// pipelines read pip-1, pip-10 … pip-19, pip-2)
const naturalOrder = new Intl.Collator(undefined, { numeric: true });
function natural(a, b) { return naturalOrder.compare(a, b) || (a < b ? -1 : a > b ? 1 : 0); }
window.natural = natural;

function driversCell(drivers) {
  const used = [], failed = [], spare = [];
  for (const [d, i] of Object.entries(drivers).sort()) {
    if (i.error) failed.push(`<span class="err">${esc(d)}: ${esc(i.error)}</span>`);
    else (i.loaded ? used : spare).push(esc(d));
  }
  const out = used.length ? [used.join(", ")] : [];
  out.push(...failed);
  if (spare.length) out.push(`<span class="note">also installed: ${spare.join(", ")}</span>`);
  return out.join(" · ");
}
window.driversCell = driversCell;

// the pill says "live" for the page's socket to the dashboard; when nothing at all has
// come from the stack for lost_after (every service silent: most likely the broker, or
// the dashboard's way to it), it says so (found by a user's audit: "live" while the
// broker was stopped for 32 s)
function lastHeard() {
  const seen = [S.scheduler, S.recorder, ...Object.values(S.nodes)].map((v) => v && v.rx).filter((x) => x);
  return seen.length ? Math.max(...seen) : null;
}
function silentFor() {
  const last = lastHeard();
  if (last === null) return null;
  const age = now() - last;
  return age > S.lostAfter ? age : null;
}
window.silentFor = silentFor;
function renderConn() {
  const c = $("conn");
  if (!window.__dash.ws || window.__dash.ws.readyState !== 1) return;  // onclose says it
  const quiet = silentFor();
  // the dashboard's own connection to the broker lost: said at once (it said "live" for
  // lost_after more, the controls waiting 15 s each: a dashboard tour)
  c.textContent = S.brokerDown ? "not live · the dashboard lost the broker (stack stopped?); retrying"
    : quiet === null ? "live" : `not live · no status from the stack for ${quiet.toFixed(0)} s (broker unreachable?)`;
  c.className = quiet === null && !S.brokerDown ? "pill on" : "pill lost";
  stale(quiet !== null || S.brokerDown);
}
// the page's state is not current (the dashboard or the stack silent): greyed, and said
// above it, with when it was last current (a dashboard tour: services stayed "online",
// green, their heartbeat ages counting up, after the stack had stopped)
function stale(on) {
  const b = document.body;
  if (on && !b.classList.contains("stale")) {  // as of the last word from the stack (it
    // said the time it was noticed, seconds later: a dashboard tour)
    const last = lastHeard();
    const at = last === null ? new Date() : new Date((last - S.offset) * 1000);
    b.dataset.asOf = `the page shows the stack as it was at ${at.toLocaleTimeString()}: it may have changed since`;
  }
  b.classList.toggle("stale", on);
}

// a component's state as shown: "lost" under a node that stopped cleanly (offline) is
// "offline", not red (every component read "lost" after `tomato stop`: a dashboard tour)
function cmpState(status) {
  if (!status) return "unknown";
  if (status.state !== "lost") return status.state;
  const node = Object.values(S.nodes).find((n) => n.node === status.node);
  return node && node.state === "offline" ? "offline" : "lost";
}
window.cmpState = cmpState;

function cmpCell(role, slug) {
  const c = S.components[slug], last = S.lasts[slug];
  const st = cmpState(c && c.status);
  let vals = "";
  if (last) {
    vals = Object.entries(last.values).slice(0, 4).map(([k, v]) => `${esc(k)}=${fmtVal(v)}${last.units[k] ? " " + esc(last.units[k]) : ""}`).join(", ");
    const seen = window.__dash.lastSeen[slug];
    if (!seen || seen.uts !== last.uts) {
      window.__dash.lastSeen[slug] = { uts: last.uts, at: Date.now() };
      requestAnimationFrame(() => timing("value", slug, last.uts));
    }
  }
  return `<a class="cmp" href="#/component/${encodeURIComponent(slug)}"><b>${esc(role)}</b>: <span class="st-${esc(st)}">${esc(st)}</span> <span class="val">${vals}</span></a>`;
}

// a duration as a person reads it: 35 s, 12 min 5 s, 2 h 3 min
function fmtDur(s) {
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ""}`;
  return `${Math.floor(s / 3600)} h${Math.floor((s % 3600) / 60) ? ` ${Math.floor((s % 3600) / 60)} min` : ""}`;
}
window.fmtDur = fmtDur;
// where a running job is, by its components' statuses: "counter: task #1 (2 of 2) · 35 s
// of 50 s" per role that runs one (the overview said "running · 350 points": a tour).
// The task's age: the page's now less its start, taken to this clock by its node's
// offset (views.py status_view), so a node whose clock is off, or a status received
// long after it was sent, still shows the true age.
function taskProgress(job, roleOf) {
  const out = [];
  for (const [slug, c] of Object.entries(S.components)) {
    const st = c.status;
    if (!st || st.job !== job.id || st.state !== "running" || st.task == null) continue;
    let t = `task #${st.task}${job.tasks ? ` (${st.task + 1} of ${job.tasks})` : ""}`;
    // (by its name: the page keys nodes by their topic's slug, "PC2" is "pc2--91bc…": a review)
    const node = Object.values(S.nodes).find((n) => n.node === st.node);
    const off = node && node.state === "online" ? node.offset : null;
    const el = st.started_at != null && off != null ? now() - (st.started_at + off)
      : st.elapsed != null && st.rx != null ? st.elapsed + (now() - st.rx) : null;
    if (el != null && st.max_duration != null && el > st.max_duration + 1) {
      // its planned time is over and its end not told yet (between two tasks it read
      // "44 s of 40 s": a dashboard tour)
      t += ` · ending (${fmtDur(st.max_duration)})`;
    } else if (el != null) {
      t += ` · ${fmtDur(el)}${st.max_duration != null ? ` of ${fmtDur(st.max_duration)}` : ""}`;
    } else if (st.max_duration != null) t += ` · starting (${fmtDur(st.max_duration)})`;
    const role = roleOf(slug);
    out.push(role ? `${role}: ${t}` : t);
  }
  return out.sort();
}
window.taskProgress = taskProgress;
const anyRunning = () => Object.values(S.components).some((c) => c.status && c.status.state === "running");

function renderPipelines() {
  const rows = [];
  for (const id of Object.keys(S.pipelines).sort((a, b) => natural(S.pipelines[a].name, S.pipelines[b].name))) {
    const p = S.pipelines[id];
    const job = p.job != null ? S.jobs[p.job] : null;
    const bySlug = Object.fromEntries(Object.entries(p.slugs || {}).map(([r, s]) => [s, r]));
    const tasks = job ? taskProgress(job, (s) => bySlug[s]) : [];
    const prog = job ? [`${esc(job.meaning)}${job.points != null ? ` · ${job.points} points` : ""}`, ...tasks.map((t) => `<span class="progress">${esc(t)}</span>`)].join("<br>") : "";
    const cmps = Object.entries(p.slugs || {}).map(([role, slug]) => cmpCell(role, slug)).join("<br>");
    // whose sample it holds (an operator acts on their own and the lab's only)
    const whose = p.sample != null && p.owner ? ` <span class="owner">(${esc(p.owner)}'s)</span>` : "";
    rows.push([id, `<td>${esc(p.name)}</td><td class="sample">${esc(p.sample ?? "—")}${whose}</td><td class="ready">${p.job != null ? "in use" : p.ready ? "ready" : "not ready"}</td>` +
      `<td>${p.job != null ? `<a href="#/job/${p.job}">job ${p.job}</a>` : ""}</td><td class="progress">${prog}</td><td>${cmps}</td><td class="nw acts">${rowActions(p)}</td>`]);
  }
  renderRows($("pipelines").tBodies[0], rows);
  const sel = $("pc-pipeline"), names = Object.values(S.pipelines).map((p) => p.name).sort(natural);
  if (sel._names !== names.join("\n")) {
    const cur = sel.value;
    sel.innerHTML = names.map((n) => `<option>${esc(n)}</option>`).join("");
    if (names.includes(cur)) sel.value = cur;
    sel._names = names.join("\n");
  }
}

// a pipeline's own buttons, as its state allows (the controls above the table only: pick
// the pipeline in a list, then act: a dashboard tour); the list stays for typing a sample
function rowActions(p) {
  const b = (op, text) => (can(op) ? `<button class="prow" data-op="${op}" data-pipeline="${esc(p.name)}">${text}</button>` : "");
  if (p.sample == null) return b("pipeline_load", "load…");
  // another operator's sample: not theirs to eject or mark ready (the buttons were shown,
  // and refused when clicked: a dashboard tour)
  if (!mayActOn(p)) return "";
  // (a running job's pipeline: neither; the scheduler refuses an eject, and a ready
  // then reads as "start it again")
  return p.job == null ? b("pipeline_eject", "eject") + (p.ready ? "" : b("pipeline_ready", "ready")) : "";
}

// a status code typed alone (r, c, qw…) is the status, not two letters anywhere ("r"
// matched every job of "pip-counter": a dashboard tour)
const CODES = new Set(["q", "qw", "r", "rd", "c", "ce", "cd"]);
function jobMatches(j, words) {
  const text = [j.id, j.jobname, j.meaning, j.pipeline, j.sampleid, j.owner, j.reason].map((x) => String(x ?? "").toLowerCase()).join(" ");
  return words.every((w) => (CODES.has(w) ? j.status === w : text.includes(w)));
}

function renderJobs() {
  // the filter: every word typed is in its id, name, status, pipeline, sample, user or
  // reason (40 jobs of four users read as one list: a dashboard tour)
  const words = $("jobs-filter").value.trim().toLowerCase().split(/\s+/).filter((w) => w);
  const every = Object.values(S.jobs).sort((a, b) => b.id - a.id);
  const all = words.length ? every.filter((j) => jobMatches(j, words)) : every;
  const active = all.filter((j) => !["c", "ce", "cd"].includes(j.status));
  const done = all.filter((j) => ["c", "ce", "cd"].includes(j.status)).slice(0, MAX_JOB_ROWS);
  const rows = [...active, ...done].map((j) => {
    const cancel = can("job_cancel") && mayActOn(j) && ["q", "qw", "r"].includes(j.status) ? `<button class="cancel" data-job="${j.id}">cancel</button>` : "";
    // ids, codes, times, counts and the button never wrap: a long name or reason in one
    // row wrapped them a character a line ("c/a/n/c/e/l": a dashboard tour)
    return [String(j.id), `<td class="nw"><a href="#/job/${j.id}">${j.id}</a></td><td>${esc(j.jobname)}</td>` +
      `<td><span class="code s-${esc(j.status)}" data-status="${esc(j.status)}">${esc(j.status)}</span> ${esc(j.meaning)}</td>` +
      `<td class="nw">${esc(j.pipeline)}</td><td class="sample">${esc(j.sampleid)}</td><td>${esc(j.owner)}</td><td class="nw">${fmtTime(j.submitted_at)}</td><td class="nw">${fmtTime(j.launched_at)}</td>` +
      `<td class="nw">${fmtTime(j.completed_at)}</td><td class="nw">${j.points ?? ""}</td><td class="reason">${esc(j.reason)}</td><td class="nw">${cancel}</td>`];
  });
  renderRows($("jobs").tBodies[0], rows);
  const shown = words.length ? `, ${all.length} of ${every.length} match the filter` : "";
  $("jobs-count").textContent = `(${active.length} active, ${words.length ? every.length : all.length} in all${shown}${all.length - active.length > MAX_JOB_ROWS ? `, newest ${MAX_JOB_ROWS} finished shown` : ""})`;
}

function render() {
  frame = 0;
  const d = new Set(dirty); dirty.clear();
  if (d.has("presence")) renderPresence();
  if (d.has("pipelines") || d.has("component") || d.has("jobs")) renderPipelines();
  if (d.has("jobs")) renderJobs();
  if (window.renderPage) window.renderPage(d);
  if (waiting) holdControls();  // rows drawn while a request waits: held too
  if (d.has("first") && window.__dash.firstPaint === null) {
    // painted once this frame is on screen
    requestAnimationFrame(() => {
      window.__dash.firstPaint = performance.now();
      // the job pages' plotting library, fetched while the user reads the overview
      setTimeout(() => window.loadPlotly && window.loadPlotly(), 200);
    });
  }
}
// heartbeat ages, lost by silence; a running task's age, on the page that shows it (a
// finished job's page, a component's, were rewritten each second: a selection there went)
setInterval(() => {
  mark("presence");
  const r = route();
  if (!anyRunning()) return;
  if (r.page === "overview") mark("pipelines");
  else if (r.page === "job" && S.jobs[r.id] && S.jobs[r.id].status === "r") mark("job");
}, 1000);

// -- controls ------------------------------------------------------------------------------
// a cancelled job cannot be resumed: asked first (the last audit: one click ended it)
function cancelJob(id) {
  const j = S.jobs[id];
  const what = j && j.status === "r" ? "stop it now (its file keeps what was measured)" : "take it off the queue";
  if (window.confirm(`Cancel job ${id}? This will ${what}.`)) command("job_cancel", { jobids: [id] });
}
window.cancelJob = cancelJob;

// the answer to a control: a click closes it, a success goes by itself after a while
// (it stayed for good, over the job page's plots: a newcomer's tour)
let replyTimer = null;
function showReply(r) {
  const box = $("reply");
  box.hidden = false;
  box.className = r.success ? "ok" : "err";
  box.title = "click or press Escape to close";
  let text = r.msg || "";
  const d = r.data;  // a job just queued that waits: why, as ketchup submit says it
  if (r.success && d && !Array.isArray(d) && d.reason && (d.status === "q" || d.status === "qw")) {
    text += ` — note: ${d.status === "q" ? "no pipeline can run it yet: " : ""}${d.reason}`;
  }
  box.textContent = (r.success ? "✓ " : "✗ ") + text + (r.code && !r.success ? ` [${r.code}]` : "");
  clearTimeout(replyTimer);
  if (r.success) replyTimer = setTimeout(() => { box.hidden = true; }, 20000);
}
$("reply").addEventListener("click", () => { $("reply").hidden = true; });
// and Escape, from anywhere (a keyboard user could not close it: a dashboard tour)
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && !$("reply").hidden) $("reply").hidden = true;
});
// Enter in the sample field loads it, as the submit form's fields submit
$("pc-sample").addEventListener("keydown", (e) => {
  if (e.key === "Enter") { e.preventDefault(); $("pipeline-controls").querySelector('[data-op="pipeline_load"]').click(); }
});

async function post(url, body) {
  try {
    const res = await fetch(url, { method: "POST", headers: withKey({ "Content-Type": "application/json" }), body: JSON.stringify(body) });
    const text = await res.text();
    try { return JSON.parse(text); } catch { return { success: false, msg: `${res.status}: ${text}` }; }
  } catch (e) { return { success: false, msg: `the dashboard did not answer (stopped, or the network is down?): ${e.message || e}` }; }
}

// a control's request while it is on its way: said, and the controls held until the
// answer (nothing showed for the 15 s a stopped stack took to say so, and the buttons
// took a second click meanwhile: a dashboard tour)
// Held while any request waits (a count: two at once, the first answer let go of what
// the second held); rows drawn meanwhile are drawn held (a review)
let waiting = 0;
const HELD = "#pipeline-controls button, button.prow, #submit-controls button, #login button, button.cancel, #jp-cancel, #cmppage button";
function holdControls() {
  for (const b of document.querySelectorAll(HELD)) {
    if (waiting && !b.disabled) {
      if (b === document.activeElement) refocus = focusOf(b);  // (a disabled one loses it)
      b.disabled = true; b.dataset.held = "1";
    } else if (!waiting && b.dataset.held) { b.disabled = false; delete b.dataset.held; }
  }
  document.body.classList.toggle("busy", waiting > 0);
  if (!waiting && refocus) restoreFocus();
}

// a keyboard user's focus on a control held while its request waited: given back once
// the controls are let go, in the same row if it was redrawn meanwhile (it went to the
// page's start: a dashboard tour)
let refocus = null;
function focusOf(el) {
  const tr = el.closest("tr[data-key]");
  return {
    el, op: (el.dataset && el.dataset.op) || null, href: el.getAttribute("href"), cls: el.className || "",
    key: tr ? tr.dataset.key : null, table: tr ? tr.closest("table").id : null,
  };
}
function restoreFocus() {
  const f = refocus;
  refocus = null;
  if (document.activeElement && document.activeElement !== document.body) return;
  if (f.el.isConnected && !f.el.disabled) { f.el.focus(); return; }
  const tr = f.key != null && f.table ? document.querySelector(`#${f.table} tr[data-key="${CSS.escape(f.key)}"]`) : null;
  if (tr) focusInRow(tr, f);
}
function focusInRow(tr, f) {
  // the same control drawn anew (its op, its link, its kind), else the row itself: never
  // another control (a job's link redrawn put the focus on its row's cancel: a review)
  let again = null;
  if (f.op) again = tr.querySelector(`[data-op="${CSS.escape(f.op)}"]`);
  else if (f.href) again = tr.querySelector(`a[href="${CSS.escape(f.href)}"]`);
  else if (f.cls) again = tr.querySelector(`${f.el.tagName}.${CSS.escape(f.cls.split(" ")[0])}`);
  if (again && !again.disabled) again.focus();
  else { tr.tabIndex = -1; tr.focus(); }
}
function pending(text) {
  const box = $("reply");
  clearTimeout(replyTimer);
  box.hidden = false; box.className = "busy"; box.title = "";
  box.textContent = `… ${text}`;
  waiting += 1; holdControls();
  let once = false;
  return () => { if (!once) { once = true; waiting -= 1; holdControls(); } };
}
window.pending = pending;

// the page's socket to the dashboard is down (stopped, restarting): said plainly, nothing
// sent (a click answered "TypeError: Failed to fetch": a dashboard tour)
function offline() {
  const ws = window.__dash.ws;
  if (ws && ws.readyState === 1) return false;
  showReply({ success: false, msg: "the page is not connected to the dashboard (stopped or restarting?): try again once it says live" });
  return true;
}
window.offline = offline;

async function command(op, args) {
  if (offline()) return { success: false, msg: "not connected" };
  const done = pending(`${op.replace("_", " ")}: sent, waiting for the answer`);
  let r;
  try { r = await post("/api/cmd", { op, args }); } finally { done(); }
  showReply(r);
  if (r.ended) {  // signed out elsewhere: the page shows who it is now (no controls),
    // and its live socket is made again for that (it kept the dropped session)
    setMe(r.me);
    post("/api/logout", {}).then(() => { setSessionKey(null, r.msg); if (window.__dash.ws) window.__dash.ws.close(); });
  }
  return r;
}
window.command = command;

$("pipeline-controls").addEventListener("click", (e) => {
  const op = e.target.dataset && e.target.dataset.op;
  if (!op) return;
  const args = { pipeline: $("pc-pipeline").value };
  if (op === "pipeline_load") {
    args.sample = $("pc-sample").value.trim();
    // said here: an empty name was sent, and the answer spoke of the sample it held (a tour)
    if (!args.sample) { showReply({ success: false, msg: "name the sample to load (the field beside the pipeline)" }); return; }
  }
  if (op === "pipeline_ready") {
    // the sample typed is not the one it holds (its load refused: "already holds … eject
    // it first", a toast easy to miss): asked first (a dashboard tour made three
    // pipelines ready with their old samples)
    const p = Object.values(S.pipelines).find((x) => x.name === args.pipeline);
    const held = p && p.sample, typed = $("pc-sample").value.trim();
    if (held && typed && typed !== held && p.job == null &&
        !window.confirm(`${args.pipeline} holds sample '${held}', not '${typed}'. Mark it ready with '${held}'?`)) return;
  }
  command(op, args);
});
$("pipelines").addEventListener("click", (e) => {
  const op = e.target.classList.contains("prow") && e.target.dataset.op;
  if (!op) return;
  const pipeline = e.target.dataset.pipeline;
  if (op !== "pipeline_load") { command(op, { pipeline }); return; }
  if (offline()) return;  // (not asked for a sample it cannot send)
  const sample = (window.prompt(`Sample to load into ${pipeline}:`) || "").trim();
  if (sample) command(op, { pipeline, sample });
});
$("jobs-filter").addEventListener("input", () => mark("jobs"));
$("jobs").addEventListener("click", (e) => {
  if (e.target.classList.contains("cancel")) cancelJob(Number(e.target.dataset.job));
});
$("submit-controls").addEventListener("submit", async (e) => {
  e.preventDefault();
  // a file chosen, or a payload pasted (the page took files only: a newcomer's tour)
  const f = $("sc-file").files[0];
  const pasted = $("sc-text").value;
  if (!f && !pasted.trim()) { showReply({ success: false, msg: "choose a payload file, or paste one" }); return; }
  const text = f ? await f.text() : pasted;
  const r = await command("job_submit", { text, filename: f ? f.name : "pasted.yml", jobname: $("sc-jobname").value || null });
  if (r.success && r.data && r.data.id != null) {
    // the form is emptied: a second click submitted the same job again (a dashboard tour)
    $("sc-file").value = ""; $("sc-text").value = ""; $("sc-jobname").value = "";
    location.hash = `#/job/${r.data.id}`;
  }
});
$("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const done = pending("signing in");
  let r;
  try { r = await post("/api/login", { username: $("login-user").value, password: $("login-pass").value }); } finally { done(); }
  showReply(r);
  if (r.success) { setSessionKey(r.key); $("login-pass").value = ""; window.__dash.ws.close(); }  // reconnect as that user
});
$("logout").addEventListener("click", async () => { showReply(await post("/api/logout", {})); setSessionKey(null); window.__dash.ws.close(); });

// -- routing -------------------------------------------------------------------------------
function route() {
  const h = location.hash.replace(/^#\/?/, "").split("/");
  // (a malformed escape, `#/job/50%`, threw at every frame: the page froze, a review)
  const decoded = (x) => { try { return decodeURIComponent(x); } catch { return x; } };
  if (h[0] === "job" && h[1]) return { page: "job", id: Number(h[1]), raw: decoded(h[1]) };
  // (device/channel: `#/component/dev-counter/1` was cut to "dev-counter": a tour)
  if (h[0] === "component" && h[1]) return { page: "component", id: decoded(h.slice(1).join("/")) };
  return { page: "overview" };
}
// the browser's tab says which page it is (every tab read "tomato-mqtt dashboard": a
// dashboard tour); the job and component pages name theirs as they render
function titlePage(what) {
  document.title = `${what ? `${what} · ` : ""}tomato-mqtt${S.instance ? ` ${S.instance}` : ""}`;
}
window.titlePage = titlePage;
function watchRoute() {
  const r = route();
  if (r.page === "overview") titlePage();
  $("overview").hidden = r.page !== "overview";
  $("jobpage").hidden = r.page !== "job";
  $("cmppage").hidden = r.page !== "component";
  const ws = window.__dash.ws;
  if (ws && ws.readyState === 1) ws.send(JSON.stringify({ t: "watch", job: r.page === "job" ? r.id : null }));
  if (window.enterPage) window.enterPage(r);
}
window.addEventListener("hashchange", () => {
  // an error said of the page left behind goes with it (it covered the next pages'
  // events until clicked: a dashboard tour); a success, e.g. a submit's, stays its 20 s
  const box = $("reply");
  if (!box.hidden && box.className === "err") box.hidden = true;
  watchRoute();
});
window.S = S; window.esc = esc; window.mark = mark; window.can = can; window.fmtVal = fmtVal; window.route = route; window.renderRows = renderRows;
// connected once every script ran: on a busy machine the WebSocket opened before pages.js
// had defined the job page, and a page opened at #/job/N stayed empty (a CI run)
if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", connect);
else connect();
