// caap viewer, part 3 of 4 (see viewer.js): `caap bench` rows: metric table, Deletion/Insertion curves,
// images ordered or filtered by a metric.

// ------------------------------------------------------------------ results of `caap bench`
function fmt(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(2); }

function resultsSection() {
  const rows = image().results;
  if (!rows) return null;
  const methods = Object.keys(rows);
  const metrics = DATA.metrics || Object.keys(METRIC_LABELS);
  const table = el("table", { class: "metrics" },
    el("tr", {}, el("th", {}, "method"), ...metrics.map((m) => el("th", {}, METRIC_LABELS[m] || m)),
      el("th", {}, "class"), el("th", {}, "correct")));
  methods.forEach((m, i) => {
    const row = rows[m];
    const [r, g, b] = paletteColour(i);
    table.append(el("tr", { "data-method": m },
      el("td", {}, el("span", { class: "swatch", style: `background:rgb(${r},${g},${b})` }), " ", m),
      ...metrics.map((k) => el("td", { "data-metric": k }, row.skipped ? "skipped" : fmt(row[k]))),
      el("td", {}, row.target === undefined ? "–" : className(row.target)),
      el("td", {}, row.correct === undefined ? "–" : String(row.correct))));
  });
  return el("section", { id: "results" }, el("h2", {}, "Deletion / Insertion (caap bench)"),
    el("p", { class: "note" }, "metrics × 100; curves: softmax probability of the explained class vs the " +
      "fraction of pixels removed (deletion) or restored (insertion)"),
    table, el("div", { class: "curves" }, curveChart(rows, "deletion"), curveChart(rows, "insertion")));
}

function curveChart(rows, kind) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 300, H = 180, pad = 30;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  svg.setAttribute("class", "curve");
  svg.setAttribute("data-curve", kind);
  const line = (x1, y1, x2, y2) => {
    const l = document.createElementNS(NS, "line");
    Object.entries({ x1, y1, x2, y2, stroke: "#888" }).forEach(([k, v]) => l.setAttribute(k, v));
    svg.append(l);
  };
  line(pad, H - pad, W - 5, H - pad);
  line(pad, 5, pad, H - pad);
  const text = (x, y, s) => {
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.textContent = s;
    svg.append(t);
  };
  text(pad + 4, 16, kind);
  text(2, H - pad, "0");
  text(2, 12, "1");
  Object.keys(rows).forEach((m, i) => {
    const curve = (rows[m].curves || {})[kind];
    if (!curve || curve.length < 2) return;
    const [r, g, b] = paletteColour(i);
    const pts = curve.map((v, j) => `${pad + (j / (curve.length - 1)) * (W - pad - 5)},` +
      `${H - pad - (v === null ? 0 : v) * (H - pad - 5)}`);
    const poly = document.createElementNS(NS, "polyline");
    poly.setAttribute("points", pts.join(" "));
    poly.setAttribute("fill", "none");
    poly.setAttribute("stroke", `rgb(${r},${g},${b})`);
    poly.setAttribute("stroke-width", 1.5);
    poly.setAttribute("data-method", m);
    svg.append(poly);
  });
  return svg;
}

// Images ordered by (or filtered on) a metric of one method; images without that value go last.
function metricOf(img) {
  const { metric, method } = state.order;
  const row = (img.results || {})[method];
  const v = row ? row[metric] : undefined;
  return typeof v === "number" ? v : null;
}

function orderedImages() {
  const idx = DATA.images.map((_, i) => i);
  const { metric, method, descending, min, max } = state.order;
  if (!metric || !method) return idx;
  const lo = min === "" ? -Infinity : Number(min) / 100, hi = max === "" ? Infinity : Number(max) / 100;
  const keep = idx.filter((i) => {
    const v = metricOf(DATA.images[i]);
    if (min === "" && max === "") return true;
    return v !== null && v >= lo && v <= hi;
  });
  return keep.sort((a, b) => {
    const va = metricOf(DATA.images[a]), vb = metricOf(DATA.images[b]);
    if (va === null || vb === null) return (va === null) - (vb === null);
    return descending ? vb - va : va - vb;
  });
}

function orderControls() {
  const methods = [...new Set(DATA.images.flatMap((img) => Object.keys(img.results || {})))];
  if (!methods.length) return null;
  const metrics = DATA.metrics || Object.keys(METRIC_LABELS);
  const metric = el("select", { id: "order-metric", "aria-label": "order by metric" },
    el("option", { value: "" }, "file order"),
    ...metrics.map((m) => el("option", { value: m }, METRIC_LABELS[m] || m)));
  const method = el("select", { id: "order-method", "aria-label": "of method" },
    ...methods.map((m) => el("option", { value: m }, m)));
  const dir = el("select", { id: "order-dir", "aria-label": "order" },
    el("option", { value: "desc" }, "high first"), el("option", { value: "asc" }, "low first"));
  const min = el("input", { id: "order-min", type: "number", placeholder: "min ×100", size: 6 });
  const max = el("input", { id: "order-max", type: "number", placeholder: "max ×100", size: 6 });
  metric.value = state.order.metric;
  method.value = state.order.method || methods[0];
  state.order.method = method.value;
  dir.value = state.order.descending ? "desc" : "asc";
  min.value = state.order.min;
  max.value = state.order.max;
  const apply = () => {
    Object.assign(state.order, { metric: metric.value, method: method.value, descending: dir.value === "desc",
      min: min.value, max: max.value });
    renderList();
  };
  for (const c of [metric, method, dir]) c.addEventListener("change", apply);
  for (const c of [min, max]) c.addEventListener("input", apply);
  return el("div", { class: "order" }, el("div", {}, "order / filter by"), metric, method, dir,
    el("div", {}, min, max));
}
