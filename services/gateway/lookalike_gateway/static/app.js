// Lookalike web page: search the catalogue with a photo (drop, pick or paste) or a region of it, refine,
// "more like this".
import { ApiFailure, describeError, productPath, requestJson, withKey } from "./api.js";
import { card, categoryLabel, el, formatMs, plural, titleOf } from "./cards.js";
import { attachRegion, cropParam } from "./region.js";

const PAGE_SIZE = 20;
const MAX_TOP_K = 200;
const SKELETONS = 8;

const $ = (id) => document.getElementById(id);
// Phones and tablets cannot drag files or press Ctrl+V: the drop zone speaks of taking or choosing a photo.
const TOUCH = window.matchMedia("(hover: none) and (pointer: coarse)").matches;
const ui = {
  dropzone: $("dropzone"), dropTitle: $("dropzone-title"), dropHint: $("dropzone-hint"), fileInput: $("file-input"),
  overlay: $("drop-overlay"),
  queryFigure: $("query-figure"), queryImage: $("query-image"), queryKicker: $("query-kicker"),
  queryCaption: $("query-caption"),
  prediction: $("prediction"), predictionName: $("prediction-name"), predictionProb: $("prediction-prob"),
  predictionFilter: $("prediction-filter"),
  filters: $("filters"), chips: $("chips"), minPrice: $("min-price"), maxPrice: $("max-price"),
  clearPrice: $("clear-price"),
  resultsTitle: $("results-title"), meta: $("meta"), summary: $("summary"), took: $("took"),
  cacheBadge: $("cache-badge"), status: $("status"),
  error: $("error"), errorText: $("error-text"), errorRef: $("error-ref"), retry: $("retry"),
  empty: $("empty"), grid: $("grid"), showMore: $("show-more"),
  regionHint: $("region-hint"), regionText: $("region-text"), clearRegion: $("clear-region"), weak: $("weak"),
};

const state = {
  query: null,          // {kind: "photo", file, url} | {kind: "product", id, title, category, imageUrl}
  category: "",
  minPrice: null,
  maxPrice: null,
  crop: null,           // the region of the shopper's photo searched: {x, y, width, height} in 0..1, or null
  topK: PAGE_SIZE,
  categories: new Set(),
  results: [],
  shown: null,          // the last successful answer: {query, results, cacheHit, tookMs}
  lastPhoto: null,      // the latest uploaded photo query (Back returns to it)
  seq: 0,
  controller: null,
};

// ------------------------------------------------------------------------------------------ rendering

function announce(text) {
  ui.status.textContent = text;
}

function renderQuery() {
  const q = state.query;
  ui.queryFigure.hidden = !q;
  ui.dropzone.classList.toggle("compact", Boolean(q));
  ui.dropTitle.textContent = q ? "Use another photo" : TOUCH ? "Take or choose a photo" : "Drop a photo here";
  const photo = Boolean(q && q.kind === "photo");
  ui.queryFigure.classList.toggle("is-photo", photo);
  region.enable(photo);
  ui.regionHint.hidden = !photo;
  renderRegion();
  renderPrediction();
  if (!q) {
    ui.queryImage.removeAttribute("src");
    return;
  }
  if (q.kind === "photo") {
    ui.queryImage.src = q.url;
    ui.queryImage.alt = "Your photo";
    ui.queryKicker.textContent = "Your photo";
    ui.queryCaption.textContent = q.file.name && !/^image\.\w+$/.test(q.file.name) ? q.file.name : "Pasted image";
  } else {
    ui.queryImage.src = q.imageUrl ? withKey(q.imageUrl) : "";
    ui.queryImage.alt = `Selected product: ${titleOf(q)}`;
    ui.queryKicker.textContent = q.category ? `More like this · ${categoryLabel(q.category)}` : "More like this";
    ui.queryCaption.textContent = titleOf(q);
  }
}

function renderRegion() {
  ui.clearRegion.hidden = !state.crop;
  ui.regionText.textContent = state.crop
    ? "Searching the part you marked. Drag again to change it."
    : TOUCH ? "Drag a finger over your photo to search for just that part." : "Drag over your photo to search for just that part.";
}

