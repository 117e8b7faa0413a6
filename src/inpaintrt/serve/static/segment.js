// Mask makers on the page (POST /v1/segment): the Click tool where the server has a Segment Anything engine
// (left click adds the object under it, right click takes it away; each click asks again with every click so
// far), and "Mask from text" where it has a CLIPSeg engine. Each answer goes into the editor's mask canvas, the
// one the brush paints and /v1/inpaint receives, so it can be painted over afterwards. The clicks belong to one
// object, added to the mask there was when its first click came; painting, Clear, Undo, a new picture or
// "New object" end it, and the next click starts the next object on top of the mask as it is then.
import { api } from "./api.js";

const $ = (id) => document.getElementById(id);

export class MaskMakers {
  constructor(editor, picture, setStatus) {
    Object.assign(this, { editor, picture, setStatus });  // picture(): the input's Blob
    this.clicker = null;   // the Segment Anything engine's /v1/info entry, or null
    this.phraser = null;   // the CLIPSeg engine's
    this.active = false;   // a field-errors section: shown
    this.points = [];      // the object's clicks in picture pixels, and their labels (1 adds, 0 takes away)
    this.labels = [];
    this.base = null;      // the mask before the object's first click (ImageData)
    this.asked = 0;        // requests sent; only the latest one's answer is drawn
    this.shown = 0;        // clicks the mask on the canvas answers, and masks drawn so far (the tests wait on them)
    this.made = 0;
    this.pending = 0;      // requests on their way
    editor.onClick = (pixel, positive) => this.click(pixel, positive);
    editor.onEdit = () => this.endObject();
    $("new-object").onclick = () => { this.endObject(); this.setStatus("The next click starts a new object."); };
    $("mask-from-text").onclick = () => this.fromText();
    $("segment-text").addEventListener("keydown", (e) => {  // Enter asks for the mask, not the form's run
      if (e.key === "Enter") { e.preventDefault(); this.fromText(); }
    });
  }

  // /v1/info's models: the first engine of each kind of mask maker is the one the page uses.
  apply(models) {
    const makers = models.filter((model) => model.kind === "segmenter");
    this.clicker = makers.find((model) => model.clicks) || null;
    this.phraser = makers.find((model) => model.phrases) || null;
    this.active = makers.length > 0;
    $("segment-fields").hidden = !this.active;
    $("tool-click").hidden = $("click-row").hidden = !this.clicker;
    $("text-row").hidden = !this.phraser;
  }

  controlFor(name) {  // a refusal of /v1/segment next to its control
    return { text: $("segment-text"), threshold: $("segment-threshold") }[name] || null;
  }

  endObject() {
    this.points = [];
    this.labels = [];
    this.base = null;
    this.shown = 0;
    this.asked += 1;  // an answer still on its way belongs to the object that ended
    this.count();
  }

  count() {  // the clicks in words beside "New object", and as dots on the picture
    this.editor.markers = this.points.map(([x, y], i) => [x, y, this.labels[i] === 1]);
    this.editor.render();
    const n = this.points.length, negative = this.labels.filter((label) => label === 0).length;
    $("click-count").textContent = n ? `${n} click${n > 1 ? "s" : ""} (${negative} taking away)` : "";
  }

  async click(pixel, positive) {
    if (!this.clicker) return;
    const first = !this.points.length;
    if (first) this.base = this.editor.snapshot();
    this.points.push(pixel);
    this.labels.push(positive ? 1 : 0);
    this.count();
    const n = this.points.length;
    const form = this.form(this.clicker);
    form.append("points", JSON.stringify(this.points));
    form.append("labels", JSON.stringify(this.labels));
    const found = await this.ask(form, `${n} click${n > 1 ? "s" : ""}`);
    if (!found) return;
    this.editor.putMask(joined(this.base, found.mask), first || this.shown === 0);
    this.shown = n;
    this.made += 1;
    this.setStatus(`Mask from ${n} click${n > 1 ? "s" : ""} (score ${found.score.toFixed(2)}). Right click takes ` +
      "away; the brush edits it.");
  }

  async fromText() {
    const text = $("segment-text").value.trim();
    if (!this.phraser || !this.editor.picture) return this.setStatus("Load a picture first.", true);
    if (!text) return this.setStatus("Say what to mask, e.g. “the sky”.", true);
    this.endObject();
    const form = this.form(this.phraser);
    form.append("text", text);
    const threshold = $("segment-threshold").value.trim();
    if (threshold) form.append("threshold", threshold);
    const found = await this.ask(form, `“${text}”`);
    if (!found) return;
    this.editor.putMask(joined(this.editor.snapshot(), found.mask));
    this.made += 1;
    this.setStatus(`Mask from “${text}” added (score ${found.score.toFixed(2)}); Undo takes it back.`);
  }

  form(model) {
    const form = new FormData();
    form.append("image", this.picture(), "image.png");
    form.append("model", model.name);
    return form;
  }

  // The best mask as ImageData and its score, or null (a later request or edit made it stale, or a refusal).
  async ask(form, what) {
    const asked = ++this.asked;
    this.pending += 1;
    this.setStatus(`Making the mask from ${what}…`);
    try {
      const response = await api("/v1/segment", { method: "POST", body: form });
      const score = JSON.parse(response.headers.get("X-Scores") || "[0]")[+response.headers.get("X-Mask-Index") || 0];
      const mask = await pixels(await response.blob(), this.editor.width, this.editor.height);
      return asked === this.asked ? { mask, score } : null;
    } catch (err) {
      if (asked !== this.asked) return null;
      this.points.pop();  // a refused click is not kept (text: nothing was kept)
      this.labels.pop();
      this.count();
      this.setStatus(`Mask maker: ${err.message}`, true, err);
      return null;
    } finally {
      this.pending -= 1;
    }
  }
}

async function pixels(blob, width, height) {
  const image = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const g = canvas.getContext("2d", { willReadFrequently: true });
  g.drawImage(image, 0, 0, width, height);
  return g.getImageData(0, 0, width, height);
}

// The mask painted before (its opaque pixels) with the mask maker's white pixels added, as the brush paints.
function joined(base, made) {
  const out = new ImageData(made.width, made.height);
  for (let i = 0; i < out.data.length; i += 4) {
    const on = made.data[i] >= 128 || (base && base.data[i + 3] >= 128);
    out.data.fill(on ? 255 : 0, i, i + 4);
  }
  return out;
}
