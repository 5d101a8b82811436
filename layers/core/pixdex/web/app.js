// pixdex web page: plain browser JavaScript, no build step, no third-party code.
// Talks to the pixdex HTTP API; where that API lives and how to sign in come from config.json beside this file.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
};
const SVG = "http://www.w3.org/2000/svg";
const svg = (tag, attrs) => {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
};

const FACETS = ["labels", "format", "camera", "year"];
const FACET_TITLES = { labels: "Labels", format: "Format", camera: "Camera", year: "Year" };
const PAGE_SIZE = 24;  // a link may ask for another (#size=N, 1-100)
// Query images are shrunk before sending: the models need far fewer pixels, and inline bodies are capped.
const QUERY_IMAGE_SIDE = 1024;
const POLL_MS = 700;
const POLL_LIMIT_MS = 180000;

const state = {
  config: { api: "", auth: null },
  token: sessionStorage.getItem("pixdex.token") || "",
  facetFilters: { labels: [], format: [], camera: [], year: null },
  query: null,          // {kind: "search"|"image"|"similar"|"duplicates"|"person", ...}
  cursor: null,
  loading: false,
  hits: new Map(),
  pageSize: PAGE_SIZE,
  detail: null,
  generation: 0,
};

// ---------------------------------------------------------------- API access

class ApiError extends Error {
  constructor(status, body) {
    super(explain(status, body));
    this.status = status;
    this.body = body;
  }
}

function explain(status, body) {
  if (body && typeof body === "object" && body.message) return body.message;
  if (status === 401 || status === 403) return "You are not signed in, or your session has expired.";
  if (status === 404) return "Not found.";
  if (status === 413) return "That file is too large to send.";
  if (status === 429) return "Too many requests: wait a moment and try again.";
  if (status >= 500) return `The server failed (HTTP ${status}). Try again in a moment.`;
  return `Request failed (HTTP ${status}).`;
}

