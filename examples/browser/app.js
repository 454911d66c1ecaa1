// The page's side of the browser example: makes the session, runs pictures, draws levels.
// `window.fpnState` tells a test harness where the page is: "loading", "done" or "error".
import init, { DetectorSession, Session } from "./pkg/browser.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
window.fpnState = { status: "loading", errors: [] };

function fail(message) {
  $("error").textContent = message;
  window.fpnState.errors.push(message);
  window.fpnState.status = "error";
}
window.addEventListener("error", (e) => fail(`page error: ${e.message}`));
// What the module reports as an error (a GPU validation error, a panic) fails the page too.
const consoleError = console.error.bind(console);
console.error = (...args) => {
  fail(args.map(String).join(" "));
  consoleError(...args);
};
window.addEventListener("unhandledrejection", (e) => fail(`page error: ${e.reason?.message ?? e.reason}`));

function drawLevels(levels, pictureUrl) {
  const box = $("levels");
  box.querySelectorAll("figure.level").forEach((f) => f.remove());
  $("input").src = pictureUrl;
  const [, , h, w] = levels.input_shape();
  $("input-caption").textContent = `input ${w}x${h}`;
  for (let i = 0; i < levels.count(); i++) {
    const [, c, lh, lw] = levels.shape(i);
    const canvas = document.createElement("canvas");
    canvas.width = lw;
    canvas.height = lh;
    const rgba = new Uint8ClampedArray(levels.energy_rgba(i));
    canvas.getContext("2d").putImageData(new ImageData(rgba, lw, lh), 0, 0);
    const figure = document.createElement("figure");
    figure.className = "level";
    const caption = document.createElement("figcaption");
    caption.textContent = `${levels.name(i).toUpperCase()}: ${c}x${lh}x${lw}`;
    figure.append(canvas, caption);
    box.append(figure);
  }
}

// Sends every level's values to the server that asked for them (`?report=1`).
async function report(levels, forwardMs, firstMs) {
  const shapes = {};
  for (let i = 0; i < levels.count(); i++) {
    shapes[levels.name(i)] = Array.from(levels.shape(i));
    const response = await fetch(`report/${levels.name(i)}`, { method: "POST", body: levels.values(i) });
    if (!response.ok) throw new Error(`the harness refused level ${levels.name(i)}: ${response.status}`);
  }
  return { shapes, forward_ms: forwardMs, first_result_ms: firstMs };
}

// Detector mode (`?detector=W.safetensors`): the picture with its boxes (and masks) drawn, and
// a list.
function drawDetections(found) {
  const box = $("levels");
  box.querySelectorAll("figure.level").forEach((f) => f.remove());
  $("input").style.display = "none";
  $("input-caption").textContent = "";
  const canvas = document.createElement("canvas");
  canvas.width = found.width();
  canvas.height = found.height();
  canvas.style.height = `${Math.min(480, found.height())}px`;
  const rgba = new Uint8ClampedArray(found.drawn_rgba());
  canvas.getContext("2d").putImageData(new ImageData(rgba, found.width(), found.height()), 0, 0);
  const figure = document.createElement("figure");
  figure.className = "level";
  const caption = document.createElement("figcaption");
  const [boxes, scores, labels] = [found.boxes(), found.scores(), found.labels()];
  const best = Array.from(scores.slice(0, 5), (s, i) =>
    `class ${labels[i]} ${s.toFixed(2)} [${Array.from(boxes.slice(4 * i, 4 * i + 4), (v) => v.toFixed(0)).join(", ")}]`);
  caption.textContent = `${found.count()} detections${best.length ? ": " + best.join("; ") : ""}`;
  figure.append(canvas, caption);
  box.append(figure);
}

async function runDetector(detector, bytes, name) {
  $("error").textContent = "";
  const found = await detector.run(bytes, name);
  drawDetections(found);
  const ms = found.forward_ms();
  $("facts").textContent = `${adapterName} · ${detector.network()} · pictures to boxes ${ms.toFixed(1)} ms`;
  return found;
}

async function reportDetections(found) {
  const reports = [["boxes", found.boxes()], ["scores", found.scores()], ["labels", found.labels()]];
  if (found.mask_count() > 0) reports.push(["masks", found.masks()], ["pixels", found.pixels()]);
  for (const [name, values] of reports) {
    const response = await fetch(`report/${name}`, { method: "POST", body: values });
    if (!response.ok) throw new Error(`the harness refused ${name}: ${response.status}`);
  }
  return { count: found.count(), masks: found.mask_count(), size: [found.height(), found.width()],
    forward_ms: found.forward_ms() };
}