function renderChips() {
  const names = ["", ...[...state.categories].sort((a, b) => a.localeCompare(b))];
  if (state.category && !state.categories.has(state.category)) names.push(state.category);
  ui.chips.replaceChildren(...names.map((name) => el("button", {
    type: "button",
    class: "chip",
    "aria-pressed": String(name === state.category),
    dataset: { category: name },
    text: name ? categoryLabel(name) : "All",
    onclick: () => setCategory(name),
  })));
}

function renderFilters() {
  ui.filters.hidden = !state.query;
  renderChips();
  ui.clearPrice.hidden = state.minPrice === null && state.maxPrice === null;
}

/** Even the best result scores below the catalogue's calibrated weak-match score (0: not calibrated). */
function weakAnswer(results, weakScore) {
  return weakScore > 0 && (!results.length || Number(results[0].score) < weakScore);
}

function renderResults({ query, results, cacheHit, tookMs, weakScore = 0 }, { quiet = false } = {}) {
  state.shown = { query, results, cacheHit, tookMs, weakScore };
  const weak = query.kind === "photo" && weakAnswer(results, weakScore);
  ui.weak.hidden = !weak;
  document.body.dataset.closeMatch = weak ? "none" : "yes";
  for (const r of results) if (r.category) state.categories.add(r.category);
  ui.grid.replaceChildren(...results.map((r, i) => card(r, i + 1, (p) => startSimilar(p, { focusResults: true }))));
  ui.grid.setAttribute("aria-busy", "false");
  ui.empty.hidden = true;
  const filtered = state.category || state.minPrice !== null || state.maxPrice !== null;
  ui.summary.textContent = results.length
    ? plural(results.length, "product")
    : filtered ? "No products match these filters" : "No products found";
  ui.took.textContent = Number.isFinite(tookMs) ? `in ${formatMs(tookMs)}` : "";
  ui.cacheBadge.hidden = !cacheHit;
  ui.meta.hidden = false;
  ui.showMore.hidden = !(results.length >= state.topK && state.topK < MAX_TOP_K);
  renderFilters();
  if (quiet) return;
  announce(results.length
    ? `${plural(results.length, "look-alike product")} found${cacheHit ? ", served from cache" : ""}.`
      + (weak ? " No close match: none looks much like your photo." : "")
    : ui.summary.textContent + ".");
}

function renderLoading({ keepGrid }) {
  hideError();
  ui.empty.hidden = true;
  ui.grid.setAttribute("aria-busy", "true");
  document.body.classList.add("is-loading");
  if (!keepGrid) {
    ui.meta.hidden = true;
    ui.grid.replaceChildren(...Array.from({ length: SKELETONS }, () => el("li", { class: "card skeleton", "aria-hidden": "true" },
      el("div", { class: "thumb" }),
      el("div", { class: "card-body" }, el("span", { class: "line short" }), el("span", { class: "line" }),
        el("span", { class: "line" })))));
  }
  ui.showMore.disabled = true;
  announce("Searching for look-alike products…");
}

let finished = 0;

/** Counts finished searches in body[data-searches] (tests and tools wait on it). */
function markFinished() {
  finished += 1;
  document.body.dataset.searches = String(finished);
}

function endLoading() {
  markFinished();
  document.body.classList.remove("is-loading");
  ui.grid.setAttribute("aria-busy", "false");
  ui.showMore.disabled = false;
}

function showError(failure, context, { clearQuery = false } = {}) {
  const info = describeError(failure, context);
  ui.errorText.textContent = info.text;
  ui.errorRef.hidden = !failure.requestId;
  ui.errorRef.textContent = failure.requestId ? `Reference: ${failure.requestId}` : "";
  ui.retry.hidden = !info.retry;
  ui.error.hidden = false;
  ui.error.dataset.kind = info.kind;
  ui.grid.replaceChildren();
  ui.meta.hidden = true;
  ui.weak.hidden = true;
  ui.showMore.hidden = true;
  if (info.kind === "not_image" || info.kind === "too_large" || clearQuery) {
    // The upload was unusable: go back to what was shown before it (or to the empty page).
    const previous = state.shown;
    if (state.lastPhoto === state.query) state.lastPhoto = previous && previous.query.kind === "photo" ? previous.query : null;
    state.query = previous ? previous.query : null;
    state.category = "";
    renderQuery();
    if (previous) renderResults(previous, { quiet: true });
    else renderFilters();
  }
  ui.empty.hidden = Boolean(state.query);
  announce(info.text);
  if (failure instanceof ApiFailure) console.info("Lookalike API error", failure.status, failure.code, failure.serverMessage);
}

