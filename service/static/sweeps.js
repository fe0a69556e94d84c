// Secateur dashboard, sweeps: the list (#/sweeps) and one sweep (#/sweeps/ID) with its accuracy against
// reduction plot (hover a point for its job, click to open it), the Pareto front drawn through it, and a
// table with a download per point. Loaded before app.js, whose helpers (h, svg, api, ...) it calls.
"use strict";

// What the x axis can show: the dense model's figure over the point's (higher is better, 1× is dense).
const REDUCTIONS = {
  flops: { label: "FLOPs reduction", of: (p) => p.flops },
  onnx_bytes: { label: "ONNX size reduction", of: (p) => p.onnx_bytes },
  latency_ms: { label: "speed-up at batch 1", of: (p) => (p.latency_ms || {}).b1 },
};

const targetText = (target) => Object.entries(target || {}).map(([k, v]) => `${k.replace(/_/g, " ")} ${v}`).join(", ");
const endedCount = (sweep) => sweep.points.filter((p) => TERMINAL.has(p.status)).length;

function reductionOf(sweep, point, metric) {
  const dense = REDUCTIONS[metric].of(sweep.baseline || {});
  const mine = REDUCTIONS[metric].of(point);
  return isNum(dense) && isNum(mine) && mine > 0 ? dense / mine : null;
}

// Accuracy (y) against reduction (x) as SVG: one circle per measured point (filled on the front), the
// front as a line, the dense baseline as a square at 1×. Returns the SVG; `onHover(point|null, x, y)`.
function sweepPlot(sweep, metric, onHover, onOpen) {
  const W = 900, H = 380, pad = { left: 64, right: 24, top: 18, bottom: 46 };
  const plot = svg("svg", { class: "sweep-plot", id: "sweep-plot", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `accuracy against ${REDUCTIONS[metric].label}` });
  const measured = sweep.points.map((p) => ({ p, x: reductionOf(sweep, p, metric), y: p.accuracy }))
    .filter((d) => isNum(d.x) && isNum(d.y));
  plot.dataset.points = String(measured.length);
  const base = sweep.baseline && isNum(sweep.baseline.accuracy) ? { x: 1, y: sweep.baseline.accuracy } : null;
  const all = [...measured, ...(base ? [base] : [])];
  if (!all.length) {
    plot.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted" }, "no point has finished yet"));
    return plot;
  }
  let [x0, x1] = [Math.min(1, ...all.map((d) => d.x)), Math.max(...all.map((d) => d.x))];
  let [y0, y1] = [Math.min(...all.map((d) => d.y)), Math.max(...all.map((d) => d.y))];
  const xm = (x1 - x0 || 1) * 0.05, ym = (y1 - y0 || 0.02) * 0.12;
  [x0, x1, y0, y1] = [Math.max(0, x0 - xm), x1 + xm, Math.max(0, y0 - ym), Math.min(1, y1 + ym)];
  const X = (x) => pad.left + ((x - x0) / (x1 - x0)) * (W - pad.left - pad.right);
  const Y = (y) => H - pad.bottom - ((y - y0) / (y1 - y0)) * (H - pad.top - pad.bottom);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4, x = x0 + ((x1 - x0) * i) / 4;
    plot.append(svg("line", { x1: pad.left, x2: W - pad.right, y1: Y(y), y2: Y(y), class: "grid" }),
      svg("text", { x: pad.left - 8, y: Y(y) + 4, "text-anchor": "end" }, (100 * y).toFixed(1) + "%"),
      svg("text", { x: X(x), y: H - pad.bottom + 18, "text-anchor": "middle" }, x.toFixed(2) + "×"));
  }
  plot.append(svg("text", { x: (pad.left + W - pad.right) / 2, y: H - 6, "text-anchor": "middle", class: "axis" },
    REDUCTIONS[metric].label + " (dense model ÷ pruned)"),
  svg("text", { x: 14, y: H / 2, transform: `rotate(-90 14 ${H / 2})`, "text-anchor": "middle", class: "axis" }, "accuracy"));
  const front = new Set((sweep.pareto_by || {})[metric] || []);
  const line = measured.filter((d) => front.has(d.p.job_id)).sort((a, b) => a.x - b.x);
  if (line.length > 1) {
    plot.append(svg("polyline", { class: "front", points: line.map((d) => `${X(d.x)},${Y(d.y)}`).join(" ") }));
  }
  if (base) {
    plot.append(svg("rect", { x: X(1) - 5, y: Y(base.y) - 5, width: 10, height: 10, class: "dense" },
      svg("title", {}, `dense model: ${fmtPct(base.y)}`)));
  }
  for (const d of measured) {
    const dot = svg("circle", { cx: X(d.x), cy: Y(d.y), r: 7, class: front.has(d.p.job_id) ? "point on-front" : "point",
      "data-job": d.p.job_id, tabindex: 0 }, svg("title", {}, `${targetText(d.p.target)}: ${fmtPct(d.y)}`));
    dot.addEventListener("mouseenter", () => onHover(d.p, X(d.x) / W, Y(d.y) / H));
    dot.addEventListener("focus", () => onHover(d.p, X(d.x) / W, Y(d.y) / H));
    dot.addEventListener("mouseleave", () => onHover(null));
    dot.addEventListener("click", () => onOpen(d.p));
    plot.append(dot);
  }
  return plot;
}

