// The nnserve demo page: model cards, a drawing pad or a form, the answer and its
// integrated-gradients attributions. It only calls the server's own JSON APIs.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "nnserve-api-key";
const state = { models: [], model: null, grid: null, inked: false, request: 0 };

// --- HTTP -------------------------------------------------------------------------------

function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (!response.ok) throw await failure(response);
  return response.json();
}

async function postJSON(url, body) {
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  if (apiKey()) headers.Authorization = "Bearer " + apiKey();
  const response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
  if (!response.ok) throw await failure(response);
  return response.json();
}

async function failure(response) {
  let detail = response.statusText;
  try {
    detail = (await response.json()).detail || detail;
  } catch (_) { /* not JSON: keep the status text */ }
  const error = new Error(detail);
  error.status = response.status;
  return error;
}

function showError(error) {
  const box = $("error");
  if (error.status === 401) {
    box.textContent = "401 Unauthorized: this server needs an API key. Enter it in the " +
      "API key field at the top, then try again. (The server said: " + error.message + ")";
    $("auth").hidden = false;
  } else {
    box.textContent = (error.status ? error.status + ": " : "") + error.message;
  }
  box.hidden = false;
  $("result").hidden = true;
}

// --- model cards ------------------------------------------------------------------------

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function accuracyOf(metrics) {
  if (!metrics) return null;
  const value = metrics.test_accuracy ?? metrics.val_accuracy ?? metrics.accuracy;
  return typeof value === "number" ? value : null;
}

function isImage(model) {
  const kind = model.input_kind;
  return kind && kind.type === "image" && Array.isArray(kind.grid) && kind.grid.length === 2;
}

function renderCards(defaultName) {
  const cards = $("model-cards");
  cards.replaceChildren();
  for (const model of state.models) {
    const card = element("article", undefined, "card");
    card.id = "card-" + model.name;
    card.dataset.model = model.name;
    card.append(element("h3", model.name + " " + model.version));
    if (model.description) card.append(element("p", model.description));
    const facts = element("dl");
    const add = (term, value) => {
      if (value === null || value === undefined || value === "") return;
      facts.append(element("dt", term), element("dd", String(value)));
    };
    const accuracy = accuracyOf(model.metrics);
    add("held-out accuracy", accuracy === null ? null : accuracy.toFixed(4));
    const dataset = model.dataset || {};
    add("dataset", dataset.name ? dataset.name + (dataset.n_samples ? " (" + dataset.n_samples +
      " samples)" : "") : null);
    add("input", isImage(model)
      ? "image " + model.input_kind.grid.join("x") + ", values " + model.input_kind.range.join("..")
      : (model.features ? model.features.length + " features" : "[" + model.input_shape + "]"));
    const labels = model.labels.length > 12
      ? model.labels.slice(0, 12).join(", ") + ", ..." : model.labels.join(", ");
    add("labels", labels);
    card.append(facts);
    const button = element("button", "Try " + model.name);
    button.type = "button";
    button.addEventListener("click", () => select(model.name));
    card.append(button);
    cards.append(card);
  }
  if (state.models.length) {
    select(defaultName || state.models[0].name);
  } else {
    cards.append(element("p", "No model is loaded: see the server's log.", "hint"));
  }
}

function select(name) {
  const model = state.models.find((m) => m.name === name);
  if (!model) return;
  state.model = model;
  for (const card of document.querySelectorAll(".card")) {
    card.classList.toggle("selected", card.dataset.model === name);
  }
  $("try").hidden = false;
  $("try-title").textContent = "Try " + name;
  $("result").hidden = true;
  $("error").hidden = true;
  $("curl").textContent = "";
  const image = isImage(model);
  $("image-input").hidden = !image;
  $("tabular-input").hidden = image;
  if (image) {
    $("grid-size").textContent = model.input_kind.grid.join("x");
    $("grid-range").textContent = model.input_kind.range.join("..");
    clearPad();
  } else {
    buildForm(model);
  }
}