async function api(path, { method = "GET", body, headers = {} } = {}) {
  const h = { ...headers };
  if (state.token) h.authorization = `Bearer ${state.token}`;
  let resp;
  try {
    resp = await fetch(state.config.api + path, { method, body, headers: h });
  } catch (err) {
    throw new ApiError(0, { message: "Cannot reach the pixdex API. Is it running?" });
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { message: text.slice(0, 200) }; }
  if (resp.status === 401 && state.config.auth) {
    signOut();
    openSignIn();
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

function searchParams() {
  const p = new URLSearchParams();
  const f = new FormData($("#filters"));
  const num = (name) => { const v = f.get(name); return v === null || v === "" ? null : Number(v); };
  for (const name of ["min_width", "min_height", "min_faces"]) {
    const v = num(name);
    if (v !== null) p.set(name, String(v));
  }
  const kb = num("max_kb");
  if (kb !== null) p.set("max_bytes", String(Math.round(kb * 1024)));
  for (const name of ["taken_after", "taken_before", "has_text"]) {
    const v = f.get(name);
    if (v) p.set(name, String(v));
  }
  const ff = state.facetFilters;
  if (ff.labels.length) p.set("labels", ff.labels.join(","));
  if (ff.format.length) p.set("format", ff.format.join(","));
  if (ff.camera.length) p.set("camera", ff.camera.join(","));
  if (ff.year !== null) {
    // The API filters dates, not years: a year facet is that year's date range.
    if (!p.has("taken_after")) p.set("taken_after", `${ff.year}-01-01`);
    if (!p.has("taken_before")) p.set("taken_before", `${ff.year}-12-31`);
  }
  return p;
}

// ---------------------------------------------------------------- results

function setStatus(text) { $("#status").textContent = text; }
function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

function formatBytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(2)} MB`;
}

function scoreText(hit) {
  if (hit.distance !== undefined && hit.distance !== null) return hit.distance === 0 ? "exact copy" : `${hit.distance} bits apart`;
  // Browsing without a query ranks nothing: every score is the same and says nothing.
  if (state.query && state.query.kind === "search" && !state.query.text) return "";
  if (typeof hit.score !== "number") return "";
  return hit.score.toFixed(hit.score < 10 ? 3 : 1);
}

function card(hit) {
  const label = (hit.labels || []).slice(0, 3).join(", ");
  const img = hit.thumbnail_url
    ? el("img", { src: hit.thumbnail_url, alt: hit.caption || hit.name || "image", loading: "lazy",
                  width: 256, height: 256 })
    // Not compressed yet, or it could not be (the detail view says which).
    : el("div", { class: "no-thumb", text: "no preview" });
  const button = el("button", { type: "button", class: "card-open", "data-id": hit.id,
                                "aria-label": `Open ${hit.name || hit.id}`, onclick: () => openDetail(hit.id) }, img);
  return el("li", { class: "card", "data-id": hit.id, "data-key": hit.key || "" },
    button,
    el("div", { class: "card-meta" },
      el("span", { class: "card-name", text: hit.name || hit.key || hit.id, title: hit.key || "" }),
      el("span", { class: "score", text: scoreText(hit), title: hit.source ? `score (${hit.source})` : "score" })),
    label ? el("div", { class: "card-labels", text: label }) : null);
}

function renderHits(hits, { append }) {
  const grid = $("#grid");
  if (!append) { grid.replaceChildren(); state.hits.clear(); }
  for (const hit of hits) {
    if (state.hits.has(hit.id)) continue;
    state.hits.set(hit.id, hit);
    grid.append(card(hit));
  }
}

function renderFacets(facets) {
  const box = $("#facet-groups");
  box.replaceChildren();
  if (!facets) return;
  for (const name of FACETS) {
    const buckets = facets[name];
    if (!buckets || !buckets.length) continue;
    const list = el("ul", { class: "facet-list" });
    for (const b of buckets.slice(0, 12)) {
      const value = String(b.value);
      const active = name === "year" ? state.facetFilters.year === value : state.facetFilters[name].includes(value);
      const id = `facet-${name}-${value}`.replace(/[^A-Za-z0-9_-]/g, "_");
      const input = el("input", { type: "checkbox", id, checked: active, "data-facet": name, value,
                                  onchange: () => toggleFacet(name, value) });
      list.append(el("li", {}, input, el("label", { for: id },
        el("span", { class: "facet-value", text: value }), el("span", { class: "count", text: String(b.count) }))));
    }
    box.append(el("fieldset", { class: "facet", "data-facet": name }, el("legend", { text: FACET_TITLES[name] }), list));
  }
}

function renderChips() {
  const chips = $("#active-filters");
  chips.replaceChildren();
  const add = (text, remove) => chips.append(el("li", {}, el("button", {
    type: "button", class: "chip", "aria-label": `Remove filter ${text}`, onclick: remove, text: `${text} ×` })));
  for (const name of ["labels", "format", "camera"]) {
    for (const v of state.facetFilters[name]) add(`${FACET_TITLES[name]}: ${v}`, () => toggleFacet(name, v));
  }
  if (state.facetFilters.year !== null) add(`Taken in ${state.facetFilters.year}`, () => toggleFacet("year", state.facetFilters.year));
  const q = state.query;
  if (q && q.kind !== "search") add(q.title, () => runSearch());
}

function toggleFacet(name, value) {
  if (name === "year") {
    state.facetFilters.year = state.facetFilters.year === value ? null : value;
  } else {
    const list = state.facetFilters[name];
    const i = list.indexOf(value);
    if (i >= 0) list.splice(i, 1); else list.push(value);
  }
  rerun();
}

function rerun() {
  if (state.query && state.query.kind === "search") runSearch();
  else if (state.query) load({ append: false });
  else runSearch();
}

async function load({ append }) {
  const q = state.query;
  if (!q || (append && (!state.cursor || state.loading))) return;
  const generation = append ? state.generation : ++state.generation;
  state.loading = true;
  showError("");
  setStatus(append ? "Loading more…" : "Searching…");
  try {
    const p = searchParams();
    p.set("size", String(state.pageSize));
    if (append && state.cursor) p.set("cursor", state.cursor);
    let data;
    if (q.kind === "search") {
      if (q.text) p.set("q", q.text);
      p.set("mode", q.mode);
      p.set("sort", $("#f-sort").value);
      p.set("facets", FACETS.join(","));
      data = await api(`/search?${p}`);
    } else if (q.kind === "image") {
      p.set("facets", FACETS.join(","));
      data = await api(`/search/image?${p}`, { method: "POST", body: q.blob, headers: { "content-type": q.blob.type } });
    } else if (q.kind === "similar") {
      p.set("facets", FACETS.join(","));
      data = await api(`/images/${encodeURIComponent(q.id)}/similar?${p}`);
    } else if (q.kind === "duplicates") {
      const d = await api(`/images/${encodeURIComponent(q.id)}/duplicates?size=100`);
      const exact = (d.exact || []).map((h) => ({ ...h, distance: 0 }));
      data = { hits: [...exact, ...(d.near || [])], total: exact.length + (d.near || []).length, next_cursor: null };
    } else if (q.kind === "person") {
      const d = await api(`/faces/search?image_id=${encodeURIComponent(q.id)}&face=${q.face}&size=100`);
      data = { hits: d.hits || [], total: (d.hits || []).length, next_cursor: null };
    }
    if (generation !== state.generation) return;
    state.cursor = data.next_cursor || null;
    renderHits(data.hits || [], { append });
    // A new result set starts at its top, wherever the control that asked for it was.
    if (!append && window.scrollY > 0) window.scrollTo({ top: 0 });
    if (data.facets) renderFacets(data.facets);
    renderChips();
    const shown = $("#grid").children.length;
    const total = data.total ?? shown;
    setStatus(shown === 0 ? `${q.title}: no images match.` : `${q.title}: ${shown} of ${total} shown`);
    $("#more").hidden = !state.cursor;
  } catch (err) {
    if (generation !== state.generation) return;
    showError(err.message);
    setStatus("");
  } finally {
    if (generation === state.generation) state.loading = false;
  }
  // The observer only reports changes: a page that leaves the sentinel in view must ask for the next itself.
  if (generation === state.generation && state.cursor && sentinelNear()) load({ append: true });
}

const SCROLL_MARGIN_PX = 200;

function sentinelNear() {
  return $("#sentinel").getBoundingClientRect().top < window.innerHeight + SCROLL_MARGIN_PX;
}

function runSearch() {
  const text = $("#q").value.trim();
  const mode = document.querySelector('input[name="mode"]:checked').value;
  state.query = { kind: "search", text, mode, title: text ? `“${text}” (${mode})` : "All images" };
  state.cursor = null;
  const url = new URL(location.href);
  const hash = new URLSearchParams();
  if (text) { hash.set("q", text); hash.set("mode", mode); }
  if (state.pageSize !== PAGE_SIZE) hash.set("size", String(state.pageSize));
  url.hash = hash.toString();
  history.replaceState(null, "", url);
  return load({ append: false });
}

function runRelated(kind, id, title, extra = {}) {
  closeDetail();
  state.query = { kind, id, title, ...extra };
  state.cursor = null;
  return load({ append: false });
}

// ---------------------------------------------------------------- query by image

async function shrink(file) {
  // Keeps the request small; the server would scale it down anyway.
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    return file;  // the browser cannot decode it (HEIC, say): let the server try and explain
  }
  const scale = Math.min(1, QUERY_IMAGE_SIDE / Math.max(bitmap.width, bitmap.height));
  if (scale === 1 && file.size < 2 * 1024 * 1024) return file;
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  const ctx = canvas.getContext("2d");
  // Transparent areas over white, as the pipeline shows them to the models (JPEG has no alpha).
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  return await new Promise((resolve) => canvas.toBlob((b) => resolve(b || file), "image/jpeg", 0.9));
}

async function searchByImage(file) {
  if (!file.type.startsWith("image/")) {
    showError(`“${file.name}” is not an image, so it cannot be used to search.`);
    return;
  }
  const blob = await shrink(file);
  state.query = { kind: "image", blob, title: `Like “${file.name}”` };
  state.cursor = null;
  return load({ append: false });
}

// ---------------------------------------------------------------- upload

function uploadRow(file) {
  const status = el("span", { class: "upload-status", text: "waiting" });
  const row = el("li", { class: "upload-item" }, el("span", { class: "upload-name", text: file.name }), status);
  $("#uploads").prepend(row);
  return {
    row,
    set(text, kind = "") { status.textContent = text; row.dataset.state = kind; },
  };
}

function s3Error(text) {
  // S3 answers a refused POST with XML: <Error><Code>EntityTooLarge</Code><Message>…</Message></Error>.
  const doc = new DOMParser().parseFromString(text || "", "application/xml");
  const code = doc.querySelector("Code")?.textContent || "";
  const message = doc.querySelector("Message")?.textContent || "";
  const known = {
    EntityTooLarge: "the file is larger than this deployment accepts",
    AccessDenied: "the upload permission was refused (it may have expired: try again)",
    InvalidPolicyDocument: "the upload permission does not match this file",
  };
  return known[code] || message || code || "the storage service refused the file";
}

function stageError(doc) {
  for (const name of ["compress_state", "analyze_state"]) {
    const err = doc && doc[name] && doc[name].error;
    if (err) return err.message || err.code || "processing failed";
  }
  return null;
}

// Browsers leave the type empty for some formats (HEIC on most desktops): go by the file name then.
const TYPES_BY_SUFFIX = { jpg: "image/jpeg", jpeg: "image/jpeg", png: "image/png", webp: "image/webp",
  gif: "image/gif", bmp: "image/bmp", tif: "image/tiff", tiff: "image/tiff", heic: "image/heic",
  heif: "image/heif", avif: "image/avif" };

function contentType(file) {
  if (file.type) return file.type;
  return TYPES_BY_SUFFIX[(file.name.split(".").pop() || "").toLowerCase()] || "";
}

async function uploadFile(file) {
  const ui = uploadRow(file);
  const type = contentType(file);
  if (!type.startsWith("image/")) {
    ui.set(`Not uploaded: “${file.name}” is not an image${type ? ` (${type})` : ""}.`, "error");
    return null;
  }
  try {
    ui.set("asking for an upload slot…", "busy");
    const slot = await api("/uploads", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ filename: file.name.replace(/[\\/\x00-\x1f]/g, "_").slice(-255),
                             content_type: type }),
    });
    if (file.size > slot.max_bytes) {
      ui.set(`Not uploaded: ${formatBytes(file.size)} is over the ${formatBytes(slot.max_bytes)} limit.`, "error");
      return null;
    }
    const form = new FormData();
    for (const [k, v] of Object.entries(slot.fields)) form.append(k, v);
    form.append("file", file);
    ui.set("uploading…", "busy");
    let resp;
    try {
      resp = await fetch(slot.url, { method: "POST", body: form });
    } catch {
      throw new Error("the storage service could not be reached (or refused this page's origin)");
    }
    if (!resp.ok) throw new Error(s3Error(await resp.text()));
    ui.set("processing…", "busy");
    const started = Date.now();
    while (Date.now() - started < POLL_LIMIT_MS) {
      await new Promise((r) => setTimeout(r, POLL_MS));
      let doc = null;
      try { doc = await api(`/images/${encodeURIComponent(slot.id)}`); } catch (err) { if (err.status !== 404) throw err; }
      const why = stageError(doc);
      if (why) {
        ui.set(`Could not process “${file.name}”: ${why}`, "error");
        return null;
      }
      if (doc && doc.compress_state && doc.analyze_state) {
        ui.row.replaceChildren(el("button", { type: "button", class: "link", text: file.name,
                                              onclick: () => openDetail(slot.id) }),
                               el("span", { class: "upload-status", text: "searchable" }));
        ui.row.dataset.state = "done";
        ui.row.dataset.id = slot.id;
        return slot.id;
      }
    }
    ui.set("still processing; it will appear in searches when done", "busy");
  } catch (err) {
    ui.set(`Not uploaded: ${err.message}`, "error");
  }
  return null;
}

async function uploadFiles(files) {
  const ids = [];
  for (const file of files) {
    const id = await uploadFile(file);
    if (id) ids.push(id);
  }
  if (ids.length && (!state.query || state.query.kind === "search")) await runSearch();
}

// ---------------------------------------------------------------- detail

function kv(list, name, value) {
  if (value === null || value === undefined || value === "") return;
  list.append(el("dt", { text: name }), el("dd", { text: String(value) }));
}

function drawOverlay(doc) {
  const overlay = $("#overlay");
  overlay.replaceChildren();
  // Boxes are in the pixels of the image the models read; older documents lack that frame.
  const frame = doc.box_frame || [doc.width || 1, doc.height || 1];
  overlay.setAttribute("viewBox", `0 0 ${frame[0]} ${frame[1]}`);
  overlay.setAttribute("preserveAspectRatio", "none");
  const stroke = Math.max(frame[0], frame[1]) / 300;
  if ($("#show-text").checked) {
    for (const b of doc.ocr_boxes || []) {
      const pts = (b.box || []).map(([x, y]) => `${x},${y}`).join(" ");
      const poly = svg("polygon", { points: pts, class: "ocr-box", "stroke-width": stroke });
      poly.append(Object.assign(document.createElementNS(SVG, "title"), { textContent: b.text }));
      overlay.append(poly);
    }
  }
  if ($("#show-faces").checked) {
    (doc.faces || []).forEach((f, i) => {
      const [x0, y0, x1, y1] = f.box || [];
      overlay.append(svg("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, class: "face-box",
                                   "stroke-width": stroke * 1.5 }));
      const label = svg("text", { x: x0, y: Math.max(y0 - stroke * 2, stroke * 8), class: "face-label",
                                  "font-size": stroke * 10 });
      label.textContent = String(i + 1);
      overlay.append(label);
    });
  }
}

function renderDetail(doc) {
  state.detail = doc;
  $("#detail-title").textContent = doc.name || doc.key || doc.id;
  const [fw, fh] = doc.box_frame || [doc.width || 3, doc.height || 2];
  $("#stage-frame").style.setProperty("--ar", String(fw / fh));
  const img = $("#detail-img");
  img.src = doc.preview_url || doc.thumbnail_url || doc.original_url || "";
  img.alt = doc.caption || doc.name || "image";
  $("#act-original").href = doc.original_url || "#";
  const why = stageError(doc);
  const pending = !doc.compress_state || !doc.analyze_state;
  $("#detail-state").textContent = why ? `Processing failed: ${why}` : pending ? "Still processing…" : "";
  $("#detail-state").className = why ? "state error" : "state";

  const labels = $("#detail-labels");
  labels.replaceChildren();
  const scores = doc.label_scores || [];
  if (scores.length) {
    for (const s of scores) {
      const pct = Math.round(s.score * 100);
      labels.append(el("li", {}, el("span", { text: s.label }),
        el("meter", { min: 0, max: 1, value: s.score, "aria-label": `${s.label} score` }),
        el("span", { class: "count", text: `${pct}%` })));
    }
  } else {
    labels.append(el("li", { text: (doc.labels || []).join(", ") || "none" }));
  }
  $("#detail-caption").textContent = doc.caption || "–";
  $("#detail-ocr").textContent = doc.ocr_text || "No text found.";

  const faces = $("#detail-faces");
  faces.replaceChildren();
  const faceList = doc.faces || [];
  if (!faceList.length) {
    faces.append(el("li", { text: doc.face_count === undefined ? "Face detection is off." : "No faces found." }));
  }
  faceList.forEach((f, i) => {
    faces.append(el("li", {}, el("span", { text: `Face ${i + 1}` }),
      el("button", { type: "button", "data-face": i, text: "Same person",
                     onclick: () => runRelated("person", doc.id, `Same person as face ${i + 1} of ${doc.name}`, { face: i }) })));
  });
  $("#act-person").hidden = faceList.length === 0;

  const exif = $("#detail-exif");
  exif.replaceChildren();
  kv(exif, "Key", doc.key);
  kv(exif, "Format", doc.format);
  kv(exif, "Dimensions", doc.width && `${doc.width} × ${doc.height}`);
  kv(exif, "File size", doc.bytes && formatBytes(doc.bytes));
  kv(exif, "Camera", doc.camera);
  kv(exif, "Taken", doc.taken_at);
  kv(exif, "Uploaded", doc.uploaded_at);
  if (doc.gps) kv(exif, "Location", `${doc.gps.lat ?? doc.gps[0]}, ${doc.gps.lon ?? doc.gps[1]}`);
  kv(exif, "Safety score", typeof doc.nsfw_score === "number" ? doc.nsfw_score.toFixed(3) : null);
  kv(exif, "SHA-256", doc.sha256);

  const derivs = $("#detail-derivs");
  derivs.replaceChildren();
  for (const [name, d] of Object.entries(doc.derivatives || {})) {
    derivs.append(el("tr", {}, el("th", { scope: "row", text: name }),
      el("td", { text: `${d.format}${d.lossless ? " (lossless)" : d.quality ? ` q${d.quality}` : ""}` }),
      el("td", { text: `${d.width} × ${d.height}` }), el("td", { text: formatBytes(d.bytes) })));
  }
  const c = doc.compression;
  $("#detail-saved").textContent = c
    ? `Bytes saved: ${formatBytes(c.saved_bytes)} of ${formatBytes(c.source_bytes)} (${Math.round((1 - (c.ratio ?? 1)) * 100)}% smaller to view)`
    : "";
  drawOverlay(doc);
}

async function openDetail(id) {
  const dialog = $("#detail");
  try {
    const doc = await api(`/images/${encodeURIComponent(id)}`);
    renderDetail(doc);
    if (!dialog.open) dialog.showModal();
    $("#detail-close").focus();
  } catch (err) {
    showError(err.message);
  }
}

function closeDetail() {
  const dialog = $("#detail");
  if (dialog.open) dialog.close();
}

async function deleteCurrent() {
  const doc = state.detail;
  if (!doc) return;
  if (!confirm(`Delete “${doc.name}”? The original and its derivatives are removed.`)) return;
  const stateBox = $("#detail-state");
  try {
    await api(`/images/${encodeURIComponent(doc.id)}`, { method: "DELETE" });
    stateBox.textContent = "Deleting…";
    const started = Date.now();
    let gone = false;
    while (!gone && Date.now() - started < POLL_LIMIT_MS) {
      await new Promise((r) => setTimeout(r, POLL_MS));
      try { await api(`/images/${encodeURIComponent(doc.id)}`); } catch (err) { if (err.status === 404) gone = true; else throw err; }
    }
    if (!gone) {
      // The original is deleted; the remove function has not finished yet. Say so rather than claim it is done.
      stateBox.textContent = "Deleted from the bucket; still being removed from the index. Search again in a moment.";
      return;
    }
    closeDetail();
    document.querySelector(`.card[data-id="${CSS.escape(doc.id)}"]`)?.remove();
    state.hits.delete(doc.id);
    setStatus(`Deleted “${doc.name}”.`);
  } catch (err) {
    stateBox.textContent = `Could not delete: ${err.message}`;
  }
}

// ---------------------------------------------------------------- sign-in (Cognito user pool, or a pasted token)

function signOut() {
  state.token = "";
  sessionStorage.removeItem("pixdex.token");
  renderAccount();
}

function renderAccount() {
  const box = $("#account");
  box.replaceChildren();
  if (!state.config.auth) return;
  box.append(state.token
    ? el("button", { type: "button", text: "Sign out", onclick: () => { signOut(); openSignIn(); } })
    : el("button", { type: "button", text: "Sign in", onclick: openSignIn }));
}

let challenge = null;

function openSignIn() {
  const auth = state.config.auth;
  if (!auth) return;
  const tokenOnly = auth.type !== "cognito";
  $("#signin-password-fields").hidden = tokenOnly;
  $("#signin-token-fields").hidden = !tokenOnly;
  $("#signin-new-fields").hidden = true;
  $("#signin-code-fields").hidden = true;
  $("#signin-error").hidden = true;
  challenge = null;
  const dialog = $("#signin");
  if (!dialog.open) dialog.showModal();
}

async function cognito(target, payload) {
  const auth = state.config.auth;
  const resp = await fetch(`https://cognito-idp.${auth.region}.amazonaws.com/`, {
    method: "POST",
    headers: { "content-type": "application/x-amz-json-1.1", "x-amz-target": `AWSCognitoIdentityProviderService.${target}` },
    body: JSON.stringify({ ClientId: auth.client_id, ...payload }),
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(data.message || data.__type || `sign-in failed (HTTP ${resp.status})`);
  return data;
}

