// Secateur dashboard: job list, submit form, live job page and report plots. Plain JS, no build step,
// nothing fetched but this server's own API. Every piece of server text goes through textContent
// (never innerHTML): job errors and layer names come from uploaded files.
"use strict";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const KEY_STORAGE = "secateur.apiKey";
const COLORS = ["#2b6cb0", "#dd6b20", "#2f855a", "#805ad5", "#c53030", "#319795"];

class ApiError extends Error {
  constructor(code, message, status) {
    super(`${code}: ${message}`);
    this.code = code;
    this.status = status;
  }
}

// ---- small helpers -------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "style") el.style.cssText = v; // CSSOM: allowed by the page's CSP, unlike the attribute
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const isNum = (v) => typeof v === "number" && Number.isFinite(v);

function fmtCount(v) {
  if (!isNum(v)) return "–";
  const units = [[1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [size, unit] of units) if (Math.abs(v) >= size) return (v / size).toFixed(2) + unit;
  return String(v);
}
function fmtBytes(v) {
  if (!isNum(v)) return "–";
  const units = [[1 << 30, "GiB"], [1 << 20, "MiB"], [1 << 10, "KiB"]];
  for (const [size, unit] of units) if (v >= size) return (v / size).toFixed(2) + " " + unit;
  return v + " B";
}
const fmtPct = (v) => (isNum(v) ? (100 * v).toFixed(2) + "%" : "–");
const fmtMs = (v) => (isNum(v) ? v.toFixed(2) + " ms" : "–");
function fmtDuration(s) {
  if (!isNum(s)) return "";
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}
const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

// ---- API -----------------------------------------------------------------------------------------

function authHeaders() {
  const key = localStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: "Bearer " + key } : {};
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!res.ok) {
    let code = "http_" + res.status;
    let message = res.statusText;
    try {
      const body = await res.json();
      if (body && body.error) ({ code, message } = body.error);
    } catch (_) { /* not JSON: keep the HTTP status */ }
    throw new ApiError(code, message, res.status);
  }
  return res;
}
const apiJson = async (path, options) => (await api(path, options)).json();

// Follows GET /jobs/{id}/events with fetch (EventSource cannot send an Authorization header),
// resuming with Last-Event-ID after a dropped connection. Calls onJob(job, eventName) per event.
async function followEvents(id, onJob, signal) {
  let lastId = null;
  let retryMs = 1000;
  while (!signal.aborted) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const res = await api(`/jobs/${encodeURIComponent(id)}/events`, { headers, signal });
      if (res.status === 204) return; // nothing more will happen
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let event = { name: "message", data: [] };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, nl).replace(/\r$/, "");
          buffer = buffer.slice(nl + 1);
          if (line === "") {
            if (event.data.length) {
              const job = JSON.parse(event.data.join("\n"));
              onJob(job, event.name);
              if (TERMINAL.has(job.status)) return;
            }
            event = { name: "message", data: [] };
          } else if (!line.startsWith(":")) {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "data") event.data.push(val);
            else if (field === "event") event.name = val;
            else if (field === "id") lastId = val;
            else if (field === "retry" && /^\d+$/.test(val)) retryMs = Number(val);
          }
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status < 500) throw err; // 404 etc.: reconnecting cannot help
    }
    await sleep(retryMs);
  }
}

// ---- pieces of a page ----------------------------------------------------------------------------

function badge(status) {
  return h("span", { class: "badge " + status }, status);
}

function progressBar(job, big = false) {
  const fraction = job.status === "succeeded" ? 1 : (job.progress && job.progress.fraction) || 0;
  const inner = h("div", { style: `width:${(100 * Math.min(Math.max(fraction, 0), 1)).toFixed(1)}%` });
  return h("div", { class: `bar ${big ? "big" : ""} ${job.status}`, role: "progressbar",
    "aria-valuenow": Math.round(100 * fraction) }, inner);
}

