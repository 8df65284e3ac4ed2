// One sweep's page: every trial's loss curve on one chart (the best marked), and a table of trials.
// /static/sweep.html#<sweep id>; without an id, the tenant's sweeps. The API key is the dashboard's.
"use strict";

const KEY_STORAGE = "dnnq.apiKey";  // the same key the dashboard keeps in this tab's sessionStorage (dashboard.js)
const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

async function api(path) {
  const headers = {};
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = "Bearer " + key;
  const res = await fetch(path, { headers });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.detail || res.statusText);
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const child of children) node.append(child);
  return node;
}

function show(message) {
  const box = document.getElementById("message");
  box.textContent = message;
  box.hidden = !message;
}

const fmt = (v) => (typeof v === "number" ? v.toPrecision(4) : "-");

function drawCurves(svg, trials, bestIndex) {
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), pad = 40;
  svg.replaceChildren();
  const curves = trials.map((t) => (t.history || []).filter((e) => typeof e.loss === "number"));
  const points = curves.flat();
  svg.dataset.curves = String(curves.filter((c) => c.length).length);
  if (!points.length) return;
  const maxEpoch = Math.max(...points.map((e) => e.epoch));
  const losses = points.map((e) => e.loss);
  const lo = Math.min(...losses), hi = Math.max(...losses);
  const x = (e) => pad + ((e - 1) / Math.max(1, maxEpoch - 1)) * (W - 2 * pad);
  const y = (v) => H - pad - ((v - lo) / (hi - lo || 1)) * (H - 2 * pad);
  const axis = document.createElementNS(SVG_NS, "path");
  axis.setAttribute("d", `M${pad},${pad} V${H - pad} H${W - pad}`);
  axis.setAttribute("stroke", "#888");
  axis.setAttribute("fill", "none");
  svg.append(axis);
  for (const [label, value, yy] of [["max", hi, pad], ["min", lo, H - pad]]) {
    const text = document.createElementNS(SVG_NS, "text");
    text.setAttribute("x", 2);
    text.setAttribute("y", yy);
    text.setAttribute("font-size", "10");
    text.textContent = fmt(value);
    text.dataset.label = label;
    svg.append(text);
  }
  // the best last, so it is drawn on top
  const order = curves.map((_, i) => i).sort((a, b) => (a === bestIndex) - (b === bestIndex));
  for (const i of order) {
    if (!curves[i].length) continue;
    const line = document.createElementNS(SVG_NS, "polyline");
    line.setAttribute("points", curves[i].map((e) => `${x(e.epoch).toFixed(1)},${y(e.loss).toFixed(1)}`).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLORS[i % COLORS.length]);
    line.setAttribute("stroke-width", i === bestIndex ? 4 : 1.5);
    line.setAttribute("class", i === bestIndex ? "curve best" : "curve");
    line.dataset.trial = String(i);
    const title = document.createElementNS(SVG_NS, "title");
    title.textContent = `trial ${i}` + (i === bestIndex ? " (best)" : "");
    line.append(title);
    svg.append(line);
  }
}

function overridesText(o) {
  return Object.entries(o).map(([k, v]) => `${k.split(".").pop()}=${JSON.stringify(v)}`).join(" ");
}

function renderSweep(view) {
  document.getElementById("sweep-title").textContent = "Sweep " + view.id.slice(0, 8);
  document.getElementById("sweep-status").textContent = view.status;
  document.getElementById("metric-head").textContent = view.metric;
  const best = view.best;
  document.getElementById("sweep-best").textContent = best
    ? `best: trial ${best.index}, ${view.metric} ${fmt(best.value)} (${view.lower_is_better ? "lower" : "higher"} is better)`
    : "best: none yet";
  drawCurves(document.getElementById("sweep-chart"), view.trials, best ? best.index : -1);
  const rows = view.trials.map((t) => {
    const p = t.progress || {};
    const row = el("tr", { "data-trial": String(t.index), class: t.best ? "best" : "" },
      el("td", {}, t.best ? "★" : ""), el("td", {}, String(t.index)),
      el("td", {}, el("a", { href: "/#/jobs/" + t.job_id }, t.job_id.slice(0, 8))),
      el("td", {}, t.status), el("td", {}, `${p.epoch ?? 0}/${p.epochs ?? "?"}`),
      el("td", {}, fmt(p.loss)), el("td", {}, fmt(t.value)), el("td", {}, overridesText(t.overrides)));
    return row;
  });
  document.querySelector("#trials-table tbody").replaceChildren(...rows);
}

async function sweepPage(id) {
  document.getElementById("view-sweep").hidden = false;
  for (;;) {
    let view;
    try {
      view = await api(`/v1/sweeps/${encodeURIComponent(id)}?history=thin`);
      show("");
    } catch (err) {
      show(String(err.message || err));
      return;
    }
    renderSweep(view);
    if (view.status === "finished") return;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function listPage() {
  document.getElementById("view-sweeps").hidden = false;
  try {
    const page = await api("/v1/sweeps?limit=100");
    const rows = page.items.map((s) => el("tr", {},
      el("td", {}, el("a", { href: "#" + s.id }, s.id.slice(0, 8))), el("td", {}, s.status),
      el("td", {}, Object.entries(s.counts).map(([k, n]) => `${n} ${k}`).join(", ")), el("td", {}, s.created_at)));
    document.querySelector("#sweeps-table tbody").replaceChildren(...rows);
    document.getElementById("sweeps-empty").hidden = rows.length > 0;
  } catch (err) {
    show(String(err.message || err));
  }
}

function route() {
  document.getElementById("view-sweep").hidden = true;
  document.getElementById("view-sweeps").hidden = true;
  const id = location.hash.slice(1);
  // an id goes into an API path: only an id's shape does ("..", "%2F" or a stray "%" never reach one)
  if (id && !/^[0-9a-f]{24,32}$/.test(id)) {
    document.getElementById("view-sweep").hidden = false;
    show(`No sweep with id "${id.slice(0, 64)}": ids are 24 to 32 hex characters.`);
  } else if (id) sweepPage(id); else listPage();
}

window.addEventListener("hashchange", route);
route();
