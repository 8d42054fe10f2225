// A small SVG line chart: series of {name, x, y, color, band_lo?, band_hi?}. Text via textContent.
const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function niceTicks(lo, hi, n) {
  if (!(hi > lo)) { hi = lo + 1; }
  const span = hi - lo;
  const step0 = Math.pow(10, Math.floor(Math.log10(span / n)));
  const err = (n * step0) / span;
  const step = step0 * (err <= 0.15 ? 10 : err <= 0.35 ? 5 : err <= 0.75 ? 2 : 1);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) out.push(+v.toPrecision(12));
  return out;
}

function render({ model, el }) {
  el.classList.add("dal-chart");
  const W = 420, H = 220, L = 46, R = 10, T = 24, B = 34;
  function draw() {
    el.replaceChildren();
    const series = (model.get("series") || []).filter((sr) => sr.x && sr.x.length);
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img" });
    svg.appendChild(s("text", { x: L, y: 15, class: "dal-chart-title" }, model.get("title") || ""));
    const xs = series.flatMap((sr) => sr.x);
    const ys = series.flatMap((sr) => sr.y.concat(sr.band_lo || [], sr.band_hi || [])).filter((v) => Number.isFinite(v));
    if (!xs.length || !ys.length) {
      svg.appendChild(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "dal-chart-empty" }, model.get("empty") || "no data yet"));
      el.appendChild(svg);
      return;
    }
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    const fixed = model.get("y_range") || [];
    if (fixed.length === 2) [y0, y1] = fixed;
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y1 = y0 + 1; }
    const px = (v) => L + ((v - x0) / (x1 - x0)) * (W - L - R);
    const py = (v) => H - B - ((v - y0) / (y1 - y0)) * (H - T - B);
    for (const t of niceTicks(y0, y1, 4)) {
      svg.appendChild(s("line", { x1: L, x2: W - R, y1: py(t), y2: py(t), class: "dal-chart-grid" }));
      svg.appendChild(s("text", { x: L - 4, y: py(t) + 3, "text-anchor": "end", class: "dal-chart-tick" }, t));
    }
    for (const t of niceTicks(x0, x1, 5)) {
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
  draw();
}

export default { render };
