// Studio Core's page. Plain JavaScript, no build step, no network beyond this server.
// Live updates come from one Server-Sent Events stream of all jobs (/api/events):
// browsers allow few connections per server, so not one stream per job. The stream
// is read with fetch, not EventSource, so it can carry the API key's header.
// With auth on, the page asks for a key and keeps it in localStorage.
"use strict";

const $ = (id) => document.getElementById(id);
const TERMINAL = new Set(["finished", "failed"]);
// Fields with their own inputs; every other declared parameter gets a generated one.
const OWN_INPUTS = new Set(["prompt", "negative_prompt", "seed"]);

const state = {
  workflows: [],
  jobs: new Map(), // job id -> card element
  batches: new Map(), // batch id -> { card, cells: job id -> cell, jobs: job id -> job }
  shownInGallery: new Set(),
  galleryCursor: null,
};

const KEY_STORAGE = "studio.apiKey";

function apiKey() {
  try { return localStorage.getItem(KEY_STORAGE) || ""; } catch (_) { return ""; }
}

function requestHeaders(extra) {
  // A header no web form can send: the server refuses state changes without it
  // (or a JSON body), so other sites cannot forge them.
  const headers = { "x-requested-with": "studio-page", ...(extra || {}) };
  const key = apiKey();
  if (key) headers.authorization = `Bearer ${key}`;
  return headers;
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: requestHeaders(options.headers) });
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  if (res.status === 401 && path.startsWith("/api/")) askForKey(body && body.error);
  return { status: res.status, body };
}

// ---------- the API key ----------

function askForKey(reason) {
  if (!$("key-panel").hidden) return;
  $("key-why").textContent = apiKey()
    ? `The key kept in this browser was refused (${reason || "unauthorized"}). Enter another.`
    : "This server needs an API key. Ask its operator for one (studio keys create).";
  $("key-panel").hidden = false;
  document.querySelector("main").hidden = true;
  $("key-input").focus();
}

function showKeyStatus() {
  const key = apiKey();
  $("key-status").hidden = !key;
  // The id part only (sk_<id>_…): enough to tell keys apart, nothing secret.
  const id = (key.match(/^sk_([0-9a-f]+)_/) || [])[1];
  $("key-label").textContent = key ? `key ${id || "(set)"}` : "";
}

async function useKey(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  const err = $("key-error");
  if (!key) {
    err.textContent = "Paste the key first.";
    err.hidden = false;
    return;
  }
  const res = await fetch("/api/workflows", { headers: { authorization: `Bearer ${key}` } });
  if (res.status === 401) {
    err.textContent = "The server does not accept this key.";
    err.hidden = false;
    return;
  }
  localStorage.setItem(KEY_STORAGE, key);
  location.reload();
}

function forgetKey() {
  localStorage.removeItem(KEY_STORAGE);
  location.reload();
}

// ---------- health ----------

async function refreshHealth() {
  const el = $("health");
  try {
    const { status, body } = await api("/health");
    const backends = (body && body.backends) || [];
    const up = backends.filter((b) => b.state === "up").length;
    let text = status === 200 ? `store: ${body.store}` : `store unavailable: ${body && body.error}`;
    if (backends.length) text += ` · ${up}/${backends.length} ComfyUI up`;
    el.textContent = text;
    el.classList.toggle("bad", status !== 200 || (backends.length > 0 && up === 0));
  } catch (e) {
    el.textContent = "server unreachable";
    el.classList.add("bad");
  }
}

// ---------- the form ----------

function currentWorkflow() {
  return state.workflows.find((w) => w.name === $("workflow").value);
}

function renderParams() {
  const wf = currentWorkflow();
  const box = $("params-fields");
  box.replaceChildren();
  $("workflow-description").textContent = wf ? wf.description : "";
  if (!wf) return;
  $("negative-row").hidden = !wf.params.some((p) => p.name === "negative_prompt");
  const promptParam = wf.params.find((p) => p.name === "prompt");
  $("prompt").maxLength = (promptParam && promptParam.max_length) || 10000;
  const shown = wf.params.filter((p) => !OWN_INPUTS.has(p.name));
  $("params").hidden = shown.length === 0;
  for (const p of shown) box.append(paramField(p, "param-", false));
}