function tooltipLines(sweep, point) {
  return [
    h("strong", {}, targetText(point.target)),
    h("div", { class: "mono" }, "job " + point.job_id),
    h("div", {}, `accuracy ${fmtPct(point.accuracy)} · FLOPs ${fmtCount(point.flops)} (${(reductionOf(sweep, point, "flops") || 0).toFixed(2)}×)`),
    h("div", {}, `params ${fmtCount(point.params)} · ONNX ${fmtBytes(point.onnx_bytes)} · ${fmtMs((point.latency_ms || {}).b1)} at batch 1`),
    h("div", { class: "muted" }, (sweep.pareto || []).includes(point.job_id) ? "on the Pareto front · click to open" : "click to open"),
  ];
}

function plotCard(sweep) {
  const select = h("select", { id: "sweep-axis" }, Object.entries(REDUCTIONS).map(([k, r]) => h("option", { value: k }, r.label)));
  const tip = h("div", { class: "tooltip", id: "sweep-tooltip", hidden: true });
  const holder = h("div", { class: "plot-holder" });
  const draw = () => holder.replaceChildren(sweepPlot(sweep, select.value, (point, fx, fy) => {
    if (!point) { tip.hidden = true; return; }
    tip.replaceChildren(...tooltipLines(sweep, point));
    tip.dataset.job = point.job_id;
    tip.style.cssText = `left:${(100 * fx).toFixed(1)}%;top:${(100 * fy).toFixed(1)}%`;
    tip.hidden = false;
  }, (point) => { location.hash = "#/jobs/" + point.job_id; }), tip);
  select.addEventListener("change", draw);
  draw();
  return h("section", { class: "card" }, h("div", { class: "toolbar" }, h("h2", {}, "Accuracy against reduction"),
    h("label", { class: "muted" }, "x axis ", select)), holder,
  h("p", { class: "muted" }, "■ dense model · ● on the Pareto front (accuracy against this reduction), joined by the line · ○ dominated"));
}

function pointsCard(sweep) {
  const front = new Set(sweep.pareto || []);
  const rows = sweep.points.map((p) => h("tr", { "data-job": p.job_id },
    h("td", {}, front.has(p.job_id) ? "★" : ""),
    h("td", {}, h("a", { href: "#/jobs/" + p.job_id }, targetText(p.target))),
    h("td", {}, badge(p.status)),
    h("td", { class: "num" }, fmtPct(p.accuracy)), h("td", { class: "num" }, fmtCount(p.flops)),
    h("td", { class: "num" }, fmtCount(p.params)), h("td", { class: "num" }, fmtBytes(p.onnx_bytes)),
    h("td", { class: "num" }, fmtMs((p.latency_ms || {}).b1)),
    h("td", {}, p.status === "succeeded" ? downloadButton(p.job_id, "model.onnx") : (p.error ? p.error.code : ""))));
  const heads = ["front", "target", "status", "accuracy", "FLOPs", "params", "ONNX size", "latency b1", "download"];
  return h("section", { class: "card" }, h("h2", {}, "Points"),
    h("table", { id: "points-table" }, h("thead", {}, h("tr", {}, heads.map((c, i) => h("th", { class: i >= 3 && i < 8 ? "num" : "" }, c)))),
      h("tbody", {}, rows)),
    h("p", { class: "muted" }, "★ on the Pareto front: no other point is at least as accurate and cheaper in FLOPs, latency and ONNX size at once."));
}

