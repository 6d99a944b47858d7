// nnunet-isrg viewer: plain JS on the server's JSON API (see /docs). No build step.
"use strict";

const PLANES = ["axial", "coronal", "sagittal"];
const AXIS = { z: 0, y: 1, x: 2 };
const VIEW_BOX = 360;  // px: the longer physical side of each view

// The token (servers started with --token) comes in the page address's fragment, /#token=T, which the
// browser never sends to a server; it is kept for this tab only and taken out of the address bar.
function takeToken() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem("isrg-token", fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("isrg-token");
}

const state = {
  token: takeToken(),
  info: null,            // GET /info
  sid: null,
  image: null,           // GET /sessions/{sid}/image
  cursor: [0, 0, 0],     // crosshair, voxel (z, y, x)
  lesions: [],
  current: null,         // current lesion id
  revision: 0,
  busy: 0,
  views: {},             // plane -> {canvas, ctx, range, label, bitmap, seq}
  gesture: null,         // the mouse press being drawn: {plane, down, path: [zyx...], moved}
  lassoTool: false,      // drags draw lassos instead of boxes
};

// ------------------------------------------------------------------ API
// Every request carries X-ISRG-Client: the server refuses a state-changing request without it (or a
// token), which is what a form or a simple request from another site would be. The token goes in a
// header, never in a URL (URLs end up in logs and histories).
function headers(extra) {
  const h = Object.assign({ "X-ISRG-Client": "viewer" }, extra || {});
  if (state.token) h["Authorization"] = "Bearer " + state.token;
  return h;
}

async function errorMessage(resp) {
  let detail = resp.statusText;
  try {
    const body = await resp.json();
    detail = typeof body.detail === "string" ? body.detail
      : Array.isArray(body.detail) ? body.detail.map(d => (d.loc || []).join(".") + ": " + d.msg).join("; ")
      : JSON.stringify(body);
  } catch (e) { /* not JSON */ }
  return `${detail} (HTTP ${resp.status})`;
}

async function api(method, path, body) {
  const opts = { method, headers: headers(body !== undefined ? { "Content-Type": "application/json" } : {}) };
  if (body !== undefined) opts.body = JSON.stringify(body);
  const resp = await fetch(path, opts);
  if (!resp.ok) throw new Error(await errorMessage(resp));
  return resp.status === 204 ? null : resp.json();
}

// ------------------------------------------------------------------ status, progress, errors
const $ = id => document.getElementById(id);

function setStatus(text) { $("status-text").textContent = text; }

async function busy(text, fn) {
  state.busy += 1;
  $("spinner").hidden = false;
  $("status").classList.add("busy");
  document.body.dataset.busy = "1";
  setStatus(text);
  try {
    return await fn();
  } catch (e) {
    showError(e.message || String(e));
    throw e;
  } finally {
    state.busy -= 1;
    if (state.busy === 0) {
      $("spinner").hidden = true;
      $("status").classList.remove("busy");
      delete document.body.dataset.busy;
    }
  }
}

function showError(msg) {
  $("error-text").textContent = msg;
  $("error").hidden = false;
  setStatus("Error (see above).");
}
function clearError() { $("error").hidden = true; }

// ------------------------------------------------------------------ session and image
async function ensureSession() {
  if (state.sid) return state.sid;
  const s = await api("POST", "sessions");
  state.sid = s.session_id;
  return state.sid;
}

async function waitPrepared(name) {
  // the server answers 202 at once and prepares in the background; poll its status
  $("progress").hidden = false;
  $("progress").removeAttribute("value");
  try {
    for (;;) {
      const s = await api("GET", `sessions/${state.sid}`);
      if (s.status === "preparing" || s.busy) {
        setStatus(s.message || `Preparing ${name}…`);
        await new Promise(r => setTimeout(r, 200));
        continue;
      }
      if (s.status === "error") throw new Error(s.message);
      return s;
    }
  } finally {
    $("progress").hidden = true;
  }
}

async function openPath() {
  const sel = $("file-select");
  if (!sel.value) { showError("Choose an image from the list first (or upload one)."); return; }
  const [dataDir, path] = JSON.parse(sel.value);
  clearError();
  await busy(`Opening ${path}…`, async () => {
    await ensureSession();
    await api("POST", `sessions/${state.sid}/open`, { path, data_dir: dataDir });
    await loadImage(await waitPrepared(path));
  });
}

