// The page at GET /: try lass from a browser. Plain ES module, no dependencies: it talks to
// the same server that served it (REST for files and the language tables, WS /v1/stream for
// the microphone). Every server error is shown as the message the server wrote.

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ API key and requests

const KEY_STORAGE = "lass.apiKey";

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The readable part of a failed response: lass answers errors in OpenAI's shape
// {"error": {"message", ...}}; anything else (a proxy's page) is cut short.
async function errorMessage(response) {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    if (body?.error?.message) return body.error.message;
    if (typeof body?.error === "string") return body.error;
    if (typeof body?.detail === "string") return body.detail;
  } catch {
    // not JSON: fall through to the status line
  }
  const snippet = text.trim().slice(0, 200);
  return `${response.status} ${response.statusText}${snippet ? `: ${snippet}` : ""}`;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, {
      ...options,
      headers: { ...authHeaders(), ...(options.headers || {}) },
    });
  } catch (err) {
    throw new Error(`cannot reach the lass server (${err.message})`);
  }
  if (!response.ok) throw new Error(await errorMessage(response));
  return response;
}

function showError(element, message) {
  element.textContent = message || "";
  element.hidden = !message;
}

function seconds(value) {
  return `${Number(value).toFixed(2)} s`;
}

const languageNames = (() => {
  try {
    return new Intl.DisplayNames(["en"], { type: "language" });
  } catch {
    return null;
  }
})();

function languageName(code) {
  try {
    return languageNames?.of(code) || code;
  } catch {
    return code;
  }
}

function el(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

// ------------------------------------------------------------------ server state

const statusEl = $("status");

function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
}

// Polls readiness until the model is loaded (a fresh `make serve` loads for a few
// seconds), then fills the language lists and the method card.
async function waitUntilReady() {
  for (;;) {
    let response = null;
    try {
      response = await fetch("/health/ready", { headers: authHeaders() });
    } catch {
      setStatus("failed", "server unreachable; retrying…");
    }
    if (response) {
      const body = await response.json().catch(() => ({}));
      if (response.ok) {
        setStatus("ready", `ready · ${body.languages?.length ?? "?"} languages`);
        return;
      }
      if (body.status === "failed") {
        setStatus("failed", `model failed to load: ${body.error || "see the server log"}`);
        return;
      }
      setStatus("loading", `model ${body.status || "loading"}…`);
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function loadModel() {
  const body = await (await api("/v1/models")).json();
  $("model").textContent = body.data?.[0]?.id || "";
}

async function loadLanguages() {
  const errorEl = $("method-error");
  showError(errorEl, "");
  try {
    const [languages, overlap] = await Promise.all([
      api("/v1/languages").then((r) => r.json()),
      api("/v1/languages/overlap").then((r) => r.json()),
    ]);
    fillLanguageSelects(languages.data);
    fillLanguageTable(languages.data);
    drawHeatmap(overlap);
  } catch (err) {
    showError(errorEl, `Could not load the languages: ${err.message}`);
  }
}

function fillLanguageSelects(languages) {
  for (const select of document.querySelectorAll(".language-select")) {
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "" }, "automatic"));
    for (const lang of languages) {
      select.append(el("option", { value: lang.code }, `${lang.code} · ${languageName(lang.code)}`));
    }
    select.value = chosen;
  }
}

// ------------------------------------------------------------------ the method: table + heat map

function fillLanguageTable(languages) {
  const body = $("languages").tBodies[0];
  body.replaceChildren();
  const format = new Intl.NumberFormat("en");
  for (const lang of languages) {
    const row = el("tr", { "data-language": lang.code });
    const name = el("th", { scope: "row" });
    name.append(el("span", { class: "badge" }, lang.code), ` ${languageName(lang.code)}`);
    const density = el("td");
    const cell = el("span", { class: "density" });
    const bar = el("span", { class: "bar" });
    const fill = el("span", { class: "fill" });
    fill.style.width = `${((lang.density ?? 0) * 100).toFixed(1)}%`; // CSSOM: allowed by the CSP
    bar.append(fill);
    cell.append(bar, el("span", { class: "pct" }, `${((lang.density ?? 0) * 100).toFixed(1)} %`));
    density.append(cell);
    row.append(
      name,
      density,
      el("td", { class: "num" }, lang.kept_parameters == null ? "–" : format.format(lang.kept_parameters)),
      el("td", { class: "num" }, lang.specific_parameters == null ? "–" : format.format(lang.specific_parameters)),
      el("td", {}, lang.lm ? "yes" : "no"),
    );
    body.append(row);
  }
}