function hideError() {
  ui.error.hidden = true;
}

function renderPrediction() {
  const q = state.query;
  const top = q && q.kind === "photo" ? q.prediction : null;
  ui.prediction.hidden = !top;
  if (!top) return;
  ui.predictionName.textContent = categoryLabel(top.label);
  ui.predictionProb.textContent = Number.isFinite(top.probability) ? `${Math.round(top.probability * 100)}%` : "";
  ui.predictionFilter.setAttribute("aria-label", `Show only ${top.label}`);
  ui.predictionFilter.dataset.category = top.label;
  ui.predictionFilter.hidden = state.category === top.label;
}

// ------------------------------------------------------------------------------------------ searching

function setQuery(query) {
  state.query = query;
  renderQuery();
}

function filterParams() {
  const params = { top_k: String(state.topK) };
  if (state.category) params.category = state.category;
  if (state.minPrice !== null) params.min_price = String(state.minPrice);
  if (state.maxPrice !== null) params.max_price = String(state.maxPrice);
  return params;
}

async function runSearch({ keepGrid = false } = {}) {
  const query = state.query;
  if (!query) return;
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  const seq = ++state.seq;
  renderLoading({ keepGrid });
  const started = performance.now();
  try {
    let body;
    if (query.kind === "photo") {
      const form = new FormData();
      form.append("image", query.file, query.file.name || "photo");
      for (const [k, v] of Object.entries(filterParams())) form.append(k, v);
      if (state.crop) form.append("crop", cropParam(state.crop));
      document.body.dataset.crop = state.crop ? cropParam(state.crop) : "";  // the region searched (tests)
      body = await requestJson("/v1/search", { method: "POST", body: form, signal: controller.signal });
    } else {
      const qs = new URLSearchParams(filterParams());
      body = await requestJson(`${productPath(query.id)}/similar?${qs}`, { signal: controller.signal });
    }
    if (seq !== state.seq) return;
    const tookMs = typeof body.took_ms === "number" ? body.took_ms : performance.now() - started;
    renderResults({ query, results: Array.isArray(body.results) ? body.results : [], cacheHit: body.cache_hit === true,
      tookMs, weakScore: Number(body.weak_match_score) || 0 });
    if (query.kind === "photo" && query.prediction === undefined) classify(query);
  } catch (err) {
    if (err && err.name === "AbortError") return;
    if (seq !== state.seq) return;
    showError(err, query.kind === "photo" ? "photo" : "similar");
  } finally {
    if (seq === state.seq) {
      endLoading();
      state.controller = null;
    }
  }
}

/** The predicted category, when a classifier is trained; silent when it is not (404) or fails. */
async function classify(query) {
  query.prediction = null;
  const form = new FormData();
  form.append("image", query.file, query.file.name || "photo");
  let body;
  try {
    body = await requestJson("/v1/classify", { method: "POST", body: form });
  } catch {
    return;
  }
  const top = body && Array.isArray(body.predictions) ? body.predictions[0] : null;
  if (!top || !top.label) return;
  query.prediction = { label: String(top.label), probability: Number(top.probability) };
  if (state.query === query) renderPrediction();
}

function startPhoto(file) {
  if (!file) return;
  if (state.controller) state.controller.abort();
  const query = { kind: "photo", file, url: URL.createObjectURL(file) };
  const previous = state.lastPhoto;
  if (previous && !(state.shown && state.shown.query === previous)) URL.revokeObjectURL(previous.url);
  state.lastPhoto = query;
  state.category = "";
  state.topK = PAGE_SIZE;
  state.crop = null;
  region.clear();
  setQuery(query);
  if (history.state && history.state.similar) history.pushState({ photo: true }, "", location.pathname);
  runSearch();
}