function uploadFile(file) {
  clearError();
  return busy(`Uploading ${file.name}…`, async () => {
    await ensureSession();
    const limit = state.info ? state.info.max_upload_mb : Infinity;
    if (file.size > limit * 1048576) {
      throw new Error(`${file.name} is ${(file.size / 1048576).toFixed(0)} MiB; the server accepts at most ${limit.toFixed(0)} MiB.`);
    }
    await new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", `sessions/${state.sid}/upload?filename=${encodeURIComponent(file.name)}`);
      for (const [k, v] of Object.entries(headers({ "Content-Type": "application/octet-stream" }))) xhr.setRequestHeader(k, v);
      const bar = $("progress");
      bar.hidden = false;
      xhr.upload.onprogress = ev => { if (ev.lengthComputable) { bar.max = ev.total; bar.value = ev.loaded; } };
      xhr.onload = () => {
        if (xhr.status >= 200 && xhr.status < 300) return resolve();
        let detail = xhr.statusText;
        try { detail = JSON.parse(xhr.responseText).detail; } catch (e) { /* not JSON */ }
        reject(new Error(`${detail} (HTTP ${xhr.status})`));
      };
      xhr.onerror = () => reject(new Error(`upload of ${file.name} failed (connection closed: too large?)`));
      xhr.send(file);
    });
    await loadImage(await waitPrepared(file.name));
  });
}

async function loadImage(sessionState) {
  state.image = sessionState.image;
  const shape = state.image.shape_zyx;
  state.cursor = shape.map(n => Math.floor(n / 2));
  for (const plane of PLANES) {
    const v = state.views[plane];
    const g = state.image.planes[plane];
    const [R, C] = g.size;
    const [sr, sc] = g.pixel_spacing_mm;
    const scale = VIEW_BOX / Math.max(R * sr, C * sc);
    v.canvas.width = Math.max(1, Math.round(C * sc * scale));
    v.canvas.height = Math.max(1, Math.round(R * sr * scale));
    v.range.max = g.n_slices - 1;
    v.bitmap = null;
  }
  applyLesions(sessionState.lesions, sessionState.current_lesion, sessionState.revision);
  for (const b of ["undo-btn", "reset-btn", "new-btn"]) $(b).disabled = false;
  document.body.dataset.image = state.image.name;
  setStatus(`${state.image.name}: ${shape.join(" × ")} voxels (z, y, x). Click on a lesion.`);
  await refreshViews();
  clearReport();
}

// ------------------------------------------------------------------ views
function sliceIndex(plane) { return state.cursor[AXIS[state.image.planes[plane].axis]]; }

function windowQuery() {
  const w = $("window-select").value;
  let q = `window=${w}`;
  if (w === "custom") q += `&width=${encodeURIComponent($("window-width").value)}&level=${encodeURIComponent($("window-level").value)}`;
  if ($("overlay-toggle").checked) q += "&overlay=1";
  return q;
}

async function fetchSlice(plane) {
  if (!state.image) return;
  const v = state.views[plane];
  const seq = ++v.seq;
  const idx = sliceIndex(plane);
  const resp = await fetch(`sessions/${state.sid}/slice/${plane}/${idx}?${windowQuery()}&r=${state.revision}`,
                           { headers: headers() });
  if (!resp.ok) throw new Error(await errorMessage(resp));
  const bitmap = await createImageBitmap(await resp.blob());
  if (seq !== v.seq) return;  // a newer slice was asked for meanwhile
  v.bitmap = bitmap;
  drawView(plane);
}

async function refreshViews(planes) {
  await Promise.all((planes || PLANES).map(fetchSlice));
  document.body.dataset.revision = String(state.revision);
}

