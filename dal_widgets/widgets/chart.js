// A small SVG line chart: series of {name, x, y, color, band_lo?, band_hi?}. Text via textContent.
// Colors come from chart.css (JupyterLab's theme variables); the SVG has no background of its own.
const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

// Round ticks covering [lo, hi], about n of them; steps of at least 1 when `integer`.
export function niceTicks(lo, hi, n, integer) {
  if (!(hi > lo)) return [lo];
  const span = hi - lo;
  const step0 = Math.pow(10, Math.floor(Math.log10(span / n)));
  const err = (n * step0) / span;
  let step = step0 * (err <= 0.15 ? 10 : err <= 0.35 ? 5 : err <= 0.75 ? 2 : 1);
  if (integer) step = Math.max(step, 1); // 1, 2, 5 x 10^k with k >= 0: integers
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) out.push(+v.toPrecision(12));
  return out;
}

// The drawn range and the ticks of one axis. One distinct value (a single point, or all equal)
// sits in the middle with one tick at it: padding the range to [v, v + 1] and ticking that
// labelled a one-point accuracy curve "10, 10.2, ... 11".
export function axis(values, n, fixed) {
  if (fixed && fixed.length === 2 && fixed[1] > fixed[0]) {
    return { lo: fixed[0], hi: fixed[1], ticks: niceTicks(fixed[0], fixed[1], n, false) };
  }
  let lo = Infinity, hi = -Infinity, integer = true;
  for (const v of values) { // a loop, not Math.min(...values): long curves overflow the stack
    if (v < lo) lo = v;
    if (v > hi) hi = v;
    if (!Number.isInteger(v)) integer = false;
  }
  if (hi > lo) return { lo, hi, ticks: niceTicks(lo, hi, n, integer) };
  const pad = integer ? 1 : Math.abs(lo) * 0.1 || 1;
  return { lo: lo - pad, hi: hi + pad, ticks: [lo] };
}

function render({ model, el }) {
  el.classList.add("dal-chart");
  const W = 420, H = 220, L = 46, R = 10, T = 24, B = 34;
  function draw() {
    el.replaceChildren();
    const series = (model.get("series") || []).filter((sr) => sr.x && sr.x.length);
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img" });
    svg.appendChild(s("text", { x: L, y: 15, class: "dal-chart-title" }, model.get("title") || ""));
    const xs = series.flatMap((sr) => sr.x).filter((v) => Number.isFinite(v));
    const ys = series.flatMap((sr) => sr.y.concat(sr.band_lo || [], sr.band_hi || [])).filter((v) => Number.isFinite(v));
    if (!xs.length || !ys.length) {
      svg.appendChild(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "dal-chart-empty" }, model.get("empty") || "no data yet"));
      el.appendChild(svg);
      return;
    }
    const xa = axis(xs, 5);
    const ya = axis(ys, 4, model.get("y_range"));
    const px = (v) => L + ((v - xa.lo) / (xa.hi - xa.lo)) * (W - L - R);
    const py = (v) => H - B - ((v - ya.lo) / (ya.hi - ya.lo)) * (H - T - B);
    for (const t of ya.ticks) {
      svg.appendChild(s("line", { x1: L, x2: W - R, y1: py(t), y2: py(t), class: "dal-chart-grid" }));
      svg.appendChild(s("text", { x: L - 4, y: py(t) + 3, "text-anchor": "end", class: "dal-chart-tick" }, t));
    }
    svg.appendChild(s("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "dal-chart-axis" }));
    for (const t of xa.ticks) {
      svg.appendChild(s("text", { x: px(t), y: H - B + 13, "text-anchor": "middle", class: "dal-chart-tick" }, t));
    }
    svg.appendChild(s("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", class: "dal-chart-label" }, model.get("xlabel") || ""));
    series.forEach((sr, i) => {
      const color = sr.color || ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2"][i % 6];
      if (sr.band_lo && sr.band_hi) {
        const top = sr.x.map((x, j) => `${px(x)},${py(sr.band_hi[j])}`);
        const bottom = sr.x.map((x, j) => `${px(x)},${py(sr.band_lo[j])}`).reverse();
        svg.appendChild(s("polygon", { points: top.concat(bottom).join(" "), fill: color, opacity: 0.15 }));
      }
      const ok = sr.x.map((_, j) => j).filter((j) => Number.isFinite(sr.x[j]) && Number.isFinite(sr.y[j]));
      const pts = ok.map((j) => `${px(sr.x[j])},${py(sr.y[j])}`).join(" ");
      svg.appendChild(s("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": 1.8 }));
      if (ok.length <= 60) for (const j of ok) svg.appendChild(s("circle", { cx: px(sr.x[j]), cy: py(sr.y[j]), r: 2.2, fill: color }));
      const legendY = T + 4 + i * 13;
      svg.appendChild(s("rect", { x: W - R - 120, y: legendY - 8, width: 9, height: 9, fill: color }));
      svg.appendChild(s("text", { x: W - R - 107, y: legendY, class: "dal-chart-legend" }, sr.name || ""));
    });
    el.appendChild(svg);
  }
  model.on("change:series", draw);
  model.on("change:title", draw);
  model.on("change:y_range", draw);
  draw();
}

export default { render };