function sweepHead(sweep, onChange) {
  const act = (label, cls, run) => h("button", { class: cls, onclick: async () => {
    try { if ((await run()) !== false) await onChange(); } catch (err) { alert(err.message); }
  } }, label);
  const path = `/sweeps/${encodeURIComponent(sweep.id)}`;
  const base = sweep.baseline || {};
  return h("section", { class: "card", id: "sweep-card" },
    h("div", { class: "toolbar" }, h("h2", {}, "Sweep ", h("span", { class: "mono" }, sweep.id)), badge(sweep.status),
      sweep.status === "running" ? act("Cancel all", "danger", () => api(path + "/cancel", { method: "POST" }))
        : act("Delete sweep", "danger", async () => {
          await api(path, { method: "DELETE" });
          location.hash = "#/sweeps";
          return false; // gone: nothing to redraw
        })),
    h("div", { class: "status-line" }, h("span", {}, `${endedCount(sweep)} of ${sweep.points.length} points ended`),
      progressBar({ status: sweep.status === "running" ? "running" : sweep.status,
        progress: { fraction: endedCount(sweep) / Math.max(sweep.points.length, 1) } }, true)),
    h("dl", { class: "kv" },
      h("dt", {}, "method"), h("dd", {}, (sweep.config || {}).method || "–"),
      h("dt", {}, "architecture"), h("dd", {}, (sweep.config || {}).architecture || "(ONNX)"),
      h("dt", {}, "dense model"), h("dd", {}, isNum(base.accuracy)
        ? `${fmtPct(base.accuracy)} · ${fmtCount(base.flops)} FLOPs · ${fmtCount(base.params)} params · ${fmtBytes(base.onnx_bytes)}`
        : "measured by the first point"),
      h("dt", {}, "model / dataset"), h("dd", { class: "mono" }, `${sweep.model_id} / ${sweep.dataset_id}`),
      h("dt", {}, "created"), h("dd", {}, fmtTime(sweep.created_at))));
}

async function sweepPage(root, id) {
  const signal = pageAbort.signal;
  root.append(h("p", {}, h("a", { href: "#/sweeps" }, "← all sweeps")));
  const body = h("div", { id: "sweep" });
  root.append(body);
  let shown = "";
  const refresh = async () => {
    const sweep = await apiJson(`/sweeps/${encodeURIComponent(id)}`);
    const stamp = JSON.stringify(sweep);
    if (stamp !== shown) {  // redraw only on change, so a hover survives the poll
      shown = stamp;
      body.replaceChildren(sweepHead(sweep, refresh), plotCard(sweep), pointsCard(sweep));
    }
    document.body.dataset.sweepStatus = sweep.status;
    return sweep;
  };
  try {
    while (!signal.aborted && (await refresh()).status === "running") await sleep(2000);
  } catch (err) {
    if (!signal.aborted) body.replaceChildren(h("p", { class: "error" }, err.message));
  }
}