// --- drawing pad ------------------------------------------------------------------------

const pad = () => $("pad");

function clearPad() {
  const context = pad().getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, pad().width, pad().height);
  state.inked = false;
  state.grid = null;
  drawGrid($("grid-view"), null);
}

function padPoint(event) {
  const box = pad().getBoundingClientRect();
  return [(event.clientX - box.left) * pad().width / box.width,
    (event.clientY - box.top) * pad().height / box.height];
}

function setUpPad() {
  const canvas = pad();
  let last = null;
  // The first getContext call fixes the options: padToGrid reads the pixels back.
  const context = canvas.getContext("2d", { willReadFrequently: true });
  const stroke = (from, to) => {
    context.strokeStyle = "#fff";
    context.lineWidth = canvas.width / 11;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    context.moveTo(from[0], from[1]);
    context.lineTo(to[0], to[1]);
    context.stroke();
    state.inked = true;
  };
  canvas.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    last = padPoint(event);
    stroke(last, last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (last === null) return;
    const point = padPoint(event);
    stroke(last, point);
    last = point;
  });
  const end = () => {
    if (last === null) return;
    last = null;
    state.grid = padToGrid();
    drawGrid($("grid-view"), state.grid);
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  $("clear").addEventListener("click", clearPad);
  $("predict-drawing").addEventListener("click", () => {
    if (!state.grid) {
      showError(new Error("draw a digit first (or load an example)"));
      return;
    }
    run(state.grid.flat());
  });
}

// The way scikit-learn's digits were made (UCI optdigits): the ink's bounding box scaled to
// fill a 32x32 bitmap, centred, and each 4x4 block counted (0..16). In general: blocks of
// 4x4 bitmap pixels per grid cell, their share of ink mapped onto the value range.
function padToGrid() {
  const model = state.model;
  const [rows, cols] = model.input_kind.grid;
  const [low, high] = model.input_kind.range;
  const canvas = pad();
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let top = canvas.height, left = canvas.width, bottom = -1, right = -1;
  for (let y = 0; y < canvas.height; y++) {
    for (let x = 0; x < canvas.width; x++) {
      if (pixels[(y * canvas.width + x) * 4] > 127) {
        top = Math.min(top, y); bottom = Math.max(bottom, y);
        left = Math.min(left, x); right = Math.max(right, x);
      }
    }
  }
  if (bottom < 0) return null;
  const block = 4;
  const bitmap = document.createElement("canvas");
  bitmap.width = cols * block;
  bitmap.height = rows * block;
  const context = bitmap.getContext("2d", { willReadFrequently: true });
  context.fillStyle = "#000";
  context.fillRect(0, 0, bitmap.width, bitmap.height);
  const width = right - left + 1, height = bottom - top + 1;
  const scale = Math.min(bitmap.width / width, bitmap.height / height);
  const w = width * scale, h = height * scale;
  context.drawImage(canvas, left, top, width, height,
    (bitmap.width - w) / 2, (bitmap.height - h) / 2, w, h);
  const small = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const integer = Number.isInteger(low) && Number.isInteger(high);
  const grid = [];
  for (let r = 0; r < rows; r++) {
    const row = [];
    for (let c = 0; c < cols; c++) {
      let on = 0;
      for (let y = 0; y < block; y++) {
        for (let x = 0; x < block; x++) {
          if (small[((r * block + y) * bitmap.width + c * block + x) * 4] > 127) on++;
        }
      }
      const value = low + (high - low) * on / (block * block);
      row.push(integer ? Math.round(value) : value);
    }
    grid.push(row);
  }
  return grid;
}

