// ovsam web page: upload once, then every click or box costs only the mask decoder.
"use strict";

const $ = (id) => document.getElementById(id);
const imageCanvas = $("image");
const overlayCanvas = $("overlay");
const MASK_COLOR = [30, 144, 255];
const SLOW_ANSWER_MS = 1500;  // then the status says why a named mask may take long
// Typed names are saved under a name of this page's own, so two users do not overwrite each other.
const CUSTOM_VOCABULARY = `custom-${Math.random().toString(36).slice(2, 10)}`;

const state = {
  imageId: null, width: 0, height: 0, scale: 1, picture: null,
  file: null,         // the uploaded file (null: the sample photo), to upload again if dropped
  prompts: [],        // history of {kind: "point", x, y, label} | {kind: "box", box}
  result: null,       // last PredictResponse (+ maskImage, and the prompts it answers)
  drag: null,         // {x0, y0, x1, y1} while dragging
  busy: false, pending: false,
  generation: 0,      // bumped by Clear and by a new image: older answers are dropped
  customNames: null,  // the names last saved as CUSTOM_VOCABULARY (re-posted if evicted)
  namedWith: new Set(),  // vocabularies the server has named a mask with (text bank built)
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
  state.prompts = []; state.result = null;
}

function toImageCoords(event) {
  const rect = overlayCanvas.getBoundingClientRect();
  return [(event.clientX - rect.left) / state.scale, (event.clientY - rect.top) / state.scale];
}

function promptOf(prompts) {
  const points = [], labels = [];
  let box = null;
  for (const p of prompts) {
    if (p.kind === "point") { points.push([p.x, p.y]); labels.push(p.label); }
    else box = p.box;
  }
  return { points, labels, box };
}

async function loadPicture(file, url) {
  url = url || (file ? URL.createObjectURL(file) : "/v1/sample.jpg");
  const img = new Image();
  img.src = url;
  await img.decode();
  return img;
}

function layout() {
  const stage = $("stage");
  const maxWidth = stage.clientWidth || 800;
  state.scale = Math.min(1, maxWidth / state.width, 720 / state.height);
  for (const canvas of [imageCanvas, overlayCanvas]) {
    canvas.width = Math.round(state.width * state.scale);
    canvas.height = Math.round(state.height * state.scale);
  }
  stage.style.height = `${imageCanvas.height}px`;
  const ctx = imageCanvas.getContext("2d");
  ctx.drawImage(state.picture, 0, 0, imageCanvas.width, imageCanvas.height);
  $("hint").hidden = true;
}

// The page must draw the image itself, so one the browser cannot decode (TIFF in most
// browsers) is refused before it is uploaded.
function cannotShow(file) {
  const tiff = /tiff/i.test(file.type) || /\.tiff?$/i.test(file.name);
  const what = tiff ? "TIFF images" : `this image (${file.name})`;
  return `This browser cannot show ${what}: convert it to PNG or JPEG and upload that.`;
}

