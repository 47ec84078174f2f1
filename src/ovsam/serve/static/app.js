// ovsam web page: upload once, then every click or box costs only the mask decoder.
"use strict";

const $ = (id) => document.getElementById(id);
const imageCanvas = $("image");
const overlayCanvas = $("overlay");
const MASK_COLOR = [30, 144, 255];
const SLOW_ANSWER_MS = 1500;  // then the status says why a named mask may take long
const MIN_SIDE = 32;  // CSS pixels a canvas side has at least: a small image is enlarged, a thin one stretched
const ARROWS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
const clamp = (v, hi) => Math.max(0, Math.min(hi, v));
const MAX_KEPT_RESULTS = 20;
// Typed names are saved under a name of this page's own, so two users do not overwrite each other.
const CUSTOM_VOCABULARY = `custom-${Math.random().toString(36).slice(2, 10)}`;

const state = {
  imageId: null, width: 0, height: 0, picture: null,
  scale: [1, 1],      // canvas pixels per image pixel, X and Y (a thin image is stretched)
  cursor: null,       // {x, y}: where Enter places a point (the arrow keys move it)
  uploads: 0,         // images chosen so far: an older one's late answer is dropped
  file: null,         // the uploaded file (null: the sample photo), to upload again if dropped
  prompts: [],        // history of {kind: "point", x, y, label} | {kind: "box", box}: the last box counts
  result: null,       // last PredictResponse (+ maskImage, and the prompts it answers)
  results: [],        // the latest answers (at most MAX_KEPT_RESULTS): Undo shows one again
  drag: null,         // {x0, y0, x1, y1, id, background} while a pointer (mouse, pen, touch) drags
  background: false,  // the Background toggle: clicks and taps place background points
  busy: null,         // the {imageId, generation} of the request in flight; Clear or a new image frees the page
  pending: false,
  generation: 0,      // bumped by Clear and by a new image: older answers are dropped
  customNames: null,  // the names last saved as CUSTOM_VOCABULARY (re-posted if evicted)
  namedWith: new Set(),  // vocabularies the server has named a mask with (text bank built)
  everything: null,   // {answer, image}: "segment everything" on screen (everything.js)
};

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// The JSON answer; an error carries the API's `code` and a message (the status line when the
// body is not the API's JSON, e.g. a proxy's HTML error page).
async function api(path, options = {}) {
  const response = await fetch(path, options);
  if (response.status === 204) return null;
  const body = await response.json().catch(() => null);
  if (response.ok && body !== null) return body;
  const error = body && body.error;
  const failure = new Error(error ? error.message
    : `${response.status} ${response.statusText || "error"}: the server's answer is not JSON`);
  failure.code = error ? error.code : null;
  throw failure;
}

function newGeneration() {
  state.generation += 1;
  state.prompts = []; state.result = null; state.results = []; state.everything = null;
}

function toImageCoords(event) {
  const rect = overlayCanvas.getBoundingClientRect();
  return [(event.clientX - rect.left) / state.scale[0], (event.clientY - rect.top) / state.scale[1]];
}

function promptOf(prompts) {
  const points = prompts.filter((p) => p.kind === "point");
  const box = prompts.findLast((p) => p.kind === "box")?.box ?? null;
  return { points: points.map((p) => [p.x, p.y]), labels: points.map((p) => p.label), box };
}

async function loadPicture(file, url) {
  const img = new Image();
  const blob = !url && file ? URL.createObjectURL(file) : null;
  img.src = url || blob || "/v1/sample.jpg";
  try { await img.decode(); } finally { if (blob) URL.revokeObjectURL(blob); }  // decoded: the file's copy goes
  return img;
}

function layout() {
  const stage = $("stage");
  const maxWidth = stage.clientWidth || 800;
  const scale = Math.min(maxWidth / state.width, 720 / state.height, Math.max(1, MIN_SIDE / Math.min(state.width, state.height)));
  for (const canvas of [imageCanvas, overlayCanvas]) {
    canvas.width = Math.max(MIN_SIDE, Math.round(state.width * scale));
    canvas.height = Math.max(MIN_SIDE, Math.round(state.height * scale));
  }
  state.scale = [imageCanvas.width / state.width, imageCanvas.height / state.height];
  stage.style.height = `${imageCanvas.height}px`;
  imageCanvas.getContext("2d").drawImage(state.picture, 0, 0, imageCanvas.width, imageCanvas.height);
  $("hint").hidden = true;
}

// The page must draw the image itself, so one the browser cannot decode (TIFF in most
// browsers) is refused before it is uploaded.
function cannotShow(file) {
  const tiff = /tiff/i.test(file.type) || /\.tiff?$/i.test(file.name);
  const what = tiff ? "TIFF images" : `this image (${file.name})`;
  return `This browser cannot show ${what}: convert it to PNG or JPEG and upload that.`;
}

