// caap viewer, part 4 of 4 (see viewer.js): the page layout (image list, class selector, sections) and start.

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
      onclick: () => {
        Object.assign(state, { image: i, cls: 0, sweep: {}, selected: null });
        renderView();
        renderList();
      },
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