function drawView(plane) {
  const v = state.views[plane];
  const g = state.image.planes[plane];
  const { ctx, canvas } = v;
  const [R, C] = g.size;
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (v.bitmap) ctx.drawImage(v.bitmap, 0, 0, canvas.width, canvas.height);
  const px = canvas.width / C, py = canvas.height / R;
  // crosshair at the other two axes' cursor
  const col = state.cursor[AXIS[g.columns]];
  const rowIdx = state.cursor[AXIS[g.rows]];
  const row = g.rows_reversed ? R - 1 - rowIdx : rowIdx;
  ctx.strokeStyle = "rgba(255, 230, 0, 0.55)";
  ctx.lineWidth = 1;
  ctx.setLineDash([4, 4]);
  ctx.beginPath();
  ctx.moveTo((col + 0.5) * px, 0); ctx.lineTo((col + 0.5) * px, canvas.height);
  ctx.moveTo(0, (row + 0.5) * py); ctx.lineTo(canvas.width, (row + 0.5) * py);
  ctx.stroke();
  ctx.setLineDash([]);
  // clicks of the current lesion lying on this slice
  const cur = state.lesions.find(l => l.lesion_id === state.current);
  const a = AXIS[g.axis], idx = sliceIndex(plane);
  const toCanvas = p => [(p[AXIS[g.columns]] + 0.5) * px,
                          ((g.rows_reversed ? R - 1 - p[AXIS[g.rows]] : p[AXIS[g.rows]]) + 0.5) * py];
  for (const c of (cur ? cur.clicks : [])) {
    const p = c.voxel_zyx;
    if (Math.abs(p[a] - idx) > 0.5) continue;
    const [x, y] = toCanvas(p);
    ctx.beginPath();
    ctx.arc(x, y, 5, 0, 2 * Math.PI);
    ctx.fillStyle = c.positive ? "#44d17a" : "#ff4fd8";
    ctx.fill();
    ctx.strokeStyle = "#000";
    ctx.stroke();
  }
  for (const p of (cur ? cur.prompts || [] : [])) drawPrompt(ctx, g, a, idx, p, toCanvas, px, py);
  const ges = state.gesture;
  if (ges && ges.plane === plane && ges.moved) {
    const positive = !(ges.down.button === 2 || ges.down.shiftKey);
    drawPrompt(ctx, g, a, idx, gesturePrompt(ges, positive), toCanvas, px, py);
  }
  v.label.textContent = `${g.axis} ${idx + 1}/${g.n_slices}`;
  v.range.value = idx;
}