function startSimilar(product, { focusResults = false, push = true } = {}) {
  setQuery({
    kind: "product", id: product.id, title: product.title, category: product.category,
    imageUrl: product.image_url,
  });
  state.category = "";
  state.topK = PAGE_SIZE;
  state.crop = null;
  region.clear();
  if (push) history.pushState({ similar: product.id }, "", `?similar=${encodeURIComponent(product.id)}`);
  window.scrollTo({ top: 0, behavior: matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth" });
  if (focusResults) ui.resultsTitle.focus({ preventScroll: true });
  runSearch();
}

async function openProduct(id) {
  try {
    const product = await requestJson(productPath(id));
    startSimilar(product, { push: false });
  } catch (err) {
    showError(err, "product", { clearQuery: true });
    markFinished();
  }
}

function setCategory(name) {
  if (name === state.category) return;
  state.category = name;
  state.topK = PAGE_SIZE;
  renderChips();
  renderPrediction();
  runSearch();
}

function readPrice(input) {
  const raw = input.value.trim();
  if (raw === "") return null;
  const value = Number(raw);
  return Number.isFinite(value) && value >= 0 ? value : null;
}

// ------------------------------------------------------------------------------------------- wiring

// The shopper drags a box over their photo: the results follow the region.
const region = attachRegion(ui.queryImage.parentElement, ui.queryImage, (box) => {
  state.crop = box;
  state.topK = PAGE_SIZE;
  renderRegion();
  runSearch({ keepGrid: true });
});
ui.clearRegion.addEventListener("click", () => {
  state.crop = null;
  region.clear();
  renderRegion();
  runSearch({ keepGrid: true });
});

if (TOUCH) {
  ui.dropTitle.textContent = "Take or choose a photo";
  ui.dropHint.textContent = "We'll show the products in the catalogue that look like it.";
}
ui.dropzone.addEventListener("click", () => ui.fileInput.click());
ui.fileInput.addEventListener("change", () => {
  const file = ui.fileInput.files && ui.fileInput.files[0];
  ui.fileInput.value = "";   // choosing the same file again still searches
  startPhoto(file);
});

let dragDepth = 0;
const hasFiles = (event) => Array.from((event.dataTransfer && event.dataTransfer.types) || []).includes("Files");
window.addEventListener("dragenter", (event) => {
  if (!hasFiles(event)) return;
  event.preventDefault();
  dragDepth += 1;
  ui.overlay.hidden = false;
  ui.dropzone.classList.add("dragging");
});
window.addEventListener("dragover", (event) => {
  if (!hasFiles(event)) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "copy";
});
window.addEventListener("dragleave", (event) => {
  if (!hasFiles(event)) return;
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) {
    ui.overlay.hidden = true;
    ui.dropzone.classList.remove("dragging");
  }
});
window.addEventListener("drop", (event) => {
  if (!hasFiles(event)) return;
  event.preventDefault();
  dragDepth = 0;
  ui.overlay.hidden = true;
  ui.dropzone.classList.remove("dragging");
  startPhoto(event.dataTransfer.files[0]);
});

document.addEventListener("paste", (event) => {
  const items = Array.from((event.clipboardData && event.clipboardData.items) || []);
  const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/")) || items.find((i) => i.kind === "file");
  if (!item) return;   // text pastes (e.g. into the price fields) behave as usual
  const file = item.getAsFile();
  if (!file) return;
  event.preventDefault();
  startPhoto(file);
});

ui.filters.addEventListener("submit", (event) => {
  event.preventDefault();
  let min = readPrice(ui.minPrice);
  let max = readPrice(ui.maxPrice);
  if (min !== null && max !== null && min > max) [min, max] = [max, min];
  ui.minPrice.value = min ?? "";
  ui.maxPrice.value = max ?? "";
  if (min === state.minPrice && max === state.maxPrice) return;
  state.minPrice = min;
  state.maxPrice = max;
  state.topK = PAGE_SIZE;
  renderFilters();
  runSearch();
});
ui.clearPrice.addEventListener("click", () => {
  ui.minPrice.value = "";
  ui.maxPrice.value = "";
  ui.filters.requestSubmit();
});

ui.predictionFilter.addEventListener("click", () => setCategory(ui.predictionFilter.dataset.category || ""));
ui.retry.addEventListener("click", () => runSearch());
ui.showMore.addEventListener("click", () => {
  state.topK = Math.min(MAX_TOP_K, state.topK + PAGE_SIZE);
  runSearch({ keepGrid: true });
});

window.addEventListener("popstate", (event) => {
  const similar = event.state && event.state.similar;
  if (similar) {
    openProduct(similar);
  } else if (state.lastPhoto) {
    state.category = "";
    state.topK = PAGE_SIZE;
    state.crop = null;
    region.clear();
    setQuery(state.lastPhoto);
    runSearch();
  }
});

const initial = new URLSearchParams(location.search).get("similar");
if (initial) {
  history.replaceState({ similar: initial }, "", location.href);
  openProduct(initial);
}
