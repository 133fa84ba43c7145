// The job page (payload, events, live decimated plots) and the component page.
// Plotly comes from the installed plotly wheel (/vendor/plotly.min.js), loaded only when
// a job page opens, so the overview paints without it.
"use strict";

const J = { id: null, job: null, load: null, events: [], marks: [], roles: {}, series: {}, hidden: new Set(), drawQ: new Set(), frame: 0 };
window.__dash.job = J;  // what the job page holds: for tests and bench/dashboard.py
let plotlyReady = null;
const MAX_LABELS = 20;  // task marks labelled on a plot, at most

function loadPlotly() {
  if (!plotlyReady) {
    plotlyReady = new Promise((ok, bad) => {
      const s = document.createElement("script");
      s.src = "/vendor/plotly.min.js";
      s.onload = ok; s.onerror = () => bad(new Error("plotly did not load"));
      document.head.appendChild(s);
    });
  }
  return plotlyReady;
}
window.loadPlotly = loadPlotly;

window.enterPage = (r) => {
  if (r.page === "job") {
    if (J.id !== r.id) {
      J.id = r.id; J.job = null; J.summary = null; J.events = []; J.marks = []; J.roles = {}; J.series = {};
      $("jp-plots").innerHTML = ""; $("jp-vars").innerHTML = ""; $("jp-events").innerHTML = "";
      $("jp-tasks").tBodies[0].innerHTML = ""; $("jp-payload").textContent = "";
    }
    // (`#/job/abc` read "Job NaN": a dashboard tour)
    // (30 digits read "Job 1e+30": a dashboard tour)
    $("jp-title").textContent = Number.isSafeInteger(r.id) && r.id > 0 ? `Job ${r.id}` : `Job ${r.raw}: not a job id`;
    titlePage(`job ${r.raw}`);
    loadPlotly().then(() => queueAll()).catch((e) => showReply({ success: false, msg: String(e) }));
  } else {
    J.id = null;
  }
  mark("job"); mark("component");
};

window.onPageMessage = (m) => {
  if ((["job", "jobdata", "load"].includes(m.t) ? m.id : m.job) !== J.id) return;
  if (m.t === "jobdata") {
    J.job = m.job; J.summary = m.summary || null;
    if (m.events) { J.events = m.events; renderEvents(); }
    renderJobPage();
  }
  if (m.t === "load") { J.load = m.load || null; renderJobPage(); }
  if (m.t === "job") {
    J.job = m.job; J.summary = m.summary || null; J.load = m.load || null;
    J.events = m.events; J.marks = m.marks; J.roles = m.roles; J.series = {};
    for (const [cmp, s] of Object.entries(m.series)) J.series[cmp] = s;
    renderJobPage(); renderEvents(); queueAll();
  } else if (m.t === "series") {
    for (const [cmp, u] of Object.entries(m.series)) timing("recv", cmp, u.last, m.now);
    J.marks = m.marks; J.roles = m.roles;
    for (const [cmp, u] of Object.entries(m.series)) merge(cmp, u);
  } else if (m.t === "events") {
    J.events = m.events; renderEvents();
  }
  mark("job");
};

function merge(cmp, u) {
  const s = J.series[cmp];
  if (!s || u.from === 0) { J.series[cmp] = u; queue(cmp); return; }
  const cut = (a, b) => a.slice(0, u.from).concat(b);
  s.t = cut(s.t, u.t); s.t1 = cut(s.t1 || [], u.t1 || []); s.n = cut(s.n, u.n);
  for (const v of Object.keys(u.lo)) { s.lo[v] = cut(s.lo[v] || [], u.lo[v]); s.hi[v] = cut(s.hi[v] || [], u.hi[v]); }
  s.units = u.units; s.points = u.points; s.first = u.first; s.last = u.last;
  queue(cmp);
}

function queueAll() { for (const cmp of Object.keys(J.series)) queue(cmp); }
function queue(cmp) {
  J.drawQ.add(cmp);
  if (!J.frame) J.frame = requestAnimationFrame(drawQueued);
}

const roleOf = (cmp) => J.roles[cmp] || cmp;
const plotId = (cmp, v) => `plot-${cmp}-${v}`.replace(/[^A-Za-z0-9_-]/g, "_");