// The image chosen last wins: an earlier choice still decoding or uploading is dropped.
async function startImage(file) {
  const upload = ++state.uploads, superseded = () => upload !== state.uploads;
  let picture = await loadPicture(file).catch(() => null);
  if (superseded()) return;
  if (!picture) {
    if (!state.imageId) clearPicture();  // the upload it replaced is dropped: no image left
    setStatus(file ? cannotShow(file) : "The sample photo could not be shown.", true);
    return;
  }
  setStatus("Embedding image…");
  newGeneration();
  state.imageId = null;
  draw(); showResult();
  try {
    const info = await uploadImage(file);
    // An upload its orientation metadata turned: the server's upright picture, as browsers
    // ignore some such metadata (WebP EXIF, XMP) and would show, and map clicks onto, another.
    if (info.picture && !superseded()) picture = await loadPicture(null, info.picture);
    if (superseded()) return;
    Object.assign(state, { file, picture, imageId: info.image_id, width: info.width, height: info.height });
    state.cursor = { x: state.width / 2, y: state.height / 2 };
    layout();
    draw();
    setStatus(`Ready: ${info.width}×${info.height}, embedded in ${Math.round(info.embedding_ms)} ms`);
  } catch (err) {
    if (superseded()) return;
    clearPicture();
    setStatus(`Upload failed: ${err.message}`, true);
  }
}

// The file (null: the sample photo) to the server, embedded there: its ImageInfo.
async function uploadImage(file) {
  if (!file) return api("/v1/images/sample", { method: "POST" });
  const form = new FormData();
  form.append("file", file, file.name);
  return api("/v1/images", { method: "POST", body: form });
}

// An image the server dropped (its cache keeps the most recently used ones, shared by all
// users): the page still has the file, so it is uploaded again (true: ask again). The mask on
// screen was the dropped image's: the next answer does not refine it.
async function restoreImage(imageId) {
  try {
    const info = await uploadImage(state.file);
    if (state.imageId !== imageId) return false;  // another image meanwhile
    state.imageId = info.image_id;
    if (state.result) delete state.result.mask_id;
    return true;
  } catch {
    return false;  // the error of the prediction is shown
  }
}

// No image on the page (after a failed upload): its prompts and mask went with it.
function clearPicture() {
  state.picture = null;
  for (const canvas of [imageCanvas, overlayCanvas]) canvas.width = canvas.height = 0;
  $("stage").style.height = "";
  $("hint").hidden = false;
  showResult();
}

