// caap viewer, part 2 of 4 (see viewer.js): attention per block and head, and the patch-level logit lens.

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
      const total = v.reduce((s, x) => s + x, 0);
      cell.title = `block ${b} head ${h}: max ${Math.max(...v).toPrecision(3)}, sum over patches ${total.toPrecision(3)}`;
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
