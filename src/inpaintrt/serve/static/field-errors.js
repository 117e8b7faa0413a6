// A refusal's field and fix shown next to the control it names (the status line keeps the whole message).
// Fields are the server's: `steps`-like names are the form's ids, `control_image[1]` the second
// ControlNet's picker, `scheduler_options.x` the scheduler; the sections map their own names.

const $ = (id) => document.getElementById(id);

// "name", "name[2]" or "name.2" -> ["name", 2]; "scheduler_options.use_karras_sigmas" -> ["scheduler_options", null]
export function parseField(field) {
  const match = /^([a-z_]+)(?:\[(\d+)\]|\.(\d+))?/.exec(field || "");
  if (!match) return [null, null];
  const index = match[2] ?? match[3];
  return [match[1], index === undefined ? null : +index];
}

const ALIASES = { image: "image-file", mask_image: "mask-file", generator: "seed", scheduler_options: "scheduler" };

export class FieldErrors {
  constructor(sections) {
    this.sections = sections;  // each has controlFor(name, index) -> element or null
    this.shown = [];
  }

  // message: the server's, which may say which of several it was (`control_image[1] is 200x72 ...`)
  controlFor(field, message = "") {
    let [name, index] = parseField(field);
    if (!name) return null;
    const named = index === null && new RegExp(`\\b${name}\\[(\\d+)\\]`).exec(message);
    if (named) index = +named[1];
    for (const section of this.sections) {
      const found = section.active && section.controlFor(name, index);
      if (found) return found;
    }
    let element = $(name) || $(ALIASES[name] || "");
    if (element?.type === "file") element = element.closest("label");  // its visible button
    return element && !element.closest("[hidden]") ? element : null;
  }

  // Shows `field: fix` under the control; returns whether a control was found.
  show(field, fix, message = "") {
    const control = this.controlFor(field, message);
    if (!control) return false;
    const note = document.createElement("p");
    note.className = "field-error";
    note.id = `error-${this.shown.length}`;
    note.dataset.field = field;
    note.setAttribute("role", "alert");
    note.textContent = `${field}: ${fix}`;
    const anchor = control.closest("label") || control;
    anchor.after(note);
    control.setAttribute("aria-invalid", "true");
    control.setAttribute("aria-describedby", note.id);
    control.addEventListener("input", () => this.clear(), { once: true });
    note.scrollIntoView({ block: "nearest" });
    this.shown.push({ note, control });
    return true;
  }

  clear() {
    for (const { note, control } of this.shown) {
      note.remove();
      control.removeAttribute("aria-invalid");
      control.removeAttribute("aria-describedby");
    }
    this.shown = [];
  }
}
