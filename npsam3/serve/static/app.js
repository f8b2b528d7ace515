// The npsam3 page: open an image, outline every instance of a typed concept (a threshold slider
// re-selects them; the server keeps the detector's output), click or drag for one object's mask,
// download the result JSON. Plain JS, no build step; it talks only to this server's /v1 API.
"use strict";

const $ = (id) => document.getElementById(id);
const COLOURS = [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                 [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]];

// What the page shows; window.npsam3 for the curious (and the browser test).
const view = { image: null, concept: null, object: null, points: [], box: null, last: null };
window.npsam3 = view;
const latest = { concept: 0, object: 0 };  // answers to superseded requests are dropped

// ---- the API ----------------------------------------------------------------------------------

function headers(extra) {
  const h = Object.assign({}, extra);
  const token = $("token").value.trim();
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function post(path, body) {
  return api(path, { method: "POST", headers: headers({ "Content-Type": "application/json" }),
                     body: JSON.stringify(body) });
}

function say(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// ---- masks ------------------------------------------------------------------------------------

// A COCO compressed RLE {size: [h, w], counts} -> Uint8Array [h * w], row-major (COCO runs go
// down the columns: alternating background / foreground run lengths, LEB128-like in ASCII).
function decodeRle(rle) {
  const [h, w] = rle.size, s = rle.counts, runs = [];
  for (let p = 0; p < s.length;) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = s.charCodeAt(p++) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (runs.length > 2) x += runs[runs.length - 2];
    runs.push(x);
  }
  const mask = new Uint8Array(h * w);
  let i = 0;
  runs.forEach((run, r) => {
    for (let end = i + run; i < end; i++) if (r % 2) mask[(i % h) * w + Math.floor(i / h)] = 1;
  });
  return mask;
}

// Paint the pixels of ``mask`` whose 4-neighbourhood leaves it (outline) or all of them.
function paint(pixels, mask, w, h, rgb, alpha, outlineOnly) {
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      if (!mask[i]) continue;
      if (outlineOnly && x > 0 && y > 0 && x < w - 1 && y < h - 1 &&
          mask[i - 1] && mask[i + 1] && mask[i - w] && mask[i + w]) continue;
      pixels.set([rgb[0], rgb[1], rgb[2], alpha], 4 * i);
    }
  }
}

function layer(id) {
  const canvas = $(id), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  return ctx;
}

function drawConcept(result) {
  const { width: w, height: h } = result, ctx = layer("concept");
  const picture = ctx.createImageData(w, h);
  const list = $("instances");
  list.replaceChildren();
  result.instances.forEach((inst, i) => {
    paint(picture.data, decodeRle(inst.segmentation), w, h, COLOURS[i % COLOURS.length], 255, true);
    const item = document.createElement("li");
    item.textContent = `score ${inst.score.toFixed(2)}, ${inst.area} px`;
    item.style.borderLeft = `6px solid rgb(${COLOURS[i % COLOURS.length]})`;
    list.append(item);
  });
  ctx.putImageData(picture, 0, 0);
  ctx.font = `${Math.max(10, Math.round(w / 50))}px sans-serif`;
  result.instances.forEach((inst, i) => {
    ctx.fillStyle = `rgb(${COLOURS[i % COLOURS.length]})`;
    ctx.fillText(inst.score.toFixed(2), inst.box[0] + 2, Math.max(inst.box[1] - 2, 10));
  });
}

function drawObject(result) {
  const { width: w, height: h } = result, ctx = layer("object");
  const picture = ctx.createImageData(w, h);
  if (result.instances.length) {
    paint(picture.data, decodeRle(result.instances[0].segmentation), w, h, [30, 144, 255], 128, false);
  }
  ctx.putImageData(picture, 0, 0);
}

function drawMarks(dragBox) {
  const ctx = layer("marks"), r = Math.max(3, view.image.width / 150);
  ctx.lineWidth = Math.max(1, r / 2);
  for (const box of [view.box, dragBox]) {
    if (!box) continue;
    ctx.strokeStyle = "#ffffff";
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  }
  for (const p of view.points) {
    ctx.fillStyle = p.label ? "#00dd00" : "#ee0000";
    ctx.beginPath();
    ctx.arc(p.xy[0], p.xy[1], r, 0, 2 * Math.PI);
    ctx.fill();
  }
}

// ---- actions ----------------------------------------------------------------------------------