function drawGrid(canvas, grid, attributions) {
  const context = canvas.getContext("2d");
  context.fillStyle = "#fff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  if (!grid) return;
  const rows = grid.length, cols = grid[0].length;
  const [low, high] = state.model.input_kind.range;
  const cw = canvas.width / cols, ch = canvas.height / rows;
  let most = 0;
  if (attributions) for (const row of attributions) for (const a of row) most = Math.max(most, Math.abs(a));
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      // Under a heat map the input is a faint grey, so the colours carry the reading.
      const ink = (grid[r][c] - low) / (high - low);
      const level = Math.round(255 - (attributions ? 90 : 255) * ink);
      context.fillStyle = `rgb(${level},${level},${level})`;
      context.fillRect(c * cw, r * ch, cw, ch);
      if (attributions && most > 0) {
        const a = attributions[r][c] / most;
        context.fillStyle = a >= 0 ? `rgba(220,38,38,${a * 0.9})` : `rgba(37,99,235,${-a * 0.9})`;
        context.fillRect(c * cw, r * ch, cw, ch);
      }
    }
  }
  return most;
}

async function loadExamples() {
  const data = await getJSON("/ui/digits.json");
  const row = $("examples");
  for (const example of data.examples) {
    const button = element("button", String(example.target));
    button.type = "button";
    button.title = "scikit-learn digits[" + example.index + "]";
    button.dataset.index = example.index;
    button.addEventListener("click", () => {
      const [rows, cols] = state.model.input_kind.grid;
      if (example.image.length !== rows || example.image[0].length !== cols) return;
      showOnPad(example.image);
      state.grid = example.image;
      drawGrid($("grid-view"), state.grid);
      run(state.grid.flat());
    });
    row.append(button);
  }
}

function showOnPad(grid) {
  const canvas = pad(), context = canvas.getContext("2d");
  const [low, high] = state.model.input_kind.range;
  const cw = canvas.width / grid[0].length, ch = canvas.height / grid.length;
  grid.forEach((row, r) => row.forEach((value, c) => {
    const level = Math.round(255 * (value - low) / (high - low));
    context.fillStyle = `rgb(${level},${level},${level})`;
    context.fillRect(c * cw, r * ch, cw, ch);
  }));
  state.inked = true;
}

// --- tabular form -----------------------------------------------------------------------

function buildForm(model) {
  const fields = $("fields");
  fields.replaceChildren();
  const size = model.input_shape.reduce((a, b) => a * b, 1);
  for (let i = 0; i < size; i++) {
    const id = "feature-" + i;
    const label = element("label", model.features ? model.features[i] : "x" + i);
    label.htmlFor = id;
    const input = document.createElement("input");
    input.id = id;
    input.type = "number";
    input.step = "any";
    input.required = true;
    input.value = model.example && model.example.length === size ? model.example[i] : 0;
    fields.append(label, input);
  }
}

function setUpForm() {
  $("tabular-input").addEventListener("submit", (event) => {
    event.preventDefault();
    const values = [...$("fields").querySelectorAll("input")].map((input) => Number(input.value));
    if (values.some((v) => !Number.isFinite(v))) {
      showError(new Error("every field needs a number"));
      return;
    }
    run(values);
  });
}

// --- answer -----------------------------------------------------------------------------

function curlFor(path, body) {
  const auth = apiKey() ? " -H \"Authorization: Bearer $NNSERVE_API_KEY\"" : "";
  return "curl -s -X POST " + location.origin + path + " -H 'Content-Type: application/json'" +
    auth + " \\\n  -d '" + JSON.stringify(body) + "'";
}

async function run(sample) {
  const model = state.model;
  const request = ++state.request;
  const body = { inputs: [sample] };
  const sent = $("sent");
  sent.dataset.model = model.name;
  sent.dataset.grid = JSON.stringify(sample);
  sent.dataset.status = "pending";
  const explainBody = { inputs: [sample], method: "integrated_gradients" };
  $("curl").textContent = curlFor("/models/" + model.name + "/predict", body) + "\n\n" +
    curlFor("/models/" + model.name + "/explain", explainBody);
  $("error").hidden = true;
  try {
    const answer = await postJSON("/models/" + model.name + "/predict", body);
    if (request !== state.request) return;
    renderPrediction(answer);
    const explanation = await postJSON("/models/" + model.name + "/explain", explainBody);
    if (request !== state.request) return;
    renderAttributions(explanation.explanations[0], sample);
    sent.dataset.status = "done";
  } catch (error) {
    if (request !== state.request) return;
    sent.dataset.status = "error";
    showError(error);
  }
}