async function predict(retried = false) {
  if (!state.imageId) return;
  const isStale = (t) => t.imageId !== state.imageId || t.generation !== state.generation;
  // one request at a time per image and Clear: an older one's late answer is dropped anyway
  if (state.busy && !isStale(state.busy)) { state.pending = true; return; }
  const ticket = { imageId: state.imageId, generation: state.generation };
  const prompts = state.prompts.slice();
  const { points, labels, box } = promptOf(prompts);
  if (!points.length && !box) { state.result = null; draw(); showResult(); return; }
  state.busy = ticket;
  let stale = false, retry = false;
  const vocabulary = $("vocabulary").value;
  // A vocabulary's first use embeds every one of its names: minutes on a CPU for a large one.
  const named = $("vocabulary").selectedOptions[0]?.textContent;  // e.g. "lvis (1203)"
  const firstUse = vocabulary && !state.namedWith.has(vocabulary);
  const slow = setTimeout(() => {
    if (isStale(ticket)) return;
    setStatus(firstUse
      ? `Still working: the first mask named with ${named} embeds all its class names ` +
        "once, which can take minutes on a CPU for a large vocabulary…"
      : "Still working (the server answers one click at a time)…");
  }, SLOW_ANSWER_MS);
  try {
    const body = { points, labels, box, top_k: 5 };
    if (vocabulary) body.vocabulary = vocabulary;
    // Refine the mask on screen only when these prompts add clicks to the ones that made it;
    // re-running the same prompts (e.g. another vocabulary) must not feed the mask back.
    const shown = state.result;
    if (points.length > 1 && shown?.mask_id && extendsPrompts(shown.prompts, prompts)) body.mask_id = shown.mask_id;
    const result = await api(`/v1/images/${state.imageId}/predict`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    result.maskImage = await maskToImage(result.mask_png);
    stale = isStale(ticket);  // Clear or a new image meanwhile: this answer is for prompts now gone
    if (vocabulary) state.namedWith.add(vocabulary);
    if (!stale) {
      result.prompts = prompts;
      state.result = result;
      state.results = [...state.results.slice(1 - MAX_KEPT_RESULTS), result];
      setStatus(`Mask in ${Math.round(result.elapsed_ms)} ms`);
    }
  } catch (err) {
    stale = isStale(ticket);
    if (!stale && !retried && err.code === "unknown_vocabulary") retry = await restoreVocabulary(vocabulary);
    if (!stale && !retried && err.code === "unknown_image") {
      setStatus("The server had dropped this image: uploading it again…");
      retry = await restoreImage(ticket.imageId);
      if (retry) ticket.imageId = state.imageId;  // the same picture, uploaded again
    }
    stale = isStale(ticket);  // again: Clear or another image during a restore (an upload: seconds)
    if (stale) retry = false;
    if (!stale && !retry) {
      // Back to exactly the prompts of the mask on screen: the failed change (and any change
      // queued behind it) is undone, earlier prompts such as a previous box are kept.
      state.prompts = state.result ? state.result.prompts.slice() : [];
      state.pending = false;
      setStatus(err.message, true);
    }
  } finally {
    clearTimeout(slow);
    if (state.busy === ticket) state.busy = null;
  }
  if (retry) { predict(true); return; }
  if (!stale) { draw(); showResult(); }
  if (state.pending) { state.pending = false; predict(); }
}

// A vocabulary the server no longer holds (custom ones are dropped least recently used first):
// this page's own names are saved again (true: ask again); otherwise the list is refreshed.
async function restoreVocabulary(name) {
  try {
    if (name === CUSTOM_VOCABULARY && state.customNames) { await saveNames(state.customNames); return true; }
    await refreshVocabularies();
  } catch {}  // the error of the prediction is shown
  return false;
}

async function saveNames(names) {
  const info = await api("/v1/vocabularies", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name: CUSTOM_VOCABULARY, names }),
  });
  state.customNames = names;
  state.namedWith.delete(CUSTOM_VOCABULARY);  // other names: its next mask embeds them
  return info;
}

// Whether `prompts` begins with the very prompt objects of `base`.
const startsWith = (prompts, base) => base.every((p, i) => p === prompts[i]);
const extendsPrompts = (base, prompts) => base.length < prompts.length && startsWith(prompts, base);

async function maskToImage(pngBase64) {
  const img = await loadPicture(null, `data:image/png;base64,${pngBase64}`);
  const canvas = document.createElement("canvas");
  canvas.width = img.width; canvas.height = img.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const pixels = ctx.getImageData(0, 0, img.width, img.height);
  for (let i = 0; i < pixels.data.length; i += 4) {  // no allocation per pixel: a photo has millions
    pixels.data[i + 3] = pixels.data[i] > 127 ? 120 : 0;
    pixels.data[i] = MASK_COLOR[0]; pixels.data[i + 1] = MASK_COLOR[1]; pixels.data[i + 2] = MASK_COLOR[2];
  }
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

function draw() {
  const ctx = overlayCanvas.getContext("2d");
  ctx.clearRect(0, 0, overlayCanvas.width, overlayCanvas.height);
  if (state.result?.maskImage) ctx.drawImage(state.result.maskImage, 0, 0, overlayCanvas.width, overlayCanvas.height);
  drawEverything(ctx);
  const [sx, sy] = state.scale;
  const box = state.prompts.findLast((p) => p.kind === "box")?.box;  // the one that counts
  const boxes = box ? [box] : [];
  if (state.drag) boxes.push([state.drag.x0, state.drag.y0, state.drag.x1, state.drag.y1]);
  ctx.lineWidth = 2;
  ctx.strokeStyle = "#fff";
  for (const [x0, y0, x1, y1] of boxes) ctx.strokeRect(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy);
  for (const p of state.prompts.filter((q) => q.kind === "point")) {
    ctx.beginPath();
    ctx.arc(p.x * sx, p.y * sy, 5, 0, 2 * Math.PI);
    ctx.fillStyle = p.label === 1 ? "#00c800" : "#e00000";
    ctx.fill();
    ctx.strokeStyle = "#fff";
    ctx.stroke();
  }
  if (state.result && state.result.labels.length) {
    const [x, y] = state.result.bbox;
    const text = `${state.result.labels[0].name} ${state.result.labels[0].score.toFixed(2)}`;
    ctx.font = "bold 14px system-ui";
    ctx.fillStyle = "rgb(30,144,255)";
    ctx.fillRect(x * sx, Math.max(0, y * sy - 20), ctx.measureText(text).width + 8, 20);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x * sx + 4, Math.max(14, y * sy - 5));
  }
  if (state.cursor && overlayCanvas.matches(":focus-visible")) {  // the keyboard's cursor
    ctx.strokeStyle = "#f0f";
    ctx.strokeRect(state.cursor.x * sx - 7, state.cursor.y * sy - 7, 14, 14);
  }
}

