// Results kept across reloads: IndexedDB holds each run's input picture, result and form fields,
// the newest HISTORY_LIMIT of them. Without IndexedDB (some private windows) they live in memory.

export const HISTORY_LIMIT = 50;
const DB_NAME = "inpaintrt", STORE = "results";

function openDb() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "id", autoIncrement: true });
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function finished(request) {  // a request or a transaction, as a promise
  return new Promise((resolve, reject) => {
    if ("oncomplete" in request) request.oncomplete = () => resolve();
    else request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

export class History {
  constructor(list, onPick) {
    this.list = list;           // the <ol>
    this.onPick = onPick;       // called with an entry when its thumbnail is clicked
    this.entries = [];          // oldest first
    this.db = null;
    this.nextId = 1;
  }

  async load() {
    try {
      this.db = await openDb();
      this.entries = await finished(this.db.transaction(STORE).objectStore(STORE).getAll());
    } catch (e) {
      console.warn("history stays in memory:", e);
    }
    this.nextId = Math.max(0, ...this.entries.map((e) => e.id)) + 1;
    this.render();
  }

  // entry: {task, model, seed, params, sides, input (Blob), result (Blob), width, height, job, time}
  async add(entry) {
    const stored = { ...entry };
    delete stored.url;
    try {
      if (!this.db) throw new Error("no IndexedDB");
      const tx = this.db.transaction(STORE, "readwrite");
      const committed = finished(tx);
      entry.id = await finished(tx.objectStore(STORE).add(stored));
      await committed;
    } catch (e) {  // storage full or refused: this visit still lists it
      if (this.db) console.warn("result not saved:", e);
      entry.id = Math.max(this.nextId, ...this.entries.map((old) => old.id + 1));
    }
    this.nextId = entry.id + 1;
    this.entries.push(entry);
    const extra = this.entries.splice(0, Math.max(0, this.entries.length - HISTORY_LIMIT));
    if (this.db && extra.length) {
      const tx = this.db.transaction(STORE, "readwrite");
      for (const old of extra) tx.objectStore(STORE).delete(old.id);
      await finished(tx);
    }
    for (const old of extra) if (old.url) URL.revokeObjectURL(old.url);
    this.render();
  }

  async clear() {
    if (this.db) {
      const tx = this.db.transaction(STORE, "readwrite");
      tx.objectStore(STORE).clear();
      await finished(tx);
    }
    for (const old of this.entries) if (old.url) URL.revokeObjectURL(old.url);
    this.entries = [];
    this.render();
  }

  url(entry) { return entry.url || (entry.url = URL.createObjectURL(entry.result)); }

  mark(current) {
    for (const item of this.list.children) item.classList.toggle("current", +item.dataset.id === current?.id);
  }

  render() {
    this.list.replaceChildren();
    for (const entry of [...this.entries].reverse()) {
      const item = document.createElement("li");
      item.dataset.id = entry.id;
      const model = entry.model ? `${entry.model}, ` : "";
      const erased = entry.task === "erase";  // an eraser uses no seed and no prompt
      item.title = erased ? `${model}erased — click to show`
        : `${model}seed ${entry.seed}: ${entry.params?.prompt || "(no prompt)"} — click to show`;
      item.innerHTML = "<img alt=\"\"><span></span>";
      item.querySelector("img").src = this.url(entry);
      item.querySelector("span").textContent = `#${entry.id} ${entry.task}${erased ? "" : ` seed ${entry.seed}`}`;
      item.onclick = () => this.onPick(entry);
      this.list.append(item);
    }
  }
}
