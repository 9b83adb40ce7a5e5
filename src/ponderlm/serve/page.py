"""The page at `/`: type a prompt, watch the completion stream in, each token coloured by its steps.

Same look as `ponderlm generate --html` (`inference/render.py`: its colour ramp, token spans, legend);
here a token is coloured by the latent steps executed to produce it (`ponder_steps`), which the
server knows the moment the token is sampled.
"""

from __future__ import annotations

import html
import json
from typing import Any

from ponderlm.inference.render import DEPTH_VIEW_CSS, HTML_RAMP, html_legend


def page_html(model_name: str, max_steps: int, needs_key: bool = False, knobs: dict[str, Any] | None = None) -> str:
    """The page; `needs_key` (the server runs with --api-key) shows a field for the key, sent as a Bearer token;
    `knobs` (name -> declaration: the served method's inference knobs) gives a field each, sent when filled."""
    # The page's script colours streamed tokens with render.py's mapping of a step count onto the ramp, written again
    # in JavaScript (`level`).
    fields = " ".join(f'{html.escape(name)} <input id="{html.escape(name)}" type="text" placeholder="default" '
                      f'data-knob="{getattr(d.type, "__name__", "str")}" title="{html.escape(d.help)}">'
                      for name, d in (knobs or {}).items())
    return _PAGE.replace("__TITLE__", html.escape(model_name)).replace("__LEGEND__", html_legend(max_steps)) \
        .replace("__RAMP__", json.dumps(list(HTML_RAMP))).replace("__K__", str(max_steps)) \
        .replace("__MODEL__", json.dumps(model_name)).replace("__KNOBS__", fields) \
        .replace("__KEY_STYLE__", "" if needs_key else "display:none")


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ponderlm serve: __TITLE__</title>
<style>
""" + DEPTH_VIEW_CSS + """
.text { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; font-size: 15px;
  min-height: 4em; border: 1px solid #ddd; border-radius: 4px; padding: .5rem; }
textarea { width: 100%; font: 15px ui-monospace, monospace; box-sizing: border-box; }
.controls { margin: .5rem 0; font-size: 14px; }
.controls input { width: 5em; }
</style>
</head>
<body>
<h2>ponderlm serve: __TITLE__</h2>
<textarea id="prompt" rows="3" placeholder="Type a prompt">Once upon a time</textarea>
<div class="controls">
max tokens <input id="max_tokens" type="number" value="64" min="1">
temperature <input id="temperature" type="number" value="0" min="0" max="2" step="0.1">
__KNOBS__
<span style="__KEY_STYLE__">API key <input id="api_key" type="password" autocomplete="off"></span>
<button id="go">Generate</button> <button id="stop" disabled>Stop</button>
</div>
<div class="legend">latent steps executed to produce each token: __LEGEND__ &nbsp; (dotted underline: prompt;
<span id="avg">average -</span>; hover a token for its count)</div>
<div class="text" id="out"></div>
<p class="meta" id="status"></p>
<script>
const RAMP = __RAMP__, K = __K__, MODEL = __MODEL__;
function level(s) { return K <= 0 ? 0 : Math.min(RAMP.length - 1, Math.max(0, Math.round(s / K * (RAMP.length - 1)))); }
const out = document.getElementById("out"), statusEl = document.getElementById("status");
let controller = null, total = 0, count = 0;
function span(text, steps) {
  const el = document.createElement("span");
  el.textContent = text;
  if (steps === null) { el.className = "tok prompt"; return el; }
  const lv = level(steps);
  el.className = "tok gen";
  el.style.background = RAMP[lv];
  el.style.color = lv >= RAMP.length - 2 ? "#fff" : "#000";
  const label = steps + " additional step(s)";
  el.dataset.steps = label; el.title = label;
  return el;
}
async function run() {
  out.textContent = ""; total = 0; count = 0;
  const prompt = document.getElementById("prompt").value;
  out.appendChild(span(prompt, null));
  const body = { model: MODEL, prompt: prompt, stream: true,
    max_tokens: parseInt(document.getElementById("max_tokens").value, 10),
    temperature: parseFloat(document.getElementById("temperature").value) };
  for (const el of document.querySelectorAll("[data-knob]")) {  // the served method's knobs, typed as declared
    const v = el.value.trim(), kind = el.dataset.knob;
    if (v) body[el.id] = kind === "float" ? parseFloat(v) : kind === "int" ? parseInt(v, 10)
      : kind === "bool" ? v === "true" : v;
  }
  controller = new AbortController();
  document.getElementById("stop").disabled = false;
  statusEl.textContent = "streaming...";
  try {
    const headers = { "Content-Type": "application/json" };
    const key = document.getElementById("api_key").value;
    if (key) headers["Authorization"] = "Bearer " + key;
    const resp = await fetch("/v1/completions", { method: "POST", headers: headers,
      body: JSON.stringify(body), signal: controller.signal });
    if (!resp.ok) { const err = await resp.json(); statusEl.textContent = "error: " + err.error.message; return; }
    const reader = resp.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\\n\\n")) >= 0) {
        const line = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const chunk = JSON.parse(line.slice(6));
        if (chunk.error) { statusEl.textContent = "error: " + chunk.error.message; continue; }
        for (const c of chunk.choices) {
          const steps = c.ponder_steps;
          for (const s of steps) { total += s; count += 1; }
          // A chunk carries one token; its text may be empty (held back) or finish a multi-byte character.
          if (c.text) out.appendChild(span(c.text, steps.length ? steps[steps.length - 1] : 0));
          if (c.finish_reason) statusEl.textContent = "finished: " + c.finish_reason;
        }
        document.getElementById("avg").textContent = "average " + (count ? (total / count).toFixed(2) : "-") +
          " over " + count + " generated tokens";
      }
    }
  } catch (e) {
    statusEl.textContent = e.name === "AbortError" ? "stopped" : "error: " + e;
  } finally {
    document.getElementById("stop").disabled = true;
  }
}
document.getElementById("go").onclick = run;
document.getElementById("stop").onclick = () => controller && controller.abort();
// /?prompt=...&max_tokens=...&autorun=1 starts a generation on load (links, headless screenshots).
const query = new URLSearchParams(location.search);
for (const key of ["prompt", "max_tokens", "temperature",
                   ...Array.from(document.querySelectorAll("[data-knob]"), el => el.id)]) {
  if (query.has(key)) document.getElementById(key).value = query.get(key);
}
if (query.get("autorun")) run();
</script>
</body>
</html>
"""
