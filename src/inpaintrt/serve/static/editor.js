// The mask editor: a picture with a mask painted over it at the picture's own resolution.
// The mask lives in an offscreen canvas (opaque white = repaint); a red copy of it ("tint") is what
// the view shows. Undo/redo keep whole-mask snapshots, so every tool (stroke, clear, invert, mask
// file) undoes the same way. The click tool (segment.js) paints nothing itself: it hands each click to
// onClick and puts the mask maker's answer into the same mask canvas (putMask).

const UNDO_LIMIT = 40;
const TINT = "rgba(255, 48, 48, 1)";

export class MaskEditor {
  constructor(canvas, onChange) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onChange = onChange || (() => {});
    this.onEdit = () => {};         // the user changed the mask (stroke, clear, invert, file, undo, new picture)
    this.onClick = null;            // the click tool: (pixel [x, y], positive) of a left or right click
    this.picture = null;            // an ImageBitmap or HTMLImageElement
    this.mask = document.createElement("canvas");
    this.tint = document.createElement("canvas");
    this.tool = "brush";            // brush | eraser | pan | click
    this.size = 24;                 // brush diameter in picture pixels
    this.view = { scale: 1, x: 0, y: 0 };
    this.undoStack = [];
    this.redoStack = [];
    this.stroke = null;             // {last: [x, y]} while painting
    this.panFrom = null;
    this.spaceHeld = false;
    this.extension = null;          // outpaint preview: {left, right, top, bottom} pixels shown around the picture
    this.overlay = null;            // a result or live preview shown over the picture: {image, x, y, w, h}
    this.showBefore = false;        // held "Before": the picture and mask under the overlay
    this.markers = [];              // the click tool's points: [x, y, positive] in picture pixels
    new ResizeObserver(() => this.render()).observe(canvas);
    this.bindPointer();
  }

  get width() { return this.mask.width; }
  get height() { return this.mask.height; }

  setPicture(picture, keepMask = false) {
    const sameSize = this.picture && picture.width === this.width && picture.height === this.height;
    const previous = keepMask && sameSize ? this.snapshot() : null;
    this.picture = picture;
    this.overlay = null;
    for (const c of [this.mask, this.tint]) { c.width = picture.width; c.height = picture.height; }
    this.undoStack = [];
    this.redoStack = [];
    if (previous) this.restore(previous);
    this.fit();
    this.onEdit();
    this.onChange();
  }

  // --- painting -------------------------------------------------------------------------------

  paintSegment(from, to) {
    for (const [c, colour] of [[this.mask, "#fff"], [this.tint, TINT]]) {
      const g = c.getContext("2d");
      g.globalCompositeOperation = this.tool === "eraser" ? "destination-out" : "source-over";
      g.strokeStyle = g.fillStyle = colour;
      g.lineWidth = this.size;
      g.lineCap = g.lineJoin = "round";
      g.beginPath();
      g.moveTo(from[0], from[1]);
      g.lineTo(to[0], to[1]);
      g.stroke();
      g.globalCompositeOperation = "source-over";
    }
    this.render();
  }

  bindPointer() {
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => {
      if (!this.picture) return;
      c.setPointerCapture(e.pointerId);
      if (e.button === 1 || this.tool === "pan" || this.spaceHeld) {
        this.panFrom = [e.clientX, e.clientY, this.view.x, this.view.y];
        return;
      }
      if (this.tool === "click") return this.clicked(e);
      if (e.button !== 0) return;
      if (this.overlay) this.setOverlay(null);  // painting edits the input: show it
      this.remember();
      const p = this.toPicture(e);
      this.stroke = { last: p };
      this.paintSegment(p, p);
    });
    c.addEventListener("pointermove", (e) => {
      if (this.panFrom) {
        const [cx, cy, x, y] = this.panFrom;
        this.view.x = x + (e.clientX - cx);
        this.view.y = y + (e.clientY - cy);
        this.render();
      } else if (this.stroke) {
        const p = this.toPicture(e);
        this.paintSegment(this.stroke.last, p);
        this.stroke.last = p;
      }
    });
    const end = () => {
      if (this.stroke) this.onChange();
      this.stroke = null;
      this.panFrom = null;
    };
    c.addEventListener("contextmenu", (e) => { if (this.tool === "click") e.preventDefault(); });  // right click: a point
    c.addEventListener("pointerup", end);
    c.addEventListener("pointercancel", end);
    c.addEventListener("wheel", (e) => {
      if (!this.picture) return;
      e.preventDefault();
      const r = c.getBoundingClientRect();
      this.zoomAt(e.deltaY < 0 ? 1.15 : 1 / 1.15, e.clientX - r.left, e.clientY - r.top);
    }, { passive: false });
  }

  // A left (positive) or right (negative) click on the picture: the pixel under it, in picture pixels.
  clicked(e) {
    if ((e.button !== 0 && e.button !== 2) || !this.onClick) return;
    const [x, y] = this.toPicture(e).map(Math.floor);
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return;  // beside the picture: no point
    if (this.overlay) this.setOverlay(null);  // the mask is made on the input: show it
    this.onClick([x, y], e.button === 0);
  }

  toPicture(e) {
    const r = this.canvas.getBoundingClientRect();
    return [(e.clientX - r.left - this.view.x) / this.view.scale, (e.clientY - r.top - this.view.y) / this.view.scale];
  }

  // --- undo, clear, invert, mask files ---------------------------------------------------------

  snapshot() { return this.mask.getContext("2d").getImageData(0, 0, this.width, this.height); }

  remember(quiet = false) {  // quiet: the click tool's own change, not the user's edit
    this.undoStack.push(this.snapshot());
    if (this.undoStack.length > UNDO_LIMIT) this.undoStack.shift();
    this.redoStack = [];
    if (!quiet) this.onEdit();
  }

  restore(data) {
    this.mask.getContext("2d").putImageData(data, 0, 0);
    this.refreshTint();
    this.render();
    this.onChange();
  }

  undo() { if (this.undoStack.length) { this.onEdit(); this.redoStack.push(this.snapshot()); this.restore(this.undoStack.pop()); } }
  redo() { if (this.redoStack.length) { this.onEdit(); this.undoStack.push(this.snapshot()); this.restore(this.redoStack.pop()); } }

  // A mask maker's mask (ImageData at the picture's size, opaque white inside); undoable: a new undo entry
  // unless it refines the one the click tool made last.
  putMask(data, newEntry = true) {
    if (newEntry) this.remember(true);
    this.restore(data);
  }

  clear() {
    if (!this.picture) return;
    this.remember();
    this.mask.getContext("2d").clearRect(0, 0, this.width, this.height);
    this.restore(this.snapshot());
  }

  invert() {
    if (!this.picture) return;
    this.remember();
    const data = this.snapshot();
    for (let i = 0; i < data.data.length; i += 4) {
      const on = data.data[i + 3] < 128;
      data.data.fill(on ? 255 : 0, i, i + 4);
    }
    this.restore(data);
  }

  // A mask file (white = repaint), stretched to the picture's size if it differs.
  loadMask(image) {
    this.remember();
    const g = this.mask.getContext("2d");
    g.clearRect(0, 0, this.width, this.height);
    g.drawImage(image, 0, 0, this.width, this.height);
    const data = this.snapshot();
    for (let i = 0; i < data.data.length; i += 4) {
      const d = data.data;
      const light = (0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]) * (d[i + 3] / 255);
      d.fill(light >= 128 ? 255 : 0, i, i + 4);
    }
    this.restore(data);
    return image.width !== this.width || image.height !== this.height;
  }

  refreshTint() {
    const g = this.tint.getContext("2d");
    g.clearRect(0, 0, this.width, this.height);
    g.drawImage(this.mask, 0, 0);
    g.globalCompositeOperation = "source-in";
    g.fillStyle = TINT;
    g.fillRect(0, 0, this.width, this.height);
    g.globalCompositeOperation = "source-over";
  }

  hasMask() {
    const d = this.snapshot().data;
    for (let i = 3; i < d.length; i += 4) if (d[i] >= 128) return true;
    return false;
  }

  // The mask as the server wants it: black and white, binarized where the brush edge is soft,
  // so what is sent is exactly what is shown as painted.
  maskBlob() {
    const out = document.createElement("canvas");
    out.width = this.width;
    out.height = this.height;
    const data = this.snapshot();
    for (let i = 0; i < data.data.length; i += 4) {
      const v = data.data[i + 3] >= 128 ? 255 : 0;
      data.data[i] = data.data[i + 1] = data.data[i + 2] = v;
      data.data[i + 3] = 255;
    }
    out.getContext("2d").putImageData(data, 0, 0);
    return new Promise((resolve) => out.toBlob(resolve, "image/png"));
  }

  // --- view: zoom and pan ----------------------------------------------------------------------

  fit() {
    const w = this.canvas.clientWidth || 1, h = this.canvas.clientHeight || 1;
    if (!this.picture) return;
    const e = this.extension || { left: 0, right: 0, top: 0, bottom: 0 };
    const fw = this.width + e.left + e.right, fh = this.height + e.top + e.bottom;
    const scale = Math.min(w / fw, h / fh) * 0.95;
    this.view = { scale, x: (w - fw * scale) / 2 + e.left * scale, y: (h - fh * scale) / 2 + e.top * scale };
    this.render();
  }

  setExtension(extension) {  // null, or the pixels outpaint will add on each side
    this.extension = extension;
    this.fit();
  }

  // image null, or drawn in picture pixels over the box at (x, y) of w x h (a result may be larger than the
  // picture when outpainting, or another size when not kept at the picture's size)
  setOverlay(image, box = null) {
    this.overlay = image ? { image, ...(box || { x: 0, y: 0, w: this.width, h: this.height }) } : null;
    this.render();
    this.onChange();
  }

  zoomAt(factor, cx, cy) {
    const v = this.view;
    const scale = Math.min(64, Math.max(0.05, v.scale * factor));
    v.x = cx - (cx - v.x) * (scale / v.scale);
    v.y = cy - (cy - v.y) * (scale / v.scale);
    v.scale = scale;
    this.render();
  }

  zoom(factor) { this.zoomAt(factor, this.canvas.clientWidth / 2, this.canvas.clientHeight / 2); }

  render() {
    const c = this.canvas, dpr = window.devicePixelRatio || 1;
    const w = Math.round(c.clientWidth * dpr), h = Math.round(c.clientHeight * dpr);
    if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    const g = this.ctx;
    g.setTransform(1, 0, 0, 1, 0, 0);
    g.clearRect(0, 0, w, h);
    if (!this.picture) return;
    const v = this.view;
    g.setTransform(v.scale * dpr, 0, 0, v.scale * dpr, v.x * dpr, v.y * dpr);
    const o = this.overlay;
    if (o && !this.showBefore) {  // a result (or a preview, smoothed up from latent size) replaces the view
      g.imageSmoothingEnabled = v.scale < 1 || o.image.width < o.w;
      g.drawImage(o.image, o.x, o.y, o.w, o.h);
      if (this.onView) this.onView(v.scale);
      return;
    }
    g.imageSmoothingEnabled = v.scale < 1;
    g.drawImage(this.picture, 0, 0);
    g.globalAlpha = 0.5;
    g.drawImage(this.tint, 0, 0);
    g.globalAlpha = 1;
    for (const [x, y, positive] of this.markers) {  // where the clicks were: green adds, blue takes away
      g.beginPath();
      g.arc(x + 0.5, y + 0.5, 5 / v.scale, 0, 2 * Math.PI);
      g.fillStyle = positive ? "#3ddc84" : "#4f8cff";
      g.fill();
      g.lineWidth = 1.5 / v.scale;
      g.strokeStyle = "#000";
      g.stroke();
    }
    if (this.extension) {  // the area outpaint adds: tinted, with a dashed border
      const { left, right, top, bottom } = this.extension;
      const fw = this.width + left + right, fh = this.height + top + bottom;
      g.fillStyle = "rgba(79, 140, 255, 0.22)";
      g.beginPath();
      g.rect(-left, -top, fw, fh);
      g.rect(0, 0, this.width, this.height);
      g.fill("evenodd");
      g.setLineDash([6 / v.scale, 4 / v.scale]);
      g.lineWidth = 1.5 / v.scale;
      g.strokeStyle = "#4f8cff";
      g.strokeRect(-left, -top, fw, fh);
      g.setLineDash([]);
    }
    if (this.onView) this.onView(v.scale);
  }
}