function ensureVar(cmp, v, unit) {
  const key = `${cmp}|${v}`;
  let box = document.getElementById(plotId(cmp, v));
  if (box) return box;
  const label = document.createElement("label");
  label.innerHTML = `<input type="checkbox" checked data-key="${esc(key)}"> ${esc(roleOf(cmp))}: ${esc(v)}${unit ? ` [${esc(unit)}]` : ""}`;
  $("jp-vars").appendChild(label);
  box = document.createElement("div");
  box.id = plotId(cmp, v); box.className = "plot"; box.dataset.key = key;
  $("jp-plots").appendChild(box);
  return box;
}

$("jp-vars").addEventListener("change", (e) => {
  const key = e.target.dataset.key;
  if (!key) return;
  if (e.target.checked) J.hidden.delete(key); else J.hidden.add(key);
  const [cmp, v] = key.split("|");
  document.getElementById(plotId(cmp, v)).hidden = !e.target.checked;
  queue(cmp);
});

// a hole in the data (a stalled node, a cut network) is drawn as a break in the line,
// not as a straight line across it (found by a user's audit): a step longer than ten
// times the usual one (at least 2 s)
function gapOf(ts) {
  if (ts.length < 3) return Infinity;
  const d = [];
  for (let i = 1; i < ts.length; i++) d.push(ts[i] - ts[i - 1]);
  d.sort((a, b) => a - b);
  return Math.max(10 * d[Math.floor(d.length / 2)], 2.0);
}
window.gapOf = gapOf;

async function drawQueued() {
  J.frame = 0;
  if (!window.Plotly || J.id === null) return;
  const todo = [...J.drawQ]; J.drawQ.clear();
  for (const cmp of todo) {
    const s = J.series[cmp];
    if (!s) continue;
    const shapes = [], notes = [];
    const mine = J.marks.filter((m) => m.component === cmp);  // a task's first point here
    // labelled while they can be read: 150 tasks made a band of overlapping labels (a
    // tour); past MAX_LABELS only the dotted lines stay
    const label = mine.length <= MAX_LABELS;
    for (const m of mine) {
      const x = m.t * 1000, text = m.task == null ? "idle" : `task ${m.task}`;
      shapes.push({ type: "line", xref: "x", yref: "paper", x0: x, x1: x, y0: 0, y1: 1, line: { dash: "dot", width: 1, color: "#c33" } });
      if (label) notes.push({ x, y: 1, xref: "x", yref: "paper", text, showarrow: false, font: { size: 10, color: "#c33" }, xanchor: "left", yanchor: "top" });
    }
    const draws = [];
    for (const v of Object.keys(s.lo)) {
      if (!s.lo[v].some((x) => x != null)) continue;  // text or arrays: nothing to plot
      const box = ensureVar(cmp, v, s.units[v]);
      if (J.hidden.has(`${cmp}|${v}`)) continue;
      const x = [], y = [], lo = s.lo[v], hi = s.hi[v], gap = gapOf(s.t);
      let prev = null;
      for (let i = 0; i < s.t.length; i++) {
        if (lo[i] == null) continue;
        const t = s.t[i] * 1000;
        if (prev !== null && s.t[i] - prev > gap) { x.push(t - 1); y.push(null); }
        prev = s.t[i];
        // a bucket from its first point to its last: the line ends at the last point
        const t1 = s.t1 && s.t1[i] != null ? s.t1[i] * 1000 : t;
        x.push(t); y.push(lo[i]);
        if (hi[i] !== lo[i] || t1 > t) { x.push(t1); y.push(hi[i]); }
      }
      const unit = s.units[v] ? ` [${s.units[v]}]` : "";
      const layout = {
        title: { text: `${roleOf(cmp)}: ${v}`, font: { size: 13 } }, height: 230, margin: { l: 60, r: 10, t: 30, b: 40 },
        xaxis: { type: "date", title: { text: "time" } }, yaxis: { title: { text: `${v}${unit}` } },
        shapes, annotations: notes, showlegend: false, uirevision: "keep",
      };
      draws.push(Plotly.react(box, [{ x, y, mode: "lines", type: "scatter", line: { width: 1 } }], layout, { displayModeBar: false, responsive: true }));
    }
    await Promise.all(draws);
    const last = s.last, first = s.first;
    requestAnimationFrame(() => {
      window.__dash.drawn[cmp] = { first, last, points: s.points, at: Date.now() };
      timing("plot", cmp, last);
    });
  }
}

