// The page: load a picture, paint the mask (editor.js) or set the outpaint extension, send a job,
// follow its events, show, compare, download and chain results. Plain modules, no build step, nothing from the network
// but this server.
import { MaskEditor } from "./editor.js";

const $ = (id) => document.getElementById(id);
const editor = new MaskEditor($("view"), updateButtons);
const state = { pictureBlob: null, job: null, results: [], current: null };
window.inpaintrt = { editor, state };  // for tests and the curious

// --- server calls -------------------------------------------------------------------------------

function headers() {
  const token = $("token").value.trim();
  if (token) localStorage.setItem("inpaintrt-token", token);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const e = (await response.json()).error;
      message = `${e.field}: ${e.message} — ${e.fix}`;
    } catch (_) { /* not our JSON */ }
    throw new Error(message);
  }
  return response;
}

async function loadInfo() {
  try {
    const info = await (await api("/v1/info")).json();
    const select = $("scheduler");
    for (const name of info.schedulers) select.add(new Option(name, name));
    $("server-info").textContent = `model ${info.model.family}, ${info.model.unet_in_channels}-channel UNet, ` +
      `${info.model.default_width}×${info.model.default_height}, backend ${info.model.backend} ${info.model.precision}, ` +
      `${info.limits.workers} worker(s), at most ${info.limits.max_steps} steps`;
    $("num_inference_steps").max = info.limits.max_steps;
    $("guidance_scale").value = info.model.default_guidance_scale;  // the family's (Kandinsky 4)
  } catch (e) {
    $("server-info").textContent = `server info: ${e.message}`;
    if (e.message.startsWith("authorization")) {  // the server was started with --token
      $("server-info").closest("details").open = true;
      setStatus("This server needs its token: enter it under “Server”.", true);
      $("token").addEventListener("change", loadInfo, { once: true });
    }
  }
}

// --- pictures in --------------------------------------------------------------------------------

async function openPicture(blob, keepMask = false) {
  const image = await createImageBitmap(blob);
  state.pictureBlob = blob;
  editor.setPicture(image, keepMask);
  $("drop-hint").hidden = true;
  setStatus(`Picture ${image.width}×${image.height}. Paint white over what should change.`);
  document.body.dataset.ready = "1";
}

$("image-file").addEventListener("change", (e) => e.target.files[0] && openPicture(e.target.files[0]));
$("mask-file").addEventListener("change", async (e) => {
  if (!e.target.files[0]) return;
  if (!editor.picture) return setStatus("Load the picture first, then its mask.", true);
  const stretched = editor.loadMask(await createImageBitmap(e.target.files[0]));
  setStatus(stretched ? "Mask loaded (stretched to the picture's size)." : "Mask loaded.");
});

const stage = $("stage");
stage.addEventListener("dragover", (e) => { e.preventDefault(); stage.classList.add("dragging"); });
stage.addEventListener("dragleave", () => stage.classList.remove("dragging"));
stage.addEventListener("drop", (e) => {
  e.preventDefault();
  stage.classList.remove("dragging");
  const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/"));
  if (file) openPicture(file);
});

// --- tools and keys -----------------------------------------------------------------------------

function setTool(tool) {
  editor.tool = tool;
  for (const name of ["brush", "eraser", "pan"]) $(`tool-${name}`).classList.toggle("active", name === tool);
  $("view").classList.toggle("panning", tool === "pan");
}

function setBrush(size) {
  editor.size = Math.max(1, Math.min(256, Math.round(size)));
  $("brush-size").value = editor.size;
  $("brush-size-value").textContent = editor.size;
}

for (const name of ["brush", "eraser", "pan"]) $(`tool-${name}`).onclick = () => setTool(name);
$("brush-size").oninput = (e) => setBrush(+e.target.value);
$("undo").onclick = () => editor.undo();
$("redo").onclick = () => editor.redo();
$("clear").onclick = () => editor.clear();
$("invert").onclick = () => editor.invert();
$("zoom-in").onclick = () => editor.zoom(1.25);
$("zoom-out").onclick = () => editor.zoom(0.8);
$("zoom-fit").onclick = () => editor.fit();
editor.onView = (scale) => { $("zoom-value").textContent = `${Math.round(scale * 100)}%`; };

document.addEventListener("keydown", (e) => {
  // typing goes to text fields; sliders, checkboxes and buttons leave the keys to the editor
  if (e.target.closest("input:not([type=range]):not([type=checkbox]), textarea, select")) return;
  const key = e.key.toLowerCase();
  if ((e.ctrlKey || e.metaKey) && key === "z") { e.preventDefault(); e.shiftKey ? editor.redo() : editor.undo(); }
  else if ((e.ctrlKey || e.metaKey) && key === "y") { e.preventDefault(); editor.redo(); }
  else if (e.key === "[") setBrush(editor.size * 0.8 - 1);
  else if (e.key === "]") setBrush(editor.size * 1.25 + 1);
  else if (key === "b") setTool("brush");
  else if (key === "e") setTool("eraser");
  else if (key === "0") editor.fit();
  else if (e.key === "+" || e.key === "=") editor.zoom(1.25);
  else if (e.key === "-") editor.zoom(0.8);
  else if (e.key === " ") { editor.spaceHeld = true; $("view").classList.add("panning"); e.preventDefault(); }
});
document.addEventListener("keyup", (e) => {
  if (e.key === " ") { editor.spaceHeld = false; $("view").classList.toggle("panning", editor.tool === "pan"); }
});

