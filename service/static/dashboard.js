// dnnq dashboard: hash-routed views over the /v1 HTTP API. No framework, no build step.
"use strict";

const $ = (sel) => document.querySelector(sel);
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const CANCELLABLE = new Set(["queued", "running"]);  // the only states POST /cancel accepts
const KEY_STORAGE = "dnnq.apiKey";
let stopView = () => {};  // tears down the current view's timers / event stream
let routeCount = 0;       // a view that finishes loading after the user moved on stops itself

const ID_RE = /^[0-9a-f]{24,32}$/;  // job, dataset and sweep ids (workers/keys.py ID_RE)

// ---- API ---------------------------------------------------------------------------------
// The key lives in sessionStorage: this tab only, gone when it closes, never written to disk. A key an
// older dashboard left in localStorage moves there once, so it does not stay on disk for good.
if (localStorage.getItem(KEY_STORAGE) !== null) {
  if (!sessionStorage.getItem(KEY_STORAGE)) sessionStorage.setItem(KEY_STORAGE, localStorage.getItem(KEY_STORAGE));
  localStorage.removeItem(KEY_STORAGE);
}
const apiKey = () => sessionStorage.getItem(KEY_STORAGE) || "";

class ApiError extends Error {}

async function api(path, { method = "GET", body, form, raw = false } = {}) {
  const headers = {};
  if (apiKey()) headers.Authorization = "Bearer " + apiKey();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: form || (body !== undefined ? JSON.stringify(body) : undefined) });
  if (!res.ok) throw new ApiError(await problemText(res));
  return raw ? res : res.json();
}

// problem+json -> one readable line (+ the field errors of a 422).
async function problemText(res) {
  let p = {};
  try { p = await res.json(); } catch (_) { /* not JSON */ }
  let text = p.detail || p.title || `${res.status} ${res.statusText}`;
  if (Array.isArray(p.errors) && p.errors.length) {
    text += " — " + p.errors.map((e) => {
      const field = e.field || (Array.isArray(e.loc) ? e.loc.join(".") : e.loc) || "";
      return (field ? field + ": " : "") + (e.message || e.msg || "");
    }).join("; ");
  }
  if (res.status === 401) text += " Paste your API key in the field at the top and press Save.";
  return text;
}

function showMessage(text, kind = "error") {
  const box = $("#message");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
}
const clearMessage = () => showMessage("");
const report = (err) => showMessage(err instanceof ApiError ? err.message : "Cannot reach the API: " + err.message);

// ---- small helpers -----------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}
const fmt = (x, digits = 4) => (x === null || x === undefined || Number.isNaN(x) ? "–" : String(Number(Number(x).toPrecision(digits))));
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %");

function age(iso) {
  if (!iso) return "–";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return Math.round(s) + " s";
  if (s < 3600) return Math.round(s / 60) + " min";
  if (s < 86400) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}

function seconds(fromIso, toIso) {
  return fromIso && toIso ? fmt((Date.parse(toIso) - Date.parse(fromIso)) / 1000, 3) + " s" : "–";
}

function layersOf(spec) {
  const m = (spec && spec.model) || {};
  const hidden = (m.hidden_layers || []).join("-") || "none";
  return `${hidden} · ${m.hidden_activation || "relu"} → ${m.output || "sigmoid"}`;
}

function facts(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

// ---- charts (SVG) ------------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  return n;
}

// Axis ticks at round numbers: a step of 1, 2, 2.5 or 5 x 10^k giving about `count` intervals;
// the ticks cover [lo, hi] (the first <= lo, the last >= hi).
function niceTicks(lo, hi, count = 4) {
  const raw = (hi - lo) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => Number((m * power).toPrecision(12))).find((s) => s >= raw * (1 - 1e-9));
  const first = Math.floor(lo / step + 1e-9), last = Math.ceil(hi / step - 1e-9);
  const ticks = [];
  for (let k = first; k <= last; k++) ticks.push(Number((k * step).toPrecision(12)));  // 0.30000000000000004 -> 0.3
  return { ticks, step };
}

