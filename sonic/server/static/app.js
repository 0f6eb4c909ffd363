// The Sonic playground: streams chat or completion answers from this server and shows their speed live.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { history: [], controller: null, model: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function escapeHtml(s) {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

// Fenced code blocks become <pre><code>, `inline code` becomes <code>; everything else stays text.
function render(text) {
  const parts = text.split(/```/);
  return parts.map((part, i) => {
    if (i % 2 === 1) {
      const body = part.replace(/^[\w+-]*\n/, "");  // drop the language tag line
      return "<pre><code>" + escapeHtml(body) + "</code></pre>";
    }
    return escapeHtml(part).replace(/`([^`\n]+)`/g, "<code>$1</code>");
  }).join("");
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "message " + role;
  div.innerHTML = '<span class="role">' + role + '</span><div class="body"></div>';
  div.querySelector(".body").innerHTML = render(text);
  $("log").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function showFigures(t) {
  if (!t) return;
  $("tok-s").textContent = t.decode_tok_s.toFixed(1);
  $("ttft").textContent = t.output_tokens > 0 ? t.ttft_ms.toFixed(0) : "–";
  $("tokens").textContent = t.output_tokens;
}

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function requestBody(prompt) {
  const body = {
    model: state.model, stream: true, stream_options: { include_usage: true },
    temperature: parseFloat($("temperature").value), max_tokens: parseInt($("max-tokens").value, 10) || 256,
    top_p: parseFloat($("top-p").value) || 1,
  };
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = parseInt(seed, 10);
  if (mode() === "completion") return ["/v1/completions", { ...body, prompt }];
  const system = $("system").value.trim();
  const messages = (system ? [{ role: "system", content: system }] : []).concat(state.history);
  return ["/v1/chat/completions", { ...body, messages }];
}

// Server-Sent Events over fetch: events are separated by a blank line, payloads start with "data: ".
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

async function send(prompt) {
  if (mode() === "chat") state.history.push({ role: "user", content: prompt });
  addMessage("user", prompt);
  const answer = addMessage("assistant", "");
  const body = answer.querySelector(".body");
  let text = "", chunks = 0;
  answer.dataset.chunks = "0";
  state.controller = new AbortController();
  setBusy(true);
  showFigures({ decode_tok_s: 0, ttft_ms: 0, output_tokens: 0 });
  try {
    const [url, payload] = requestBody(prompt);
    const response = await fetch(url, { method: "POST", headers: headers(), body: JSON.stringify(payload),
                                        signal: state.controller.signal });
    if (!response.ok) {
      const err = await response.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || response.statusText);
    }
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      showFigures(chunk.timings);
      const choice = chunk.choices[0];
      if (!choice) continue;
      text += choice.delta ? (choice.delta.content || "") : (choice.text || "");
      body.innerHTML = render(text);
      answer.dataset.chunks = String(++chunks);
      if (choice.finish_reason) $("status").textContent = "finished: " + choice.finish_reason;
    }
    if (mode() === "chat") state.history.push({ role: "assistant", content: text });
  } catch (e) {
    if (e.name === "AbortError") {
      $("status").textContent = "stopped";
    } else {
      answer.classList.add("error");
      body.textContent = "Error: " + e.message;
      if (mode() === "chat") state.history.pop();
    }
  } finally {
    answer.dataset.done = "1";
    setBusy(false);
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  if (busy) $("status").textContent = "generating…";
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error ? data.error.message : response.statusText);
    state.model = data.data[0].id;
    $("model").textContent = state.model + " · context " + data.data[0].max_model_len;
  } catch (e) {
    $("model").textContent = "(" + e.message + ")";
    setTimeout(loadModel, 2000);  // still loading, or a key is needed
  }
}

$("ask").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt || $("send").disabled) return;
  $("prompt").value = "";
  send(prompt);
});
$("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("ask").requestSubmit(); }
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("clear").addEventListener("click", () => { state.history = []; $("log").innerHTML = ""; $("status").textContent = ""; });
$("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; });
$("api-key").value = localStorage.getItem("sonic-api-key") || "";
$("api-key").addEventListener("change", () => { localStorage.setItem("sonic-api-key", $("api-key").value); loadModel(); });
loadModel();