function renderPrediction(answer) {
  const prediction = answer.predictions[0];
  $("result").hidden = false;
  $("top-label").textContent = prediction.label;
  $("top-label").dataset.label = prediction.label;
  $("top-probability").textContent = "(p = " + prediction.probabilities[prediction.class_index]
    .toFixed(4) + ")";
  const bars = $("bars");
  bars.replaceChildren();
  answer.labels.forEach((label, index) => {
    const p = prediction.probabilities[index];
    const bar = element("div", undefined, "bar" + (index === prediction.class_index ? " top" : ""));
    bar.style.width = (100 * p).toFixed(2) + "%";
    const track = element("div");
    track.append(bar);
    bars.append(element("span", label), track, element("span", p.toFixed(4)));
  });
  $("heatmap").hidden = true;
  $("attribution-bars").hidden = true;
  $("attribution-hint").textContent = "computing...";
}

function renderAttributions(item, sample) {
  const model = state.model;
  const total = item.attributions.flat(4).reduce((a, b) => a + b, 0);
  $("attribution-hint").textContent = "How much each input value moved p(" + item.label +
    ") from " + item.baseline_probability.toFixed(4) + " (all zeros) to " +
    item.probability.toFixed(4) + ": red raised it, blue lowered it (sum " + total.toFixed(4) + ").";
  if (isImage(model)) {
    const [rows, cols] = model.input_kind.grid;
    const grid = [], attributions = [];
    const flat = item.attributions.flat(4);
    for (let r = 0; r < rows; r++) {
      grid.push(sample.slice(r * cols, (r + 1) * cols));
      attributions.push(flat.slice(r * cols, (r + 1) * cols));
    }
    const heatmap = $("heatmap");
    const most = drawGrid(heatmap, grid, attributions);
    heatmap.dataset.max = String(most);
    heatmap.hidden = false;
  } else {
    const bars = $("attribution-bars");
    bars.replaceChildren();
    const values = item.attributions.flat(4);
    const most = Math.max(...values.map(Math.abs)) || 1;
    values.forEach((value, index) => {
      const track = element("div", undefined, "track");
      const negative = element("div", undefined, "half neg");
      const positive = element("div", undefined, "half pos");
      const bar = element("div", undefined, "bar " + (value >= 0 ? "pos" : "neg"));
      bar.style.width = (100 * Math.abs(value) / most).toFixed(2) + "%";
      (value >= 0 ? positive : negative).append(bar);
      track.append(negative, positive);
      bars.append(element("span", model.features ? model.features[index] : "x" + index), track,
        element("span", value.toPrecision(3)));
    });
    bars.hidden = false;
  }
}

// --- start ------------------------------------------------------------------------------

async function start() {
  const keyField = $("api-key");
  keyField.value = apiKey();
  keyField.addEventListener("input", () => sessionStorage.setItem(KEY_STORE, keyField.value.trim()));
  $("copy-curl").addEventListener("click", () => {
    navigator.clipboard.writeText($("curl").textContent).then(
      () => { $("copy-curl").textContent = "Copied"; },
      () => { $("copy-curl").textContent = "Select the text to copy"; });
  });
  setUpPad();
  setUpForm();
  try {
    const settings = await getJSON("/ui/settings");
    $("auth").hidden = !settings.api_key_required;
    const catalogue = await getJSON("/models");
    state.models = await Promise.all(
      catalogue.models.map((model) => getJSON("/models/" + encodeURIComponent(model.name))));
    await loadExamples();
    renderCards(catalogue.default);
    document.body.dataset.ready = "true";
  } catch (error) {
    $("try").hidden = false;
    showError(error);
  }
}

document.addEventListener("DOMContentLoaded", start);
