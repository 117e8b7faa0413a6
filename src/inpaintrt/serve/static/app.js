// The page: load a picture, paint the mask (editor.js) or set the outpaint extension, send jobs
// (api.js, form.js; ControlNet and image prompts: conditioning.js), follow their events, show results on
// the canvas (hold "Before" or C for the input), download and chain them, keep them (history.js); a
// refusal points at its control (field-errors.js); masks from clicks or text where the server has mask
// makers (segment.js). Plain modules, no build step, nothing from the network but this server.
import { MaskEditor } from "./editor.js";
import { api, follow } from "./api.js";
import { ControlNetSection, ImagePromptSection } from "./conditioning.js";
import { FieldErrors } from "./field-errors.js";
import { History } from "./history.js";
import { MaskMakers } from "./segment.js";
import { batchCount, erasing, fields, formValues, restoreValues, outpainting, sides, SIDES } from "./form.js";

const $ = (id) => document.getElementById(id);
const editor = new MaskEditor($("view"), updateButtons);
const history = new History($("history"), (entry) => show(entry));
const controlnets = new ControlNetSection(), imagePrompts = new ImagePromptSection();
const maskMakers = new MaskMakers(editor, () => state.pictureBlob, (text, error = false, refusal = null) => {
  setStatus(text, error);
  if (refusal?.field) fieldErrors.show(refusal.field, refusal.fix, refusal.message);
});
const fieldErrors = new FieldErrors([controlnets, imagePrompts, maskMakers]);
// job: the running job's id ("" while it is being sent); results: this visit's; events: the last job's
const state = { pictureBlob: null, job: null, results: [], current: null, events: [], stopBatch: false,
  previewFor: null, previewsShown: 0 };
window.inpaintrt = { editor, state, history, controlnets, imagePrompts, fieldErrors, maskMakers };  // for tests and the curious

// --- server facts ------------------------------------------------------------------------------

async function loadInfo() {
  try {
    const info = await (await api("/v1/info")).json();
    const select = $("scheduler");
    for (const name of info.schedulers) select.add(new Option(name, name));
    state.info = info;
    const models = info.models || [{ name: "", ...info.model }];  // an older server: its one model
    // mask makers make masks (segment.js), they do not run jobs: the model list has the others
    const painters = models.filter((model) => model.kind !== "segmenter");
    state.models = Object.fromEntries(painters.map((model) => [model.name, model]));
    for (const model of painters) {
      const kind = model.kind === "eraser" ? ", eraser" : "";
      $("model").add(new Option(`${model.name} (${model.family}${kind})`, model.name));
    }
    // one engine to choose: hidden (and not sent) unless the server's default is a mask maker
    $("model-row").hidden = painters.length < 2 && (!painters.length || painters[0] === models[0]);
    maskMakers.apply(models);
    $("num_inference_steps").max = info.limits.max_steps;
    applyModel();
  } catch (e) {
    $("server-info").textContent = `server info: ${e.message}`;
    if (e.message.startsWith("authorization")) {  // the server was started with --token
      $("server-info").closest("details").open = true;
      setStatus("This server needs its token: enter it under “Server”.", true);
      $("token").addEventListener("change", loadInfo, { once: true });
    }
  }
}

// The chosen engine's defaults in the form: guidance, size placeholders, the steps it would take.
function applyModel() {
  const model = state.models?.[$("model").value];
  if (!model) return;
  const info = state.info;
  if (model.kind === "eraser") {  // no prompt, steps or size: one forward pass at the picture's size
    $("server-info").textContent = `model ${model.name ? `${model.name}: ` : ""}${model.family} eraser, backend ` +
      `${model.backend} ${model.precision}, ${info.limits.workers} worker(s)`;
    return applyVisibility();
  }
  $("server-info").textContent = `model ${model.name ? `${model.name}: ` : ""}${model.family}, ` +
    `${model.unet_in_channels}-channel UNet, ${model.default_width}×${model.default_height}, backend ` +
    `${model.backend} ${model.precision}, ${info.limits.workers} worker(s), at most ${info.limits.max_steps} steps`;
  $("width").placeholder = model.default_width;
  $("height").placeholder = model.default_height;
  $("num_inference_steps").title = `the model's default: ${model.default_steps}`;
  $("guidance_scale").value = model.default_guidance_scale;  // the family's (Kandinsky 4)
  applyVisibility();
}