// the current lesion's box, scribbles and lassos (and the one being drawn) where they cross this slice
function drawPrompt(ctx, g, a, idx, p, toCanvas, px, py) {
  ctx.strokeStyle = p.positive ? "#44d17a" : "#ff4fd8";
  ctx.lineWidth = 2;
  ctx.beginPath();
  if (p.kind === "box") {
    const [lo, hi] = p.corners_voxel_zyx || p.corners;
    if (idx < Math.min(lo[a], hi[a]) - 0.5 || idx > Math.max(lo[a], hi[a]) + 0.5) return;
    const [x0, y0] = toCanvas(lo), [x1, y1] = toCanvas(hi);
    ctx.rect(Math.min(x0, x1) - px / 2, Math.min(y0, y1) - py / 2, Math.abs(x1 - x0) + px, Math.abs(y1 - y0) + py);
  } else if (p.kind === "scribble") {
    const pts = (p.points_voxel_zyx || p.points || []).filter(q => Math.abs(q[a] - idx) <= 0.5);
    pts.forEach((q, i) => { const [x, y] = toCanvas(q); if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y); });
  } else if (p.kind === "lasso") {
    if (AXIS[p.slice_axis] !== a || p.slice_index !== idx) return;
    p.polygon.forEach((q, i) => {
      const zyx = [0, 0, 0], other = [0, 1, 2].filter(k => k !== a);
      zyx[a] = idx; zyx[other[0]] = q[0]; zyx[other[1]] = q[1];
      const [x, y] = toCanvas(zyx);
      if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.closePath();
  }
  ctx.stroke();
  ctx.lineWidth = 1;
}

function drawAll() { for (const p of PLANES) if (state.views[p].bitmap) drawView(p); }

function voxelAt(plane, ev) {
  const v = state.views[plane];
  const g = state.image.planes[plane];
  const [R, C] = g.size;
  const rect = v.canvas.getBoundingClientRect();
  const col = Math.min(C - 1, Math.max(0, Math.floor((ev.clientX - rect.left) / rect.width * C)));
  const row = Math.min(R - 1, Math.max(0, Math.floor((ev.clientY - rect.top) / rect.height * R)));
  const zyx = state.cursor.slice();
  zyx[AXIS[g.rows]] = g.rows_reversed ? R - 1 - row : row;
  zyx[AXIS[g.columns]] = col;
  return zyx;
}

function setSlice(plane, index) {
  const g = state.image.planes[plane];
  const i = Math.max(0, Math.min(g.n_slices - 1, index));
  if (i === sliceIndex(plane)) return;
  state.cursor[AXIS[g.axis]] = i;
  drawAll();  // crosshairs of the other views move at once
  fetchSlice(plane).catch(e => showError(e.message));
}

async function clickAt(plane, ev) {
  if (!state.image || ev.button === 1) return;
  ev.preventDefault();
  const zyx = voxelAt(plane, ev);
  const navigateOnly = ev.ctrlKey || ev.altKey || ev.metaKey;
  const positive = !(ev.button === 2 || ev.shiftKey);
  const moved = PLANES.filter(p => p !== plane && sliceIndex(p) !== zyx[AXIS[state.image.planes[p].axis]]);
  state.cursor = zyx;
  drawAll();
  if (navigateOnly) { await refreshViews(moved); return; }
  clearError();
  await busy(`${positive ? "Positive" : "Negative"} click at (z, y, x) ${zyx.join(", ")}: computing the mask…`, async () => {
    const r = await api("POST", `sessions/${state.sid}/clicks`, { point: zyx, positive, space: "voxel" });
    state.revision = r.revision;
    await refreshLesions();
    await refreshViews();
    setStatus(`Lesion ${r.lesion.lesion_id}: ${r.lesion.n_clicks} click(s), ${fmt(r.lesion.volume_ml, 2)} mL.`);
  });
  await loadReport();
}

// ------------------------------------------------------------------ gestures
// A press without moving is a click (above). A drag draws a prompt on the view's slice: a box (plain
// drag, a 2D box on this slice), a scribble (Alt, Ctrl or Cmd + drag) or, with the lasso tool on, a
// lasso (the drag's path, closed). Right button or Shift: negative, as for clicks.
const DRAG_PX = 4;

function startGesture(plane, ev) {
  if (!state.image || ev.button === 1) return;
  ev.preventDefault();
  state.gesture = { plane, down: ev, path: [voxelAt(plane, ev)], moved: false };
}

function moveGesture(ev) {
  const ges = state.gesture;
  if (!ges) return;
  if (!ges.moved && Math.hypot(ev.clientX - ges.down.clientX, ev.clientY - ges.down.clientY) < DRAG_PX) return;
  ges.moved = true;
  const zyx = voxelAt(ges.plane, ev), last = ges.path[ges.path.length - 1];
  if (zyx.some((v, i) => v !== last[i])) ges.path.push(zyx);
  drawView(ges.plane);
}

function gestureKind(ges) {
  return state.lassoTool ? "lasso" : (ges.down.altKey || ges.down.ctrlKey || ges.down.metaKey) ? "scribble" : "box";
}

function gesturePrompt(ges, positive) {
  const kind = gestureKind(ges), path = ges.path;
  if (kind === "box") return { kind, corners: [path[0], path[path.length - 1]], positive };
  if (kind === "scribble") return { kind, points: path, positive };
  const a = AXIS[state.image.planes[ges.plane].axis], other = [0, 1, 2].filter(k => k !== a);
  return { kind, slice_axis: "zyx"[a], slice_index: path[0][a], polygon: path.map(p => [p[other[0]], p[other[1]]]),
           positive };
}

async function endGesture() {
  const ges = state.gesture;
  if (!ges) return;
  state.gesture = null;
  if (!ges.moved) { await clickAt(ges.plane, ges.down); return; }
  const positive = !(ges.down.button === 2 || ges.down.shiftKey);
  const body = gesturePrompt(ges, positive);
  if (body.kind === "lasso" && body.polygon.length < 3) { drawView(ges.plane); showError("A lasso needs a longer path: draw around the region."); return; }
  clearError();
  await busy(`${positive ? "Positive" : "Negative"} ${body.kind}: computing the mask…`, async () => {
    const r = await api("POST", `sessions/${state.sid}/prompts`, Object.assign({ space: "voxel" }, body));
    state.revision = r.revision;
    await refreshLesions();
    await refreshViews();
    setStatus(`Lesion ${r.lesion.lesion_id}: ${body.kind} added, ${fmt(r.lesion.volume_ml, 2)} mL.`);
  });
  await loadReport();
}

function setLassoTool(on) {
  state.lassoTool = on;
  $("lasso-btn").setAttribute("aria-pressed", String(on));
}

// ------------------------------------------------------------------ lesions
function applyLesions(lesions, current, revision) {
  state.lesions = lesions || [];
  state.current = current;
  if (revision !== undefined) state.revision = revision;
  const body = $("lesion-table").querySelector("tbody");
  body.innerHTML = "";
  for (const l of state.lesions) {
    const tr = document.createElement("tr");
    tr.dataset.lesion = l.lesion_id;
    if (l.lesion_id === current) tr.classList.add("current");
    tr.innerHTML = `<td><span class="swatch" style="background:${l.colour}"></span></td>
      <td>${l.lesion_id}${l.lesion_id === current ? " (current)" : ""}</td><td>${l.n_clicks}</td>
      <td>${l.n_voxels ? fmt(l.volume_ml, 2) + " mL" : "–"}</td><td>${l.iou_pred == null ? "–" : fmt(l.iou_pred, 2)}</td>`;
    tr.addEventListener("click", () => selectLesion(l.lesion_id));
    body.appendChild(tr);
  }
  updateExports();
  drawAll();
}

async function refreshLesions() {
  const r = await api("GET", `sessions/${state.sid}/lesions`);
  applyLesions(r.lesions, r.current_lesion, r.revision);
}

async function lesionAction(label, path) {
  clearError();
  await busy(label, async () => {
    const r = await api("POST", `sessions/${state.sid}/${path}`);
    state.revision = r.revision;
    await refreshLesions();
    await refreshViews();
    setStatus(`Lesion ${r.lesion.lesion_id}: ${r.lesion.n_clicks} click(s).`);
  });
  await loadReport();
}

async function selectLesion(lid) {
  if (lid === state.current) return;
  await lesionAction(`Selecting lesion ${lid}…`, `lesions/${lid}/select`);
}

// ------------------------------------------------------------------ report
function fmt(v, nd) { return v == null || Number.isNaN(v) ? "n/a" : Number(v).toFixed(nd); }

function clearReport() {
  $("report-lesion").textContent = "";
  $("report-text").textContent = "Click on a lesion to see its report.";
  $("attr-table").querySelector("tbody").innerHTML = "";
  $("measure-table").querySelector("tbody").innerHTML = "";
  delete $("report-panel").dataset.lesion;
}

async function loadReport() {
  const cur = state.lesions.find(l => l.lesion_id === state.current);
  if (!cur || !cur.n_voxels) { clearReport(); return; }
  await busy(`Measuring lesion ${cur.lesion_id} and writing its report…`, async () => {
    renderReport(await api("GET", `sessions/${state.sid}/lesions/${cur.lesion_id}/report`));
    setStatus(`Lesion ${cur.lesion_id}: report ready.`);
  });
}

function renderReport(payload) {
  const rep = payload.report;
  const schema = state.info.schema;
  $("report-lesion").textContent = `(lesion ${payload.lesion_id})`;
  $("report-text").textContent = payload.text || "(no attributes)";
  const body = $("attr-table").querySelector("tbody");
  body.innerHTML = "";
  for (const [name, a] of Object.entries(rep.attributes)) {
    const tr = document.createElement("tr");
    tr.dataset.attribute = name;
    const sel = document.createElement("select");
    sel.dataset.attribute = name;
    // an attribute the model never had a training label for: no model class to offer, greyed out
    const untrained = a.training_cases === 0;
    const model = a.model || { value: untrained ? null : a.value, probability: untrained ? null : a.probability };
    const automatic = untrained
      ? (a.source === "measurement" ? `${a.value} (measured)` : "not assessed by the model")
      : `${model.value} (model)`;
    sel.add(new Option(automatic, ""));
    for (const cls of schema[name] || []) {
      const p = a.model && a.model.probabilities ? a.model.probabilities[cls] : null;
      sel.add(new Option(`${cls}${p == null ? "" : " · " + fmt(p, 2)}`, cls));
    }
    sel.value = a.source === "reader" ? a.value : "";
    sel.addEventListener("change", () => overrideAttribute(payload.lesion_id, name, sel.value || null));
    const evidence = (a.evidence || []).map(e => `${e.verdict === "contradicts" ? "✗" : "✓"} ${e.text}`).join("; ");
    const source = a.low_support ? `${a.source} · low support (${a.training_cases} cases)` : a.source;
    tr.innerHTML = `<td>${name}</td><td></td><td>${model.probability == null ? "–" : fmt(model.probability, 2)}</td>
      <td class="src-${a.source.replace(" ", "-")}"></td>`;
    tr.children[3].textContent = source;
    if (untrained) {
      tr.classList.add("not-assessed");
      tr.title = a.reason || "not assessed by the model";
    }
    if (a.low_support) tr.classList.add("low-support");
    tr.children[1].appendChild(sel);
    body.appendChild(tr);
    if (evidence) {
      const er = document.createElement("tr");
      er.className = "evidence-row";
      const td = document.createElement("td");
      td.colSpan = 4;
      td.className = "evidence";
      td.textContent = evidence;
      er.appendChild(td);
      body.appendChild(er);
    }
  }
  const m = rep.measurements, r = m.recist || {}, hu = m.hu || {}, sh = m.shell || {}, loc = rep.location || {};
  const ext = m.extents_mm || {};
  const rows = [
    ["Volume", `${fmt(m.volume_ml, 2)} mL (${m.n_voxels} voxels)`],
    ["RECIST long / short axis", `${fmt(r.long_axis_mm, 1)} / ${fmt(r.short_axis_mm, 1)} mm (axial slice ${r.slice_index})`],
    ["Extents x / y / z", `${fmt(ext.x, 1)} / ${fmt(ext.y, 1)} / ${fmt(ext.z, 1)} mm`],
    ["HU mean ± std", `${fmt(hu.mean, 1)} ± ${fmt(hu.std, 1)} HU`],
    ["Surroundings", sh.mean_hu == null ? "n/a" : `${fmt(sh.mean_hu, 1)} HU (contrast ${fmt(sh.contrast_hu, 1)} HU)`],
    ["Centroid (x, y, z)", loc.centroid_world_xyz ? loc.centroid_world_xyz.map(v => fmt(v, 1)).join(", ") + " mm" : "n/a"],
  ];
  if (loc.organ) rows.push(["Organ", loc.organ]);
  $("measure-table").querySelector("tbody").innerHTML =
    rows.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join("");
  $("report-panel").dataset.lesion = String(payload.lesion_id);
}

async function overrideAttribute(lid, name, value) {
  clearError();
  await busy(`Setting ${name} of lesion ${lid} to ${value || "the model's class"}…`, async () => {
    renderReport(await api("PUT", `sessions/${state.sid}/lesions/${lid}/attributes/${encodeURIComponent(name)}`, { value }));
    setStatus(`Lesion ${lid}: ${name} ${value ? "set to " + value + " (reader)" : "back to the model's class"}.`);
  });
}

// ------------------------------------------------------------------ exports
function updateExports() {
  const base = state.sid ? `sessions/${state.sid}/export/` : null;
  const anyMask = state.lesions.some(l => l.n_voxels > 0);
  const cur = state.lesions.find(l => l.lesion_id === state.current);
  const curMask = cur && cur.n_voxels > 0;
  const set = (id, path, enabled) => {
    const b = $(id);
    b.disabled = !(enabled && base);
    b.dataset.path = b.disabled ? "" : base + path;
  };
  set("exp-labels", "labels.nii.gz", anyMask);
  set("exp-json", "report.json", anyMask);
  set("exp-md", "report.md", anyMask);
  set("exp-dicom", "dicom.zip", anyMask);
  set("exp-mask", `lesions/${state.current}/mask.nii.gz`, curMask);
  set("exp-key", `lesions/${state.current}/key_image.png`, curMask);
}

function attachmentName(resp, fallback) {
  const m = /filename="([^"]+)"/.exec(resp.headers.get("Content-Disposition") || "");
  return m ? m[1] : fallback;
}

