// The form's ControlNet and image-prompt sections, built from the chosen model's /v1/info facts
// (`controlnets`, `default_controlnet_scale`, `image_prompts`) and hidden where the model has none.
// A control image of another size than the picture is stretched to the picture's size before it is
// sent (as mask files are), and the section says so: the server takes control images at the picture's size.

const $ = (id) => document.getElementById(id);
export const MAX_IMAGE_PROMPTS = 4;

async function picked(file) {
  return { blob: file, name: file.name, bitmap: await createImageBitmap(file), url: URL.createObjectURL(file) };
}

// The picture as a PNG of width x height: the file itself when it is that size already (sent byte for byte).
async function atSize(pick, { width, height }) {
  if (pick.bitmap.width === width && pick.bitmap.height === height) return pick.blob;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").drawImage(pick.bitmap, 0, 0, width, height);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

function element(html) {
  const template = document.createElement("template");
  template.innerHTML = html.trim();
  return template.content.firstElementChild;
}

export class ControlNetSection {
  constructor() {
    this.fieldset = $("controlnet-fields");
    this.list = $("controlnet-list");
    this.units = [];          // the chosen model's ControlNets: {entry, block}
    this.picks = new Map();   // model name -> its chosen control images, kept while other models are chosen
    this.model = null;
    this.size = null;         // the picture's {width, height}
  }

  get active() { return !this.fieldset.hidden; }

  // The model's ControlNets (rebuilt when the model changes); shown when it has some and the mode is inpaint.
  apply(model, inpainting) {
    if (model && model !== this.model) {
      this.model = model;
      this.build(model.controlnets || [], model.default_controlnet_scale);
    }
    this.fieldset.hidden = !inpainting || !this.units.length;
  }

  build(controlnets, defaultScale) {
    const picks = this.picks.get(this.model.name) || [];
    this.picks.set(this.model.name, picks);
    this.list.replaceChildren();
    this.units = controlnets.map((entry, i) => {
      const about = `${entry.kind}, ${entry.source}`;
      const block = element(`<div class="unit" id="controlnet-${i}">
        <div class="unit-title"></div>
        <div class="row"><button type="button" class="pick">Control image…</button>
          <button type="button" class="remove" disabled>Remove</button></div>
        <input type="file" accept="image/*" hidden id="control_image-${i}">
        <img class="thumb" alt="" hidden>
        <p class="small note"></p>
        <label title="How strongly this ControlNet steers (0: off)">Scale
          <input id="controlnet_conditioning_scale-${i}" type="number" min="0" step="0.05"></label>
      </div>`);
      block.querySelector(".unit-title").textContent = `${i + 1}. ${about}`;
      const input = block.querySelector("input[type=file]");
      input.setAttribute("aria-label", `Control image for ControlNet ${i + 1} (${about})`);
      block.querySelector(".pick").setAttribute("aria-label", `Choose the control image of ControlNet ${i + 1} (${about})`);
      block.querySelector(".pick").onclick = () => input.click();
      block.querySelector(".remove").onclick = () => this.choose(i, null);
      input.onchange = async () => { if (input.files[0]) await this.choose(i, await picked(input.files[0])); input.value = ""; };
      block.querySelector("input[type=number]").value = defaultScale ?? 1;
      block.querySelector(".pick").disabled = entry.conditioning_channels !== 3;  // only float arrays feed it
      this.list.append(block);
      return { entry, block };
    });
    this.units.forEach((unit, i) => this.choose(i, picks[i] || null));
  }

  choose(i, pick) {
    const picks = this.picks.get(this.model.name);
    if (picks[i] && picks[i] !== pick) URL.revokeObjectURL(picks[i].url);
    picks[i] = pick;
    const block = this.units[i].block;
    const thumb = block.querySelector(".thumb");
    thumb.hidden = !pick;
    thumb.src = pick ? pick.url : "";
    thumb.alt = pick ? `control image ${i + 1}: ${pick.name}` : "";
    block.querySelector(".remove").disabled = !pick;
    this.describe(i);
  }

  // Under each picker: what will be sent.
  describe(i) {
    const pick = this.picks.get(this.model.name)[i], size = this.size;
    const note = this.units[i].block.querySelector(".note");
    const channels = this.units[i].entry.conditioning_channels;
    if (channels !== 3) {
      note.textContent = `Takes ${channels}-channel conditions, which a picture cannot carry: Engine.inpaint only.`;
    } else if (!pick) {
      note.textContent = this.units[i].entry.kind === "inpaint"
        ? "None: built from the picture and its mask." : "None: this ControlNet does not run.";
    } else if (size && (pick.bitmap.width !== size.width || pick.bitmap.height !== size.height)) {
      note.textContent = `${pick.bitmap.width}×${pick.bitmap.height}: stretched to the picture's ` +
        `${size.width}×${size.height} when sent.`;
    } else {
      note.textContent = `${pick.bitmap.width}×${pick.bitmap.height}.`;
    }
  }

  setPictureSize(size) {
    this.size = size;
    this.units.forEach((_, i) => this.describe(i));
  }

  // The request's ControlNet parts: [name, value, filename?] in the order the server reads them.
  async parts(size) {
    if (!this.active) return [];
    const picks = this.picks.get(this.model.name);
    const parts = [];
    if (picks.some(Boolean)) {  // none chosen: no control_image at all (an inpaint ControlNet builds its own)
      for (let i = 0; i < this.units.length; i++) {
        // an empty part keeps the order where a ControlNet has no picture
        parts.push(["control_image", picks[i] ? await atSize(picks[i], size) : new Blob([]), `control-${i}.png`]);
      }
    }
    for (let i = 0; i < this.units.length; i++) {
      const scale = $(`controlnet_conditioning_scale-${i}`).value.trim();
      if (scale !== "") parts.push(["controlnet_conditioning_scale", scale]);
    }
    for (const name of ["control_guidance_start", "control_guidance_end"]) {
      const value = $(name).value.trim();
      if (value !== "") parts.push([name, value]);
    }
    parts.push(["guess_mode", $("guess_mode").checked ? "true" : "false"]);
    return parts;
  }

  // What history keeps and "Restore settings" puts back (the pictures stay on the page).
  values() {
    if (!this.active) return {};
    const values = { control_guidance_start: $("control_guidance_start").value,
      control_guidance_end: $("control_guidance_end").value, guess_mode: $("guess_mode").checked };
    this.units.forEach((_, i) => { values[`controlnet_conditioning_scale-${i}`] = $(`controlnet_conditioning_scale-${i}`).value; });
    return values;
  }

  // The control a refused field belongs to: `control_image[1]` is the second picker, a bare name the only one.
  controlFor(name, index) {
    const unit = this.units[index ?? (this.units.length === 1 ? 0 : -1)];
    if (name === "control_image") return unit ? unit.block.querySelector(".pick") : this.list;
    if (name === "controlnet_conditioning_scale") return unit ? unit.block.querySelector("input[type=number]") : this.list;
    return null;
  }
}

export class ImagePromptSection {
  constructor() {
    this.fieldset = $("image-prompt-fields");
    this.list = $("image-prompt-list");
    this.entries = [];  // {pick, block}
    const input = $("image_prompt");
    $("add-image-prompt").onclick = () => input.click();
    input.onchange = async () => {
      for (const file of [...input.files].slice(0, MAX_IMAGE_PROMPTS - this.entries.length)) this.add(await picked(file));
      input.value = "";
    };
    this.refresh();
  }

  get active() { return !this.fieldset.hidden; }

  apply(model, inpainting) {
    this.fieldset.hidden = !inpainting || !model?.image_prompts;
  }

  add(pick, weight = 1) {
    const block = element(`<div class="unit image-prompt">
      <img class="thumb" alt="">
      <div class="row"><label>Weight <input type="number" step="any"></label>
        <button type="button" class="remove">Remove</button></div>
    </div>`);
    block.querySelector(".thumb").src = pick.url;
    block.querySelector(".thumb").alt = `image prompt: ${pick.name}`;
    block.querySelector("input").value = weight;
    const entry = { pick, block };
    block.querySelector(".remove").onclick = () => this.remove(entry);
    this.entries.push(entry);
    this.list.append(block);
    this.refresh();
  }

  remove(entry) {
    URL.revokeObjectURL(entry.pick.url);
    this.entries.splice(this.entries.indexOf(entry), 1);
    entry.block.remove();
    this.refresh();
  }

  // Ids and labels follow the order (image_prompt_weight-0 is the first picture's), and at most four.
  refresh() {
    this.entries.forEach((entry, i) => {
      const weight = entry.block.querySelector("input");
      weight.id = `image_prompt_weight-${i}`;
      weight.setAttribute("aria-label", `Weight of image prompt ${i + 1} (${entry.pick.name})`);
      entry.block.querySelector(".remove").setAttribute("aria-label", `Remove image prompt ${i + 1} (${entry.pick.name})`);
    });
    $("add-image-prompt").disabled = this.entries.length >= MAX_IMAGE_PROMPTS;
    $("image-prompt-count").textContent = `${this.entries.length} of ${MAX_IMAGE_PROMPTS}`;
  }

  parts() {
    if (!this.active || !this.entries.length) return [];
    const parts = this.entries.map((entry, i) => ["image_prompt", entry.pick.blob, `image-prompt-${i}.png`]);
    for (const entry of this.entries) parts.push(["image_prompt_weight", entry.block.querySelector("input").value.trim() || "1"]);
    const weight = $("prompt_weight").value.trim();
    if (weight !== "") parts.push(["prompt_weight", weight]);
    return parts;
  }

  values() {
    if (!this.active) return {};
    const values = { prompt_weight: $("prompt_weight").value };
    this.entries.forEach((entry, i) => { values[`image_prompt_weight-${i}`] = entry.block.querySelector("input").value; });
    return values;
  }

  controlFor(name, index) {
    const entry = this.entries[index ?? (this.entries.length === 1 ? 0 : -1)];
    if (name === "image_prompt" || name === "image_prompts") return entry ? entry.block.querySelector(".thumb") : this.list;
    if (name === "image_prompt_weight") return entry ? entry.block.querySelector("input") : this.list;
    return null;
  }
}