// A sequential colour scale (dark blue -> teal -> yellow, viridis-like): readable in both
// colour schemes and for the common colour-vision deficiencies.
const STOPS = [
  [68, 1, 84],
  [59, 82, 139],
  [33, 145, 140],
  [94, 201, 98],
  [253, 231, 37],
];

function colour(t) {
  const x = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(x));
  const f = x - i;
  const rgb = STOPS[i].map((a, k) => Math.round(a + (STOPS[i + 1][k] - a) * f));
  const light = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255 > 0.55;
  return { fill: `rgb(${rgb.join(",")})`, text: light ? "#111" : "#fff" };
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes = {}, text = "") {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text) node.textContent = text;
  return node;
}

// Inline SVG (scales to any width through its viewBox): cell (i, j) is the Jaccard overlap
// of languages i and j. The colour scale spans the off-diagonal range, where the
// differences are; the diagonal (always 1) is drawn in the top colour.
function drawHeatmap(overlap) {
  const { languages, jaccard } = overlap;
  const n = languages.length;
  const host = $("heatmap");
  host.replaceChildren();
  if (n === 0) return;
  const off = [];
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) if (i !== j) off.push(jaccard[i][j]);
  const lo = off.length ? Math.min(...off) : 0;
  const hi = off.length ? Math.max(...off) : 1;
  const cell = 40;
  const label = 34;
  const legend = 44;
  const size = label + n * cell;
  const root = svg("svg", {
    viewBox: `0 0 ${size + 4} ${size + legend}`,
    role: "img",
    "aria-label": `Jaccard overlap of the ${n} languages' masks, from ${lo.toFixed(2)} to ${hi.toFixed(2)}`,
    class: "heatmap-svg",
  });
  for (let i = 0; i < n; i++) {
    root.append(
      svg("text", { x: label + i * cell + cell / 2, y: label - 10, class: "axis", "text-anchor": "middle" }, languages[i]),
      svg("text", { x: label - 8, y: label + i * cell + cell / 2 + 5, class: "axis", "text-anchor": "end" }, languages[i]),
    );
  }
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const value = jaccard[i][j];
      const t = i === j ? 1 : hi > lo ? (value - lo) / (hi - lo) : 1;
      const c = colour(t);
      const x = label + j * cell;
      const y = label + i * cell;
      const group = svg("g", { class: "cell", "data-pair": `${languages[i]}-${languages[j]}` });
      group.append(
        svg("title", {}, `${languages[i]} and ${languages[j]}: Jaccard ${value.toFixed(3)}`),
        svg("rect", { x, y, width: cell - 1, height: cell - 1, fill: c.fill }),
        svg("text", { x: x + cell / 2, y: y + cell / 2 + 4, fill: c.text, "text-anchor": "middle", class: "value" },
          i === j ? "1" : value.toFixed(2).replace(/^0/, "")),
      );
      root.append(group);
    }
  }
  // Legend: the colour ramp with its two ends.
  const ramp = svg("linearGradient", { id: "ramp" });
  STOPS.forEach((_, k) => {
    const t = k / (STOPS.length - 1);
    ramp.append(svg("stop", { offset: `${t * 100}%`, "stop-color": colour(t).fill }));
  });
  const defs = svg("defs");
  defs.append(ramp);
  const y = size + 14;
  root.append(
    defs,
    svg("rect", { x: label, y, width: n * cell - 1, height: 10, fill: "url(#ramp)" }),
    svg("text", { x: label, y: y + 26, class: "axis" }, lo.toFixed(2)),
    svg("text", { x: label + n * cell - 1, y: y + 26, class: "axis", "text-anchor": "end" }, hi.toFixed(2)),
  );
  host.append(root);
  $("heatmap-caption").textContent =
    `Overlap of every pair of sub-networks (Jaccard: weights both keep / weights either keeps), ` +
    `${lo.toFixed(2)}–${hi.toFixed(2)}; ${(overlap.kept_by_all * 100).toFixed(1)} % of the ` +
    `prunable weights are kept by every language.`;
}