async function startImage(file) {
  let picture;
  try {
    picture = await loadPicture(file);
  } catch {
    setStatus(file ? cannotShow(file) : "The sample photo could not be shown.", true);
    return;
  }
  setStatus("Embedding image…");
  newGeneration();
  state.imageId = null;
  try {
    const info = await uploadImage(file);
    state.file = file;
    // An upload its orientation metadata turned: the server's upright picture, as browsers
    // ignore some such metadata (WebP EXIF, XMP) and would show, and map clicks onto, another.
    state.picture = info.picture ? await loadPicture(null, info.picture) : picture;
    Object.assign(state, { imageId: info.image_id, width: info.width, height: info.height });
    layout();
    draw();
    setStatus(`Ready: ${info.width}×${info.height}, embedded in ${Math.round(info.embedding_ms)} ms`);
  } catch (err) {
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
  if (state.busy) { state.pending = true; return; }
  const ticket = { imageId: state.imageId, generation: state.generation };
  const isStale = () => ticket.imageId !== state.imageId || ticket.generation !== state.generation;
  const prompts = state.prompts.slice();
  const { points, labels, box } = promptOf(prompts);
  if (!points.length && !box) { state.result = null; draw(); showResult(); return; }
  state.busy = true;
  let stale = false, retry = false;
  const vocabulary = $("vocabulary").value;
  // A vocabulary's first use embeds every one of its names: minutes on a CPU for a large one.
  const named = $("vocabulary").selectedOptions[0]?.textContent;  // e.g. "lvis (1203)"
  const firstUse = vocabulary && !state.namedWith.has(vocabulary);
  const slow = setTimeout(() => {
    if (isStale()) return;
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
    if (points.length > 1 && shown?.mask_id && extendsPrompts(shown.prompts, prompts)) {
      body.mask_id = shown.mask_id;
    }
    const result = await api(`/v1/images/${state.imageId}/predict`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    result.maskImage = await maskToImage(result.mask_png);
    stale = isStale();  // Clear or a new image meanwhile: this answer is for prompts now gone
    if (vocabulary) state.namedWith.add(vocabulary);
    if (!stale) {
      result.prompts = prompts;
      state.result = result;
      setStatus(`Mask in ${Math.round(result.elapsed_ms)} ms`);
    }
  } catch (err) {
    stale = isStale();
    if (!stale && !retried && err.code === "unknown_vocabulary") {
      retry = await restoreVocabulary(vocabulary);
    }
    if (!stale && !retried && err.code === "unknown_image") {
      setStatus("The server had dropped this image: uploading it again…");
      retry = await restoreImage(ticket.imageId);
      if (retry) ticket.imageId = state.imageId;  // the same picture, uploaded again
    }
    stale = isStale();  // again: Clear or another image during a restore (an upload: seconds)
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
    state.busy = false;
  }
  if (retry) { predict(true); return; }
  if (!stale) { draw(); showResult(); }
  if (state.pending) { state.pending = false; predict(); }
}

// A vocabulary the server no longer holds (custom ones are dropped least recently used first):
// this page's own names are saved again (true: ask again); otherwise the list is refreshed.
async function restoreVocabulary(name) {
  try {
    if (name === CUSTOM_VOCABULARY && state.customNames) {
      await saveNames(state.customNames);
      return true;
    }
    await refreshVocabularies();
  } catch {
    // the error of the prediction is shown
  }
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

function extendsPrompts(base, prompts) {
  return base.length < prompts.length && base.every((p, i) => p === prompts[i]);
}

async function maskToImage(pngBase64) {
  const img = new Image();
  img.src = `data:image/png;base64,${pngBase64}`;
  await img.decode();
  const canvas = document.createElement("canvas");
  canvas.width = img.width; canvas.height = img.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const pixels = ctx.getImageData(0, 0, img.width, img.height);
  for (let i = 0; i < pixels.data.length; i += 4) {
    const on = pixels.data[i] > 127;
    pixels.data[i] = MASK_COLOR[0]; pixels.data[i + 1] = MASK_COLOR[1]; pixels.data[i + 2] = MASK_COLOR[2];
    pixels.data[i + 3] = on ? 120 : 0;
  }
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

function draw() {
  const ctx = overlayCanvas.getContext("2d");
  ctx.clearRect(0, 0, overlayCanvas.width, overlayCanvas.height);
  if (state.result && state.result.maskImage) {
    ctx.drawImage(state.result.maskImage, 0, 0, overlayCanvas.width, overlayCanvas.height);
  }
  const s = state.scale;
  const boxes = state.prompts.filter((p) => p.kind === "box").map((p) => p.box);
  if (state.drag) boxes.push([state.drag.x0, state.drag.y0, state.drag.x1, state.drag.y1]);
  ctx.lineWidth = 2;
  for (const [x0, y0, x1, y1] of boxes) {
    ctx.strokeStyle = "#fff";
    ctx.strokeRect(x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s);
  }
  for (const p of state.prompts.filter((q) => q.kind === "point")) {
    ctx.beginPath();
    ctx.arc(p.x * s, p.y * s, 5, 0, 2 * Math.PI);
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
    ctx.fillRect(x * s, Math.max(0, y * s - 20), ctx.measureText(text).width + 8, 20);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x * s + 4, Math.max(14, y * s - 5));
  }
}

function showResult() {
  const r = state.result;
  $("undo").disabled = !state.prompts.length;
  $("clear").disabled = !state.prompts.length;
  $("labels").replaceChildren();
  for (const link of [$("download-png"), $("download-json")]) link.classList.toggle("disabled", !r);
  if (!r) { $("score").textContent = "No mask yet."; return; }
  const scoreWord = r.score_name === "stability_score" ? "stability" : "predicted IoU";
  $("score").textContent = `${scoreWord} ${r.score.toFixed(3)} · area ${r.area} px · box ${r.bbox.join(", ")}`;
  $("recognition").textContent = r.recognition.message;
  for (const label of r.labels) {
    const li = document.createElement("li");
    li.textContent = `${label.name} — ${label.score.toFixed(3)}`;
    $("labels").append(li);
  }
  $("download-png").href = `data:image/png;base64,${r.mask_png}`;
  const record = { image_id: state.imageId, prompt: promptOf(r.prompts), score: r.score, area: r.area, bbox: r.bbox, labels: r.labels };
  $("download-json").href = URL.createObjectURL(new Blob([JSON.stringify(record, null, 2)], { type: "application/json" }));
}

overlayCanvas.addEventListener("contextmenu", (e) => e.preventDefault());
overlayCanvas.addEventListener("mousedown", (e) => {
  if (!state.imageId) return;
  const [x, y] = toImageCoords(e);
  state.drag = { x0: x, y0: y, x1: x, y1: y, button: e.button, shift: e.shiftKey };
});
overlayCanvas.addEventListener("mousemove", (e) => {
  if (!state.drag) return;
  [state.drag.x1, state.drag.y1] = toImageCoords(e);
  draw();
});
window.addEventListener("mouseup", (e) => {
  const d = state.drag;
  if (!d) return;
  state.drag = null;
  const clamp = (v, hi) => Math.max(0, Math.min(hi, v));
  const moved = Math.hypot(d.x1 - d.x0, d.y1 - d.y0) * state.scale > 5;
  if (moved) {
    const box = [Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), Math.max(d.x0, d.x1), Math.max(d.y0, d.y1)];
    state.prompts = state.prompts.filter((p) => p.kind !== "box");
    state.prompts.push({ kind: "box", box: [clamp(box[0], state.width), clamp(box[1], state.height), clamp(box[2], state.width), clamp(box[3], state.height)] });
  } else {
    const negative = d.button === 2 || d.shift;
    state.prompts.push({ kind: "point", x: clamp(d.x0, state.width), y: clamp(d.y0, state.height), label: negative ? 0 : 1 });
  }
  draw();
  predict();
});

$("file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  e.target.value = "";  // choosing the same file again (e.g. after a failed upload) still loads it
  if (file) startImage(file);
});
$("sample").addEventListener("click", () => startImage(null));
$("undo").addEventListener("click", () => { state.prompts.pop(); predict(); draw(); showResult(); });
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
  for (const v of list) select.append(new Option(`${v.name} (${v.size})`, v.name));
  select.value = selected && list.some((v) => v.name === selected) ? selected : "";
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
