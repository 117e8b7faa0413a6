// Server calls: the bearer token, errors as the server words them, and a job's events.

const $ = (id) => document.getElementById(id);

function headers() {
  const token = $("token").value.trim();
  if (token) localStorage.setItem("inpaintrt-token", token);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// A refusal: the server's field and fix travel with the message, so the page can point at the control.
export class ApiError extends Error {
  constructor(message, status, field = null, fix = null) {
    super(message);
    Object.assign(this, { status, field, fix });
  }
}

export async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok) {
    let error = new ApiError(`${response.status} ${response.statusText}`, response.status);
    try {
      const e = (await response.json()).error;
      error = new ApiError(`${e.field}: ${e.message} — ${e.fix}`, response.status, e.field, e.fix);
    } catch (_) { /* not our JSON */ }
    throw error;
  }
  return response;
}

// Server-sent events read through fetch (EventSource cannot send the Authorization header).
// Calls onEvent with every event's data; returns the last one (done, failed or cancelled).
export async function follow(id, onEvent, previews = false) {
  const response = await api(`/v1/jobs/${id}/events${previews ? "?previews=1" : ""}`);
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
      onEvent(last);
    }
  }
}