// What the chosen model and mode take: inpaint-only fields hide when outpainting, Stable Diffusion-only
// ones (strength, the mask options, keep unmasked) for a Kandinsky model, which has no outpaint either;
// the ControlNet and image-prompt sections show for models that have them. An eraser model has one mode,
// Erase: the brush and mask edits, its own few settings and none of diffusion's. Hidden fields are not sent.
function applyVisibility() {
  const model = state.models?.[$("model").value];
  const kandinsky = model?.family === "kandinsky22", eraser = model?.kind === "eraser";
  for (const option of $("mode").options) {
    const own = (option.value === "erase") === eraser;
    option.hidden = !own;
    option.disabled = !own || (option.value === "outpaint" && kandinsky);
  }
  if ((kandinsky && outpainting()) || eraser !== erasing()) {
    $("mode").value = eraser ? "erase" : "inpaint";
    return applyMode();
  }
  const has = (element, name) => element.classList.contains(name);
  for (const element of document.querySelectorAll(".inpaint-only, .sd-only, .diffusion-only, .erase-only")) {
    element.hidden = (has(element, "inpaint-only") && outpainting()) || (has(element, "sd-only") && kandinsky) ||
      (has(element, "diffusion-only") && eraser) || (has(element, "erase-only") && !eraser);
  }
  $("width").disabled = $("height").disabled = $("keep_input_size").checked && !$("keep_input_size").closest("[hidden]");
  controlnets.apply(model, !outpainting());
  imagePrompts.apply(model, !outpainting());
}

$("model").onchange = applyModel;

// --- pictures in --------------------------------------------------------------------------------

async function openPicture(blob, keepMask = false) {
  const image = await createImageBitmap(blob);
  state.pictureBlob = blob;
  editor.setPicture(image, keepMask);
  controlnets.setPictureSize({ width: image.width, height: image.height });
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
  for (const name of TOOLS) $(`tool-${name}`).classList.toggle("active", name === tool);
  $("view").classList.toggle("panning", tool === "pan");
}

function setBrush(size) {
  editor.size = Math.max(1, Math.min(256, Math.round(size)));
  $("brush-size").value = editor.size;
  $("brush-size-value").textContent = editor.size;
}

const TOOLS = ["brush", "eraser", "pan", "click"];  // click: the mask maker's (segment.js), where served
for (const name of TOOLS) $(`tool-${name}`).onclick = () => setTool(name);
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
  if ((e.ctrlKey || e.metaKey) && e.key === "Enter") {  // runs from anywhere, text fields included
    e.preventDefault();
    if (!$("run").disabled) $("params").requestSubmit();
    return;
  }
  // typing goes to text fields; sliders, checkboxes and buttons leave the keys to the editor
  if (e.target.closest("input:not([type=range]):not([type=checkbox]), textarea, select")) return;
  const key = e.key.toLowerCase();
  if ((e.ctrlKey || e.metaKey) && key === "z") { e.preventDefault(); e.shiftKey ? editor.redo() : editor.undo(); }
  else if ((e.ctrlKey || e.metaKey) && key === "y") { e.preventDefault(); editor.redo(); }
  else if (e.key === "[") setBrush(editor.size * 0.8 - 1);
  else if (e.key === "]") setBrush(editor.size * 1.25 + 1);
  else if (key === "b") setTool("brush");
  else if (key === "e") setTool("eraser");
  else if (key === "k" && maskMakers.clicker) setTool("click");
  else if (key === "0") editor.fit();
  else if (key === "c" && !e.repeat) holdBefore(true);
  else if (e.key === "+" || e.key === "=") editor.zoom(1.25);
  else if (e.key === "-") editor.zoom(0.8);
  else if (e.key === " ") { editor.spaceHeld = true; $("view").classList.add("panning"); e.preventDefault(); }
});
document.addEventListener("keyup", (e) => {
  if (e.key === " ") { editor.spaceHeld = false; $("view").classList.toggle("panning", editor.tool === "pan"); }
  if (e.key.toLowerCase() === "c") holdBefore(false);
});

// --- running a job ------------------------------------------------------------------------------

function setStatus(text, error = false) {
  $("status").textContent = text.charAt(0).toUpperCase() + text.slice(1);
  $("status").classList.toggle("error", error);
}

