// The form: what a run sends, and what history saves and restores.

const $ = (id) => document.getElementById(id);

export const SIDES = ["left", "right", "top", "bottom"];
export const outpainting = () => $("mode").value === "outpaint";
export const erasing = () => $("mode").value === "erase";  // an eraser model: inpaint requests, no prompt
export const sides = () => Object.fromEntries(SIDES.map((side) => [side, Math.max(0, Math.round(+$(side).value || 0))]));

const COMMON = ["model", "prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "strength", "seed", "scheduler",
  "width", "height", "mask_mode", "masked_content"];
const OUTPAINT = [...SIDES, "overlap", "fill"];
const INPAINT = ["padding_mask_crop", "blur_factor", "mask_grow", "mask_shrink"];
const ERASE = ["hd_strategy", "hd_strategy_crop_margin", "hd_strategy_crop_trigger_size", "hd_strategy_resize_limit"];
const CHECKS = ["keep_unmasked", "keep_input_size"];
const SAVED = ["mode", ...COMMON, ...OUTPAINT, ...INPAINT, ...ERASE, "batch_count"];

// A field the page hides is not sent: the model's only engine, what the mode or the model's family lacks.
const shown = (name) => !$(name).closest("[hidden]");

// The request's text fields; seedOffset: the how-manieth run of a batch (seed + offset when a seed is given).
export function fields(seedOffset = 0) {
  const form = new FormData();
  const atPictureSize = !outpainting() && shown("keep_input_size") && $("keep_input_size").checked;  // the server takes the size from it
  for (const name of [...COMMON, ...(outpainting() ? OUTPAINT : [...INPAINT, ...ERASE])]) {
    const value = $(name).value.trim();
    if (value === "" || !shown(name) || (atPictureSize && (name === "width" || name === "height"))) continue;
    form.append(name, name === "seed" && /^\d+$/.test(value) ? (BigInt(value) + BigInt(seedOffset)).toString() : value);
  }
  if (!outpainting()) for (const name of CHECKS.filter(shown)) form.append(name, $(name).checked ? "true" : "false");
  return form;
}

export function batchCount() {
  if (!shown("batch_count")) return 1;  // an eraser gives the same picture every run
  return Math.max(1, Math.min(16, Math.round(+$("batch_count").value || 1)));
}

export function formValues() {
  const values = Object.fromEntries(SAVED.map((name) => [name, $(name).value]));
  for (const name of CHECKS) values[name] = $(name).checked;
  return values;
}

export function restoreValues(values) {
  for (const [name, value] of Object.entries(values || {})) {
    const element = $(name);
    if (!element) continue;
    if (element.type === "checkbox") element.checked = value;
    else element.value = value;
  }
}