function stageText(job) {
  const p = job.progress || {};
  if (TERMINAL.has(job.status)) {
    const took = job.started_at && job.finished_at
      ? " in " + fmtDuration((Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000) : "";
    if (job.status === "succeeded") return "done" + took;
    const where = job.stage ? `${job.status} while ${job.stage}` : job.status;
    return job.error ? `${where}: ${job.error.code}` : where;
  }
  if (job.status === "queued") return "waiting for a worker";
  const parts = [job.stage || job.status];
  if (isNum(p.fraction)) parts.push(Math.round(100 * p.fraction) + "%");
  if (p.epochs) parts.push(`epoch ${p.epoch || 0}/${p.epochs}`);
  if (isNum(p.eta_s)) parts.push("ETA " + fmtDuration(p.eta_s));
  return parts.filter(Boolean).join(" · ");
}

function liveMetrics(job) {
  const source = (job.progress && job.progress.metrics) || {};
  return Object.entries(source).filter(([, v]) => isNum(v));
}

// Draws one line chart on a canvas: `series` = [{label, points: [[x, y], ...]}], `bands` = phase spans.
function drawChart(canvas, series, { title, yFormat = (v) => v.toPrecision(3), bands = [] }) {
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 500;
  const height = canvas.clientHeight || 240;
  canvas.width = width * dpr;
  canvas.height = height * dpr;
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  const pad = { left: 54, right: 14, top: 24, bottom: 28 };
  const all = series.flatMap((s) => s.points);
  ctx.fillStyle = "#1d2430";
  ctx.fillText(title, pad.left, 14);
  canvas.dataset.points = String(all.length);
  if (!all.length) {
    ctx.fillStyle = "#66707f";
    ctx.fillText("no epochs yet", width / 2 - 30, height / 2);
    return;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.05 || 1; y1 += Math.abs(y1) * 0.05 || 1; }
  const margin = (y1 - y0) * 0.08;
  y0 -= margin; y1 += margin;
  const X = (x) => pad.left + ((x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const Y = (y) => height - pad.bottom - ((y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
  // Phase bands (e.g. TPP's regularization, then finetuning) as shaded spans with labels.
  bands.forEach((band, i) => {
    if (i % 2) {
      ctx.fillStyle = "#f2f5f9";
      ctx.fillRect(X(band.from - 0.5), pad.top, X(band.to + 0.5) - X(band.from - 0.5), height - pad.top - pad.bottom);
    }
    ctx.fillStyle = "#8a94a3";
    ctx.fillText(band.label, Math.max(X(band.from - 0.5) + 3, pad.left + 2), pad.top + 11);
  });
  // Grid and y ticks.
  ctx.strokeStyle = "#e5e9ef";
  ctx.fillStyle = "#66707f";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    ctx.beginPath();
    ctx.moveTo(pad.left, Y(y));
    ctx.lineTo(width - pad.right, Y(y));
    ctx.stroke();
    ctx.fillText(yFormat(y), 4, Y(y) + 4);
  }
  const xTicks = Math.min(8, Math.max(1, Math.round(x1 - x0)));
  for (let i = 0; i <= xTicks; i++) {
    const x = x0 + ((x1 - x0) * i) / xTicks;
    ctx.fillText(String(Math.round(x)), X(x) - 4, height - pad.bottom + 14);
  }
  ctx.fillText("epoch", width - pad.right - 30, height - 4);
  // Lines, with a dot per epoch.
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    s.points.forEach(([x, y], j) => (j ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
    ctx.stroke();
    for (const [x, y] of s.points) {
      ctx.beginPath();
      ctx.arc(X(x), Y(y), 2.5, 0, 2 * Math.PI);
      ctx.fill();
    }
    const legendX = width - pad.right - 150 * (series.length - i);
    ctx.fillRect(legendX, 8, 10, 3);
    ctx.fillStyle = "#1d2430";
    ctx.fillText(s.label, legendX + 14, 13);
  });
}

// Splits report.history ([{phase, epoch, loss, accuracy, lr, ...}]) into chart series on one x axis
// that runs across phases, so a method's regularization and finetuning epochs read left to right.
function historySeries(history) {
  const loss = new Map();
  const acc = new Map();
  const bands = [];
  history.forEach((row, i) => {
    const x = i + 1;
    const phase = row.phase || "train";
    const last = bands[bands.length - 1];
    if (last && last.label === phase) last.to = x;
    else bands.push({ label: phase, from: x, to: x });
    for (const [key, value] of Object.entries(row)) {
      if (!isNum(value) || key === "epoch" || key === "lr") continue;
      const target = /loss/.test(key) ? loss : /acc/.test(key) ? acc : null;
      if (!target) continue;
      if (!target.has(key)) target.set(key, []);
      target.get(key).push([x, value]);
    }
  });
  const asSeries = (m) => [...m.entries()].map(([label, points]) => ({ label, points }));
  return { loss: asSeries(loss), accuracy: asSeries(acc), bands: bands.length > 1 ? bands : [] };
}

function curvesCard(history) {
  const lossCanvas = h("canvas", { class: "chart", id: "loss-chart" });
  const accCanvas = h("canvas", { class: "chart", id: "accuracy-chart" });
  const card = h("section", { class: "card" }, h("h2", {}, "Training curves"),
    h("div", { class: "grid2" }, lossCanvas, accCanvas));
  const { loss, accuracy, bands } = historySeries(history);
  // Drawn after insertion: the canvas needs its laid-out size.
  requestAnimationFrame(() => {
    drawChart(lossCanvas, loss, { title: "Loss per epoch", bands });
    drawChart(accCanvas, accuracy, { title: "Accuracy per epoch", yFormat: (v) => (100 * v).toFixed(1) + "%", bands });
  });
  return card;
}

// One horizontal bar per layer: kept channels / channels (structured) or weight density (unstructured).
function layersCard(layers) {
  const rows = layers.map((layer) => {
    if (isNum(layer.kept_channels) && isNum(layer.channels) && layer.channels > 0) {
      return { name: layer.name, value: layer.kept_channels / layer.channels,
        text: `${layer.kept_channels}/${layer.channels}` };
    }
    if (isNum(layer.density)) return { name: layer.name, value: layer.density, text: fmtPct(layer.density) };
    return null;
  }).filter(Boolean);
  const rowH = 16;
  const labelW = 210;
  const width = 900;
  const chart = svg("svg", { class: "layers", id: "layers-chart", viewBox: `0 0 ${width} ${rows.length * rowH + 4}`,
    role: "img", "aria-label": "kept fraction per layer" });
  rows.forEach((row, i) => {
    const y = i * rowH + 2;
    const barW = (width - labelW - 90) * Math.min(Math.max(row.value, 0), 1);
    const name = row.name.length > 30 ? "…" + row.name.slice(-29) : row.name;
    chart.append(
      svg("text", { x: labelW - 6, y: y + 11, "text-anchor": "end" }, name),
      svg("rect", { x: labelW, y: y + 2, width: width - labelW - 90, height: rowH - 5, fill: "#edf1f6", rx: 2 }),
      svg("rect", { x: labelW, y: y + 2, width: Math.max(barW, 1), height: rowH - 5, fill: "#2b6cb0", rx: 2 }),
      svg("text", { x: width - 84, y: y + 11, class: "value" }, row.text),
    );
  });
  const title = layers.some((l) => isNum(l.kept_channels)) ? "Kept channels per layer" : "Weight density per layer";
  return h("section", { class: "card" }, h("h2", {}, title),
    rows.length ? chart : h("p", { class: "muted" }, "The report lists no layers."));
}

function compareCard(report) {
  const base = report.baseline || {};
  const pruned = report.pruned || {};
  const lat = (side, key) => (side.latency_ms || {})[key];
  const rel = (a, b) => (isNum(a) && isNum(b) && a !== 0 ? `${b >= a ? "+" : "−"}${Math.abs(100 * (b / a - 1)).toFixed(1)}%` : "");
  const pp = (a, b) => (isNum(a) && isNum(b) ? `${b >= a ? "+" : "−"}${Math.abs(100 * (b - a)).toFixed(2)} pp` : "");
  const rows = [
    ["Accuracy (PyTorch)", base.accuracy, pruned.accuracy, fmtPct, pp],
    ["Accuracy (onnxruntime)", base.ort_accuracy, pruned.ort_accuracy, fmtPct, pp],
    ["Parameters", base.params, pruned.params, fmtCount, rel],
    ["Nonzero parameters", base.nonzero_params, pruned.nonzero_params, fmtCount, rel],
    ["FLOPs (MACs)", base.flops, pruned.flops, fmtCount, rel],
    ["ONNX size", base.onnx_bytes, pruned.onnx_bytes, fmtBytes, rel],
    ["ONNX size (zstd)", base.onnx_zstd_bytes, pruned.onnx_zstd_bytes, fmtBytes, rel],
    ["Latency, batch 1", lat(base, "b1"), lat(pruned, "b1"), fmtMs, rel],
    ["Latency, batch 64", lat(base, "b64"), lat(pruned, "b64"), fmtMs, rel],
  ];
  return h("section", { class: "card" }, h("h2", {}, "Before and after"),
    h("table", { id: "compare-table" },
      h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", { class: "num" }, "baseline"),
        h("th", { class: "num" }, "pruned"), h("th", { class: "num" }, "change"))),
      h("tbody", {}, rows.map(([label, a, b, fmt, diff]) => h("tr", {}, h("td", {}, label),
        h("td", { class: "num" }, fmt(a)), h("td", { class: "num" }, fmt(b)), h("td", { class: "num" }, diff(a, b)))))));
}

// Method figures are shown compactly: long values (e.g. every removed channel index) are cut short.
function brief(value) {
  if (isNum(value)) return String(+value.toPrecision(6));
  const text = typeof value === "object" ? JSON.stringify(value) : String(value);
  return text.length > 160 ? text.slice(0, 157) + "…" : text;
}

function methodCard(report) {
  const method = report.method || {};
  const verification = report.verification || {};
  const items = [];
  const add = (k, v) => v !== undefined && v !== null && items.push(h("dt", {}, k), h("dd", {}, v));
  add("method", method.name || method.method);
  for (const [k, v] of Object.entries(method)) {
    if (k !== "name" && k !== "method" && v !== null) add(k.replace(/_/g, " "), brief(v));
  }
  if (verification.passed !== undefined) {
    add("ONNX verification", `${verification.passed ? "passed" : "FAILED"} (max |diff| ${verification.max_abs_diff})`);
  }
  const timings = report.timings_s || {};
  if (Object.keys(timings).length) {
    add("time per stage", Object.entries(timings).map(([k, v]) => `${k} ${v < 10 ? v.toFixed(2) + "s" : fmtDuration(v)}`).join(" · "));
  }
  const target = report.target || {};
  if (target.requested) add("target", brief(target.requested));
  for (const [k, v] of Object.entries(target.achieved || {})) add("achieved " + k.replace(/_/g, " "), brief(v));
  for (const note of report.notes || []) add("note", brief(note));
  return h("section", { class: "card" }, h("h2", {}, "Method and verification"), h("dl", { class: "kv" }, items));
}

// Model files: the page asks the API for a short-lived link with its key, then navigates to it, so the
// browser streams the file straight to disk through the API (never whole in memory, never to another
// origin: the object store need not be reachable from here). report.json is small: fetched with the key.
function downloadButton(id, name) {
  const base = `/jobs/${encodeURIComponent(id)}`;
  const href = name === "report.json" ? `${base}/report` : `${base}/artifacts/${name}`;
  return h("a", { class: "button secondary", href, download: name, onclick: async (ev) => {
    ev.preventDefault();
    try {
      if (name === "report.json") {
        const url = URL.createObjectURL(await (await api(href)).blob());
        h("a", { href: url, download: name }).click();
        setTimeout(() => URL.revokeObjectURL(url), 10000);
      } else {
        const link = await apiJson(`${href}/link`, { method: "POST" });
        h("a", { href: link.url, download: name }).click();
      }
    } catch (err) { alert(err.message); }
  } }, "⬇ " + name);
}

// ---- pages ---------------------------------------------------------------------------------------

let pageAbort = new AbortController();

async function jobsPage(root) {
  const filter = h("select", { id: "status-filter" }, h("option", { value: "" }, "all"),
    ...["queued", "running", "cancelling", "succeeded", "failed", "cancelled"].map((s) => h("option", { value: s }, s)));
  const tbody = h("tbody", { id: "jobs-body" });
  const note = h("p", { class: "muted" });
  root.append(submitCard(), h("section", { class: "card" },
    h("div", { class: "toolbar" }, h("h2", {}, "Jobs"), h("label", { class: "muted" }, "status ", filter)),
    h("table", {}, h("thead", {}, h("tr", {}, ...["job", "status", "stage", "progress", "created", "finished"].map((c) => h("th", {}, c)))), tbody),
    note));
  const signal = pageAbort.signal;
  filter.addEventListener("change", () => refresh());
  async function refresh() {
    try {
      const query = new URLSearchParams({ limit: "50" });
      if (filter.value) query.set("status", filter.value);
      const page = await apiJson("/jobs?" + query);
      tbody.replaceChildren(...page.jobs.map((job) => h("tr", { class: "clickable", "data-id": job.id,
        "data-status": job.status, onclick: () => { location.hash = "#/jobs/" + job.id; } },
        h("td", { class: "mono" }, h("a", { href: "#/jobs/" + job.id }, job.id.slice(0, 8))),
        h("td", {}, badge(job.status)), h("td", {}, stageText(job)), h("td", {}, progressBar(job)),
        h("td", {}, fmtTime(job.created_at)), h("td", {}, fmtTime(job.finished_at)))));
      note.textContent = page.jobs.length ? "" : "No jobs yet: submit one above.";
    } catch (err) {
      note.replaceChildren(h("span", { class: "error" }, err.message));
    }
  }
  while (!signal.aborted) {
    await refresh();
    await sleep(2000);
  }
}

function submitCard() {
  const result = h("p", { id: "submit-result" });
  const field = (label, input, cls) => h("label", { class: cls }, label, input);
  const form = h("form", { class: "submit", id: "submit-form" },
    field("model (ONNX, safetensors, or a Hugging Face .zip/.tar)", h("input", { type: "file", name: "model", required: true }), "wide"),
    field("dataset (.npz, .zip, .tar.gz)", h("input", { type: "file", name: "dataset", required: true }), "wide"),
    field("method", h("select", { name: "method" }, ["weightmom", "magnitude", "tpp", "l1"].map((m) => h("option", {}, m)))),
    field("architecture (not for ONNX)", h("input", { name: "architecture", list: "architectures",
      placeholder: "resnet56, torchvision/resnet50, timm/efficientnet_b0, hf" })),
    h("datalist", { id: "architectures" },
      ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "vgg11", "vgg13", "vgg16", "vgg19", "lenet5", "mlp",
       "torchvision/resnet50", "torchvision/mobilenet_v3_large", "timm/efficientnet_b0", "timm/vit_small_patch16_224", "hf"]
        .map((a) => h("option", { value: a }))),
    field("target", h("select", { name: "target_kind" }, h("option", { value: "sparsity" }, "sparsity"),
      h("option", { value: "pruning_ratio" }, "pruning ratio"), h("option", { value: "flops_reduction" }, "FLOPs reduction ×"))),
    field("target value", h("input", { name: "target_value", type: "number", step: "any", value: "0.5", required: true })),
    field("finetune epochs", h("input", { name: "epochs", type: "number", min: 0, value: "10" })),
    field("more config (JSON, merged)", h("textarea", { name: "extra", placeholder: '{"finetune": {"lr": 0.01}, "options": {}}' }), "full"),
    h("div", { class: "actions full" }, h("button", { type: "submit", id: "submit-button" }, "Submit job"), result));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    const button = form.querySelector("button");
    result.replaceChildren();
    try {
      const config = data.get("extra") ? JSON.parse(String(data.get("extra"))) : {};
      config.method = data.get("method");
      if (data.get("architecture")) config.architecture = data.get("architecture");
      config.target = { [data.get("target_kind")]: Number(data.get("target_value")) };
      if (data.get("epochs") !== "") config.finetune = { ...(config.finetune || {}), epochs: Number(data.get("epochs")) };
      const body = new FormData();
      body.append("config", JSON.stringify(config));
      body.append("model", data.get("model"));
      body.append("dataset", data.get("dataset"));
      button.disabled = true;
      // One key per click: a double submit or a retried request creates one job, not two.
      const job = await apiJson("/jobs", { method: "POST", body, headers: { "Idempotency-Key": crypto.randomUUID() } });
      location.hash = "#/jobs/" + job.id;
    } catch (err) {
      result.replaceChildren(h("span", { class: "error" }, err instanceof SyntaxError ? "config JSON: " + err.message : err.message));
    } finally {
      button.disabled = false;
    }
  });
  return h("section", { class: "card" }, h("h2", {}, "Submit a job"), form);
}

