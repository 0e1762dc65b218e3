// softprompt playground: plain DOM code, no framework, no network beyond this server.
"use strict";

const $ = (selector) => document.querySelector(selector);
let prompts = [];

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of [].concat(children)) node.append(child);
  return node;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : text || response.statusText;
    throw new Error(`${response.status}: ${message}`);
  }
  return body;
}

// ---- tabs -------------------------------------------------------------------------------------------------
function showTab(name) {
  for (const button of document.querySelectorAll("nav button")) {
    button.classList.toggle("active", button.dataset.tab === name);
  }
  for (const section of document.querySelectorAll("main section")) section.hidden = section.id !== `tab-${name}`;
  showError("");
}
for (const button of document.querySelectorAll("nav button")) button.onclick = () => showTab(button.dataset.tab);

// ---- prompts ----------------------------------------------------------------------------------------------
async function refresh() {
  try {
    const health = await api("healthz");
    $("#backbone").textContent = `backbone ${health.backbone} · ${health.prompts} prompt(s)`;
    const listing = await api("v1/prompts");
    prompts = listing.data;
    renderTable(listing);
    fillSelects();
  } catch (error) {
    showError(`Could not reach the server: ${error.message}`);
  }
}

function renderTable(listing) {
  const body = $("#prompt-table tbody");
  body.replaceChildren();
  for (const p of listing.data) {
    const remove = el("button", { className: "small", textContent: "delete", title: "needs the admin token" });
    remove.onclick = () => deletePrompt(p.name);
    body.append(el("tr", {}, [
      el("td", {}, el("strong", { textContent: p.name })),
      el("td", { textContent: p.task }),
      el("td", { textContent: p.labels ? p.labels.join(", ") : "—" }),
      el("td", { textContent: String(p.num_virtual_tokens) }),
      el("td", {}, el("code", { textContent: p.template || "" })),
      el("td", {}, remove),
    ]));
  }
  $("#no-prompts").hidden = listing.data.length > 0;
  const failed = listing.not_loaded || [];
  $("#not-loaded").hidden = failed.length === 0;
  $("#not-loaded ul").replaceChildren(...failed.map((f) => el("li", {}, [el("strong", { textContent: f.name }),
                                                                          ` — ${f.reason}`])));
}

function fillSelects() {
  const options = (filter) => prompts.filter(filter).map((p) => el("option", { value: p.name,
                                                                               textContent: `${p.name} (${p.task})` }));
  for (const id of ["#try-prompt"]) {
    const keep = $(id).value;
    $(id).replaceChildren(...options(() => true));
    if (keep) $(id).value = keep;
  }
  const classifiers = (p) => p.task === "classification";
  for (const [index, id] of ["#compare-a", "#compare-b"].entries()) {
    const keep = $(id).value;
    $(id).replaceChildren(...options(classifiers));
    if (keep) $(id).value = keep;
    else if ($(id).options.length > index) $(id).selectedIndex = index;
  }
  updateTryControls();
}

async function deletePrompt(name) {
  const token = $("#upload-token").value || window.prompt(`Admin token to delete '${name}':`);
  if (!token) return;
  try {
    await api(`v1/prompts/${encodeURIComponent(name)}`, { method: "DELETE",
                                                           headers: { Authorization: `Bearer ${token}` } });
    await refresh();
  } catch (error) { showError(error.message); }
}

// ---- classify / complete ----------------------------------------------------------------------------------
function softmax(scores) {
  const values = Object.values(scores);
  const top = Math.max(...values);
  const exps = values.map((v) => Math.exp(v - top));
  const total = exps.reduce((a, b) => a + b, 0);
  return Object.fromEntries(Object.keys(scores).map((k, i) => [k, exps[i] / total]));
}

function scoreBars(result, title) {
  const probabilities = softmax(result.scores);
  const rows = Object.entries(probabilities).sort((a, b) => b[1] - a[1]).map(([label, p]) => el("div", {
    className: `bar${label === result.label ? " top" : ""}`,
    title: `log-likelihood ${result.scores[label].toFixed(3)}`,
  }, [el("span", { className: "name", textContent: label }),
      el("div", { className: "track" }, el("div", { className: "fill", style: `width:${(100 * p).toFixed(1)}%` })),
      el("span", { className: "value", textContent: `${(100 * p).toFixed(1)}%` })]));
  return el("div", { className: "result" }, [
    title ? el("h3", { textContent: title }) : "",
    el("div", { className: "predicted" }, [el("span", { className: "muted", textContent: "label " }),
                                           el("strong", { textContent: result.label })]),
    ...rows,
  ]);
}

function selectedPrompt(id) { return prompts.find((p) => p.name === $(id).value); }

function updateTryControls() {
  const p = selectedPrompt("#try-prompt");
  $("#try-tokens-label").hidden = !p || p.task === "classification";
}
$("#try-prompt").onchange = updateTryControls;

async function classify(name, text) {
  const body = await api("v1/classify", { method: "POST", headers: { "Content-Type": "application/json" },
                                          body: JSON.stringify({ prompt: name, inputs: [text] }) });
  return body.results[0];
}