function renderPayload() {
  const job = J.job;
  if (!job) return;
  const method = (job.payload && job.payload.method) || [];
  const running = new Set();  // indices of the tasks running now (on any component)
  for (const c of Object.values(S.components)) {
    if (c.status && c.status.job === job.id && c.status.state === "running" && c.status.task != null) running.add(c.status.task);
  }
  renderRows($("jp-tasks").tBodies[0], method.map((t, i) => {
    const cls = running.has(i) ? "current" : "";
    return [String(i), `<td class="${cls}">${i}</td><td>${esc(t.component_role || t.component_tag || t.device)}</td><td>${esc(t.task_name ?? "—")}</td><td>${esc(t.technique_name)}</td>` +
      `<td>${t.max_duration != null ? `${esc(t.max_duration)} s` : ""}</td><td>${t.sampling_interval != null ? `${esc(t.sampling_interval)} s` : ""}</td>` +
      `<td>${Object.keys(t.task_params || {}).length ? esc(JSON.stringify(t.task_params)) : "—"}</td>`];
  }));
  // set once it changes: the page renders each second while a task runs, and a text
  // set anew drops what the user was selecting in it
  setText("jp-payload", JSON.stringify(job.payload, null, 2));
}

function renderEvents() {
  // numbered as the job's events, newest first (the newest 50 read 1-50: a tour)
  const list = $("jp-events");
  list.start = J.events.length;
  list.title = J.events.length > 50 ? `the newest 50 of ${J.events.length} events` : "";
  list.innerHTML = J.events.slice(-50).reverse().map((e) =>
    `<li>${new Date(e.time * 1000).toLocaleTimeString()} <b>${esc(e.event)}</b> ${esc(e.role || "")} ${e.task != null ? "task " + e.task : ""} ${esc(e.status || "")} ${esc(e.detail && e.detail.message ? e.detail.message : "")}</li>`).join("");
}

// a running job whose node is gone, or whose stack is silent, says so on its page (found
// by a user's audit: "r running" and a frozen plot while the node was stopped for 22 s;
// only the overview said "lost")
function jobTrouble(j) {
  if (!j || !["r", "rd"].includes(j.status)) return "";
  const quiet = window.silentFor();
  if (quiet !== null) return `nothing has come from the stack for ${quiet.toFixed(0)} s (broker unreachable?): this page shows the job as it was then`;
  const said = new Set(), out = [];
  for (const slug of Object.keys(J.roles)) {
    const c = S.components[slug];
    const node = c && ((c.meta && c.meta.node) || (c.status && c.status.node));
    if (!node || said.has(node)) continue;
    said.add(node);
    const [state, , age] = presenceState(Object.values(S.nodes).find((n) => n.node === node));
    if (state !== "online") out.push(`node ${node} is ${state}${age ? ` (last heard ${age} ago)` : ""}: its points for this job wait in its spool until it is back`);
  }
  return out.join("; ");
}
function renderTrouble() {
  const el = $("jp-trouble"), why = jobTrouble(S.jobs[J.id]);
  el.textContent = why;
  el.hidden = !why;
}

// set only when it changed: a page re-rendered (each second while a task runs) lost
// what the user was selecting in it (a review)
function setHtml(id, html) { const el = $(id); if (el._html !== html) { el.innerHTML = html; el._html = html; } }
function setText(id, text) { const el = $(id); if (el.textContent !== text) el.textContent = text; }

// the job's times in the page's own time zone, to the second (the ISO strings were shown)
const fmtWhen = (iso) => (iso ? new Date(iso).toLocaleString() : "—");