// One parameter's input: a number, a text, a checkbox, a drop-down of choices, or
// a picture (a file picker that takes a dropped file). `preview`: shown only, as
// the form a workflow being published will get.
function paramField(p, prefix, preview) {
  const id = `${prefix}${p.name}`;
  const wrap = document.createElement("div");
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = p.name.replace(/_/g, " ");
  let input;
  if (p.type === "image" || p.type === "mask") {
    input = document.createElement("input");
    input.type = "file";
    input.accept = "image/png,image/jpeg,image/webp";
    input.id = id;
    input.dataset.param = p.name;
    input.dataset.type = p.type;
    if (p.description) input.title = p.description;
    if (preview) {
      input.disabled = true;
      wrap.append(label, input);
      return wrap;
    }
    // The file is uploaded (POST /api/uploads) when the job is submitted.
    const drop = document.createElement("div");
    drop.className = "drop";
    drop.textContent = p.type === "mask" ? "Drop a mask here (white: the part to change)" : "Drop a picture here";
    const img = document.createElement("img");
    img.className = "preview";
    img.alt = `${p.name} preview`;
    img.hidden = true;
    const show = (file) => {
      input.file = file;
      if (img.src) URL.revokeObjectURL(img.src);
      img.src = URL.createObjectURL(file);
      img.hidden = false;
      drop.textContent = file.name;
    };
    input.addEventListener("change", () => { if (input.files[0]) show(input.files[0]); });
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      const f = e.dataTransfer.files[0];
      if (f) show(f);
    });
    wrap.append(label, input, drop, img);
    return wrap;
  }
  if (p.type === "enum" || (p.choices && p.choices.length)) {
    // Enums, and model files the live backends have (from_backends).
    input = document.createElement("select");
    for (const c of p.choices || []) {
      const o = document.createElement("option");
      o.value = o.textContent = c;
      input.append(o);
    }
    if (p.default != null) input.value = p.default;
  } else if (p.type === "bool") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = p.default === true;
  } else {
    input = document.createElement("input");
    if (p.type === "int" || p.type === "float") {
      input.type = "number";
      input.step = p.type === "int" ? "1" : "any";
      if (p.min != null) input.min = p.min;
      if (p.max != null) input.max = p.max;
    } else if (p.max_length) {
      input.maxLength = p.max_length;
    }
    if (p.default != null) input.value = p.default;
  }
  input.id = id;
  input.dataset.param = p.name;
  input.dataset.type = p.type;
  input.disabled = preview;
  if (p.description) input.title = p.description;
  wrap.append(label, input);
  return wrap;
}

async function loadWorkflows() {
  const { status, body } = await api("/api/workflows");
  if (status !== 200) return;
  state.workflows = body.workflows;
  const select = $("workflow");
  select.replaceChildren();
  for (const w of body.workflows) {
    const o = document.createElement("option");
    o.value = w.name;
    o.textContent = w.default ? `${w.name} (default)` : w.name;
    if (w.version) o.textContent += ` v${w.version}`;
    if (w.runnable === false) {
      // No live backend has its nodes or model files: shown, but not chosen for you.
      o.textContent += " — no backend can run it";
      o.dataset.unrunnable = "1";
    }
    select.append(o);
  }
  const runnable = (name) => body.workflows.some((w) => w.name === name && w.runnable !== false);
  const saved = localStorage.getItem("studio.workflow");
  const firstRunnable = (body.workflows.find((w) => w.runnable !== false) || {}).name;
  select.value = [saved, body.default, firstRunnable].find((n) => n && runnable(n)) || body.default;
  if (!currentWorkflow()) select.value = body.default;
  renderParams();
}

function randomSeed() {
  // Up to 2^53 - 1, exact in JavaScript numbers.
  const hi = Math.floor(Math.random() * 0x200000);
  const lo = Math.floor(Math.random() * 0x100000000);
  return String(hi * 0x100000000 + lo);
}

function showFormError(message) {
  const el = $("form-error");
  el.textContent = message || "";
  el.hidden = !message;
}