$("#try-run").onclick = async () => {
  showError("");
  const p = selectedPrompt("#try-prompt");
  const text = $("#try-text").value.trim();
  if (!p) return showError("No prompt to run: upload one first.");
  if (!text) return showError("Type a text first.");
  $("#try-result").replaceChildren(el("p", { className: "muted", textContent: "running…" }));
  try {
    if (p.task === "classification") {
      $("#try-result").replaceChildren(scoreBars(await classify(p.name, text)));
    } else {
      const body = await api("v1/completions", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model: p.name, prompt: text, max_tokens: Number($("#try-tokens").value) || 24,
                               temperature: 0 }) });
      $("#try-result").replaceChildren(el("div", { className: "result" }, [
        el("h3", { textContent: "generated" }), el("div", { className: "generated", textContent: body.choices[0].text }),
        el("p", { className: "muted", textContent: `${body.usage.completion_tokens} tokens, finish: ${body.choices[0].finish_reason}` }),
      ]));
    }
  } catch (error) { $("#try-result").replaceChildren(); showError(error.message); }
};

// ---- compare ----------------------------------------------------------------------------------------------
$("#compare-run").onclick = async () => {
  showError("");
  const a = $("#compare-a").value, b = $("#compare-b").value, text = $("#compare-text").value.trim();
  if (!a || !b) return showError("Two classification prompts are needed.");
  if (!text) return showError("Type a text first.");
  try {
    const [left, right] = await Promise.all([classify(a, text), classify(b, text)]);
    const agree = left.label === right.label;
    $("#compare-result").replaceChildren(scoreBars(left, a), scoreBars(right, b),
      el("p", { className: "muted", textContent: agree ? "The two prompts agree." : "The two prompts disagree." }));
  } catch (error) { showError(error.message); }
};

// ---- upload -----------------------------------------------------------------------------------------------
$("#upload-run").onclick = async () => {
  showError("");
  const file = $("#upload-file").files[0];
  const name = $("#upload-name").value.trim() || (file ? file.name.replace(/\.safetensors$/, "") : "");
  if (!file) return showError("Choose a .safetensors prompt file.");
  try {
    const body = await api(`v1/prompts?name=${encodeURIComponent(name)}`, {
      method: "POST", body: await file.arrayBuffer(),
      headers: { Authorization: `Bearer ${$("#upload-token").value}`, "Content-Type": "application/octet-stream" },
    });
    $("#upload-result").replaceChildren(el("p", {}, [
      el("strong", { textContent: body.name }),
      ` ${body.replaced ? "replaced" : "added"}: ${body.task}, ${body.num_virtual_tokens} virtual tokens`]));
    await refresh();
  } catch (error) { $("#upload-result").replaceChildren(); showError(error.message); }
};

// ---- training curves --------------------------------------------------------------------------------------
function chart(title, series, yLabel) {
  const width = 480, height = 260, pad = { left: 52, right: 16, top: 28, bottom: 36 };
  const points = series.flatMap((s) => s.points);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  add("text", { x: width / 2, y: 16, "text-anchor": "middle", style: "font-size:13px;fill:#1d2430;font-weight:600" },
      title);
  if (!points.length) {
    add("text", { x: pad.left, y: height / 2 }, "no records");
    return svg;
  }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs) || 1];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
  const X = (x) => pad.left + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const Y = (y) => height - pad.bottom - ((y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
  add("line", { x1: pad.left, y1: height - pad.bottom, x2: width - pad.right, y2: height - pad.bottom, class: "axis" });
  add("line", { x1: pad.left, y1: pad.top, x2: pad.left, y2: height - pad.bottom, class: "axis" });
  for (const y of [y0, (y0 + y1) / 2, y1]) add("text", { x: 4, y: Y(y) + 4 }, y.toPrecision(3));
  for (const x of [x0, x1]) add("text", { x: X(x) - 6, y: height - pad.bottom + 16 }, String(x));
  add("text", { x: width / 2 - 14, y: height - 6 }, "step");
  add("text", { x: 4, y: pad.top - 8 }, yLabel);
  for (const s of series) {
    if (!s.points.length) continue;
    add("polyline", { points: s.points.map((p) => `${X(p[0])},${Y(p[1])}`).join(" "), class: "line", stroke: s.color });
    for (const p of s.points.length < 40 ? s.points : []) add("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: s.color });
  }
  return svg;
}

function curves(text) {
  const records = [];
  text.split("\n").forEach((line, index) => {
    if (!line.trim()) return;
    try { records.push(JSON.parse(line)); } catch (_) { throw new Error(`line ${index + 1} is not JSON`); }
  });
  const train = records.filter((r) => r.split === "train" && typeof r.loss === "number");
  const validation = records.filter((r) => r.split === "validation");
  if (!train.length && !validation.length) throw new Error("no train or validation records: is this a metrics.jsonl?");
  const metric = ["accuracy", "loss"].find((m) => validation.some((r) => typeof r[m] === "number"));
  return [
    chart("training loss", [{ points: train.map((r) => [r.step, r.loss]), color: "#3458d4" }], "loss"),
    chart(`validation ${metric || ""}`.trim(), [{ points: metric ? validation.map((r) => [r.step, r[metric]]) : [],
                                                  color: "#c2410c" }], metric || ""),
  ];
}

$("#curves-file").onchange = async () => {
  showError("");
  const file = $("#curves-file").files[0];
  if (!file) return;
  try { $("#curves-result").replaceChildren(...curves(await file.text())); } catch (error) {
    $("#curves-result").replaceChildren();
    showError(`${file.name}: ${error.message}`);
  }
};

refresh();
