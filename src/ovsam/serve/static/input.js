// ovsam web page, input on the image: pointers (mouse, pen, finger) and the keyboard.
// Loaded after app.js, whose state, draw() and addPrompt() it uses.
"use strict";

overlayCanvas.addEventListener("contextmenu", (e) => e.preventDefault());
// A background point: a right click, Shift (with a click or Enter) or the Background toggle.
const asBackground = (e) => e.button === 2 || e.shiftKey || state.background;
// Pointer events: a mouse, a pen and a finger alike (the canvas's touch-action: none keeps a
// finger's drag from scrolling the page). One pointer draws at a time.
overlayCanvas.addEventListener("pointerdown", (e) => {
  if (!state.imageId || !e.isPrimary) return;  // a second finger does not start another
  overlayCanvas.setPointerCapture(e.pointerId);  // its release is seen outside the window too
  const [x, y] = toImageCoords(e);
  state.drag = { x0: x, y0: y, x1: x, y1: y, id: e.pointerId, background: asBackground(e), touch: e.pointerType === "touch" };
});
window.addEventListener("pointermove", (e) => {
  if (state.drag?.id !== e.pointerId) return;
  [state.drag.x1, state.drag.y1] = toImageCoords(e);
  draw();
});
window.addEventListener("pointercancel", (e) => { if (state.drag?.id === e.pointerId) { state.drag = null; draw(); } });
window.addEventListener("pointerup", (e) => {
  const d = state.drag;
  if (d?.id !== e.pointerId) return;
  state.drag = null;
  const [x0, x1] = [d.x0, d.x1].map((v) => clamp(v, state.width)).sort((a, b) => a - b);
  const [y0, y1] = [d.y0, d.y1].map((v) => clamp(v, state.height)).sort((a, b) => a - b);
  // A finger rolls a few pixels in a tap (Android counts 8 dp as one): a box needs more.
  const moved = Math.hypot((x1 - x0) * state.scale[0], (y1 - y0) * state.scale[1]) > (d.touch ? 12 : 5);
  // A box is at least an image pixel wide and high: a straight drag is a click where it began.
  addPrompt(moved && x1 - x0 >= 1 && y1 - y0 >= 1 ? { kind: "box", box: [x0, y0, x1, y1] }
    : { kind: "point", x: clamp(d.x0, state.width), y: clamp(d.y0, state.height), label: d.background ? 0 : 1 });
});
// The keyboard's click: the arrows move a cursor by 1% of the image (Shift: 10%), Enter places
// a point there (asBackground decides which kind).
overlayCanvas.addEventListener("keydown", (e) => {
  const c = state.cursor, arrow = ARROWS[e.key], step = e.shiftKey ? 0.1 : 0.01;
  if (!state.imageId || !(arrow || e.key === "Enter")) return;
  e.preventDefault();
  if (!arrow) { addPrompt({ kind: "point", x: c.x, y: c.y, label: asBackground(e) ? 0 : 1 }); return; }
  c.x = clamp(c.x + arrow[0] * step * state.width, state.width);
  c.y = clamp(c.y + arrow[1] * step * state.height, state.height);
  draw();
});
for (const type of ["focus", "blur"]) overlayCanvas.addEventListener(type, () => draw());