// Downloads go through fetch (headers: the token) and a blob, not through a link, so that the token is
// in no URL.
async function downloadExport(button) {
  const path = button.dataset.path;
  if (!path) return;
  clearError();
  await busy(`Exporting ${button.textContent}…`, async () => {
    const resp = await fetch(path, { headers: headers() });
    if (!resp.ok) throw new Error(await errorMessage(resp));
    const url = URL.createObjectURL(await resp.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = attachmentName(resp, path.split("/").pop());
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    setStatus(`Exported ${a.download}.`);
  });
}

// ------------------------------------------------------------------ start
async function loadFiles() {
  const r = await api("GET", "files");
  const sel = $("file-select");
  sel.innerHTML = "";
  if (!r.files.length) sel.add(new Option("(no data folder: upload an image)", ""));
  const multi = (state.info.data_dirs || []).length > 1;
  for (const f of r.files) {
    const name = (multi ? state.info.data_dirs[f.data_dir].name + ": " : "") + f.path + (f.kind === "dicom" ? " (DICOM)" : "");
    sel.add(new Option(name, JSON.stringify([f.data_dir, f.path])));
  }
}

function bindViews() {
  for (const plane of PLANES) {
    const canvas = $(`canvas-${plane}`);
    const v = { canvas, ctx: canvas.getContext("2d"), range: $(`range-${plane}`),
                label: canvas.parentElement.querySelector(".slice-label"), bitmap: null, seq: 0 };
    state.views[plane] = v;
    canvas.addEventListener("contextmenu", ev => ev.preventDefault());
    canvas.addEventListener("mousedown", ev => startGesture(plane, ev));
    canvas.addEventListener("wheel", ev => {
      if (!state.image) return;
      ev.preventDefault();
      setSlice(plane, sliceIndex(plane) + (ev.deltaY > 0 ? 1 : -1));
    }, { passive: false });
    v.range.addEventListener("input", () => { if (state.image) setSlice(plane, Number(v.range.value)); });
  }
}

async function start() {
  bindViews();
  window.addEventListener("mousemove", moveGesture);
  window.addEventListener("mouseup", () => { endGesture().catch(() => {}); });
  $("lasso-btn").addEventListener("click", () => setLassoTool(!state.lassoTool));
  $("error-close").addEventListener("click", clearError);
  $("open-btn").addEventListener("click", () => openPath().catch(() => {}));
  $("upload-input").addEventListener("change", ev => {
    const f = ev.target.files[0];
    if (f) uploadFile(f).catch(() => {});
    ev.target.value = "";
  });
  for (const b of document.querySelectorAll("#export-panel .exports button")) {
    b.addEventListener("click", () => downloadExport(b).catch(() => {}));
  }
  $("undo-btn").addEventListener("click", () => lesionAction("Undoing the last click…", "undo").catch(() => {}));
  $("reset-btn").addEventListener("click", () => lesionAction("Resetting the lesion…", "reset").catch(() => {}));
  $("new-btn").addEventListener("click", () => lesionAction("Starting a new lesion…", "lesions").catch(() => {}));
  $("window-select").addEventListener("change", () => {
    const w = $("window-select").value;
    $("custom-window").hidden = w !== "custom";
    if (w !== "custom" && state.info) {
      $("window-width").value = state.info.windows[w].width;
      $("window-level").value = state.info.windows[w].level;
    }
    refreshViews().catch(e => showError(e.message));
  });
  for (const id of ["window-width", "window-level", "overlay-toggle"]) {
    $(id).addEventListener("change", () => refreshViews().catch(e => showError(e.message)));
  }
  document.addEventListener("keydown", ev => {
    if (!state.image || ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT") return;
    if (ev.key === "z" || ev.key === "Z") lesionAction("Undoing the last click…", "undo").catch(() => {});
    if (ev.key === "n" || ev.key === "N") lesionAction("Starting a new lesion…", "lesions").catch(() => {});
    if (ev.key === "l" || ev.key === "L") setLassoTool(!state.lassoTool);
  });
  try {
    state.info = await api("GET", "info");
    await loadFiles();
    setStatus("Choose an image and press Open, or upload one.");
    document.body.dataset.ready = "1";
  } catch (e) {
    showError(`Cannot reach the server API: ${e.message}` + (e.message.includes("401") ? " — open the page as /#token=YOUR_TOKEN" : ""));
  }
}

start();