function renderJobPage() {
  // a finished job no longer retained (only the newest are) has the summary of its
  // whole job, fetched for this page: it said "no such job (yet)" (found by a soak run)
  const j = S.jobs[J.id] || J.summary;
  renderTrouble();
  if (!j) {
    // no controls of the job seen before (its cancel stayed, and acted on this id: a tour)
    $("jp-cancel").hidden = true; $("jp-download").hidden = true;
    setHtml("jp-summary", Number.isSafeInteger(J.id) && J.id > 0 ? "no such job (yet)" : "a job id is a whole number: no such job");
    return;
  }
  $("jp-title").textContent = `Job ${J.id}` + (j.jobname ? ` · ${j.jobname}` : "");
  titlePage(`job ${J.id} ${j.status}`);
  const pts = Object.values(J.series).reduce((a, s) => a + (s.points || 0), 0);
  // why the plots lack stored points (loading, failed, a login that may not load them;
  // "earlier" was said of the points of a gap in the middle: a dashboard tour)
  const short = J.load && !J.load.startsWith("loaded") && pts < (j.points ?? 0);
  const load = short ? ` <span class="load" id="jp-load">(the missing ones ${esc(J.load)})</span>` : "";
  setHtml("jp-summary", `<span class="code s-${esc(j.status)}" id="jp-status" data-status="${esc(j.status)}">${esc(j.status)}</span> ${esc(j.meaning)} · pipeline ${esc(j.pipeline ?? "—")} · user ${esc(j.owner ?? "—")}` +
    ` · submitted ${esc(fmtWhen(j.submitted_at))} · started ${esc(fmtWhen(j.launched_at))} · ended ${esc(fmtWhen(j.completed_at))}` +
    ` · points stored ${j.points ?? "—"} · points on screen ${pts}${load}` +
    (j.status === "r" ? taskProgress(j, (s) => J.roles[s]).map((t) => `<br><span class="progress">${esc(t)}</span>`).join("") : "") +
    (j.reason ? `<br><span class="reason">${esc(j.reason)}</span>` : "") +
    (j.respath ? `<br>results: <code>${esc(j.respath)}</code>` : ""));
  $("jp-cancel").hidden = !(can("job_cancel") && mayActOn(j) && ["q", "qw", "r"].includes(j.status));
  // why its controls are not there: another user's job (they went missing silently)
  $("jp-note").textContent = can("job_cancel") && !mayActOn(j)
    ? `only ${j.owner} or an admin may cancel or download this job`
    : S.me && !S.me.open && !S.me.read_only && !can("job_cancel")
      ? "cancelling and downloading a job need an operator (their own jobs) or an admin" : "";
  const dl = $("jp-download");
  dl.hidden = !(can("job_snapshot") && mayActOn(j) && !["q", "qw"].includes(j.status));
  dl.href = `/api/job/${J.id}/download`;
  dl.textContent = ["c", "ce", "cd"].includes(j.status) ? "download results (.nc)" : "download snapshot (.nc)";
  renderPayload();
}
$("jp-cancel").addEventListener("click", () => cancelJob(J.id));
$("jp-download").addEventListener("click", async (e) => {
  // fetched here so that a refusal shows in the page instead of replacing it
  e.preventDefault();
  const a = e.currentTarget;
  showReply({ success: true, msg: "the recorder is writing the file…" });
  try {
    const res = await fetch(a.href, { headers: window.withKey({}) });
    if (!res.ok) { showReply({ success: false, msg: `${res.status}: ${await res.text()}` }); return; }
    const url = URL.createObjectURL(await res.blob());
    // an ended job's file is its results (the name ketchup gives it), a running one's a snapshot
    const j = S.jobs[J.id] || J.summary, ended = j && ["c", "ce", "cd"].includes(j.status);
    const name = `${ended ? "results" : "snapshot"}.${J.id}.nc`;
    const link = document.createElement("a");
    link.href = url; link.download = name;
    document.body.appendChild(link); link.click(); link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    showReply({ success: true, msg: `downloaded ${name}` });
  } catch (err) { showReply({ success: false, msg: `download failed: ${err}` }); }
});

// -- component page --------------------------------------------------------------------------
// attr values as read or set from this page (a driver's status need not carry them: found
// by a user's audit, the value column stayed empty); read once when the page opens
const attrValues = {};
const attrsAsked = new Set();
function noteAttrs(slug, data) {
  if (data && typeof data === "object") Object.assign(attrValues[slug] ||= {}, data);
}
// the page of a component named as its topic's slug (the overview's links), as passata
// names it (`example_counter:(example-addr,1)`, the page's own title) or as device/channel
// (`dev-counter/1`): only the slug was found (a dashboard tour)
function componentSlug(id) {
  if (id in S.components) return id;
  for (const [slug, c] of Object.entries(S.components)) {
    const m = c.meta || {}, st = c.status || {};
    if (m.name === id || st.name === id || (m.device && `${m.device}/${m.channel}` === id)) return slug;
  }
  return id;
}
window.componentSlug = componentSlug;

