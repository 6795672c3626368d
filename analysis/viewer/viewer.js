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
//
// html.py inlines viewer.js, viewer_attention.js, viewer_results.js and viewer_layout.js, in this order,
// as the body of one function: they share its scope (state, el, drawBase, ...) and nothing leaks out
// but window.caapViewer (set by viewer_layout.js for tests and notebooks).

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