// A tick label with as many decimals as the step needs, and no more.
function tickLabel(v, step) {
  const power = Math.floor(Math.log10(step) + 1e-9);
  const mantissa = Math.round((step / 10 ** power) * 10) / 10;  // 1, 2, 2.5 or 5
  const decimals = Math.max(0, -power + (Number.isInteger(mantissa) ? 0 : 1));
  return v.toFixed(Math.min(decimals, 12));
}

// series: [{label, color, points: [[epoch, value], ...]}]; draws axes, ticks, lines and a legend.
function drawChart(svg, series, { yMin, yMax } = {}) {
  const W = 520, H = 270, L = 56, R = 24, T = 26, B = 36;  // T leaves room for the legend, R for the last x label
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const all = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[1]));
  svg.dataset.points = String(series[0] ? series[0].points.length : 0);
  if (!all.length) {
    svg.append(Object.assign(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted" }), { textContent: "waiting for the first epoch…" }));
    return;
  }
  const xMax = Math.max(2, ...all.map((p) => p[0]));
  let lo = yMin ?? Math.min(...all.map((p) => p[1]));
  let hi = yMax ?? Math.max(...all.map((p) => p[1]));
  if (hi - lo < 1e-12) { lo -= 0.5; hi += 0.5; }
  const yTicks = niceTicks(lo, hi);
  lo = yTicks.ticks[0]; hi = yTicks.ticks[yTicks.ticks.length - 1];  // the axis spans whole ticks
  const x = (e) => L + ((e - 1) / (xMax - 1)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);

  for (const v of yTicks.ticks) {  // horizontal grid + y labels
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(Object.assign(svgEl("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "y-tick" }), { textContent: tickLabel(v, yTicks.step) }));
  }
  const xStep = Math.max(1, niceTicks(1, xMax, 5).step);  // epochs: whole numbers
  const xs = [];
  for (let e = Math.ceil(1 / xStep) * xStep; e <= xMax; e += xStep) xs.push(e);
  if (xs[0] !== 1 && (xs[0] - 1) / (xMax - 1) > 0.08) xs.unshift(1);  // the first epoch, unless a tick is next to it
  for (const e of xs) {  // x labels; the rightmost ends at its tick, so it stays inside the chart
    const anchor = x(e) > W - R - 20 ? "end" : "middle";
    svg.append(Object.assign(svgEl("text", { x: x(e), y: H - B + 16, "text-anchor": anchor, class: "x-tick" }), { textContent: e }));
  }
  svg.append(Object.assign(svgEl("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", class: "muted" }), { textContent: "epoch" }));
  svg.append(svgEl("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "frame" }));

  series.forEach((s, i) => {
    const pts = s.points.filter((p) => Number.isFinite(p[1]));
    if (!pts.length) return;
    svg.append(svgEl("polyline", { points: pts.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "), stroke: s.color, class: "series" }));
    const lx = L + i * 170;  // legend above the plot, one entry per series, never over a line
    svg.append(svgEl("rect", { x: lx, y: 6, width: 10, height: 10, fill: s.color }));
    svg.append(Object.assign(svgEl("text", { x: lx + 15, y: 15 }), { textContent: s.label }));
  });
}

function drawCurves(history) {
  const pick = (key) => history.filter((h) => h[key] !== null && h[key] !== undefined).map((h) => [h.epoch, h[key]]);
  drawChart($("#loss-chart"), [
    { label: "training loss", color: "#2563eb", points: pick("loss") },
    { label: "validation loss", color: "#dc2626", points: pick("val_loss") },
  ]);
  drawChart($("#accuracy-chart"), [
    { label: "training accuracy", color: "#2563eb", points: pick("accuracy") },
    { label: "validation accuracy", color: "#dc2626", points: pick("val_accuracy") },
  ], { yMin: 0, yMax: 1 });
}

// ---- dataset names -----------------------------------------------------------------------
const datasetNames = new Map();  // id -> name (null: asked, not found)

// Learn the names of these dataset ids (one list request when any is new).
async function learnDatasetNames(ids) {
  if (!ids.some((id) => id && !datasetNames.has(id))) return;
  const page = await api("/v1/datasets?limit=500");
  for (const d of page.items) datasetNames.set(d.id, d.name);
  for (const id of ids) if (id && !datasetNames.has(id)) datasetNames.set(id, null);
}

// A link to the dataset, labelled with its name (its short id while the name is unknown).
function datasetLink(id) {
  if (!id) return "–";
  return el("a", { href: "#/datasets/" + id, title: id }, datasetNames.get(id) || id.slice(0, 8));
}

// ---- views -------------------------------------------------------------------------------
async function jobsView() {
  const refresh = async () => {
    const status = $("#status-filter").value;
    try {
      const page = await api("/v1/jobs?limit=100" + (status ? "&status=" + status : ""));
      try { await learnDatasetNames(page.items.map((j) => j.dataset_id)); } catch (_) { /* short ids then */ }
      $("#jobs-total").textContent = `${page.total} job${page.total === 1 ? "" : "s"}`;
      $("#jobs-empty").hidden = page.items.length > 0;
      $("#jobs-table tbody").replaceChildren(...page.items.map((j) => {
        const m = j.metrics || {}, p = j.progress || {};
        return el("tr", {},
          el("td", {}, el("a", { href: "#/jobs/" + j.id }, j.id.slice(0, 8))),
          el("td", {}, el("span", { class: "badge " + j.status }, j.status)),
          el("td", {}, datasetLink(j.dataset_id)),
          el("td", {}, layersOf(j.spec)), el("td", {}, j.device || "–"), el("td", {}, age(j.created_at)),
          el("td", {}, p.epoch ? `${p.epoch}/${p.epochs}` : "–"),
          el("td", {}, fmt(m.final_loss ?? p.loss)), el("td", {}, pct(m.train_accuracy)), el("td", {}, pct(m.validation_accuracy)));
      }));
    } catch (err) { report(err); }
  };
  $("#status-filter").onchange = refresh;
  await refresh();
  const timer = setInterval(refresh, 2000);
  return () => clearInterval(timer);
}

async function jobView(id) {
  let history = [];
  let job = null;
  let closed = false;
  let source = null;
  let timer = null;

  let drawTimer = null;
  const addEpochs = (entries) => {  // the stream may replay from epoch 1: keep each epoch once
    const last = history.length ? history[history.length - 1].epoch : 0;
    const fresh = entries.filter((h) => h.epoch > last);
    if (!fresh.length) return;
    for (const h of fresh) history.push(h);
    $("#epoch-count").textContent = history[history.length - 1].epoch;
    // One redraw per 100 ms, not per event: a redraw per epoch is quadratic in a long job's epochs.
    if (drawTimer === null) drawTimer = setTimeout(() => { drawTimer = null; drawCurves(history); }, 100);
  };

  const render = (j) => {
    job = j;
    $("#job-title").textContent = "Job " + j.id.slice(0, 8);
    const badge = $("#job-status");
    badge.textContent = j.status;
    badge.className = "badge " + j.status;
    const p = j.progress || {}, m = j.metrics || {};
    $("#epoch-total").textContent = p.epochs ?? (j.spec && j.spec.training && j.spec.training.epochs) ?? "?";
    if (p.epoch && !history.length) $("#epoch-count").textContent = p.epoch;
    $("#cancel-job").hidden = $("#cancel-job").disabled = !CANCELLABLE.has(j.status);
    for (const b of document.querySelectorAll(".downloads button")) {  // only the formats the worker wrote
      b.disabled = j.status !== "succeeded" || (j.links && !j.links["weights_" + b.dataset.format]);
    }
    $("#job-error").hidden = !j.error;
    $("#job-error").textContent = j.error || "";
    facts($("#job-facts"), [
      ["Job id", j.id], ["Dataset", datasetLink(j.dataset_id)],
      ...(j.validation_dataset_id ? [["Validation set", datasetLink(j.validation_dataset_id)]] : []),
      ["Model", layersOf(j.spec)], ["Device", j.device || "not started"],
      ["Created", j.created_at || "–"], ["Started", j.started_at || "–"], ["Finished", j.finished_at || "–"],
      ["Attempts", j.attempts ?? "–"], ["Resumed from epoch", j.resumed_from_epoch || "–"],
      ["Final loss", fmt(m.final_loss)], ["Train accuracy", pct(m.train_accuracy)],
      ["Validation accuracy", pct(m.validation_accuracy)],
      ["Waited in queue", seconds(j.created_at, j.started_at)], ["Ran for", seconds(j.started_at, j.finished_at)],
      ...Object.entries(j.timings || {}).map(([k, v]) => [timingLabel(k), fmt(v, 3) + " s"]),
    ]);
    $("#job-config").textContent = JSON.stringify(j.spec, null, 2);
    if (Array.isArray(j.history)) addEpochs(j.history);
  };

  const stop = () => {
    closed = true;
    if (source) source.close();
    clearInterval(timer);
    clearTimeout(drawTimer);
  };

  // With API keys on, EventSource cannot send the Authorization header: poll instead.
  const poll = async () => {
    try {
      render(await api(`/v1/jobs/${id}?history=full`));
      if (TERMINAL.has(job.status)) clearInterval(timer);
    } catch (err) { report(err); }
  };

  const stream = () => {
    source = new EventSource(`/v1/jobs/${id}/events`);
    source.addEventListener("epoch", (e) => addEpochs([JSON.parse(e.data)]));
    source.addEventListener("status", () => api(`/v1/jobs/${id}?history=none`).then(render, report));
    source.addEventListener("end", (e) => { render(JSON.parse(e.data)); source.close(); });
    source.onerror = () => {  // the browser retries by itself; fall back to polling if it gives up
      if (!closed && source.readyState === EventSource.CLOSED && !TERMINAL.has(job && job.status)) {
        timer = setInterval(poll, 1000);
      }
    };
  };

  history = [];
  $("#epoch-count").textContent = "0";
  drawCurves([]);
  $("#cancel-job").onclick = async () => {
    try { render(await api(`/v1/jobs/${id}/cancel`, { method: "POST" })); showMessage("Cancellation requested.", "info"); }
    catch (err) { report(err); }
  };
  for (const b of document.querySelectorAll(".downloads button")) b.onclick = () => download(id, b.dataset.format);

  try {
    const first = await api(`/v1/jobs/${id}?history=full`);
    try { await learnDatasetNames([first.dataset_id, first.validation_dataset_id]); } catch (_) { /* short ids then */ }
    render(first);
  } catch (err) { report(err); return stop; }
  if (!TERMINAL.has(job.status)) {
    if (apiKey()) timer = setInterval(poll, 1000); else stream();
  }
  return stop;
}

// The worker's timings (seconds), by their keys in the job record.
const TIMING_LABELS = {
  load_s: "Loading the data", setup_s: "Setting up", train_s: "Training", validation_s: "Validating",
  epoch_mean_s: "Mean epoch", total_s: "Total in the worker",
};
function timingLabel(key) {
  if (TIMING_LABELS[key]) return TIMING_LABELS[key];
  const words = key.replace(/_s$/, "").replace(/_/g, " ");  // a key added later still reads as words
  return words.charAt(0).toUpperCase() + words.slice(1);
}

// Fetch (so the API key travels in a header), then hand the bytes to the browser as a file.
async function download(id, format) {
  try {
    const res = await api(`/v1/jobs/${id}/weights?format=${format}`, { raw: true });
    const url = URL.createObjectURL(await res.blob());
    const a = el("a", { href: url, download: `${id}.${format}` });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) { report(err); }
}

const OUTPUT_FOR_LABELS = { binary: "sigmoid", integer: "softmax", onehot: "softmax", continuous: "linear" };

async function loadDatasetOptions(selectId) {
  const page = await api("/v1/datasets?limit=500");
  const select = $("#dataset-select"), validation = $("#validation-dataset-select");
  const option = (d) => {
    datasetNames.set(d.id, d.name);
    const o = el("option", { value: d.id }, `${d.name} — ${d.n_examples}×${d.n_features} (${d.label_kind})`);
    o.dataset.labelKind = d.label_kind;
    return o;
  };
  const chosenValidation = validation.value;
  select.replaceChildren(...page.items.map(option));
  validation.replaceChildren(el("option", { value: "" }, "none"), ...page.items.map(option));
  validation.value = page.items.some((d) => d.id === chosenValidation) ? chosenValidation : "";
  if (selectId) select.value = selectId;
  select.onchange = () => {
    const kind = select.selectedOptions[0] && select.selectedOptions[0].dataset.labelKind;
    if (OUTPUT_FOR_LABELS[kind]) $("#output").value = OUTPUT_FOR_LABELS[kind];
  };
  select.onchange();
}

async function newJobView(query) {
  try { await loadDatasetOptions(query.get("dataset")); } catch (err) { report(err); }
  return () => {};
}

function optionalNumber(input) {
  return input.value.trim() === "" ? null : Number(input.value);
}

async function submitJob(event) {
  event.preventDefault();
  const hidden = $("#hidden-layers").value.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const spec = {
    dataset_id: $("#dataset-select").value,
    model: { hidden_layers: hidden, hidden_activation: $("#hidden-activation").value, output: $("#output").value },
    training: {
      optimizer: $("#optimizer").value, learning_rate: Number($("#learning-rate").value),
      epochs: Number($("#epochs").value), batch_size: optionalNumber($("#batch-size")),
      init: $("#init").value, seed: Number($("#seed").value || 0), dtype: $("#dtype").value,
      l2: Number($("#l2").value || 0), dropout_keep_prob: Number($("#dropout-keep-prob").value || 1),
    },
    device: $("#device").value,
  };
  if ($("#validation-dataset-select").value) spec.validation_dataset_id = $("#validation-dataset-select").value;
  const scale = optionalNumber($("#scale"));
  if (scale !== null) spec.preprocess = { scale };
  if (!spec.dataset_id) return showMessage("Choose a dataset first (or create a synthetic one on the right).");
  try {
    const job = await api("/v1/jobs", { method: "POST", body: spec });
    clearMessage();
    location.hash = "#/jobs/" + job.id;
  } catch (err) { report(err); }
}

async function createSynthetic(event) {
  event.preventDefault();
  const name = $("#synthetic-name").value;
  const body = { name, n_samples: Number($("#synthetic-n-samples").value), noise: Number($("#synthetic-noise").value), seed: Number($("#synthetic-seed").value) };
  if (name === "spiral" || name === "blobs") body.n_classes = Number($("#synthetic-n-classes").value);
  if (name === "blobs") body.n_features = Number($("#synthetic-n-features").value);
  try {
    const d = await api("/v1/datasets/synthetic", { method: "POST", body });
    await loadDatasetOptions(d.id);
    showMessage(`Dataset ${d.name} created: ${d.n_examples} examples × ${d.n_features} features.`, "info");
  } catch (err) { report(err); }
}

async function uploadDataset(event) {
  event.preventDefault();
  const form = new FormData();
  form.append("file", $("#upload-file").files[0]);
  try {
    const d = await api("/v1/datasets", { method: "POST", form });
    location.hash = "#/datasets/" + d.id;
    showMessage(`Dataset ${d.name} stored.`, "info");
  } catch (err) { report(err); }
}

async function datasetsView() {
  try {
    const page = await api("/v1/datasets?limit=100");
    $("#datasets-table tbody").replaceChildren(...page.items.map((d) => el("tr", {},
      el("td", {}, el("a", { href: "#/datasets/" + d.id }, d.name)), el("td", { class: "mono" }, d.id.slice(0, 8)),
      el("td", {}, d.n_examples), el("td", {}, d.n_features), el("td", {}, d.n_outputs),
      el("td", {}, d.label_kind + (d.classes ? ` (${d.classes.length} classes)` : "")), el("td", {}, age(d.created_at) + " ago"))));
  } catch (err) { report(err); }
  return () => {};
}

// Image-like rows: n = w*w*3 (RGB, channels last) or w*w (greyscale).
function imageShape(n) {
  const rgb = Math.round(Math.sqrt(n / 3));
  if (rgb > 1 && rgb * rgb * 3 === n) return { w: rgb, channels: 3 };
  const grey = Math.round(Math.sqrt(n));
  if (grey > 1 && grey * grey === n && n >= 64) return { w: grey, channels: 1 };
  return null;
}

function drawImage(row, { w, channels }) {
  const canvas = el("canvas", { width: w, height: w, class: "thumb" });
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, w);
  const max = Math.max(...row);
  const k = max <= 1.0 ? 255 : 1;  // [0, 1] floats or raw 0..255 values
  for (let i = 0; i < w * w; i++) {
    for (let c = 0; c < 3; c++) img.data[4 * i + c] = row[channels === 3 ? 3 * i + c : i] * k;
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

async function datasetView(id) {
  try {
    const d = await api(`/v1/datasets/${id}?preview=full`);
    $("#dataset-title").textContent = "Dataset " + d.name;
    facts($("#dataset-facts"), [
      ["Id", d.id], ["Shape", `${d.n_examples} examples × ${d.n_features} features → ${d.n_outputs} output(s)`],
      ["Labels", d.label_kind], ["Classes", d.classes ? d.classes.join(", ") : "–"],
      ["Source", d.source || "–"], ["SHA-256", d.sha256 || "–"], ["Created", d.created_at || "–"],
    ]);
    $("#dataset-train").href = "#/new?dataset=" + d.id;
    const pv = d.preview || {};
    const X = pv.X || pv.rows || [], Y = pv.Y || pv.labels || [];
    const shown = Math.min(20, X[0] ? X[0].length : 0);
    $("#dataset-preview thead").replaceChildren(el("tr", {}, el("th", {}, "#"),
      ...Array.from({ length: shown }, (_, j) => el("th", {}, "x" + j)), el("th", {}, "y")));
    $("#dataset-preview tbody").replaceChildren(...X.map((row, i) => el("tr", {}, el("td", {}, i),
      ...row.slice(0, shown).map((v) => el("td", {}, fmt(v, 3))), el("td", {}, Array.isArray(Y[i]) && Y[i].length === 1 ? Y[i][0] : JSON.stringify(Y[i] ?? "")))));
    const shape = imageShape(d.n_features);
    const fullRows = X.length && X[0].length === d.n_features;
    $("#dataset-images").replaceChildren(...(shape && fullRows ? X.map((row) => drawImage(row, shape))
      : shape ? [el("p", { class: "muted" }, `Rows look like ${shape.w}×${shape.w} images, but the preview holds only their first ${X[0] ? X[0].length : 0} features.`)]
      : []));
  } catch (err) { report(err); }
  return () => {};
}

// ---- routing -----------------------------------------------------------------------------
const VIEWS = ["jobs", "job", "new", "datasets", "dataset"];

async function route() {
  stopView();
  stopView = () => {};
  const [path, queryString] = (location.hash.slice(1) || "/jobs").split("?");
  const parts = path.split("/").filter(Boolean);
  const query = new URLSearchParams(queryString || "");
  let view = "jobs", run = jobsView;
  const id = parts[1];
  // an id goes into an API path: only an id's shape does ("..", "%2F" or a stray "%" never reach one)
  const bad = (kind) => () => showMessage(`No ${kind} with id "${id.slice(0, 64)}": ids are 24 to 32 hex characters.`);
  if (parts[0] === "jobs" && id) { view = "job"; run = ID_RE.test(id) ? () => jobView(id) : bad("job"); }
  else if (parts[0] === "new") { view = "new"; run = () => newJobView(query); }
  else if (parts[0] === "datasets" && id) { view = "dataset"; run = ID_RE.test(id) ? () => datasetView(id) : bad("dataset"); }
  else if (parts[0] === "datasets") { view = "datasets"; run = datasetsView; }
  for (const v of VIEWS) $("#view-" + v).hidden = v !== view;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("current", a.id === "nav-" + (view === "job" ? "jobs" : view === "dataset" ? "datasets" : view));
  const mine = ++routeCount;
  const stop = (await run()) || (() => {});
  if (mine === routeCount) stopView = stop; else stop();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#api-key").value = apiKey();
  $("#key-form").onsubmit = (e) => {
    e.preventDefault();
    const key = $("#api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key); else sessionStorage.removeItem(KEY_STORAGE);
    showMessage(key ? "API key kept in this tab until it closes." : "API key removed.", "info");
    route();
  };
  $("#submit-form").onsubmit = submitJob;
  $("#synthetic-form").onsubmit = createSynthetic;
  $("#upload-form").onsubmit = uploadDataset;
  window.addEventListener("hashchange", () => { clearMessage(); route(); });
  route();
});