function renderComponentPage(id) {
  const slug = componentSlug(id);
  const c = S.components[slug] || {}, meta = c.meta, st = c.status, last = S.lasts[slug];
  // a component no node has told of (a typed or an old link): said, and no get / set
  // offered for it (it said "no metadata yet" and offered both: a tour)
  const none = !(slug in S.components) && window.__dash.helloAt != null;
  $("cp-title").textContent = meta ? meta.name : none ? `${slug}: no such component` : slug;
  titlePage(meta ? `${meta.device}/${meta.channel}` : slug);
  setHtml("cp-summary", none ? `no such component (yet): no node has told of ${esc(slug)}; the components are on the <a href="#/">overview</a>` : meta ? `device ${esc(meta.device)} · driver ${esc(meta.driver)} · address ${esc(meta.address)} · channel ${esc(meta.channel)} · node ${esc(meta.node)}` +
    ` · state <b>${esc(cmpState(st))}</b>${st && st.job != null ? ` · job <a href="#/job/${st.job}">${st.job}</a> task ${esc(st.task)}` : ""}${meta.error ? ` · <span class="err">${esc(meta.error)}</span>` : ""}` : "no metadata yet");
  const attrs = (meta && meta.attrs) || {};
  renderRows($("cp-attrs").tBodies[0], Object.entries(attrs).map(([k, a]) => [k,
    `<td>${esc(k)}</td><td>${esc(a.type)}</td><td>${esc(a.units)}</td><td>${a.rw ? "rw" : "r"}</td><td>${esc(a.minimum)}</td><td>${esc(a.maximum)}</td>` +
    `<td>${esc((a.options || []).join(", "))}</td><td class="attr-val" data-attr="${esc(k)}">${st && k in st.attrs ? fmtVal(st.attrs[k]) : k in (attrValues[slug] || {}) ? fmtVal(attrValues[slug][k]) : ""}</td>`]));
  if (meta && can("get_attr") && !attrsAsked.has(slug)) {
    attrsAsked.add(slug);
    post("/api/cmd", { op: "get_attr", args: { component: meta.name, attrs: [] } }).then((r) => {
      if (r.success) { noteAttrs(slug, r.data); if (componentSlug(route().id) === slug) renderComponentPage(slug); }
    });
  }
  setHtml("cp-caps", ((meta && meta.capabilities) || []).map((x) => `<li>${esc(x)}</li>`).join(""));
  setText("cp-consts", JSON.stringify((meta && meta.constants) || {}, null, 2));
  setText("cp-last", last ? `${new Date(last.uts * 1000).toLocaleTimeString()}\n` + Object.entries(last.values).map(([k, v]) => `${k} = ${v}${last.units[k] ? " " + last.units[k] : ""}`).join("\n") : "—");
  $("cp-controls").hidden = none || !(can("get_attr") || can("set_attr"));
  $("cp-set").hidden = !can("set_attr"); $("cp-value").hidden = !can("set_attr");
  $("cp-force-label").hidden = !can("set_attr");  // (a page had no force: a dashboard tour)
  $("cp-note").textContent = none || (S.me && (S.me.open || S.me.read_only)) ? ""
    : !can("get_attr") ? "reading attributes needs an operator, setting them an admin (the latest point is below)"
    : !can("set_attr") ? "setting attributes needs an admin" : "";
  const sel = $("cp-attr"), names = Object.keys(attrs).join("\n");
  if (sel._names !== names) { sel.innerHTML = Object.keys(attrs).map((k) => `<option>${esc(k)}</option>`).join(""); sel._names = names; }
}
$("cp-controls").addEventListener("click", (e) => {
  const op = e.target.dataset && e.target.dataset.op;
  if (!op) return;
  const slug = componentSlug(route().id), c = S.components[slug];
  const component = c && c.meta ? c.meta.name : slug, attr = $("cp-attr").value;
  const done = (r) => { if (r.success) { noteAttrs(slug, r.data); renderComponentPage(slug); } };
  if (op === "get_attr") { command(op, { component, attrs: [attr] }).then(done); return; }
  let val = $("cp-value").value;
  try { val = JSON.parse(val); } catch { /* a plain string */ }
  command(op, { component, attr, val, ...($("cp-force").checked ? { force: true } : {}) }).then(done);
});

window.renderPage = (d) => {
  const r = route();
  if (r.page === "job" && (d.has("job") || d.has("jobs") || d.has("component"))) renderJobPage();
  else if (r.page === "job" && d.has("presence")) renderTrouble();  // ages, by the page's clock
  if (r.page === "component" && (d.has("component") || d.has("pipelines"))) renderComponentPage(r.id);
};