// The form of a new sweep: stored inputs (uploaded once with POST /models and /datasets), one config,
// and the targets as a comma-separated list of one kind.
async function sweepForm() {
  const result = h("p", { id: "sweep-result" });
  const field = (label, input, cls) => h("label", { class: cls }, label, input);
  const stored = async (kind) => (await apiJson(`/${kind}s?limit=100`)).items.map((i) =>
    h("option", { value: i.id }, `${i.id.slice(0, 8)} · ${i.format} · ${fmtBytes(i.bytes)} · ${fmtTime(i.created_at)}`));
  const [models, datasets] = await Promise.all([stored("model"), stored("dataset")]);
  const form = h("form", { class: "submit", id: "sweep-form" },
    field("stored model", h("select", { name: "model_id", required: true }, models), "wide"),
    field("stored dataset", h("select", { name: "dataset_id", required: true }, datasets), "wide"),
    field("method", h("select", { name: "method" }, ["l1", "tpp", "weightmom", "magnitude"].map((m) => h("option", {}, m)))),
    field("architecture (not for ONNX)", h("input", { name: "architecture", placeholder: "resnet20" })),
    field("target", h("select", { name: "kind" }, h("option", { value: "pruning_ratio" }, "pruning ratio"),
      h("option", { value: "sparsity" }, "sparsity"), h("option", { value: "flops_reduction" }, "FLOPs reduction ×"))),
    field("targets (comma-separated)", h("input", { name: "values", required: true, value: "0.3,0.5,0.7" })),
    field("finetune epochs", h("input", { name: "epochs", type: "number", min: 0, value: "1" })),
    field("more config (JSON, merged)", h("textarea", { name: "extra", placeholder: '{"finetune": {"lr": 0.01}}' }), "full"),
    h("div", { class: "actions full" }, h("button", { type: "submit", id: "sweep-button" }, "Start sweep"), result));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    result.replaceChildren();
    try {
      const config = data.get("extra") ? JSON.parse(String(data.get("extra"))) : {};
      config.method = data.get("method");
      if (data.get("architecture")) config.architecture = data.get("architecture");
      if (data.get("epochs") !== "") config.finetune = { ...(config.finetune || {}), epochs: Number(data.get("epochs")) };
      const targets = String(data.get("values")).split(",").filter((v) => v.trim()).map((v) => ({ [data.get("kind")]: Number(v) }));
      const body = JSON.stringify({ model_id: data.get("model_id"), dataset_id: data.get("dataset_id"), config, targets });
      const sweep = await apiJson("/sweeps", { method: "POST", body, headers: { "Content-Type": "application/json" } });
      location.hash = "#/sweeps/" + sweep.id;
    } catch (err) {
      result.replaceChildren(h("span", { class: "error" }, err instanceof SyntaxError ? "config JSON: " + err.message : err.message));
    }
  });
  const hint = models.length && datasets.length ? null
    : h("p", { class: "muted" }, "Store a model and a dataset first: `secateur upload model FILE`, `secateur upload dataset FILE`.");
  return h("section", { class: "card" }, h("h2", {}, "Start a sweep"), hint, form);
}

async function sweepsPage(root) {
  const tbody = h("tbody", { id: "sweeps-body" });
  const note = h("p", { class: "muted" });
  try {
    root.append(await sweepForm());
  } catch (err) {
    root.append(h("p", { class: "error" }, "stored inputs: " + err.message));
  }
  root.append(h("section", { class: "card" }, h("h2", {}, "Sweeps"),
    h("table", {}, h("thead", {}, h("tr", {}, ["sweep", "status", "method", "points", "on the front", "created"].map((c) => h("th", {}, c)))), tbody),
    note, h("p", { class: "muted" }, "Also: POST /sweeps, or `secateur sweep --model-id … --dataset-id … --ratios 0.3,0.5,0.7`.")));
  try {
    const page = await apiJson("/sweeps?limit=50");
    tbody.replaceChildren(...page.sweeps.map((s) => h("tr", { class: "clickable", "data-id": s.id,
      onclick: () => { location.hash = "#/sweeps/" + s.id; } },
    h("td", { class: "mono" }, h("a", { href: "#/sweeps/" + s.id }, s.id.slice(0, 8))), h("td", {}, badge(s.status)),
    h("td", {}, (s.config || {}).method || "–"), h("td", {}, `${endedCount(s)}/${s.points.length} ended`),
    h("td", {}, String((s.pareto || []).length)), h("td", {}, fmtTime(s.created_at)))));
    note.textContent = page.sweeps.length ? "" : "No sweeps yet.";
  } catch (err) {
    note.replaceChildren(h("span", { class: "error" }, err.message));
  }
}