async function submit(event, count = 0) {
  event.preventDefault();
  showFormError("");
  const prompt = $("prompt").value;
  if (!prompt.trim()) {
    showFormError("Write a prompt first.");
    $("prompt").focus();
    return;
  }
  const body = { prompt, workflow: $("workflow").value };
  if ($("output-format").value !== "png") body.output_format = $("output-format").value;
  const webhook = $("webhook-url").value.trim();
  if (webhook) body.webhook_url = webhook;
  if (!$("negative-row").hidden) body.negative_prompt = $("negative_prompt").value;
  const pictures = [];
  for (const input of $("params-fields").querySelectorAll("[data-param]")) {
    const name = input.dataset.param;
    if (input.dataset.type === "image" || input.dataset.type === "mask") {
      const file = input.file || input.files[0];
      if (!file) {
        showFormError(`Choose a picture for ${name.replace(/_/g, " ")}.`);
        return;
      }
      pictures.push([name, file]);
    } else if (input.dataset.type === "bool") body[name] = input.checked;
    else if (input.value === "") continue;
    else if (input.dataset.type === "int" || input.dataset.type === "float") body[name] = Number(input.value);
    else body[name] = input.value;
  }
  // The seed is written as typed digits: 64-bit seeds do not fit a JavaScript number.
  // A batch counts seeds up from its first: one JavaScript numbers hold exactly.
  const seed = $("seed").value.trim() || (count ? randomSeed() : "");
  if (seed && !/^[0-9]+$/.test(seed)) {
    showFormError("The seed must be a whole number (or empty for a random one).");
    $("seed").focus();
    return;
  }
  let json = JSON.stringify(body);
  if (seed) json = json.slice(0, -1) + `,"seed":${seed}}`;
  const button = $(count ? "variations" : "generate");
  button.disabled = true;
  try {
    for (const [name, file] of pictures) {
      const up = await api("/api/uploads", {
        method: "POST",
        headers: { "content-type": file.type || "application/octet-stream" },
        body: file,
      });
      if (up.status !== 201) {
        showFormError(`${name}: ${(up.body && up.body.error) || `the server answered ${up.status}`}`);
        return;
      }
      body[name] = up.body.upload_id;
    }
    json = JSON.stringify(body);
    if (seed) json = json.slice(0, -1) + `,"seed":${seed}}`;
    if (count) json = json.slice(0, -1) + `,"count":${count}}`;
    const { status, body: answer } = await api(count ? "/api/batches" : "/api/generate", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: json,
    });
    if (status !== 202) {
      showFormError((answer && answer.error) || `The server answered ${status}.`);
      return;
    }
    localStorage.setItem("studio.workflow", body.workflow);
    if (count) {
      await showBatch(answer.batch_id, prompt);
      return;
    }
    upsertJob({ job_id: answer.job_id, status: "queued", progress: 0, prompt, workflow: answer.workflow, seed: answer.seed, error: "", outputs: [] }, true);
    const fresh = await api(`/api/status/${answer.job_id}`);
    if (fresh.status === 200) upsertJob(fresh.body);
  } catch (e) {
    showFormError("Cannot reach the server.");
  } finally {
    button.disabled = false;
  }
}

// ---------- jobs ----------

function plainError(error) {
  if (!error) return "Something went wrong.";
  if (error === "cancelled") return "Cancelled.";
  let m = error.match(/^gave up after (\d+) attempts?; last error: (.*)$/s);
  if (m) return `Gave up after ${m[1]} tries. Last problem: ${plainError(m[2])}`;
  m = error.match(/^ComfyUI rejected the workflow: (.*)$/s);
  if (m) return `The workflow was refused by ComfyUI: ${m[1]}`;
  m = error.match(/^ComfyUI failed while running (.*)$/s);
  if (m) return `ComfyUI failed while running ${m[1]}`;
  return error;
}

