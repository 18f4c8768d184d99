// Studio Core's operator page: draws GET /api/ops every 10 s. Plain JavaScript,
// charts as SVG built here; nothing loaded from anywhere but this server.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const KEY_STORAGE = "studio.apiKey";

function headers() {
  const h = {};
  const key = localStorage.getItem(KEY_STORAGE);
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

function el(name, attrs = {}, parent = null) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.append(e);
  return e;
}

// A chart of series over time: lines (or bars), a y axis with a few ticks, time
// labels at both ends. Sized by the viewBox; CSS makes it fluid.
function chart(figure, times, series, { bars = false } = {}) {
  const W = 640, H = 200, L = 40, R = 8, T = 10, B = 24;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg" });
  const max = Math.max(1, ...series.flatMap((s) => s.values));
  const top = niceTop(max);
  const x = (i) => L + (times.length <= 1 ? 0 : (i / (times.length - 1)) * (W - L - R));
  const y = (v) => H - B - (v / top) * (H - T - B);
  for (const f of [0, 0.5, 1]) {
    const v = Math.round(top * f);
    el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }, svg);
    const t = el("text", { x: L - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, svg);
    t.textContent = String(v);
  }
  if (times.length) {
    const first = el("text", { x: L, y: H - 6, class: "tick" }, svg);
    first.textContent = clock(times[0]);
    const last = el("text", { x: W - R, y: H - 6, class: "tick", "text-anchor": "end" }, svg);
    last.textContent = clock(times[times.length - 1]);
  }
  series.forEach((s, k) => {
    if (bars) {
      // One slot per time (minute), the series side by side in it, at most 24 px each.
      const slot = (W - L - R) / Math.max(1, times.length);
      const w = Math.max(1, Math.min(24, slot / series.length - 2));
      const left = (i) => L + i * slot + (slot - w * series.length) / 2;
      s.values.forEach((v, i) => {
        if (!v) return;
        el("rect", { x: left(i) + k * w, y: y(v), width: w, height: H - B - y(v), class: `bar ${s.name}` }, svg);
      });
    } else if (s.values.length) {
      const d = s.values.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      el("path", { d, class: `line ${s.name}` }, svg);
    }
  });
  figure.replaceChildren(svg);
}

function niceTop(max) {
  const p = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 5, 10]) if (m * p >= max) return m * p;
  return 10 * p;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// Samples grouped into minutes, for "per minute" bars.
function perMinute(series) {
  const buckets = new Map();
  for (const p of series) {
    const m = Math.floor(p.t / 60000) * 60000;
    const b = buckets.get(m) || { t: m, finished: 0, failed: 0 };
    b.finished += p.finished;
    b.failed += p.failed;
    buckets.set(m, b);
  }
  return [...buckets.values()];
}

