// "Everything": every object's mask from a grid of clicks on the server, each tinted and named.
"use strict";

const EVERYTHING_POINTS_PER_SIDE = 16;  // 256 clicks: seconds on a CPU server
const EVERYTHING_ALPHA = 110;

// COCO's compressed RLE string -> column-major run lengths (pycocotools' rleFrString).
function rleCounts(text) {
  const counts = [];
  for (let p = 0; p < text.length;) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = text.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// A distinct colour per mask (golden-angle hues).
function maskColor(i) {
  const hue = (i * 137.508) % 360, s = 0.75, l = 0.5;
  const f = (n) => { const k = (n + hue / 30) % 12; return l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(k - 3, 9 - k, 1)); };
  return [f(0), f(8), f(4)].map((v) => Math.round(v * 255));
}

// One canvas at the image's size with every mask tinted (smaller ones drawn over larger ones).
function everythingImage(answer) {
  const canvas = document.createElement("canvas");
  canvas.width = answer.width; canvas.height = answer.height;
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(answer.width, answer.height);
  answer.masks.forEach((mask, i) => {
    const [r, g, b] = maskColor(i);
    const h = mask.rle.size[0];
    let at = 0, inside = false;
    for (const run of rleCounts(mask.rle.counts)) {
      if (inside) {
        for (let j = at; j < at + run; j++) {  // column-major index j -> pixel (j % h, j / h)
          const o = ((j % h) * answer.width + Math.floor(j / h)) * 4;
          pixels.data[o] = r; pixels.data[o + 1] = g; pixels.data[o + 2] = b; pixels.data[o + 3] = EVERYTHING_ALPHA;
        }
      }
      at += run; inside = !inside;
    }
  });
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

// Drawn by app.js's draw() while no prompt is placed: the masks and their first labels.
function drawEverything(ctx) {
  const shown = state.everything;
  if (!shown || state.prompts.length) return;
  ctx.drawImage(shown.image, 0, 0, overlayCanvas.width, overlayCanvas.height);
  const [sx, sy] = state.scale;
  ctx.font = "12px system-ui";
  shown.answer.masks.forEach((mask, i) => {
    if (!mask.labels.length) return;
    const [x, y] = mask.bbox;
    const text = mask.labels[0].name;
    ctx.fillStyle = `rgb(${maskColor(i).join(",")})`;
    ctx.fillRect(x * sx, y * sy, ctx.measureText(text).width + 6, 16);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x * sx + 3, y * sy + 12);
  });
}

// The side panel for the masks on screen (called by app.js's showResult() without a mask).
function showEverything() {
  const shown = state.everything;
  if (!shown || state.prompts.length) { $("score").textContent = "No mask yet."; return; }
  const n = shown.answer.masks.length;
  $("score").textContent = `${n} mask${n === 1 ? "" : "s"} (segment everything)`;
  $("recognition").textContent = shown.answer.recognition.message;
  const named = shown.answer.masks.filter((m) => m.labels.length);
  $("labels").append(...named.map((m) => Object.assign(document.createElement("li"), {
    textContent: `${m.labels[0].name} — ${m.labels[0].score.toFixed(3)} (${m.area} px)`,
  })));
}

async function segmentEverything(retried = false) {
  if (!state.imageId) { setStatus("Upload an image or pick the sample photo first.", true); return; }
  newGeneration(); draw(); showResult();
  const ticket = { imageId: state.imageId, generation: state.generation };
  const vocabulary = $("vocabulary").value;
  const body = { points_per_side: EVERYTHING_POINTS_PER_SIDE, top_k: 3 };
  if (vocabulary) body.vocabulary = vocabulary;
  $("everything").disabled = true;
  setStatus("Segmenting everything (a grid of clicks; the server holds its model meanwhile)…");
  let retry = false;
  try {
    const answer = await api(`/v1/images/${state.imageId}/everything`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (ticket.imageId !== state.imageId || ticket.generation !== state.generation) return;
    if (vocabulary) state.namedWith.add(vocabulary);
    state.everything = { answer, image: everythingImage(answer) };
    setStatus(`${answer.masks.length} masks in ${Math.round(answer.elapsed_ms)} ms`);
    draw(); showResult();
  } catch (err) {
    if (!retried && err.code === "unknown_vocabulary") retry = await restoreVocabulary(vocabulary);
    if (!retried && err.code === "unknown_image") retry = await restoreImage(ticket.imageId);
    if (!retry) setStatus(err.message, true);
  } finally {
    $("everything").disabled = false;
  }
  if (retry) segmentEverything(true);
}

$("everything").addEventListener("click", () => segmentEverything());