function updateButtons() {
  const running = state.job !== null;
  $("run").disabled = running || !editor.picture;
  $("cancel").disabled = !running;
  $("undo").disabled = !editor.undoStack.length;
  $("redo").disabled = !editor.redoStack.length;
  $("stage-tools").hidden = !editor.overlay || running;
}

// --- inpaint or outpaint -----------------------------------------------------------------------

function applyMode() {
  $("outpaint-fields").hidden = !outpainting();
  $("run").textContent = outpainting() ? "Outpaint" : erasing() ? "Erase" : "Inpaint";
  $("prompt").placeholder = outpainting() ? "what to paint into the new area" : "what to paint into the mask";
  editor.setExtension(outpainting() ? sides() : null);
  applyVisibility();
}

$("mode").onchange = applyMode;
for (const side of SIDES) $(side).oninput = () => outpainting() && editor.setExtension(sides());
$("keep_input_size").onchange = applyVisibility;

// Where a result sits over the picture: an outpaint result around it, an inpaint result on it.
const resultBox = (entry, picture) => entry.task === "outpaint"
  ? { x: -entry.sides.left, y: -entry.sides.top, w: picture.width + entry.sides.left + entry.sides.right,
    h: picture.height + entry.sides.top + entry.sides.bottom }
  : { x: 0, y: 0, w: picture.width, h: picture.height };

// --- running jobs -------------------------------------------------------------------------------

$("params").addEventListener("submit", (e) => { e.preventDefault(); run(); });

async function run() {
  if (state.job !== null || !editor.picture) return;
  const task = outpainting() ? "outpaint" : "inpaint";  // an erase is an inpaint request to an eraser model
  if (task === "inpaint" && !editor.hasMask()) {
    return setStatus(`Paint (or load) a mask first: white marks what to ${erasing() ? "remove" : "repaint"}.`, true);
  }
  const context = { task, erase: erasing(), model: $("model").value, picture: state.pictureBlob, size: { width: editor.width, height: editor.height },
    sides: task === "outpaint" ? sides() : null,
    params: { ...formValues(), ...controlnets.values(), ...imagePrompts.values() } };
  const mask = task === "inpaint" ? await editor.maskBlob() : null;
  fieldErrors.clear();
  // control images at the picture's size, image prompts and their weights: the same for every run of a batch
  const extra = task === "inpaint" ? [...await controlnets.parts(context.size), ...imagePrompts.parts()] : [];
  const count = batchCount();
  state.job = "";
  state.stopBatch = false;
  updateButtons();
  try {
    for (let i = 0; i < count && !state.stopBatch; i++) {
      const form = fields(i);
      form.append("image", context.picture, "image.png");
      if (mask) form.append("mask_image", mask, "mask.png");
      for (const [name, value, filename] of extra) filename ? form.append(name, value, filename) : form.append(name, value);
      const prefix = count > 1 ? `Image ${i + 1} of ${count}: ` : "";
      $("progress").value = 0;
      state.events = [];
      const path = task === "outpaint" ? "/v1/outpaint/jobs" : "/v1/jobs";
      state.job = (await (await api(path, { method: "POST", body: form })).json()).id;
      setStatus(`${prefix}queued…`);
      // previews cover the whole picture: not for outpaint's windows or a crop margin's box
      const previews = task === "inpaint" && !context.erase && $("padding_mask_crop").value.trim() === "";
      state.previewFor = state.job;
      const last = await follow(state.job, (event) => progress(event, prefix, context), previews);
      state.previewFor = null;
      if (last.status !== "done") {
        if (editor.overlay?.image instanceof HTMLImageElement) editor.setOverlay(null);  // a preview, not a result
        setStatus(last.status === "cancelled" ? "Cancelled." : `Failed: ${last.error}`, last.status !== "cancelled");
        if (last.status === "failed") await pointAtField(last.id);
        break;
      }
      await keepResult(last, context, prefix);
    }
  } catch (err) {
    setStatus(err.message, true);
    if (err.field) fieldErrors.show(err.field, err.fix, err.message);
  } finally {
    state.job = null;
    updateButtons();
  }
}

// A job the engine refused: its result answers with the field and fix (the events carry the message only).
async function pointAtField(id) {
  try {
    await api(`/v1/jobs/${id}/result`);
  } catch (err) {
    if (err.field) fieldErrors.show(err.field, err.fix, err.message);
  }
}