// Sends a steering request; the answer's body (or throws with the server's words).
async function post(path, body = {}) {
  const res = await fetch(path, {
    method: "POST",
    headers: { ...headers(), "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const v = await res.json().catch(() => ({}));
  if (!res.ok && res.status !== 202) throw new Error(v.error || `the server answered ${res.status}`);
  return v;
}

function showControlError(message) {
  $("control-error").textContent = message || "";
  $("control-error").hidden = !message;
}

const steering = { paused: { farm: false, backends: [] } };

function renderPaused(p) {
  steering.paused = p;
  const parts = [];
  if (p.farm) parts.push("the farm is paused: nothing new starts");
  if (p.backends.length) parts.push(`paused backends: ${p.backends.join(", ")}`);
  $("paused").textContent = parts.length ? parts.join(" · ") : "running: every backend takes work";
  $("paused").classList.toggle("bad", p.farm);
  $("pause").disabled = p.farm;
  $("resume").disabled = !p.farm && p.backends.length === 0;
}

async function steer(path, body) {
  showControlError("");
  try {
    const v = await post(path, body);
    renderPaused(v.paused || v);
    if (path.endsWith("/drain")) {
      $("paused").textContent = v.drained ? "drained: nothing runs; resume when done" : `still ${v.running} running (paused)`;
    }
  } catch (e) {
    showControlError(e.message);
  }
}

function renderUsage(month, today, keys) {
  const body = $("usage").querySelector("tbody");
  body.replaceChildren();
  const todays = new Map(today.groups.map((g) => [g.group, g]));
  const budgets = new Map((keys || []).map((k) => [k.id, k.limits && k.limits.gpu_seconds_per_day]));
  $("usage-empty").hidden = month.groups.length > 0;
  $("usage").hidden = month.groups.length === 0;
  for (const g of month.groups) {
    const tr = document.createElement("tr");
    const t = todays.get(g.group);
    const budget = budgets.get(g.group);
    for (const text of [g.group || "(no key)", String(g.jobs), g.gpu_seconds.toFixed(1), t ? t.gpu_seconds.toFixed(1) : "0.0", budget ? `${budget}` : "—"]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    if (budget && t && t.gpu_seconds >= budget) tr.classList.add("over");
    body.append(tr);
  }
}

function renderDead(list) {
  const body = $("dead").querySelector("tbody");
  body.replaceChildren();
  $("dead-empty").hidden = list.length > 0;
  $("dead").hidden = list.length === 0;
  $("requeue").style.display = list.length === 0 ? "none" : "";
  for (const d of list) {
    const tr = document.createElement("tr");
    for (const text of [d.job_id.slice(0, 8), d.error, d.failed_at ? new Date(d.failed_at).toLocaleString() : ""]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    tr.firstChild.title = d.job_id;
    body.append(tr);
  }
}

async function refreshSteering() {
  const get = async (path) => {
    const res = await fetch(path, { headers: headers() });
    return res.ok ? res.json() : null;
  };
  const today = new Date().toISOString().slice(0, 10);
  const [paused, dead, month, day, keys] = await Promise.all([
    get("/api/admin/pause"), get("/api/admin/dead?limit=50"), get("/api/usage?group_by=key"),
    get(`/api/usage?group_by=key&from=${today}`), get("/api/keys"),
  ]);
  if (paused) renderPaused(paused);
  if (dead) renderDead(dead.dead);
  if (month && day) renderUsage(month, day, Array.isArray(keys) ? keys : (keys && keys.keys));
}

function renderBackends(list) {
  const ul = $("backends");
  ul.replaceChildren();
  $("backends-empty").hidden = list.length > 0;
  for (const b of list) {
    const li = document.createElement("li");
    li.className = `backend ${b.state}`;
    li.dataset.url = b.url;
    const name = document.createElement("p");
    name.className = "backend-name";
    name.textContent = `${b.url} · ${b.device || "device unknown"}`;
    const state = document.createElement("p");
    state.className = "backend-state";
    state.textContent = `${b.state} · ${b.in_flight} in flight · ${b.done} done · worker ${b.worker}` +
      (b.restarts ? ` · ComfyUI restarted ${b.restarts}×` : "");
    const meter = document.createElement("meter");
    meter.min = 0; meter.max = 1; meter.value = b.utilization ?? 0;
    meter.setAttribute("aria-label", `utilization of ${b.url}`);
    const pct = document.createElement("span");
    pct.className = "utilization";
    pct.textContent = b.utilization == null ? "utilization: measuring…" : `utilization ${(b.utilization * 100).toFixed(0)} %`;
    const paused = steering.paused.backends.includes(b.url);
    const toggle = document.createElement("button");
    toggle.type = "button";
    toggle.className = "backend-pause";
    toggle.textContent = paused ? "Resume this backend" : "Pause this backend";
    toggle.addEventListener("click", () => steer(paused ? "/api/admin/resume" : "/api/admin/pause", { backend: b.url }).then(refresh));
    li.append(name, state, meter, pct, toggle);
    if (b.last_error) {
      // Red only while it is down; an up backend's old error is history.
      const err = document.createElement("p");
      err.className = b.state === "up" ? "past-error" : "error";
      err.textContent = b.state === "up" ? `last error (recovered): ${b.last_error}` : b.last_error;
      li.append(err);
    }
    ul.append(li);
  }
}

function renderFailures(groups) {
  const body = $("failures").querySelector("tbody");
  body.replaceChildren();
  $("failures-empty").hidden = groups.length > 0;
  $("failures").hidden = groups.length === 0;
  for (const g of groups) {
    const tr = document.createElement("tr");
    const count = document.createElement("td");
    count.textContent = String(g.count);
    const cause = document.createElement("td");
    cause.textContent = g.error;
    cause.title = g.cause;
    const last = document.createElement("td");
    last.textContent = g.last_at ? new Date(g.last_at).toLocaleString() : "";
    tr.append(count, cause, last);
    body.append(tr);
  }
}

async function refresh() {
  let res;
  try {
    res = await fetch("/api/ops", { headers: headers() });
  } catch (_) {
    $("updated").textContent = "server unreachable";
    $("updated").classList.add("bad");
    return;
  }
  if (res.status === 401 || res.status === 403) {
    $("key-panel").hidden = false;
    $("ops").hidden = true;
    $("key-why").textContent = res.status === 403
      ? "The key kept in this browser is not an admin key. Enter an admin key."
      : "This view needs an admin API key.";
    return;
  }
  if (!res.ok) {
    $("updated").textContent = `the server answered ${res.status}`;
    $("updated").classList.add("bad");
    return;
  }
  const v = await res.json();
  $("interval").textContent = String(v.interval_s);
  const times = v.series.map((p) => p.t);
  chart($("queue-chart"), times, [
    { name: "queued", values: v.series.map((p) => p.queued) },
    { name: "processing", values: v.series.map((p) => p.processing) },
    { name: "delayed", values: v.series.map((p) => p.delayed) },
  ]);
  const minutes = perMinute(v.series);
  chart($("tput-chart"), minutes.map((m) => m.t), [
    { name: "finished", values: minutes.map((m) => m.finished) },
    { name: "failed", values: minutes.map((m) => m.failed) },
  ], { bars: true });
  const last = minutes[minutes.length - 1];
  $("tput-now").textContent = last ? `${last.finished} finished, ${last.failed} failed this minute` : "no samples yet";
  await refreshSteering();
  renderBackends(v.backends);
  renderFailures(v.failures);
  const now = v.series[v.series.length - 1];
  $("updated").textContent = now
    ? `${now.workers} worker${now.workers === 1 ? "" : "s"} · ${now.queued} queued · ${now.processing} running · updated ${clock(Date.now())}`
    : "waiting for the first sample…";
  $("updated").classList.remove("bad");
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  localStorage.setItem(KEY_STORAGE, key);
  location.reload();
});

$("pause").addEventListener("click", () => steer("/api/admin/pause"));
$("resume").addEventListener("click", async () => {
  await steer("/api/admin/resume");
  for (const b of steering.paused.backends) await steer("/api/admin/resume", { backend: b });
  refresh();
});
$("drain").addEventListener("click", () => {
  $("paused").textContent = "draining: waiting for the running jobs…";
  steer("/api/admin/drain", { timeout: 600 });
});
$("requeue").addEventListener("click", async () => {
  showControlError("");
  try {
    const v = await post("/api/admin/dead/requeue", {});
    $("paused").textContent = `requeued ${v.requeued.length}${v.skipped.length ? `, ${v.skipped.length} could not be` : ""}`;
  } catch (e) {
    showControlError(e.message);
  }
  refresh();
});

refresh();
setInterval(refresh, 10000);