// Seconds in words: "40 s", "3 min", "2 h".
function duration(s) {
  if (s < 90) return `${Math.max(1, Math.round(s))} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

function stateWords(job) {
  switch (job.status) {
    case "queued":
      if (job.retry_at) return `Waiting to retry after a problem: ${plainError(job.last_error)}`;
      if (job.queue_position != null) {
        const line = job.queue_position === 0 ? "Next in line" : `Waiting in line — ${job.queue_position} ahead`;
        return job.eta_seconds ? `${line}, starts in about ${duration(job.eta_seconds)}` : line;
      }
      return "Waiting in line";
    case "processing":
      return job.cancel_requested ? "Cancelling…" : `Generating… ${job.progress}%`;
    case "finished":
      return "Done";
    case "failed":
      return job.error === "cancelled" ? "Cancelled" : `Failed: ${plainError(job.error)}`;
    default:
      return job.status;
  }
}

function upsertJob(job, create = false) {
  if (job.batch_id && state.batches.has(job.batch_id)) {
    updateBatchCell(job);
    return;
  }
  let card = state.jobs.get(job.job_id);
  if (!card) {
    if (!create) {
      // Someone else's job: its pictures still belong in the gallery.
      if (job.status === "finished") addToGallery(job, true);
      return;
    }
    card = document.createElement("li");
    card.className = "job";
    card.dataset.jobId = job.job_id;
    card.innerHTML = `
      <p class="prompt"></p>
      <div class="side"></div>
      <p class="meta"></p>
      <progress max="100" value="0"></progress>
      <p class="state" aria-live="polite"></p>
      <p class="webhook hint" hidden></p>`;
    card.querySelector("progress").setAttribute("aria-label", "progress");
    state.jobs.set(job.job_id, card);
    $("jobs").prepend(card);
    $("jobs-empty").hidden = true;
  }
  // Answers and events can cross: never let an older view replace a newer one.
  const last = Number(card.dataset.rev || 0);
  if (job.rev != null && job.rev < last) return;
  if (job.rev != null) card.dataset.rev = job.rev;
  card.className = `job ${job.status}`;
  card.dataset.status = job.status;
  card.querySelector(".prompt").textContent = job.prompt || "(no prompt)";
  card.querySelector(".meta").textContent = `${job.workflow || ""} · seed ${job.seed ?? "random"} · ${job.job_id.slice(0, 8)}`;
  const bar = card.querySelector("progress");
  bar.value = job.progress || 0;
  bar.hidden = TERMINAL.has(job.status);
  card.querySelector(".state").textContent = stateWords(job);
  showWebhook(card, job);
  const side = card.querySelector(".side");
  side.replaceChildren();
  if (!TERMINAL.has(job.status) && !job.cancel_requested) {
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "cancel";
    cancel.textContent = "Cancel";
    cancel.setAttribute("aria-label", `Cancel “${(job.prompt || "").slice(0, 40)}”`);
    cancel.addEventListener("click", () => cancelJob(job.job_id, cancel));
    side.append(cancel);
  }
  if (!TERMINAL.has(job.status) && card.dataset.preview) side.append(previewImage(card));
  if (TERMINAL.has(job.status) && card.dataset.preview) {
    URL.revokeObjectURL(card.dataset.preview);
    delete card.dataset.preview;
  }
  if (job.status === "finished") {
    const image = (job.outputs || []).find((o) => o.kind === "image");
    if (image) {
      const a = document.createElement("a");
      a.className = "thumb";
      a.href = image.url;
      a.addEventListener("click", (e) => { e.preventDefault(); openViewer(image, job); });
      const img = document.createElement("img");
      img.src = thumbUrl(image, 128);
      img.alt = `Result of “${job.prompt}”`;
      a.append(img);
      side.append(a);
    }
    addToGallery(job, true);
  }
}

// A job's webhook: how its delivery went (GET /api/status shows it; events do
// not carry it, so a job that ends is read again a moment later).
function showWebhook(card, job) {
  const line = card.querySelector(".webhook");
  const w = job.webhook;
  if (w) {
    const words = {
      waiting: "waiting for the job",
      retrying: `retrying (${w.attempts} failed): ${w.last_error}`,
      delivered: "delivered",
      skipped: "nothing to send",
      failed: `failed: ${w.last_error}`,
      gone: "the receiver said 410 Gone",
      refused: `refused: ${w.last_error}`,
    }[w.state] || w.state;
    let host = w.url;
    try { host = new URL(w.url).host; } catch (e) { /* shown as given */ }
    line.textContent = `Webhook to ${host}: ${words}`;
    line.hidden = false;
  }
  const wanted = job.params && job.params.webhook_url;
  const settled = w && !["waiting", "retrying"].includes(w.state);
  // A few looks at most: a receiver that keeps failing is retried for hours.
  const looks = Number(card.dataset.webhookLooks || 0);
  if (wanted && TERMINAL.has(job.status) && !settled && !card.dataset.webhookLook && looks < 5) {
    card.dataset.webhookLook = "1";
    card.dataset.webhookLooks = looks + 1;
    setTimeout(async () => {
      delete card.dataset.webhookLook;
      const fresh = await api(`/api/status/${job.job_id}`);
      if (fresh.status === 200) upsertJob(fresh.body);
    }, 1500);
  }
}

// A thumbnail of a stored picture (the server makes it once per width: 128, 256
// or 512); other outputs as they are.
// ---------- batches ----------

// A batch as one card: a grid with a cell per job (its picture once done), a
// line of counts, and one Cancel for what has not ended.
async function showBatch(id, prompt) {
  const { status, body: batch } = await api(`/api/batches/${id}`);
  if (status !== 200) {
    showFormError((batch && batch.error) || `The server answered ${status}.`);
    return;
  }
  if (state.batches.has(id)) return;
  const card = document.createElement("li");
  card.className = "job batch";
  card.dataset.batchId = id;
  card.innerHTML = `
    <p class="prompt"></p>
    <div class="side"><button type="button" class="cancel">Cancel all</button></div>
    <p class="meta"></p>
    <progress max="100" value="0"></progress>
    <p class="state" aria-live="polite"></p>
    <ul class="batch-grid"></ul>`;
  card.querySelector(".prompt").textContent = prompt || "(no prompt)";
  card.querySelector(".meta").textContent = `${batch.workflow} · batch of ${batch.total} · ${id.slice(0, 8)}`;
  card.querySelector("progress").setAttribute("aria-label", "batch progress");
  const cancel = card.querySelector(".cancel");
  cancel.setAttribute("aria-label", `Cancel the batch “${(prompt || "").slice(0, 40)}”`);
  cancel.addEventListener("click", () => cancelBatch(id, cancel));
  const entry = { card, cells: new Map(), jobs: new Map() };
  for (const job of batch.jobs) {
    const cell = document.createElement("li");
    cell.className = "cell";
    cell.dataset.jobId = job.job_id;
    card.querySelector(".batch-grid").append(cell);
    entry.cells.set(job.job_id, cell);
  }
  state.batches.set(id, entry);
  $("jobs").prepend(card);
  $("jobs-empty").hidden = true;
  for (const job of batch.jobs) updateBatchCell(job);
}

function updateBatchCell(job) {
  const entry = state.batches.get(job.batch_id);
  const cell = entry.cells.get(job.job_id);
  if (!cell) return;
  const last = entry.jobs.get(job.job_id);
  if (last && job.rev != null && last.rev != null && job.rev < last.rev) return;
  entry.jobs.set(job.job_id, job);
  cell.className = `cell ${job.status}`;
  cell.dataset.status = job.status;
  cell.replaceChildren();
  const image = job.status === "finished" && (job.outputs || []).find((o) => o.kind === "image");
  if (image) {
    const a = document.createElement("a");
    a.className = "thumb";
    a.href = image.url;
    a.addEventListener("click", (e) => { e.preventDefault(); openViewer(image, job); });
    const img = document.createElement("img");
    img.src = thumbUrl(image, 256);
    img.alt = `Seed ${job.seed} of “${job.prompt}”`;
    a.append(img);
    cell.append(a);
    addToGallery(job, true);
  } else {
    const words = document.createElement("span");
    words.textContent = job.status === "processing" ? `${job.progress || 0}%` : stateWords(job);
    cell.append(words);
  }
  const all = [...entry.jobs.values()];
  const count = (s) => all.filter((j) => j.status === s).length;
  const total = entry.cells.size;
  const ended = count("finished") + count("failed");
  const progress = Math.round(all.reduce((sum, j) => sum + (TERMINAL.has(j.status) ? 100 : j.progress || 0), 0) / total);
  const card = entry.card;
  card.querySelector("progress").value = progress;
  card.querySelector("progress").hidden = ended === total;
  card.querySelector(".state").textContent = ended === total
    ? `Done: ${count("finished")} of ${total} pictures${count("failed") ? `, ${count("failed")} failed or cancelled` : ""}`
    : `${count("finished")} of ${total} done · ${count("processing")} generating · ${count("queued")} waiting`;
  card.dataset.status = ended === total ? "finished" : "processing";
  card.querySelector(".cancel").style.display = ended === total ? "none" : "";
}

async function cancelBatch(id, button) {
  button.disabled = true;
  const { status, body } = await api(`/api/batches/${id}/cancel`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: "{}",
  });
  if (status === 200) for (const job of body.jobs) updateBatchCell(job);
  button.disabled = false;
}

function thumbUrl(output, width) {
  if (!/\.(png|jpe?g|webp)$/i.test(output.filename || "")) return output.url;
  return `${output.url}${output.url.includes("?") ? "&" : "?"}w=${width}`;
}

// ---------- previews ----------

function previewImage(card) {
  const img = document.createElement("img");
  img.className = "preview";
  img.src = card.dataset.preview;
  img.alt = "Preview of the picture forming";
  return img;
}

// `event: preview`: the picture as it forms. Fetched with the key's header (an
// <img> cannot send one), one at a time per card, the newest wins.
async function showPreview(ev) {
  const card = state.jobs.get(ev.job_id);
  if (!card || TERMINAL.has(card.dataset.status)) return;
  if (Number(card.dataset.previewSeq || 0) >= ev.seq || card.dataset.previewLoading) return;
  card.dataset.previewLoading = "1";
  try {
    const res = await fetch(ev.url, { headers: requestHeaders() });
    if (!res.ok) return;
    const blob = await res.blob();
    if (TERMINAL.has(card.dataset.status)) return;
    if (card.dataset.preview) URL.revokeObjectURL(card.dataset.preview);
    card.dataset.preview = URL.createObjectURL(blob);
    card.dataset.previewSeq = String(ev.seq);
    const old = card.querySelector("img.preview");
    if (old) old.src = card.dataset.preview;
    else card.querySelector(".side").append(previewImage(card));
  } catch (_) {
    /* a preview is a nicety */
  } finally {
    delete card.dataset.previewLoading;
  }
}

async function cancelJob(id, button) {
  button.disabled = true;
  const { status, body } = await api(`/api/jobs/${id}/cancel`, { method: "POST" });
  if (status === 200 || status === 202) upsertJob(body);
  else if (body && body.error) showFormError(body.error);
}

// ---------- gallery ----------

function addToGallery(job, newest) {
  for (const o of job.outputs || []) {
    if (o.kind !== "image" || state.shownInGallery.has(o.url)) continue;
    state.shownInGallery.add(o.url);
    const li = document.createElement("li");
    li.dataset.jobId = job.job_id;
    const button = document.createElement("button");
    button.type = "button";
    button.setAttribute("aria-label", `Open “${job.prompt}” full size`);
    const figure = document.createElement("figure");
    figure.style.margin = "0";
    const img = document.createElement("img");
    img.src = thumbUrl(o, 256);
    img.alt = job.prompt || "";
    img.loading = "lazy";
    const cap = document.createElement("figcaption");
    cap.textContent = job.prompt || "";
    figure.append(img, cap);
    button.append(figure);
    button.addEventListener("click", () => openViewer(o, job));
    li.append(button);
    if (newest) $("gallery").prepend(li);
    else $("gallery").append(li);
    $("gallery-empty").hidden = true;
  }
}

async function loadGallery() {
  const cursor = state.galleryCursor ? `&cursor=${encodeURIComponent(state.galleryCursor)}` : "";
  const { status, body } = await api(`/api/jobs?status=finished&limit=24${cursor}`);
  if (status !== 200) return;
  for (const job of body.jobs) addToGallery(job, false);
  state.galleryCursor = body.next_cursor;
  $("more").hidden = !body.next_cursor;
}

function openViewer(output, job) {
  $("viewer-img").src = output.url;
  $("viewer-img").alt = job.prompt || "";
  $("viewer-caption").textContent = `${job.prompt || ""} — ${job.workflow || ""}, seed ${job.seed ?? ""}`;
  $("viewer-download").href = output.url;
  $("viewer-download").setAttribute("download", output.filename || "");
  $("viewer").showModal();
  $("viewer-close").focus();
}

// ---------- live events ----------

// Server-Sent Events over fetch: reconnects with a growing pause (1 s to 30 s),
// and after each (re)connect re-reads the jobs still open, as changes may have
// been missed meanwhile.
async function connectEvents() {
  let pause = 1000;
  for (;;) {
    try {
      const res = await fetch("/api/events", { headers: requestHeaders({ accept: "text/event-stream" }) });
      if (res.status === 401) { askForKey(); return; }
      if (res.ok && res.body) {
        pause = 1000;
        refreshOpenJobs();
        await readEvents(res.body, (type, data) => {
          if (type === "job") upsertJob(JSON.parse(data));
          else if (type === "preview") showPreview(JSON.parse(data));
        });
      }
    } catch (_) { /* the server went away; try again */ }
    await new Promise((r) => setTimeout(r, pause));
    pause = Math.min(pause * 2, 30000);
  }
}

// Parses an event stream (the HTML standard's Server-Sent Events format):
// "event:" and "data:" lines, a blank line ends an event, ":" lines are comments.
async function readEvents(stream, onEvent) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let nl;
    while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
      // A lone CR at the end may be the first half of a CRLF still on its way.
      if (buffer[nl] === "\r" && nl === buffer.length - 1) break;
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") {
        if (data.length) onEvent(type, data.join("\n"));
        type = "message";
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? "" : line.slice(colon + 1);
      if (val.startsWith(" ")) val = val.slice(1);
      if (field === "event") type = val;
      else if (field === "data") data.push(val);
    }
  }
}

async function refreshOpenJobs() {
  for (const [id, card] of state.jobs) {
    if (TERMINAL.has(card.dataset.status)) continue;
    const { status, body } = await api(`/api/status/${id}`);
    if (status === 200) upsertJob(body);
  }
  for (const [id, entry] of state.batches) {
    if (entry.card.dataset.status === "finished") continue;
    const { status, body } = await api(`/api/batches/${id}`);
    if (status === 200) for (const job of body.jobs) updateBatchCell(job);
  }
}

async function loadActiveJobs() {
  for (const s of ["queued", "processing"]) {
    const { status, body } = await api(`/api/jobs?status=${s}&limit=20`);
    if (status !== 200) continue;
    for (const job of body.jobs.reverse()) {
      // A batch's jobs are shown together, as its grid.
      if (job.batch_id) {
        if (!state.batches.has(job.batch_id)) await showBatch(job.batch_id, job.prompt);
        continue;
      }
      upsertJob(job, true);
    }
  }
}

// ---------- publishing a workflow ----------

const MAX_WORKFLOW_BYTES = 4 * 1024 * 1024;
const draft = { workflow: null, timer: 0, seq: 0 };

function showPublishError(message) {
  $("wf-error").textContent = message || "";
  $("wf-error").hidden = !message;
}

// A name from a file name: `Portrait v2.json` → `portrait-v2`.
function nameFromFile(file) {
  return file.name.replace(/\.json$/i, "").toLowerCase()
    .replace(/[^a-z0-9_-]+/g, "-").replace(/^[-_]+|-+$/g, "").slice(0, 64);
}

async function readWorkflowFile(file) {
  showPublishError("");
  $("wf-form").hidden = true;
  $("wf-publish").disabled = true;
  draft.workflow = null;
  if (file.size > MAX_WORKFLOW_BYTES) {
    showPublishError(`${file.name} is ${Math.round(file.size / 1048576)} MiB; at most 4 MiB are taken.`);
    return;
  }
  let parsed;
  try {
    parsed = JSON.parse(await file.text());
  } catch (e) {
    showPublishError(`${file.name} is not a workflow (not JSON: ${e.message}).`);
    return;
  }
  draft.workflow = parsed;
  $("wf-drop").textContent = file.name;
  if (!$("wf-name").value) $("wf-name").value = nameFromFile(file);
  await previewWorkflow();
}

// Asks the server what publishing would make (a dry run: nothing stored) and
// shows the form the workflow gets.
async function previewWorkflow() {
  if (!draft.workflow) return;
  const seq = ++draft.seq;
  const body = { name: $("wf-name").value.trim(), workflow: draft.workflow };
  const description = $("wf-description").value.trim();
  if (description) body.description = description;
  const { status, body: res } = await api("/api/workflows/check", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (seq !== draft.seq) return; // a newer preview is on its way
  if (status !== 200) {
    $("wf-form").hidden = true;
    $("wf-publish").disabled = true;
    $("wf-summary").textContent = "";
    showPublishError((res && res.error) || `The server answered ${status}.`);
    return;
  }
  showPublishError("");
  const nodes = Object.keys(res.graph || {}).length;
  const models = Object.values((res.requirements && res.requirements.models) || {}).flat();
  $("wf-summary").textContent = `${nodes} nodes${res.converted ? ", converted from ComfyUI's UI format" : ""}` +
    (models.length ? `; needs ${models.join(", ")}` : "; needs no model files") + ".";
  const params = Object.entries(res.params || {}).map(([name, p]) => ({ name, ...p }));
  const box = $("wf-params");
  box.replaceChildren(...params.map((p) => paramField(p, "wf-param-", true)));
  $("wf-form").hidden = params.length === 0;
  $("wf-publish").disabled = false;
}

async function publishWorkflow() {
  if (!draft.workflow) return;
  const button = $("wf-publish");
  button.disabled = true;
  const body = { name: $("wf-name").value.trim(), workflow: draft.workflow };
  const description = $("wf-description").value.trim();
  if (description) body.description = description;
  const { status, body: res } = await api("/api/workflows", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (status !== 201) {
    button.disabled = false;
    showPublishError((res && res.error) || `The server answered ${status}.`);
    return;
  }
  $("wf-summary").textContent = `Published ${res.name} v${res.version}: every machine runs it from now on.`;
  try { localStorage.setItem("studio.workflow", res.name); } catch (_) { /* private mode */ }
  await loadWorkflows();
  $("workflow").value = res.name;
  renderParams();
}

function schedulePreview() {
  clearTimeout(draft.timer);
  draft.timer = setTimeout(previewWorkflow, 300);
}

$("wf-file").addEventListener("change", () => { if ($("wf-file").files[0]) readWorkflowFile($("wf-file").files[0]); });
$("wf-drop").addEventListener("click", () => $("wf-file").click());
$("wf-drop").addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("wf-file").click(); } });
$("wf-drop").addEventListener("dragover", (e) => { e.preventDefault(); $("wf-drop").classList.add("over"); });
$("wf-drop").addEventListener("dragleave", () => $("wf-drop").classList.remove("over"));
$("wf-drop").addEventListener("drop", (e) => {
  e.preventDefault();
  $("wf-drop").classList.remove("over");
  const f = e.dataTransfer.files[0];
  if (f) { $("publish-box").open = true; readWorkflowFile(f); }
});
$("wf-name").addEventListener("input", schedulePreview);
$("wf-description").addEventListener("input", schedulePreview);
$("wf-publish").addEventListener("click", publishWorkflow);

// ---------- start ----------

$("form").addEventListener("submit", submit);
$("variations").addEventListener("click", (e) => submit(e, 4));
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("form").requestSubmit();
});
$("workflow").addEventListener("change", renderParams);
$("dice").addEventListener("click", () => { $("seed").value = randomSeed(); });
$("more").addEventListener("click", loadGallery);
$("viewer-close").addEventListener("click", () => $("viewer").close());
$("viewer").addEventListener("click", (e) => { if (e.target === $("viewer")) $("viewer").close(); });
$("key-form").addEventListener("submit", useKey);
$("key-forget").addEventListener("click", forgetKey);

showKeyStatus();

connectEvents();
loadWorkflows();
loadActiveJobs();
loadGallery();
refreshHealth();
setInterval(refreshHealth, 15000);