async function submitSignIn(event) {
  event.preventDefault();
  const f = new FormData($("#signin-form"));
  const errorBox = $("#signin-error");
  errorBox.hidden = true;
  try {
    let result;
    if (state.config.auth.type !== "cognito") {
      result = { AuthenticationResult: { AccessToken: String(f.get("token") || "").trim() } };
    } else if (challenge === null) {
      result = await cognito("InitiateAuth", { AuthFlow: "USER_PASSWORD_AUTH",
        AuthParameters: { USERNAME: f.get("username"), PASSWORD: f.get("password") } });
    } else {
      const responses = { USERNAME: challenge.username };
      if (challenge.name === "NEW_PASSWORD_REQUIRED") responses.NEW_PASSWORD = f.get("new_password");
      else responses.SOFTWARE_TOKEN_MFA_CODE = f.get("code");
      result = await cognito("RespondToAuthChallenge", { ChallengeName: challenge.name, Session: challenge.session,
                                                         ChallengeResponses: responses });
    }
    if (result.ChallengeName) {
      challenge = { name: result.ChallengeName, session: result.Session, username: f.get("username") || challenge?.username };
      $("#signin-password-fields").hidden = true;
      $("#signin-new-fields").hidden = result.ChallengeName !== "NEW_PASSWORD_REQUIRED";
      $("#signin-code-fields").hidden = result.ChallengeName !== "SOFTWARE_TOKEN_MFA";
      return;
    }
    // The API's authorizer checks the audience: Cognito's ID token carries the client id as `aud`.
    const tokens = result.AuthenticationResult || {};
    state.token = tokens.IdToken || tokens.AccessToken || "";
    if (!state.token) throw new Error("no token was issued");
    sessionStorage.setItem("pixdex.token", state.token);
    $("#signin").close();
    renderAccount();
    runSearch();
  } catch (err) {
    errorBox.textContent = err.message;
    errorBox.hidden = false;
  }
}