async function jobPage(root, id) {
  const signal = pageAbort.signal;
  const head = h("section", { class: "card", id: "job-card" });
  const reportRoot = h("div", { id: "report" });
  root.append(h("p", {}, h("a", { href: "/#/" }, "← all jobs")), head, reportRoot);
  const live = new Map();  // stage/epoch -> latest metrics seen live, until the report's history replaces them
  let reportShown = false;

  function renderHead(job) {
    const cancel = h("button", { class: "danger", id: "cancel-button", onclick: async () => {
      try { renderHead(await apiJson(`/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" })); }
      catch (err) { alert(err.message); }
    } }, "Cancel");
    const metrics = TERMINAL.has(job.status) ? ""
      : liveMetrics(job).map(([k, v]) => `${k} ${v.toPrecision(4)}`).join(" · ");
    head.replaceChildren(...[
      h("div", { class: "toolbar" }, h("h2", {}, "Job ", h("span", { class: "mono" }, job.id)), badge(job.status),
        TERMINAL.has(job.status) || job.status === "cancelling" ? null : cancel),
      h("div", { class: "status-line" }, h("span", { id: "stage" }, stageText(job)), progressBar(job, true)),
      metrics ? h("p", { class: "muted", id: "live-metrics" }, metrics) : null,
      job.error ? h("p", { class: "error", id: "job-error" }, `${job.error.code}: ${job.error.message}`) : null,
      h("dl", { class: "kv" },
        h("dt", {}, "method"), h("dd", {}, (job.config && job.config.method) || "–"),
        h("dt", {}, "target"), h("dd", {}, job.config ? JSON.stringify(job.config.target) : "–"),
        h("dt", {}, "created"), h("dd", {}, fmtTime(job.created_at)),
        h("dt", {}, "finished"), h("dd", {}, fmtTime(job.finished_at)),
        h("dt", {}, "attempt"), h("dd", {}, job.attempt ?? "–")),
      job.status === "succeeded"
        ? h("div", { class: "actions", id: "downloads" }, ["model.onnx", "model.onnx.zst", "report.json"].map((n) => downloadButton(id, n)),
          h("a", { class: "button secondary", href: `/jobs/${encodeURIComponent(id)}/report.html` }, "report page"))
        : null,
    ].filter(Boolean));
  }

  function onJob(job) {
    renderHead(job);
    const p = job.progress || {};
    if (p.epochs && p.epoch && liveMetrics(job).length && !TERMINAL.has(job.status) && !reportShown) {
      live.set(`${job.stage}/${p.epoch}`, { phase: job.stage, epoch: p.epoch, ...Object.fromEntries(liveMetrics(job)) });
      reportRoot.replaceChildren(curvesCard([...live.values()]));
    }
    if (job.status === "succeeded" && !reportShown) {
      reportShown = true;
      showReport();
    }
  }

  async function showReport() {
    try {
      const report = await apiJson(`/jobs/${encodeURIComponent(id)}/report`);
      reportRoot.replaceChildren(compareCard(report), curvesCard(report.history || []),
        layersCard(report.layers || []), methodCard(report));
      document.body.dataset.reportReady = "true";
    } catch (err) {
      reportRoot.replaceChildren(h("p", { class: "error" }, "report: " + err.message));
    }
  }

  try {
    onJob(await apiJson(`/jobs/${encodeURIComponent(id)}`));
    await followEvents(id, onJob, signal);
  } catch (err) {
    if (!signal.aborted) head.replaceChildren(h("p", { class: "error" }, err.message));
  }
}

// ---- routing -------------------------------------------------------------------------------------

function route() {
  pageAbort.abort();
  pageAbort = new AbortController();
  const root = document.getElementById("app");
  root.replaceChildren();
  delete document.body.dataset.reportReady;
  // /jobs/{id}/report.html serves this page too: the job id comes from the path.
  const fromPath = location.pathname.match(/^\/jobs\/([^/]+)\/report\.html$/);
  const fromHash = location.hash.match(/^#\/jobs\/([^/]+)$/);
  const id = fromPath ? decodeURIComponent(fromPath[1]) : fromHash && decodeURIComponent(fromHash[1]);
  const sweep = location.hash.match(/^#\/sweeps(?:\/([^/]+))?$/); // sweeps.js draws these pages
  delete document.body.dataset.sweepStatus;
  if (id) jobPage(root, id);
  else if (sweep) sweep[1] ? sweepPage(root, decodeURIComponent(sweep[1])) : sweepsPage(root);
  else jobsPage(root);
}

function init() {
  const keyInput = document.getElementById("api-key");
  keyInput.value = localStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("change", () => {
    if (keyInput.value) localStorage.setItem(KEY_STORAGE, keyInput.value);
    else localStorage.removeItem(KEY_STORAGE);
    route();
  });
  window.addEventListener("hashchange", route);
  route();
}

init();