// --- running a job ------------------------------------------------------------------------------

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function updateButtons() {
  const running = state.job !== null;
  $("run").disabled = running || !editor.picture;
  $("cancel").disabled = !running;
  $("undo").disabled = !editor.undoStack.length;
  $("redo").disabled = !editor.redoStack.length;
}

// --- inpaint or outpaint -----------------------------------------------------------------------

const SIDES = ["left", "right", "top", "bottom"];
const outpainting = () => $("mode").value === "outpaint";
const sides = () => Object.fromEntries(SIDES.map((side) => [side, Math.max(0, Math.round(+$(side).value || 0))]));

function applyMode() {
  $("outpaint-fields").hidden = !outpainting();
  for (const element of document.querySelectorAll(".inpaint-only")) element.hidden = outpainting();
  $("run").textContent = outpainting() ? "Outpaint" : "Inpaint";
  $("prompt").placeholder = outpainting() ? "what to paint into the new area" : "what to paint into the mask";
  editor.setExtension(outpainting() ? sides() : null);
}

$("mode").onchange = applyMode;
for (const side of SIDES) $(side).oninput = () => outpainting() && editor.setExtension(sides());

// The picture as it sits on the grown canvas, transparent around it: the "before" of an outpaint result.
async function onGrownCanvas(blob, s) {
  const image = await createImageBitmap(blob);
  const canvas = document.createElement("canvas");
  canvas.width = image.width + s.left + s.right;
  canvas.height = image.height + s.top + s.bottom;
  canvas.getContext("2d").drawImage(image, s.left, s.top);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

function fields() {
  const form = new FormData();
  const common = ["prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "strength", "seed", "scheduler",
    "mask_mode", "masked_content"];
  const own = outpainting() ? [...SIDES, "overlap", "fill"] : ["padding_mask_crop", "blur_factor", "mask_grow",
    "mask_shrink"];
  for (const name of [...common, ...own]) {
    const value = $(name).value.trim();
    if (value !== "") form.append(name, value);
  }
  if (!outpainting()) {
    for (const name of ["keep_unmasked", "keep_input_size"]) form.append(name, $(name).checked ? "true" : "false");
  }
  return form;
}

$("params").addEventListener("submit", async (e) => {
  e.preventDefault();
  const task = outpainting() ? "outpaint" : "inpaint";
  if (task === "inpaint" && !editor.hasMask()) {
    return setStatus("Paint (or load) a mask first: white marks what to repaint.", true);
  }
  const form = fields();
  form.append("image", state.pictureBlob, "image.png");
  if (task === "inpaint") form.append("mask_image", await editor.maskBlob(), "mask.png");
  const picture = state.pictureBlob, grown = sides();
  $("progress").value = 0;
  try {
    const path = task === "outpaint" ? "/v1/outpaint/jobs" : "/v1/jobs";
    state.job = (await (await api(path, { method: "POST", body: form })).json()).id;
    updateButtons();
    setStatus("Queued…");
    const last = await follow(state.job);
    const before = task === "outpaint" ? await onGrownCanvas(picture, grown) : picture;
    if (last.status === "done") await showResult(last, before, task);
    else setStatus(last.status === "cancelled" ? "Cancelled." : `Failed: ${last.error}`, last.status !== "cancelled");
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    state.job = null;
    updateButtons();
  }
});

// Server-sent events read through fetch (EventSource cannot send the Authorization header).
async function follow(id) {
  const response = await api(`/v1/jobs/${id}/events`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return last;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").find((line) => line.startsWith("data: "));
      if (!data) continue;
      last = JSON.parse(data.slice(6));
      if (last.total) $("progress").value = last.step / last.total;
      if (last.status === "running") setStatus(`Step ${last.step} of ${last.total}`);
    }
  }
}

$("cancel").onclick = async () => {
  if (state.job) await api(`/v1/jobs/${state.job}`, { method: "DELETE" }).catch((e) => setStatus(e.message, true));
};

async function showResult(job, before, task) {
  const blob = await (await api(job.result_url)).blob();
  const entry = { blob, url: URL.createObjectURL(blob), before: URL.createObjectURL(before), seed: job.seed,
    prompt: $("prompt").value, job: job.id, timings: job.timings, task, width: job.width, height: job.height };
  state.results.push(entry);
  select(entry);
  const item = document.createElement("li");
  item.title = `seed ${entry.seed}: ${entry.prompt || "(no prompt)"} — click to show`;
  item.innerHTML = `<img alt=""><span></span>`;
  item.querySelector("img").src = entry.url;
  item.querySelector("span").textContent = `#${state.results.length} ${task} seed ${entry.seed}`;
  item.onclick = () => select(entry);
  $("history").prepend(item);
  $("progress").value = 1;
  setStatus(`Done in ${(job.timings.run_ms / 1000).toFixed(2)} s (queued ${job.timings.queued_ms} ms).`);
}

function select(entry) {
  state.current = entry;
  $("result-panel").hidden = false;
  $("result-image").src = entry.url;
  $("before-image").src = entry.before;
  $("download").href = entry.url;
  $("download").download = `${entry.task}ed-seed${entry.seed}.png`;
  $("seed-used").textContent = `seed ${entry.seed}`;
  document.body.dataset.result = entry.job;
}

$("compare-slider").oninput = (e) => { $("after-clip").style.clipPath = `inset(0 0 0 ${e.target.value}%)`; };
$("use-result").onclick = () => state.current && openPicture(state.current.blob, true);
$("reuse-seed").onclick = () => { if (state.current) $("seed").value = state.current.seed; };

$("token").value = localStorage.getItem("inpaintrt-token") || "";
setBrush(24);
applyMode();
updateButtons();
loadInfo();