// ------------------------------------------------------------------ microphone streaming

const micButton = $("mic-button");
const micError = $("mic-error");
const micInfo = $("mic-info");
const transcript = $("transcript");

// The one live stream (or null): its socket, audio graph and what it has shown.
let mic = null;

const CLOSE_REASONS = {
  1001: "the server is going away",
  1006: "the connection was lost",
  1007: "the server could not read what was sent",
  1008: "the server refused the stream",
  1009: "an audio frame was too large",
  1011: "the server failed",
  1012: "the server is restarting",
  1013: "the server is busy or not ready; try again",
};

function setMicState(state) {
  micButton.dataset.recording = String(state === "recording");
  micButton.disabled = state === "starting" || state === "stopping";
  micButton.textContent =
    { starting: "Starting…", recording: "Stop", stopping: "Finishing…" }[state] || "Start recording";
}

// Browsers refuse the microphone with a DOMException whose name says why.
function micFailure(err) {
  switch (err?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone access was denied. Allow it for this page (the icon in the address bar) and try again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found.";
    case "NotReadableError":
      return "The microphone is in use by another application or could not be opened.";
    default:
      return `Could not open the microphone: ${err?.message || err}`;
  }
}

function streamUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // Browsers cannot set headers on a WebSocket: the key travels as a query parameter.
  const key = apiKey();
  return `${scheme}//${location.host}/v1/stream${key ? `?api_key=${encodeURIComponent(key)}` : ""}`;
}

async function startRecording() {
  showError(micError, "");
  if (!navigator.mediaDevices?.getUserMedia) {
    showError(micError,
      "This browser gives this page no microphone: open it as http://127.0.0.1 or http://localhost, or over https.");
    return;
  }
  setMicState("starting");
  let media;
  try {
    media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (err) {
    setMicState("idle");
    showError(micError, micFailure(err));
    return;
  }
  const context = new AudioContext();
  const session = { media, context, ws: null, node: null, source: null, lines: new Map(), errorShown: false, stopTimer: 0 };
  mic = session;
  try {
    await context.audioWorklet.addModule("/static/pcm-worklet.js");
  } catch (err) {
    teardownAudio(session);
    mic = null;
    setMicState("idle");
    showError(micError, `The browser could not load the audio worklet: ${err.message}`);
    return;
  }
  session.source = context.createMediaStreamSource(media);
  session.node = new AudioWorkletNode(context, "pcm-frames", {
    numberOfInputs: 1,
    numberOfOutputs: 1,
    channelCount: 1,
    channelCountMode: "explicit", // the browser down-mixes to mono before the worklet
  });
  const ws = new WebSocket(streamUrl());
  ws.binaryType = "arraybuffer";
  session.ws = ws;
  session.node.port.onmessage = (event) => {
    if (event.data instanceof Float32Array) {
      // Float32Array bytes are the platform's order, little-endian on every platform a
      // browser runs on today: exactly pcm_f32le.
      if (ws.readyState === WebSocket.OPEN) ws.send(event.data.buffer);
    } else if (event.data === "flushed" && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "stop" }));
    }
  };
  ws.onopen = () => {
    const language = $("mic-language").value || null;
    ws.send(JSON.stringify({
      type: "start",
      language,
      sample_rate: context.sampleRate,
      encoding: "pcm_f32le",
      partials: true,
    }));
    session.source.connect(session.node);
    // Connected to the output so that the graph pulls it; the worklet writes silence.
    session.node.connect(context.destination);
    setMicState("recording");
  };
  ws.onmessage = (event) => {
    if (typeof event.data !== "string") return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    onStreamEvent(session, message);
  };
  // An error event carries no detail in browsers; the close event that follows says why.
  ws.onerror = () => {};
  ws.onclose = (event) => {
    clearTimeout(session.stopTimer);
    teardownAudio(session);
    if (event.code !== 1000 && !session.errorShown) {
      const why = event.reason || CLOSE_REASONS[event.code] || "closed";
      showError(micError, `The stream ended: ${why} (WebSocket close ${event.code}).`);
    }
    if (mic === session) mic = null;
    setMicState("idle");
  };
}