async function openImage(file) {
  say(`uploading ${file.name} ...`);
  const info = await api("/v1/images?name=" + encodeURIComponent(file.name), {
    method: "POST", headers: headers({ "Content-Type": "application/octet-stream" }), body: file });
  const bitmap = await createImageBitmap(file);  // EXIF orientation applied, as on the server
  for (const id of ["image", "concept", "object", "marks"]) {
    $(id).width = info.width;
    $(id).height = info.height;
  }
  $("image").getContext("2d").drawImage(bitmap, 0, 0, info.width, info.height);
  Object.assign(view, { image: info, concept: null, object: null, points: [], box: null, last: null });
  $("instances").replaceChildren();
  $("download").disabled = true;
  say(`${info.name}: ${info.width} x ${info.height}${info.cached ? " (already encoded)" : ""}. ` +
      "Type a concept, or click the image.");
}

function show(result) {
  view.last = result;
  $("download").disabled = false;
}

async function runConcept() {
  const prompt = $("prompt").value.trim();
  if (!view.image || !prompt) return say(view.image ? "type a concept first" : "open an image first", true);
  const run = ++latest.concept, threshold = Number($("threshold").value), start = performance.now();
  say(`segmenting "${prompt}" ...`);
  const result = await post(`/v1/images/${view.image.id}/concept`, { prompt, threshold });
  if (run !== latest.concept) return;
  view.concept = result;
  drawConcept(result);
  show(result);
  const how = result.detector_ran ? "" : " (re-selected: the detector did not run again)";
  say(`${result.instances.length} instance(s) of "${prompt}" at threshold ${threshold.toFixed(2)}` +
      `${how}, ${((performance.now() - start) / 1000).toFixed(2)} s`);
}

async function runObject() {
  const run = ++latest.object, start = performance.now();
  say("predicting the object ...");
  const body = { points: view.points, box: view.box, multimask: false };
  const result = await post(`/v1/images/${view.image.id}/object`, body);
  if (run !== latest.object) return;
  view.object = result;
  drawObject(result);
  show(result);
  const best = result.instances[0];
  say(`object mask: ${best.area} px, predicted IoU ${best.score.toFixed(2)}, ` +
      `${((performance.now() - start) / 1000).toFixed(2)} s`);
}

function clearClicks() {
  Object.assign(view, { points: [], box: null, object: null });
  if (view.image) ["object", "marks"].forEach(layer);
}

function download() {
  const name = view.last.image.replace(/\.[^.]*$/, "");
  const kind = view.last.format.replace("npsam3-", "");
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([JSON.stringify(view.last, null, 2)],
                                           { type: "application/json" }));
  link.download = `${name}.${kind}.json`;
  link.click();
  URL.revokeObjectURL(link.href);
}

// ---- mouse: click = point (right button: negative), drag = box --------------------------------

function imageXY(event) {
  const canvas = $("marks"), rect = canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) / rect.width * canvas.width;
  const y = (event.clientY - rect.top) / rect.height * canvas.height;
  return [Math.min(Math.max(x, 0), canvas.width), Math.min(Math.max(y, 0), canvas.height)];
}

let pressed = null;  // where the button went down, image pixels
const DRAG = 5;  // screen pixels before a press counts as a drag

function dragBox(a, b) {
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
}

function isDrag(event) {
  return Math.hypot(event.clientX - pressed.clientX, event.clientY - pressed.clientY) > DRAG;
}

function onDown(event) {
  if (!view.image) return;
  pressed = { xy: imageXY(event), clientX: event.clientX, clientY: event.clientY };
}

function onMove(event) {
  if (pressed && isDrag(event)) drawMarks(dragBox(pressed.xy, imageXY(event)));
}

function onUp(event) {
  if (!pressed) return;
  const xy = imageXY(event);
  if (isDrag(event)) view.box = dragBox(pressed.xy, xy);
  else view.points.push({ xy: xy.map((v) => Math.round(v * 100) / 100), label: event.button === 2 ? 0 : 1 });
  pressed = null;
  drawMarks();
  runObject().catch(failed);
}

function failed(e) {
  say(e.message, true);
}

// ---- wiring -----------------------------------------------------------------------------------

let slider = null;
$("file").addEventListener("change", (e) => e.target.files[0] && openImage(e.target.files[0]).catch(failed));
$("concept-form").addEventListener("submit", (e) => { e.preventDefault(); runConcept().catch(failed); });
$("threshold").addEventListener("input", () => {
  $("threshold-value").textContent = Number($("threshold").value).toFixed(2);
  clearTimeout(slider);
  if (view.concept) slider = setTimeout(() => runConcept().catch(failed), 150);
});
$("clear").addEventListener("click", clearClicks);
$("download").addEventListener("click", download);
const marks = $("marks");
marks.addEventListener("mousedown", onDown);
marks.addEventListener("mousemove", onMove);
window.addEventListener("mouseup", onUp);
marks.addEventListener("contextmenu", (e) => e.preventDefault());
