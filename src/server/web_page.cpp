// The page `stdit serve` shows at "/": a prompt form, the job list with live progress (polling
// /v1/videos every second), a player for finished videos and their preview grid. Plain HTML/JS.
namespace stdit::server {

extern const char* const kWebPage;
const char* const kWebPage = R"HTML(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>stdit</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
  form { display: grid; grid-template-columns: 10em 1fr; gap: .4em .8em; margin-bottom: 1.5em; }
  input, select { font: inherit; padding: .2em; }
  #prompt { width: 100%; }
  table { border-collapse: collapse; width: 100%; }
  td, th { border-bottom: 1px solid #ddd; padding: .3em .5em; text-align: left; vertical-align: top; }
  progress { width: 8em; }
  #player video, #player img { max-width: 100%; display: block; margin: .5em 0; }
  .error { color: #b00; }
</style>
</head>
<body>
<h1>stdit</h1>
<form id="form">
  <label for="prompt">Prompt</label>
  <input id="prompt" name="prompt" value="a red ball moving to the right" required>
  <label for="seconds">Length</label>
  <select id="seconds" name="seconds">
    <option value="">the engine's default</option><option>2</option><option>4</option><option>8</option>
  </select>
  <label for="size">Size (WxH)</label>
  <input id="size" name="size" placeholder="the engine's default, e.g. 128x128">
  <label for="steps">Steps</label>
  <input id="steps" name="steps" type="number" min="1" max="200" placeholder="default">
  <label for="seed">Seed</label>
  <input id="seed" name="seed" type="number" placeholder="42">
  <label for="key">API key</label>
  <input id="key" name="key" type="password" placeholder="only if the server asks for one">
  <span></span><button id="submit" type="submit">Generate</button>
</form>
<p id="message" class="error"></p>
<table>
  <thead><tr><th>Prompt</th><th>Status</th><th>Progress</th><th>Size</th><th></th></tr></thead>
  <tbody id="jobs"></tbody>
</table>
<div id="player"></div>
<script>
const $ = (id) => document.getElementById(id);
$("key").value = localStorage.getItem("stdit_key") || "";
function headers() {
  const h = { "Content-Type": "application/json" };
  const k = $("key").value.trim();
  if (k) h["Authorization"] = "Bearer " + k;
  return h;
}
async function api(path, options = {}) {
  const r = await fetch(path, { ...options, headers: headers() });
  const body = r.headers.get("Content-Type")?.includes("json") ? await r.json() : null;
  if (!r.ok) throw new Error(body?.error?.message || ("HTTP " + r.status));
  return body;
}
function mediaUrl(id, variant) { return "/v1/videos/" + id + "/content" + (variant ? "?variant=" + variant : ""); }
async function blobUrl(path) {
  const r = await fetch(path, { headers: headers() });
  if (!r.ok) throw new Error("HTTP " + r.status);
  return URL.createObjectURL(await r.blob());
}
async function play(job) {
  const p = $("player");
  p.innerHTML = "<h2></h2>";
  p.querySelector("h2").textContent = job.prompt;
  const video = document.createElement("video");
  video.id = "video-" + job.id; video.controls = true; video.loop = true; video.autoplay = true; video.muted = true;
  video.src = await blobUrl(mediaUrl(job.id));
  p.appendChild(video);
  try {
    const grid = document.createElement("img");
    grid.alt = "preview grid"; grid.src = await blobUrl(mediaUrl(job.id, "grid"));
    p.appendChild(grid);
  } catch (e) { /* images have no grid */ }
}
async function refresh() {
  try {
    const list = await api("/v1/videos?limit=50");
    const tbody = $("jobs");
    tbody.innerHTML = "";
    for (const j of list.data) {
      const tr = document.createElement("tr");
      tr.id = "job-" + j.id;
      tr.dataset.status = j.status;
      const cells = [j.prompt, j.status + (j.error ? ": " + j.error.message : ""), "", j.size + ", " + j.seconds + " s", ""];
      for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); }
      const bar = document.createElement("progress"); bar.max = 100; bar.value = j.progress;
      tr.children[2].appendChild(bar);
      if (j.status === "completed" && !j.deleted) {
        const b = document.createElement("button"); b.textContent = "play"; b.className = "play";
        b.onclick = () => play(j); tr.children[4].appendChild(b);
      } else if (j.status === "queued" || j.status === "in_progress") {
        const b = document.createElement("button"); b.textContent = "cancel";
        b.onclick = () => api("/v1/videos/" + j.id, { method: "DELETE" }).then(refresh);
        tr.children[4].appendChild(b);
      }
      tbody.appendChild(tr);
    }
    $("message").textContent = "";
  } catch (e) { $("message").textContent = e.message; }
}
$("form").onsubmit = async (ev) => {
  ev.preventDefault();
  localStorage.setItem("stdit_key", $("key").value.trim());
  const body = { prompt: $("prompt").value };
  if ($("seconds").value) body.seconds = $("seconds").value;
  if ($("size").value) body.size = $("size").value;
  if ($("steps").value) body.steps = parseInt($("steps").value);
  if ($("seed").value) body.seed = parseInt($("seed").value);
  try {
    const job = await api("/v1/videos", { method: "POST", body: JSON.stringify(body) });
    $("message").textContent = "";
    await refresh();
    waitFor(job.id);
  } catch (e) { $("message").textContent = e.message; }
};
async function waitFor(id) {
  for (;;) {
    const j = await api("/v1/videos/" + id);
    if (j.status === "completed") { await refresh(); return play(j); }
    if (j.status === "failed" || j.status === "cancelled") return refresh();
    await new Promise((r) => setTimeout(r, 500));
  }
}
// ?prompt=...&size=...&steps=...&submit=1 fills the form (and submits it): links that start a job;
// ?play=ID shows that video.
const params = new URLSearchParams(location.search);
for (const k of ["prompt", "seconds", "size", "steps", "seed"]) if (params.has(k)) $(k).value = params.get(k);
if (params.get("submit") === "1") $("form").requestSubmit();
if (params.has("play")) api("/v1/videos/" + params.get("play")).then(play).catch((e) => { $("message").textContent = e.message; });
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
)HTML";

}  // namespace stdit::server