function stopRecording() {
  const session = mic;
  if (!session) return;
  if (session.ws?.readyState !== WebSocket.OPEN) {
    session.errorShown = true; // the user stopped it: nothing to report
    session.ws?.close(); // never got going: nothing to finish
    return;
  }
  setMicState("stopping");
  // The worklet hands over its last partial frame, then the page sends {"type":"stop"};
  // the server answers the last final and a summary, then closes with 1000.
  session.node?.port.postMessage("flush");
  for (const track of session.media.getTracks()) track.stop();
  session.stopTimer = setTimeout(() => session.ws?.close(1000), 20000); // a server that never answers
}

function teardownAudio(session) {
  for (const track of session.media.getTracks()) track.stop();
  try {
    session.source?.disconnect();
    session.node?.disconnect();
  } catch {
    // already disconnected
  }
  if (session.context.state !== "closed") session.context.close().catch(() => {});
}

function utteranceLine(session, utterance) {
  let line = session.lines.get(utterance);
  if (!line) {
    line = el("li", { class: "line pending", "data-utterance": String(utterance) });
    line.append(el("span", { class: "badge lang" }, "…"), el("span", { class: "text" }), el("span", { class: "time" }));
    session.lines.set(utterance, line);
    transcript.append(line);
    line.scrollIntoView({ block: "nearest" });
  }
  return line;
}

function setLine(line, state, text, language, detail) {
  line.className = `line ${state}`;
  const badge = line.querySelector(".lang");
  badge.textContent = language || "…";
  badge.title = language ? languageName(language) : "";
  line.querySelector(".text").textContent = text;
  line.querySelector(".time").textContent = detail || "";
}

function onStreamEvent(session, event) {
  switch (event.type) {
    case "started":
      micInfo.textContent = `Listening: ${event.sample_rate} Hz ${event.encoding}, ` +
        `${event.language ? `language ${event.language}` : "language identified per utterance"}, ${event.decoder} decoding.`;
      break;
    case "speech_started":
      setLine(utteranceLine(session, event.utterance), "pending", "…", null);
      break;
    case "partial":
      setLine(utteranceLine(session, event.utterance), "partial", event.text, event.language);
      break;
    case "speech_stopped":
      break; // the final follows once the utterance is transcribed
    case "final": {
      const line = utteranceLine(session, event.utterance);
      const probability = event.language_probability == null ? "" : ` (${Math.round(event.language_probability * 100)} %)`;
      setLine(line, "final", event.text || "(no words recognized)", event.language,
        `${seconds(event.start)}–${seconds(event.end)}${probability}`);
      line.querySelector(".lang").title = `${languageName(event.language)}${probability}`;
      break;
    }
    case "error":
      session.errorShown = true;
      showError(micError, event.error?.message || "the server reported an error");
      break;
    case "summary":
      micInfo.textContent = `Done: ${event.utterances} utterance${event.utterances === 1 ? "" : "s"}, ` +
        `${seconds(event.speech_seconds)} of speech in ${seconds(event.audio_seconds)}` +
        `${event.languages && Object.keys(event.languages).length ? ` (${Object.keys(event.languages).join(", ")})` : ""}.`;
      break;
    default:
      break; // events this page does not know are ignored, as the protocol allows
  }
}

micButton.addEventListener("click", () => {
  if (mic) stopRecording();
  else startRecording();
});

// ------------------------------------------------------------------ file transcription

const fileInput = $("file-input");
const fileButton = $("file-button");
const fileError = $("file-error");
const player = $("player");
const drop = $("drop");
let chosenFile = null;
let playerUrl = null;

function chooseFile(file) {
  if (!file) return;
  chosenFile = file;
  if (playerUrl) URL.revokeObjectURL(playerUrl);
  playerUrl = URL.createObjectURL(file);
  player.src = playerUrl;
  player.hidden = false;
  $("drop-text").textContent = `${file.name} (${(file.size / 1024).toFixed(0)} KB)`;
  fileButton.disabled = false;
  showError(fileError, "");
}