function showResult() {
  const r = state.result;
  $("undo").disabled = !state.prompts.length;
  $("clear").disabled = !state.prompts.length && !state.everything;
  $("labels").replaceChildren();
  for (const link of [$("download-png"), $("download-json")]) {
    link.classList.toggle("disabled", !r);
    if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);  // the old JSON's memory
    if (!r) link.removeAttribute("href");  // without one a link is neither focused nor followed
  }
  if (!r) { showEverything(); return; }
  const scoreWord = r.score_name === "low_res_stability_score" ? "stability" : "predicted IoU";
  $("score").textContent = `${scoreWord} ${r.score.toFixed(3)} · area ${r.area} px · box ${r.bbox.join(", ")}`;
  $("recognition").textContent = r.recognition.message;
  const item = (label) => Object.assign(document.createElement("li"), { textContent: `${label.name} — ${label.score.toFixed(3)}` });
  $("labels").append(...r.labels.map(item));
  $("download-png").href = `data:image/png;base64,${r.mask_png}`;
  // named after the image, and the record says which image and size it belongs to
  const stem = (state.file?.name ?? "sample.jpg").replace(/\.[^.]*$/, "") || "image";
  $("download-png").download = `${stem}.mask.png`;
  $("download-json").download = `${stem}.json`;
  const record = {
    image: state.file?.name ?? "sample.jpg", width: state.width, height: state.height, image_id: state.imageId,
    prompt: promptOf(r.prompts), score: r.score, area: r.area, bbox: r.bbox, labels: r.labels,
  };
  $("download-json").href = URL.createObjectURL(new Blob([JSON.stringify(record, null, 2)], { type: "application/json" }));
}

function addPrompt(prompt) {  // drawn at once and sent; a box replaces the previous box (Undo brings it back)
  state.prompts.push(prompt);
  draw();
  predict();
}

$("file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  e.target.value = "";  // choosing the same file again (e.g. after a failed upload) still loads it
  if (file) startImage(file);
});
$("sample").addEventListener("click", () => startImage(null));
// The image follows the window's width (a narrower window, a turned phone): the canvases were
// sized once and, wider than their stage, covered the panel beside it.
let relayout = 0;
window.addEventListener("resize", () => {
  cancelAnimationFrame(relayout);
  relayout = requestAnimationFrame(() => { if (state.picture && state.width) { layout(); draw(); } });
});
$("background").addEventListener("click", (e) => { state.background = !state.background; e.currentTarget.setAttribute("aria-pressed", state.background); });
$("undo").addEventListener("click", () => {
  state.prompts.pop();
  // the mask these prompts had, if it is still kept: asked again, a mask that refined an
  // earlier one would come back different
  const same = (r) => r.prompts.length === state.prompts.length && startsWith(state.prompts, r.prompts);
  const kept = state.results.findLast(same);
  if (kept && !state.busy) state.result = kept; else predict();
  draw(); showResult();
});
$("clear").addEventListener("click", () => { newGeneration(); draw(); showResult(); });
$("vocabulary").addEventListener("change", () => predict());
$("add-vocabulary").addEventListener("click", async () => {
  // One class per line; commas separate synonyms ("cup, mug"), the first is the label.
  const names = $("custom-names").value.split(/\n/).map((s) => s.trim()).filter(Boolean);
  try {
    const info = await saveNames(names);
    await refreshVocabularies(info.name);
    setStatus(`Vocabulary "${info.name}" with ${info.size} names`);
    predict();
  } catch (err) {
    setStatus(err.message, true);
  }
});

async function refreshVocabularies(selected) {
  const list = await api("/v1/vocabularies");
  const select = $("vocabulary");
  select.replaceChildren(new Option("(none)", ""));
  // the built-in ones and this page's own names: other users' typed names are theirs
  const shown = list.filter((v) => v.builtin || v.name === CUSTOM_VOCABULARY);
  for (const v of shown) select.append(new Option(`${v.name} (${v.size})`, v.name));
  select.value = selected && shown.some((v) => v.name === selected) ? selected : "";
}

async function init() {
  try {
    const health = await api("/v1/health");
    $("recognition").textContent = health.recognition.message;
    await refreshVocabularies();
    setStatus(`Model ${health.model} ready. Upload an image or use the sample photo.`);
  } catch (err) {
    setStatus(`Server not reachable: ${err.message}`, true);
  }
}
init();