async function detectorMain() {
  document.querySelector("h1").textContent = "Detection on WebGPU";
  $("max-size").parentElement.style.display = "none";
  const response = await fetch(params.get("detector"));
  if (!response.ok) throw new Error(`cannot fetch the detector ${params.get("detector")}: ${response.status}`);
  const weights = new Uint8Array(await response.arrayBuffer());
  const number = (key) => (params.has(key) ? Number(params.get(key)) : undefined);
  let detector;
  try {
    detector = await DetectorSession.create(weights, number("min_size"), number("max_size"),
      number("score_thresh"), number("detections_per_img"), number("rpn_post_nms_top_n"));
  } catch (e) {
    fail(`No detector could be made on this browser's GPU: ${e.message}`);
    return;
  }
  const kind = detector.kind();
  document.querySelector("h1").textContent = `${kind} on WebGPU`;
  document.querySelector("h1 + p").textContent = `torchvision's ${kind} runs in WGSL compute ` +
    "shaders on this browser's GPU adapter, from the picture to the " +
    (detector.has_masks() ? "boxes and masks: the transform, the backbone and FPN, the RPN, " +
      "RoIAlign, the box and mask heads, the NMS and the masks pasted into the picture. "
      : "boxes: the transform, the backbone and FPN, the heads, the box decoding and the NMS. ") +
    "Each detection is drawn in its class's colour, the class number on its tag.";
  adapterName = detector.adapter();
  const url = params.get("picture") ?? "picture.png";
  const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
  let found;
  try {
    found = await runDetector(detector, bytes, url);
  } catch (e) {
    fail(e.message);
    return;
  }
  if (params.has("report")) window.fpnState.result = await reportDetections(found);
  window.fpnState.adapter = adapterName;
  window.fpnState.status = window.fpnState.errors.length ? "error" : "done";
  $("file").addEventListener("change", async () => {
    const file = $("file").files[0];
    if (!file) return;
    try {
      await runDetector(detector, new Uint8Array(await file.arrayBuffer()), file.name);
    } catch (e) {
      fail(e.message);
    }
  });
}

let session;
let adapterName = "";
async function runPicture(bytes, name, pictureUrl) {
  $("error").textContent = "";
  // 0 or empty: the picture's own size.
  const maxSize = Number($("max-size").value) || undefined;
  const levels = await session.run(bytes, name, maxSize);
  const firstMs = performance.now();
  drawLevels(levels, pictureUrl);
  const ms = levels.forward_ms();
  $("facts").textContent = `${adapterName} · ${session.network()} · forward and read-back ${ms.toFixed(1)} ms`;
  return { levels, ms, firstMs };
}

if (params.has("max-size")) $("max-size").value = params.get("max-size");

async function main() {
  if (!navigator.gpu) {
    fail("This browser has no WebGPU (navigator.gpu is missing). Use a browser with WebGPU " +
      "enabled: Chrome or Edge 113+, Firefox 141+ on Windows, Safari 26; on Linux, Chromium " +
      "with --enable-unsafe-webgpu --enable-features=Vulkan.");
    return;
  }
  await init();
  if (params.get("detector")) {
    await detectorMain();
    return;
  }
  let weights;
  if (params.get("weights")) {
    const response = await fetch(params.get("weights"));
    if (!response.ok) throw new Error(`cannot fetch the weights ${params.get("weights")}: ${response.status}`);
    weights = new Uint8Array(await response.arrayBuffer());
  }
  try {
    session = await Session.create(weights);
  } catch (e) {
    fail(`No network could be made on this browser's GPU: ${e.message}`);
    return;
  }
  // The browser's own words for its adapter, where the crate's summary has no name.
  const info = (await navigator.gpu.requestAdapter())?.info;
  const described = [info?.vendor, info?.architecture, info?.description].filter(Boolean).join(" ");
  adapterName = described ? `${described}: ${session.adapter()}` : session.adapter();
  $("facts").textContent = `${adapterName} · ${session.network()} · running the default picture…`;
  const url = params.get("picture") ?? "picture.png";
  const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
  let run;
  try {
    run = await runPicture(bytes, url, url);
  } catch (e) {
    fail(e.message);
    return;
  }
  const { levels, ms, firstMs } = run;
  if (params.has("report")) {
    window.fpnState.result = await report(levels, ms, firstMs);
    // Once more, now that the plan and its pipelines exist.
    window.fpnState.result.warm_forward_ms = (await runPicture(bytes, url, url)).ms;
  }
  window.fpnState.adapter = adapterName;
  window.fpnState.status = window.fpnState.errors.length ? "error" : "done";

  $("file").addEventListener("change", async () => {
    const file = $("file").files[0];
    if (!file) return;
    try {
      await runPicture(new Uint8Array(await file.arrayBuffer()), file.name, URL.createObjectURL(file));
    } catch (e) {
      fail(e.message);
    }
  });
}

main().catch((e) => fail(e.message ?? String(e)));