fileInput.addEventListener("change", () => chooseFile(fileInput.files[0]));
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
}
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  chooseFile(event.dataTransfer?.files?.[0]);
});
// A file dropped beside the zone would otherwise replace the page with the file.
for (const name of ["dragover", "drop"]) window.addEventListener(name, (event) => event.preventDefault());

$("file-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!chosenFile) return;
  showError(fileError, "");
  const format = $("format").value;
  const form = new FormData();
  form.append("file", chosenFile, chosenFile.name);
  form.append("response_format", format);
  const language = $("file-language").value;
  if (language) form.append("language", language);
  form.append("decoder", $("decoder").value);
  const hotwords = $("hotwords").value.trim();
  if (hotwords) form.append("hotwords", hotwords);
  if (format === "verbose_json") {
    form.append("timestamp_granularities[]", "word");
    form.append("timestamp_granularities[]", "segment");
  }
  fileButton.disabled = true;
  fileButton.textContent = "Transcribing…";
  const started = performance.now();
  try {
    const response = await api("/v1/audio/transcriptions", { method: "POST", body: form });
    const body = format === "json" || format === "verbose_json" ? await response.json() : await response.text();
    showFileResult(format, body, response.headers.get("X-Lass-Language"), performance.now() - started);
  } catch (err) {
    showError(fileError, err.message);
  } finally {
    fileButton.disabled = false;
    fileButton.textContent = "Transcribe";
  }
});

function showFileResult(format, body, headerLanguage, tookMs) {
  const isJson = typeof body === "object";
  const language = (isJson && body.language) || headerLanguage || "–";
  $("file-lang").textContent = language === "–" ? language : `${language} · ${languageName(language)}`;
  $("file-lang").dataset.code = language;
  const duration = isJson ? (body.duration ?? body.usage?.seconds) : null;
  $("file-duration").textContent = duration == null ? "–" : seconds(duration);
  $("file-took").textContent = tookMs < 1000 ? `${Math.round(tookMs)} ms` : seconds(tookMs / 1000);
  $("file-text").textContent = isJson ? body.text || "(no words recognized)" : "";
  $("file-text").hidden = !isJson;
  $("file-raw").textContent = isJson ? "" : body;
  $("file-raw").hidden = isJson;
  const words = $("words");
  words.replaceChildren();
  for (const word of (isJson && body.words) || []) {
    const button = el("button", { type: "button", class: "word", "data-start": String(word.start), "data-end": String(word.end) });
    button.append(el("span", {}, word.word), el("small", {}, word.start.toFixed(2)));
    button.title = `${seconds(word.start)}–${seconds(word.end)}: play from here`;
    button.addEventListener("click", () => playFrom(word.start));
    words.append(button);
  }
  $("file-result").hidden = false;
}

function playFrom(start) {
  player.currentTime = start;
  player.play().catch((err) => {
    // AbortError: a pause or another click came first, which is no failure.
    if (err.name !== "AbortError") showError(fileError, `This browser cannot play the file: ${err.message}`);
  });
}

// The word being played is highlighted.
player.addEventListener("timeupdate", () => {
  const t = player.currentTime;
  for (const button of $("words").children) {
    const playing = !player.paused && t >= Number(button.dataset.start) && t < Number(button.dataset.end) + 0.05;
    button.classList.toggle("playing", playing);
  }
});

// ------------------------------------------------------------------ API key field

const keyInput = $("api-key");
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault(); // Enter in the field: keep the page, apply the key
  keyInput.dispatchEvent(new Event("change"));
});
keyInput.value = apiKey();
keyInput.addEventListener("change", () => {
  const key = keyInput.value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  start(); // the lists may have failed for want of the key
});

// ------------------------------------------------------------------ start

let starting = null; // one readiness loop at a time, however often the key changes

function start() {
  starting ??= (async () => {
    await waitUntilReady();
    if (statusEl.dataset.state !== "ready") return;
    loadModel().catch((err) => setStatus("failed", err.message));
    await loadLanguages();
  })().finally(() => {
    starting = null;
  });
  return starting;
}

start();