// Progress in the steps asked for (the server also counts model calls: `step` of `total`), and the
// latents' cheap preview on the canvas until the result comes.
function progress(event, prefix, context) {
  state.events.push(event);
  if (event.preview) {
    const image = new Image(), id = event.id;
    image.onload = () => {
      if (state.previewFor !== id) return;  // the result is in already
      editor.setOverlay(image, { x: 0, y: 0, w: context.size.width, h: context.size.height });
      state.previewsShown += 1;
    };
    image.src = event.preview;
  }
  const steps = event.steps || event.total, done = event.steps_done ?? event.step;
  if (steps) $("progress").value = done / steps;
  if (event.status === "running") setStatus(`${prefix}step ${done} of ${steps}`);
}

$("cancel").onclick = async () => {
  state.stopBatch = true;
  if (state.job) await api(`/v1/jobs/${state.job}`, { method: "DELETE" }).catch((e) => setStatus(e.message, true));
};

async function keepResult(job, context, prefix) {
  const blob = await (await api(job.result_url)).blob();
  const entry = { task: context.erase ? "erase" : context.task, model: context.model, seed: job.seed, params: context.params, sides: context.sides,
    input: context.picture, result: blob, width: job.width, height: job.height, job: job.id, time: Date.now(),
    nsfw: job.nsfw_content_detected?.[0] === true };
  await history.add(entry);
  state.results.push(entry);
  await show(entry);
  if (!$("keep_mask").checked && context.task === "inpaint") editor.clear();  // erase included  // undo brings it back
  $("progress").value = 1;
  setStatus(`${prefix}done in ${(job.timings.run_ms / 1000).toFixed(2)} s (queued ${job.timings.queued_ms} ms), ` +
    `${job.width}×${job.height}.`);
}

// A result on the canvas, over its own input (a history entry brings its input back).
async function show(entry) {
  if (entry.input !== state.pictureBlob) await openPicture(entry.input, true);
  state.current = entry;
  const image = await createImageBitmap(entry.result);
  editor.setOverlay(image, resultBox(entry, editor));
  $("result-panel").hidden = false;
  $("download").href = history.url(entry);
  const erased = entry.task === "erase";  // an eraser uses no seed
  $("download").download = erased ? "erased.png" : `${entry.task}ed-seed${entry.seed}.png`;
  $("seed-used").textContent = erased ? "" : `seed ${entry.seed}`;
  $("reuse-seed").hidden = erased;
  $("result-about").textContent = `#${entry.id} ${entry.task}${entry.model ? ` (${entry.model})` : ""}, ` +
    `${entry.width}×${entry.height}: ` +
    (erased ? "the masked area removed" : entry.params?.prompt || "(no prompt)") +
    // the engine's safety checker blacked it out, as diffusers does (docs/safety-checker.md)
    (entry.nsfw ? " — blacked out: the safety checker found potential NSFW content; try another prompt or seed" : "");
  history.mark(entry);
  document.body.dataset.result = entry.job;
}

function holdBefore(on) {
  if (!editor.overlay) return;
  editor.showBefore = on;
  $("show-before").classList.toggle("active", on);
  editor.render();
}

$("show-before").onpointerdown = () => holdBefore(true);
for (const name of ["pointerup", "pointerleave", "pointercancel"]) $("show-before")[`on${name}`] = () => holdBefore(false);
$("hide-result").onclick = () => editor.setOverlay(null);
$("use-result").onclick = () => state.current && openPicture(state.current.result, true);
$("reuse-seed").onclick = () => { if (state.current) $("seed").value = state.current.seed; };
$("restore-params").onclick = () => {
  if (!state.current) return;
  const guidance = state.current.params?.guidance_scale;
  restoreValues(state.current.params);
  if (state.current.params?.model in (state.models || {})) applyModel();  // its defaults, then its own values
  restoreValues(state.current.params);  // again: a model's ControlNet fields exist once it is applied
  if (guidance !== undefined) $("guidance_scale").value = guidance;
  applyMode();
  setStatus(`Settings of #${state.current.id} restored.`);
};
$("clear-history").onclick = async () => {
  if (!history.entries.length || !confirm(`Forget all ${history.entries.length} saved results?`)) return;
  await history.clear();
  setStatus("History cleared.");
};

$("token").value = localStorage.getItem("inpaintrt-token") || "";
setBrush(24);
applyMode();
updateButtons();
loadInfo();
history.load().then(() => { document.body.dataset.history = "loaded"; });
