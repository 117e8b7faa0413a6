// Server calls: the bearer token, errors as the server words them, and a job's events.

const $ = (id) => document.getElementById(id);

function headers() {
  const token = $("token").value.trim();
  if (token) localStorage.setItem("inpaintrt-token", token);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export async function api(path, options = {}) {
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