// ---------------------------------------------------------------- wiring

function dropTarget(node, onFiles) {
  node.addEventListener("dragover", (e) => {
    if ([...e.dataTransfer.types].includes("Files")) { e.preventDefault(); node.classList.add("dragging"); }
  });
  node.addEventListener("dragleave", () => node.classList.remove("dragging"));
  node.addEventListener("drop", (e) => {
    node.classList.remove("dragging");
    if (!e.dataTransfer.files.length) return;
    e.preventDefault();
    onFiles([...e.dataTransfer.files]);
  });
}

function wire() {
  $("#search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
  for (const r of document.querySelectorAll('input[name="mode"]')) r.addEventListener("change", () => runSearch());
  $("#filters").addEventListener("submit", (e) => { e.preventDefault(); rerun(); });
  $("#f-sort").addEventListener("change", () => rerun());
  $("#filters").addEventListener("reset", () => {
    state.facetFilters = { labels: [], format: [], camera: [], year: null };
    setTimeout(() => runSearch(), 0);
  });
  $("#home").addEventListener("click", (e) => { e.preventDefault(); $("#q").value = ""; runSearch(); });
  $("#filters-toggle").addEventListener("click", () => {
    const open = document.body.classList.toggle("sidebar-open");
    $("#filters-toggle").setAttribute("aria-expanded", String(open));
  });

  dropTarget($("#q"), (files) => searchByImage(files[0]));
  $("#image-search-button").addEventListener("click", () => $("#image-search-file").click());
  $("#image-search-file").addEventListener("change", (e) => {
    if (e.target.files.length) searchByImage(e.target.files[0]);
    e.target.value = "";
  });

  const zone = $("#dropzone");
  dropTarget(zone, uploadFiles);
  zone.addEventListener("click", () => $("#upload-file").click());
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("#upload-file").click(); }
  });
  $("#upload-file").addEventListener("change", (e) => {
    const files = [...e.target.files];
    e.target.value = "";
    uploadFiles(files);
  });
  // A photo dropped anywhere else is an upload, not a navigation away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  $("#detail-close").addEventListener("click", closeDetail);
  $("#detail").addEventListener("click", (e) => { if (e.target === $("#detail")) closeDetail(); });
  $("#show-text").addEventListener("change", () => state.detail && drawOverlay(state.detail));
  $("#show-faces").addEventListener("change", () => state.detail && drawOverlay(state.detail));
  $("#act-similar").addEventListener("click", () =>
    runRelated("similar", state.detail.id, `Similar to “${state.detail.name}”`));
  $("#act-duplicates").addEventListener("click", () =>
    runRelated("duplicates", state.detail.id, `Copies of “${state.detail.name}”`));
  $("#act-person").addEventListener("click", () =>
    runRelated("person", state.detail.id, `Same person as in “${state.detail.name}”`, { face: 0 }));
  $("#act-delete").addEventListener("click", deleteCurrent);
  $("#more").addEventListener("click", () => load({ append: true }));
  $("#signin-form").addEventListener("submit", submitSignIn);

  // Pages on scroll: the sentinel after the grid comes into view.
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) load({ append: true });
  }, { rootMargin: `${SCROLL_MARGIN_PX}px` }).observe($("#sentinel"));
}

async function start() {
  try {
    const resp = await fetch("config.json", { cache: "no-store" });
    if (resp.ok) state.config = { ...state.config, ...(await resp.json()) };
  } catch { /* no config: the API is this page's own origin */ }
  state.config.api = (state.config.api || "").replace(/\/$/, "");
  wire();
  renderAccount();
  const hash = new URLSearchParams(location.hash.slice(1));
  const size = Number(hash.get("size"));
  if (Number.isInteger(size) && size >= 1 && size <= 100) state.pageSize = size;
  if (hash.get("q")) $("#q").value = hash.get("q");
  const mode = hash.get("mode");
  if (mode && document.getElementById(`mode-${mode}`)) document.getElementById(`mode-${mode}`).checked = true;
  if (state.config.auth && !state.token) { openSignIn(); return; }
  runSearch();
}

document.addEventListener("DOMContentLoaded", start);
