// caap viewer: attribution maps of several methods side by side, per-patch scores, classes, CAAP's layer
// range and blank, attention per block and head, a patch-level logit lens and `caap bench` curves.
// Plain JavaScript, no library, no request: every number comes from the JSON block #viewer-data written by
// analysis/viewer (Python). Arrays arrive as base64 little-endian float32/uint16; attention patterns as
// zlib-compressed uint8 codes per row (value = code / 255 * row maximum), inflated by the browser's
// DecompressionStream.
//
// Data (see analysis/viewer/data.py: payload):
//   model   {name, grid [gh, gw], image_size [H, W], n_layers, n_heads, n_prefix, n_registers, default_end}
//   methods [registry names], class_names {index: name}, metrics [keys], images [...]
//   image   {name, src (data URI), classes [K], probs [K], maps {method: f32 [K, gh*gw]},
//            sweeps {method: {ends, blanks, default {end, blank}, data f32 [blank, end, K, gh*gw]}},
//            attention {shape [L, H, T, T], codes, scale f32 [L, H, T]}, lens {top u16 [L, T],
//            top_prob f32 [L, T], class_prob f32 [L, K, T]}, lens_note, results {method: row}, error}
"use strict";

(function () {
  const DATA = JSON.parse(document.getElementById("viewer-data").textContent);
  const MODEL = DATA.model || null;
  const METRIC_LABELS = {
    deletion: "Del ↓", insertion: "Ins ↑", ins_del: "Ins−Del ↑", aupr1: "AUPR₁ ↑", aupr0: "AUPR₀ ↑",
    pointing_game: "PG ↑",
  };
  const SIZE = 224; // css pixels of a panel's canvas side (longer side)

  // ------------------------------------------------------------------ decoding
  function bytesOf(b64) {
    const text = atob(b64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return bytes;
  }

  function decodeF32(b64) {
    const view = new DataView(bytesOf(b64).buffer);
    const out = new Float32Array(view.byteLength / 4);
    for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
    return out;
  }

  function decodeU16(b64) {
    const view = new DataView(bytesOf(b64).buffer);
    const out = new Uint16Array(view.byteLength / 2);
    for (let i = 0; i < out.length; i++) out[i] = view.getUint16(2 * i, true);
    return out;
  }

  async function inflateU8(b64) {
    const stream = new Blob([bytesOf(b64)]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  const decoded = new Map(); // cache of decoded arrays, keyed by image index and field
  function cached(key, make) {
    if (!decoded.has(key)) decoded.set(key, make());
    return decoded.get(key);
  }

  // ------------------------------------------------------------------ state
  const state = {
    image: 0, // index into DATA.images
    cls: 0, // index into the image's top-K classes
    hover: null, // patch index under the mouse
    selected: null, // token position whose attention is shown (patch: n_prefix + index; 0 = CLS)
    opacity: {}, // method -> 0..1
    sweep: {}, // method -> {end, blank}
    attn: { block: 0, head: 0, dir: "from" },
    lens: { block: MODEL ? MODEL.n_layers - 1 : 0, mode: "top" },
    order: { metric: "", method: "", descending: true, min: "", max: "" },
  };

  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  };

  const image = () => DATA.images[state.image];
  const nPatches = () => MODEL.grid[0] * MODEL.grid[1];
  const className = (c) => (c in DATA.class_names ? `${DATA.class_names[c]} (${c})` : String(c));

  // ------------------------------------------------------------------ maps
  function sweepState(method) {
    const sweep = image().sweeps[method];
    if (!state.sweep[method]) state.sweep[method] = { end: sweep.default.end, blank: sweep.default.blank };
    return state.sweep[method];
  }

  // The map a panel shows now: [gh * gw] float32 for the current class (and l_e / blank for CAAP).
  function currentMap(method) {
    const img = image();
    const n = nPatches();
    const K = img.classes.length;
    if (img.sweeps[method]) {
      const sweep = img.sweeps[method];
      const s = sweepState(method);
      const b = Math.max(0, sweep.blanks.indexOf(s.blank));
      const e = Math.max(0, sweep.ends.indexOf(s.end));
      const data = cached(`${state.image}/sweep/${method}`, () => decodeF32(sweep.data));
      const start = ((b * sweep.ends.length + e) * K + state.cls) * n;
      return data.subarray(start, start + n);
    }
    if (!img.maps[method]) return null;
    const data = cached(`${state.image}/map/${method}`, () => decodeF32(img.maps[method]));
    return data.subarray(state.cls * n, (state.cls + 1) * n);
  }

  // 1-based rank of patch p among all patches (1 = highest score; ties share the better rank).
  function rankOf(map, p) {
    let higher = 0;
    for (let i = 0; i < map.length; i++) if (map[i] > map[p]) higher++;
    return higher + 1;
  }

  function jet(t) {
    const c = (x) => Math.round(255 * Math.min(1, Math.max(0, x)));
    return [c(1.5 - Math.abs(4 * t - 3)), c(1.5 - Math.abs(4 * t - 2)), c(1.5 - Math.abs(4 * t - 1))];
  }

  function paletteColour(i) {
    const hue = (i * 137.508) % 360;
    const s = 0.65, l = 0.55;
    const k = (n) => (n + hue / 30) % 12;
    const a = s * Math.min(l, 1 - l);
    const f = (n) => Math.round(255 * (l - a * Math.max(-1, Math.min(k(n) - 3, 9 - k(n), 1))));
    return [f(0), f(8), f(4)];
  }

  // An offscreen gh x gw canvas: one pixel per patch (min-max normalized through jet, or given colours).
  function gridCanvas(values, colours) {
    const [gh, gw] = MODEL.grid;
    const canvas = document.createElement("canvas");
    canvas.width = gw;
    canvas.height = gh;
    const ctx = canvas.getContext("2d");
    const pixels = ctx.createImageData(gw, gh);
    let lo = Infinity, hi = -Infinity;
    if (!colours) for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
    for (let i = 0; i < gh * gw; i++) {
      const rgb = colours ? colours[i] : jet(hi > lo ? (values[i] - lo) / (hi - lo) : 0);
      pixels.data.set([rgb[0], rgb[1], rgb[2], 255], 4 * i);
    }
    ctx.putImageData(pixels, 0, 0);
    return canvas;
  }

  function canvasSize() {
    const [H, W] = MODEL ? MODEL.image_size : [SIZE, SIZE];
    const scale = SIZE / Math.max(H, W);
    return [Math.round(W * scale), Math.round(H * scale)];
  }

  const pictures = new Map(); // image index -> loaded HTMLImageElement
  function picture(index) {
    if (!pictures.has(index)) {
      const pic = new Image();
      pic.addEventListener("load", () => { if (index === state.image) redrawAll(); });
      if (DATA.images[index].src) pic.src = DATA.images[index].src;
      pictures.set(index, pic);
    }
    return pictures.get(index);
  }

  // Draw the image, an optional overlay grid canvas at `alpha`, and the hover / selection outlines.
  function drawBase(canvas, overlay, alpha) {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const pic = picture(state.image);
    if (pic.complete && pic.naturalWidth) ctx.drawImage(pic, 0, 0, canvas.width, canvas.height);
    if (overlay) {
      ctx.save();
      ctx.globalAlpha = alpha;
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(overlay, 0, 0, canvas.width, canvas.height);
      ctx.restore();
    }
    outline(ctx, canvas, state.hover, "#fff", 2);
    const sel = state.selected;
    if (sel !== null && sel >= MODEL.n_prefix) outline(ctx, canvas, sel - MODEL.n_prefix, "#ff00ff", 2);
  }

  function outline(ctx, canvas, patch, colour, width) {
    if (patch === null || patch === undefined) return;
    const [gh, gw] = MODEL.grid;
    const ph = canvas.height / gh, pw = canvas.width / gw;
    const r = Math.floor(patch / gw), c = patch % gw;
    ctx.save();
    ctx.strokeStyle = "#000";
    ctx.lineWidth = width + 2;
    ctx.strokeRect(c * pw + 1, r * ph + 1, pw - 2, ph - 2);
    ctx.strokeStyle = colour;
    ctx.lineWidth = width;
    ctx.strokeRect(c * pw + 1, r * ph + 1, pw - 2, ph - 2);
    ctx.restore();
  }

  function patchAt(canvas, event) {
    const rect = canvas.getBoundingClientRect();
    const [gh, gw] = MODEL.grid;
    const c = Math.floor(((event.clientX - rect.left) / rect.width) * gw);
    const r = Math.floor(((event.clientY - rect.top) / rect.height) * gh);
    if (r < 0 || c < 0 || r >= gh || c >= gw) return null;
    return r * gw + c;
  }

  // Hover and click behave the same on every image-shaped canvas of the page.
  function wireCanvas(canvas) {
    canvas.addEventListener("mousemove", (e) => setHover(patchAt(canvas, e)));
    canvas.addEventListener("mouseleave", () => setHover(null));
    canvas.addEventListener("click", (e) => {
      const p = patchAt(canvas, e);
      if (p !== null) selectToken(MODEL.n_prefix + p);
    });
  }

  // ------------------------------------------------------------------ panels
  function methodPanel(method) {
    const img = image();
    const [w, h] = canvasSize();
    const canvas = el("canvas", { class: "map", width: w, height: h, "data-method": method });
    wireCanvas(canvas);
    if (state.opacity[method] === undefined) state.opacity[method] = 0.6;
    const opacity = el("input", { type: "range", min: 0, max: 100, value: Math.round(100 * state.opacity[method]),
      class: "opacity", "aria-label": `${method} opacity` });
    opacity.addEventListener("input", () => { state.opacity[method] = opacity.value / 100; drawPanel(method); });
    const panel = el("div", { class: "panel", "data-method": method },
      el("div", { class: "panel-title" }, method),
      canvas,
      el("div", { class: "readout" }, el("span", { class: "score", "data-score": "" }, "score –"), " ",
        el("span", { class: "rank", "data-rank": "" }, "")),
      el("label", { class: "control" }, "opacity ", opacity));
    if (img.sweeps[method]) panel.append(...sweepControls(method));
    panel.append(el("button", { class: "export", type: "button", onclick: () => downloadPanel(method) }, "PNG"));
    return panel;
  }

  function sweepControls(method) {
    const sweep = image().sweeps[method];
    const s = sweepState(method);
    const label = el("span", { class: "le-value" }, `0..${s.end}`);
    const slider = el("input", { type: "range", class: "le", min: 0, max: sweep.ends.length - 1, step: 1,
      value: Math.max(0, sweep.ends.indexOf(s.end)), "aria-label": `${method} last patched block` });
    slider.addEventListener("input", () => {
      s.end = sweep.ends[Number(slider.value)];
      label.textContent = `0..${s.end}`;
      drawPanel(method);
      updateReadouts();
    });
    const blank = el("select", { class: "blank", "aria-label": `${method} blank` },
      ...sweep.blanks.map((b) => el("option", { value: b }, b)));
    blank.value = s.blank;
    blank.addEventListener("change", () => { s.blank = blank.value; drawPanel(method); updateReadouts(); });
    return [el("label", { class: "control" }, "blocks ", slider, " ", label),
      el("label", { class: "control" }, "blank ", blank)];
  }

  function drawPanel(method) {
    const canvas = document.querySelector(`canvas.map[data-method="${CSS.escape(method)}"]`);
    if (!canvas) return;
    const map = currentMap(method);
    drawBase(canvas, map ? gridCanvas(map) : null, state.opacity[method]);
  }

  function updateReadouts() {
    for (const panel of document.querySelectorAll(".panel[data-method]")) {
      const method = panel.dataset.method;
      const score = panel.querySelector(".score"), rank = panel.querySelector(".rank");
      if (!score) continue;
      const map = currentMap(method);
      if (state.hover === null || !map) {
        score.textContent = "score –";
        score.dataset.score = "";
        rank.textContent = "";
        rank.dataset.rank = "";
        continue;
      }
      const v = map[state.hover];
      const r = rankOf(map, state.hover);
      score.textContent = `score ${v.toPrecision(4)}`;
      score.dataset.score = String(v);
      rank.textContent = `rank ${r}/${map.length}`;
      rank.dataset.rank = String(r);
    }
    const [, gw] = MODEL.grid;
    const info = document.getElementById("hover-info");
    if (info) {
      info.textContent = state.hover === null ? "hover a patch; click it for its attention"
        : `patch ${state.hover} (row ${Math.floor(state.hover / gw)}, col ${state.hover % gw})`;
    }
    updateLensReadout();
  }

  function setHover(patch) {
    if (patch === state.hover) return;
    state.hover = patch;
    redrawAll();
  }

  function redrawAll() {
    const imageCanvas = document.querySelector("canvas.map[data-role=image]");
    if (imageCanvas) drawBase(imageCanvas, null, 0);
    for (const m of DATA.methods) drawPanel(m);
    drawAttention();
    drawLens();
    updateReadouts();
  }

  function exportPanel(method) {
    const canvas = document.querySelector(`canvas.map[data-method="${CSS.escape(method)}"]`);
    return canvas ? canvas.toDataURL("image/png") : null;
  }

  function downloadPanel(method) {
    const url = exportPanel(method);
    if (!url) return;
    const a = el("a", { href: url, download: `${image().name}_${method}.png` });
    document.body.append(a);
    a.click();
    a.remove();
  }

  // ------------------------------------------------------------------ attention per block and head
  async function attention() {
    const att = image().attention;
    if (!att) return null;
    const key = `${state.image}/attention`;
    if (!decoded.has(key)) decoded.set(key, inflateU8(att.codes).then((codes) => ({
      codes, scale: decodeF32(att.scale), shape: att.shape })));
    return decoded.get(key);
  }

  // Attention of the selected token to every patch ("from": its row) or of every patch to it ("to": its column).
  function attentionVector(a, block, head, dir, token) {
    const [, H, T] = a.shape;
    const out = new Float32Array(nPatches());
    const base = (block * H + head) * T;
    for (let i = 0; i < out.length; i++) {
      const other = MODEL.n_prefix + i;
      const q = dir === "from" ? token : other;
      const k = dir === "from" ? other : token;
      out[i] = (a.codes[(base + q) * T + k] / 255) * a.scale[base + q];
    }
    return out;
  }

  function selectToken(token) {
    state.selected = token;
    redrawAll();
  }

  let attentionDrawn = 0;
  async function drawAttention() {
    const grid = document.getElementById("attention-grid");
    if (!grid || state.selected === null) return;
    const ticket = ++attentionDrawn;
    const a = await attention();
    if (!a || ticket !== attentionDrawn) return;
    const { n_layers: L, n_heads: H } = MODEL;
    const token = state.selected;
    const what = token < MODEL.n_prefix ? (token === 0 ? "CLS" : `register ${token - 1}`)
      : `patch ${token - MODEL.n_prefix}`;
    document.getElementById("attention-title").textContent =
      `attention ${state.attn.dir === "from" ? "from" : "to"} ${what}, every block (rows) and head (columns); ` +
      "click a cell to enlarge";
    grid.replaceChildren();
    grid.style.gridTemplateColumns = `auto repeat(${H}, auto)`;
    grid.append(el("div", {}, ""), ...Array.from({ length: H }, (_, h) => el("div", { class: "head-label" }, `h${h}`)));
    for (let b = 0; b < L; b++) {
      grid.append(el("div", { class: "head-label" }, `b${b}`));
      for (let h = 0; h < H; h++) {
        const v = attentionVector(a, b, h, state.attn.dir, token);
        const cell = gridCanvas(v);
        cell.className = "attn-cell" + (b === state.attn.block && h === state.attn.head ? " chosen" : "");
        cell.dataset.block = b;
        cell.dataset.head = h;
        cell.title = `block ${b} head ${h}: max ${Math.max(...v).toPrecision(3)}, sum over patches ${v.reduce((s, x) => s + x, 0).toPrecision(3)}`;
        cell.addEventListener("click", () => { state.attn.block = b; state.attn.head = h; drawAttention(); });
        grid.append(cell);
      }
    }
    const big = document.getElementById("attention-big");
    const v = attentionVector(a, state.attn.block, state.attn.head, state.attn.dir, token);
    drawBase(big, gridCanvas(v), 0.7);
    big.dataset.values = "";
    const value = document.getElementById("attention-value");
    value.textContent = `block ${state.attn.block}, head ${state.attn.head}` + (state.hover === null ? ""
      : `: patch ${state.hover} ${v[state.hover].toPrecision(3)}`);
    value.dataset.value = state.hover === null ? "" : String(v[state.hover]);
  }

  function attentionSection() {
    if (!image().attention) return el("section", { id: "attention" }, el("h2", {}, "Attention"),
      el("p", { class: "note" }, "not stored for this image"));
    const dir = el("select", { id: "attention-dir", "aria-label": "direction" },
      el("option", { value: "from" }, "from the selected token"), el("option", { value: "to" }, "to the selected token"));
    dir.value = state.attn.dir;
    dir.addEventListener("change", () => { state.attn.dir = dir.value; drawAttention(); });
    const [w, h] = canvasSize();
    const big = el("canvas", { id: "attention-big", class: "map", width: w, height: h });
    wireCanvas(big);
    return el("section", { id: "attention" }, el("h2", {}, "Attention per block and head"),
      el("div", { class: "controls" }, dir, " ",
        el("button", { type: "button", onclick: () => selectToken(0) }, "CLS token"),
        el("span", { id: "attention-title", class: "note" }, "click a patch in any panel")),
      el("div", { class: "attention-row" }, el("div", {}, big, el("div", { id: "attention-value", class: "readout" })),
        el("div", { id: "attention-grid" })));
  }

  // ------------------------------------------------------------------ logit lens
  function lensArrays() {
    const lens = image().lens;
    if (!lens) return null;
    return cached(`${state.image}/lens`, () => ({
      top: decodeU16(lens.top), top_prob: decodeF32(lens.top_prob), class_prob: decodeF32(lens.class_prob) }));
  }

  function lensSection() {
    const img = image();
    if (!img.lens) return el("section", { id: "lens" }, el("h2", {}, "Logit lens"),
      el("p", { class: "note" }, img.lens_note || "not stored for this image"));
    const block = el("input", { type: "range", id: "lens-block", min: 0, max: MODEL.n_layers - 1,
      value: state.lens.block, "aria-label": "logit lens block" });
    const label = el("span", { id: "lens-block-value" }, `after block ${state.lens.block}`);
    block.addEventListener("input", () => {
      state.lens.block = Number(block.value);
      label.textContent = `after block ${state.lens.block}`;
      drawLens();
      updateLensReadout();
    });
    const mode = el("select", { id: "lens-mode", "aria-label": "logit lens view" },
      el("option", { value: "top" }, "top class per patch"), el("option", { value: "class" }, "p(selected class)"));
    mode.value = state.lens.mode;
    mode.addEventListener("change", () => { state.lens.mode = mode.value; drawLens(); });
    const [w, h] = canvasSize();
    const canvas = el("canvas", { id: "lens-canvas", class: "map", width: w, height: h });
    wireCanvas(canvas);
    return el("section", { id: "lens" }, el("h2", {}, "Patch-level logit lens"),
      el("p", { class: "note" }, "each token's residual stream after the block, through the final norm and the head"),
      el("div", { class: "controls" }, block, " ", label, " ", mode),
      el("div", { class: "attention-row" }, canvas,
        el("div", {}, el("div", { id: "lens-readout", class: "readout" }), el("ul", { id: "lens-legend" }))));
  }

  function drawLens() {
    const canvas = document.getElementById("lens-canvas");
    const arrays = lensArrays();
    if (!canvas || !arrays) return;
    const T = MODEL.n_prefix + nPatches();
    const b = state.lens.block;
    const n = nPatches();
    const legend = document.getElementById("lens-legend");
    legend.replaceChildren();
    if (state.lens.mode === "class") {
      const K = image().classes.length;
      const start = (b * K + state.cls) * T + MODEL.n_prefix;
      drawBase(canvas, gridCanvas(arrays.class_prob.subarray(start, start + n)), 0.7);
      legend.append(el("li", {}, `p(${className(image().classes[state.cls])}), min-max over patches`));
      return;
    }
    const tops = Array.from(arrays.top.subarray(b * T + MODEL.n_prefix, b * T + T));
    const counts = new Map();
    for (const c of tops) counts.set(c, (counts.get(c) || 0) + 1);
    const ranked = [...counts.entries()].sort((x, y) => y[1] - x[1]);
    const colourOf = new Map(ranked.map(([c], i) => [c, paletteColour(i)]));
    drawBase(canvas, gridCanvas(null, tops.map((c) => colourOf.get(c))), 0.7);
    const cls = arrays.top[b * T];
    legend.append(el("li", {}, `CLS: ${className(cls)} p=${arrays.top_prob[b * T].toPrecision(3)}`));
    for (const [c, count] of ranked.slice(0, 12)) {
      const [r, g, bl] = colourOf.get(c);
      legend.append(el("li", {}, el("span", { class: "swatch", style: `background:rgb(${r},${g},${bl})` }),
        ` ${className(c)}: ${count} patches`));
    }
  }

  function updateLensReadout() {
    const out = document.getElementById("lens-readout");
    const arrays = lensArrays();
    if (!out || !arrays) return;
    if (state.hover === null) { out.textContent = "hover a patch"; out.dataset.top = ""; return; }
    const T = MODEL.n_prefix + nPatches();
    const b = state.lens.block;
    const t = MODEL.n_prefix + state.hover;
    const K = image().classes.length;
    const top = arrays.top[b * T + t];
    const p = arrays.class_prob[(b * K + state.cls) * T + t];
    out.textContent = `patch ${state.hover} after block ${b}: top ${className(top)} ` +
      `p=${arrays.top_prob[b * T + t].toPrecision(3)}; p(${className(image().classes[state.cls])})=${p.toPrecision(3)}`;
    out.dataset.top = String(top);
  }

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
      el("option", { value: "" }, "file order"), ...metrics.map((m) => el("option", { value: m }, METRIC_LABELS[m] || m)));
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

  // ------------------------------------------------------------------ layout
  function renderList() {
    const list = document.getElementById("image-list");
    if (!list) return;
    list.replaceChildren();
    for (const i of orderedImages()) {
      const img = DATA.images[i];
      const v = state.order.metric && state.order.method ? metricOf(img) : null;
      list.append(el("li", {}, el("button", {
        type: "button", class: i === state.image ? "current" : "", "data-image": i,
        onclick: () => { state.image = i; state.cls = 0; state.sweep = {}; state.selected = null; renderView(); renderList(); },
      }, img.name + (v === null ? "" : ` · ${fmt(v)}`))));
    }
  }

  function classSelector() {
    const img = image();
    const select = el("select", { id: "class-select", "aria-label": "explained class" },
      ...img.classes.map((c, i) => el("option", { value: i },
        `${i + 1}. ${className(c)}` + (img.probs[i] === undefined ? "" : ` p=${img.probs[i].toFixed(3)}`))));
    select.value = state.cls;
    select.addEventListener("change", () => {
      state.cls = Number(select.value);
      redrawAll();
    });
    return select;
  }

  function renderView() {
    const view = document.getElementById("view");
    const img = image();
    view.replaceChildren();
    view.append(el("h2", {}, img.name));
    if (img.error) view.append(el("p", { class: "note" }, img.error));
    if (MODEL && Object.keys(img.maps).length + Object.keys(img.sweeps).length) {
      view.append(el("div", { class: "controls" }, "class ", classSelector(), " ",
        el("span", { id: "hover-info", class: "note" }, "")));
      const [w, h] = canvasSize();
      const imageCanvas = el("canvas", { class: "map", "data-role": "image", width: w, height: h });
      wireCanvas(imageCanvas);
      view.append(el("div", { id: "panels" },
        el("div", { class: "panel image-panel" }, el("div", { class: "panel-title" }, "image"), imageCanvas),
        ...DATA.methods.filter((m) => img.maps[m] || img.sweeps[m]).map(methodPanel)));
      view.append(attentionSection(), lensSection());
    } else if (img.src) {
      view.append(el("img", { src: img.src, class: "thumb", alt: img.name }));
    }
    const results = resultsSection();
    if (results) view.append(results);
    if (MODEL) redrawAll();
  }

  function render() {
    const app = document.getElementById("app");
    const header = el("header", {}, el("h1", {}, DATA.title || "caap viewer"),
      el("span", { class: "note" }, MODEL ? `${MODEL.name}: ${MODEL.n_layers} blocks × ${MODEL.n_heads} heads, ` +
        `${MODEL.grid[0]}×${MODEL.grid[1]} patches` : (DATA.subtitle || "")));
    const aside = el("aside", {});
    const order = orderControls();
    if (order) aside.append(order);
    aside.append(el("ol", { id: "image-list" }));
    app.replaceChildren(header, el("div", { id: "main" }, aside, el("main", { id: "view" })));
    renderList();
    renderView();
  }

  render();
  window.caapViewer = {
    data: DATA, state, currentMap, exportPanel, selectToken, setHover, attention, attentionVector,
    renderedAt: performance.now(),
  };
})();
