// sbd-stream live viewer page: plain JS and canvas, no dependencies.
// All panels share one view in physical units (A at the specimen), so raw frames at the detector
// pixel and denoised / LLR frames at a coarser working pixel line up, and the scale bar is right
// whatever each frame's sampling. Each tick asks the server for the region in view of each frame,
// binned to the canvas size (1:1 once the region is no larger than the canvas).
"use strict";
window.sbdStatus = { updates: { raw: 0, denoised: 0, llr: 0 }, seq: {}, status: null, errors: 0,
                     scalebar: "", llrLimit: null, view: null, region: {} };
const $ = (id) => document.getElementById(id);
const KINDS = ["raw", "denoised", "llr"];
const shown = { raw: null, denoised: null, llr: null };  // {bmp, region, px, seq, ts, latency, window, ...}
const view = { cx: 0, cy: 0, w: 0, fit: true, dirty: true };  // centre and width of the square view, A
let status = null, lastKey = "", updTimes = [], inFlight = false;
const fmt = (x, d = 1) => (x === null || x === undefined || Number.isNaN(x)) ? "–" : Number(x).toFixed(d);
const ms = (s) => (s === null || s === undefined) ? "–" : fmt(1000 * s, 0);
// a latency is the frame's ts (the sender's clock) to this machine's receipt: a negative one, or one of
// an hour or more, is the two clocks' offset (or a ts that is no wall-clock time), not a delay
const dur = (s) => s >= 3600 ? `${fmt(s / 3600)} h` : s >= 60 ? `${fmt(s / 60)} min` : s >= 1 ? `${fmt(s)} s` : `${fmt(1000 * s, 0)} ms`;
const clockOffset = (s) => (s === null || s === undefined || (s >= 0 && s < 3600)) ? null
  : s < 0 ? `clock offset, not a latency: the sender's clock is ~${dur(-s)} ahead of this machine's`
  : `clock offset, not a latency: the sender's clock is ~${dur(s)} behind this machine's, or its ts is no wall-clock time`;
const latencyText = (el, s, text) => {  // the number, or "clock offset" with the reason as its tooltip
  const off = clockOffset(s);
  $(el).textContent = off ? "clock offset" : text;
  $(el).title = off || "";
  return off;
};

for (const id of ["lo", "hi", "llrhi", "fps", "opacity"]) {
  $(id).addEventListener("input", () => { $(id + "-v").textContent = $(id).value; lastKey = ""; drawAll(); });
}
$("contrast").addEventListener("change", () => { lastKey = ""; });
$("overlay").addEventListener("change", () => {
  $("overlay-cap").style.visibility = $("overlay").checked ? "visible" : "hidden"; drawAll();
});

// --- geometry: every frame kind has a pixel size (A) and a shape; unknown pixel sizes fall back to
// the raw frame's pixels as the unit, so panels still line up and the scale bar says "px"
function frameGeom(kind) {
  const f = status && status.frames[kind];
  if (!f) return null;
  let px = f.pixel_size_A, unit = "Å";
  if (px == null) {
    const raw = status.frames.raw || f;
    px = raw.shape[1] / f.shape[1];
    unit = "px";
  }
  return { px, unit, h: f.shape[0], w: f.shape[1] };
}
const refGeom = () => frameGeom("denoised") || frameGeom("raw") || frameGeom("llr");

function fitView() {
  const g = refGeom();
  if (!g) return;
  view.w = Math.max(g.w, g.h) * g.px; view.cx = g.w * g.px / 2; view.cy = g.h * g.px / 2;
  view.fit = true; view.dirty = true;
}

function clampView() {
  const g = refGeom(), raw = frameGeom("raw") || g;
  if (!g) return;
  const full = Math.max(g.w, g.h) * g.px;
  view.w = Math.min(Math.max(view.w, 16 * raw.px), full);
  view.cx = Math.min(Math.max(view.cx, 0), g.w * g.px);
  view.cy = Math.min(Math.max(view.cy, 0), g.h * g.px);
  view.fit = view.w >= full * 0.999;
  view.dirty = true;
}

function regionFor(kind) {  // the kind's pixels in view: x0,y0,x1,y1 (clamped to the frame)
  const g = frameGeom(kind);
  if (!g) return null;
  const x0 = Math.max(0, Math.floor((view.cx - view.w / 2) / g.px));
  const y0 = Math.max(0, Math.floor((view.cy - view.w / 2) / g.px));
  const x1 = Math.min(g.w, Math.ceil((view.cx + view.w / 2) / g.px));
  const y1 = Math.min(g.h, Math.ceil((view.cy + view.w / 2) / g.px));
  return (x1 > x0 && y1 > y0) ? [x0, y0, x1, y1] : null;
}

// --- drawing ------------------------------------------------------------------------------------
function sizeCanvas(cv) {
  const r = cv.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(r.width * dpr)), h = Math.max(1, Math.round(r.height * dpr));
  if (cv.width !== w || cv.height !== h) { cv.width = w; cv.height = h; }
  return { w, h, css: r.width };
}

function blit(ctx, item, cw) {  // draw an image covering item.region (its own pixels) into the view
  const s = view.w / cw, [x0, y0, x1, y1] = item.region;
  const left = view.cx - view.w / 2, top = view.cy - view.w / 2;
  ctx.drawImage(item.bmp, (x0 * item.px - left) / s, (y0 * item.px - top) / s,
                (x1 - x0) * item.px / s, (y1 - y0) * item.px / s);
}

function draw(kind) {
  const cv = $("cv-" + kind), { w } = sizeCanvas(cv), ctx = cv.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, cv.width, cv.height);
  if (shown[kind]) blit(ctx, shown[kind], w);
  if (kind === "denoised" && $("overlay").checked && shown.llr) {
    ctx.globalAlpha = Number($("opacity").value);
    blit(ctx, shown.llr, w);
    ctx.globalAlpha = 1;
  }
  drawScaleBar(cv.parentElement.querySelector(".scalebar"), cv.getBoundingClientRect().width);
}

function niceLength(target) {
  const p = Math.pow(10, Math.floor(Math.log10(target)));
  for (const m of [5, 2, 1]) if (m * p <= target) return m * p;
  return p;
}

function drawScaleBar(el, cssWidth) {
  const g = refGeom();
  if (!g || !view.w || !cssWidth) { el.style.display = "none"; return; }
  const L = niceLength(view.w * 0.22), px = L / view.w * cssWidth;
  let text;
  if (g.unit === "Å") {
    const nm = L / 10, a = L >= 1 ? fmt(L, 0) : fmt(L, 1);
    text = `${a} Å = ${nm >= 1 ? fmt(nm, 0) : fmt(nm, nm >= 0.1 ? 1 : 2)} nm`;
  } else {
    text = `${fmt(L, 0)} px (pixel size not stated)`;
  }
  el.querySelector(".bar").style.width = `${px}px`;
  el.querySelector("span").textContent = text;
  el.style.display = "flex";
  if (el.id === "scalebar") window.sbdStatus.scalebar = text;
}

function drawAll() {
  for (const k of KINDS) draw(k);
  const g = refGeom(), raw = frameGeom("raw");
  window.sbdStatus.view = { cx: view.cx, cy: view.cy, w: view.w, fit: view.fit };
  if (!g) return;
  const per = raw ? view.w / raw.px / $("cv-denoised").getBoundingClientRect().width : null;  // detector px per screen px
  let zoom = view.fit ? "full frame" : `${fmt(view.w / 10, 1)} nm field`;
  if (per) zoom += per >= 1 ? ` · 1 screen px = ${fmt(per, 2)} detector px` : ` · 1 detector px = ${fmt(1 / per, 1)} screen px`;
  $("zoom-info").textContent = zoom;
}

// --- loading images -----------------------------------------------------------------------------
async function loadImage(kind, params) {
  const region = regionFor(kind);
  if (!region) return false;
  const side = Math.max(16, Math.ceil($("cv-denoised").width));  // the server refuses side < 1
  const r = await fetch(`/image/${kind}.png?${params}&region=${region.join(",")}&side=${side}`, { cache: "no-store" });
  if (!r.ok) return false;
  const h = (k) => r.headers.get(k);
  const bmp = await createImageBitmap(await r.blob());
  const g = frameGeom(kind);
  const px = h("X-Pixel-Size-A") ? Number(h("X-Pixel-Size-A")) : g.px;
  shown[kind] = { bmp, px: g.unit === "Å" ? px : g.px, region: h("X-Region").split(",").map(Number),
                  seq: Number(h("X-Seq")), ts: Number(h("X-Ts")), latency: Number(h("X-Latency")),
                  window: h("X-Window"), limit: h("X-Llr-Limit"), bin: Number(h("X-Bin")), lane: h("X-Lane") };
  $("empty-" + kind).style.display = "none";
  window.sbdStatus.updates[kind] += 1;
  window.sbdStatus.seq[kind] = shown[kind].seq;
  window.sbdStatus.region[kind] = shown[kind].region;
  return true;
}

function showStatus(st) {
  const f = st.frames, d = f.denoised || f.raw;
  $("acq").textContent = d ? d.acq : (st.series.acq || "–");
  $("seq").textContent = shown.denoised ? shown.denoised.seq : (d ? d.seq : "–");
  $("engine").textContent = (f.denoised && f.denoised.engine) ? "engine " + f.denoised.engine : "";
  $("source").textContent = (st.series.meta && st.series.meta.source) ? "source " + st.series.meta.source : "";
  for (const k of KINDS) {
    const x = f[k], s = shown[k];
    $("cap-" + k).textContent = x ? `#${s ? s.seq : x.seq} · ${x.shape[1]}×${x.shape[0]}`
      + (k === "denoised" && x.pixel_size_A ? ` @ ${fmt(x.pixel_size_A, 3)} Å` : "")
      + (s && s.bin > 1 ? ` · bin ${s.bin}` : " · 1:1") + ` · ${fmt(x.rate_hz)} /s`
      + (x.blank ? " · blank frame: no beam" : "") : "–";
  }
  // no newer frame for a while (detector stopped, beam off at the gun, service gone): the frame shown
  // is not the specimen now, and the page says so in red (docs/viewer.md, "Frame time")
  const cur = f.denoised || f.raw;
  const stale = cur && cur.stale ? `no new ${f.denoised ? "denoised" : "raw"} frame for ${dur(cur.age_s)}: `
    + "the frame shown is not the specimen now" : "";
  $("stale").textContent = stale;
  window.sbdStatus.stale = stale;
  const main = shown.denoised || shown.raw, t = d && d.time;
  if (main && t) {
    // the shown frame's time since its series_start: none when unknown, or when the frame shown is of an
    // earlier series than the status' newest frame (a re-armed acquisition, for one refresh)
    const sinceS = (t.since_start_s == null) ? null : t.since_start_s + (main.ts - t.ts);
    const since = (sinceS == null || sinceS < 0) ? "" : `t = ${fmt(sinceS, 3)} s · `;
    const clock = new Date(main.ts * 1000).toISOString().slice(11, 23);
    $("f-time").textContent = `${since}frame #${main.seq} · ${clock} UTC` + (t.exposure_s ? ` · exposure ${fmt(1000 * t.exposure_s, 1)} ms` : "");
  }
  const dose = f.raw && f.raw.dose;
  if (dose) {
    const nominal = dose.e_per_A2 ? `${fmt(dose.e_per_A2, 0)} e/Å² · ${fmt(dose.counts_per_px, 3)} counts/px` : "not stated";
    $("f-dose").textContent = `${nominal} · this frame: ${fmt(dose.mean_counts_per_px, 3)} counts/px mean`;
    $("f-dose").title = "nominal dose from " + dose.source;
  }
  const g = f.raw || f.denoised;
  if (g) {
    const parts = [];
    if (f.raw) parts.push(`detector ${f.raw.pixel_size_A ? fmt(f.raw.pixel_size_A, 3) + " Å" : "?"}`);
    if (f.denoised) parts.push(`denoised ${f.denoised.pixel_size_A ? fmt(f.denoised.pixel_size_A, 3) + " Å" : "?"}`);
    $("f-pixel").textContent = parts.join(" · ");
    $("f-pixel").title = KINDS.filter((k) => f[k]).map((k) => `${k}: ${f[k].pixel_source}`).join("\n");
  }
  // the viewer's own latency (sender timestamp -> viewer receipt) of the live lane, or of denoised frames
  const lat = st.latency || {}, names = Object.keys(lat).filter((n) => lat[n].kind === "denoised" && lat[n].n > 0);
  const live = names.find((n) => lat[n].lane === "live") || names[0];
  if (live) {
    const L = lat[live], lane = L.lane ? `lane "${L.lane}"` : "denoised frames";
    const off = latencyText("m-live", L.p50_s, `${ms(L.p50_s)} / ${ms(L.p99_s)}`);
    $("m-live-l").textContent = `latency at the viewer${L.lane && L.lane !== "live" ? ` (${L.lane})` : ""} p50 / p99 (ms)`;
    $("f-lane").textContent = off ? `${lane}: ${off} (docs/viewer.md, Limits)`
      : `${lane}: ${ms(L.p50_s)} ms p50, ${ms(L.p99_s)} ms p99, detector timestamp → viewer (${L.n} frames, 5 s)`;
  }
  if (shown.denoised) latencyText("m-shown", shown.denoised.latency, ms(shown.denoised.latency));
  const w = shown.denoised && shown.denoised.window;
  if (w) {
    const [lo, hi] = w.split(",").map(Number);
    $("f-window").textContent = `${$("contrast").selectedOptions[0].textContent}: ${fmt(lo, 3)} – ${fmt(hi, 3)} counts/px`;
  }
  const lim = shown.llr && shown.llr.limit;
  if (lim) {
    $("colorbar-lo").textContent = `−${fmt(Number(lim), 1)} nats`;
    $("colorbar-hi").textContent = `+${fmt(Number(lim), 1)} nats`;
    window.sbdStatus.llrLimit = Number(lim);
  }
  const m = st.metrics;
  $("err").textContent = st.metrics_error ? "metrics: " + st.metrics_error : "";
  if (m) {
    // the service's two lanes (docs/service.md "Two lanes"): what is published, and what is completed
    const live = (m.lanes && m.lanes.live) || {}, done = (m.lanes && m.lanes.complete) || {};
    $("m-in").textContent = fmt(m.input_rate_hz);
    $("m-den").textContent = fmt(live.rate_hz !== undefined ? live.rate_hz : m.denoised_rate_hz);
    $("m-lat").textContent = `${ms(m.latency_p50_s)} / ${ms(m.latency_p99_s)}`;
    $("m-skip").textContent = fmt(m.skipped_total, 0);
    $("m-backlog").textContent = fmt(done.backlog_frames, 0);
    $("m-done").textContent = fmt(done.frames_total, 0);
    $("m-done-l").textContent = done.rate_hz > 0 ? `completed (${fmt(done.rate_hz)} /s now)` : "completed";
    $("m-left").textContent = fmt(done.left_for_offline_total, 0);
    $("m-left").classList.toggle("bad", done.left_for_offline_total > 0);
    const state = { catching_up: "catching up", up_to_date: "up to date", nothing_skipped: "nothing skipped" };
    $("lane-complete-state").textContent = state[done.state] || "–";
    $("lane-complete-state").title = done.left_for_offline_total > 0
      ? "frames left for offline: their raw frames are recorded; sbd-stream replay --offline RECORDING --out OUT.h5" : "";
    $("m-miss").textContent = `${fmt(m.missing_total, 0)} / ${fmt(m.malformed_total, 0)}`;
    $("m-q").textContent = fmt(m.queue_denoise, 0);
  }
  const now = performance.now();
  updTimes = updTimes.filter((t) => now - t < 3000);
  $("m-view").textContent = fmt(updTimes.length / 3, 1);
}

async function refresh(st, force) {
  const f = st.frames, paused = $("pause").checked;
  const vkey = `${fmt(view.cx, 2)},${fmt(view.cy, 2)},${fmt(view.w, 2)}`;
  const key = KINDS.map((k) => f[k] ? f[k].acq + ":" + f[k].seq : "-").join("|")
    + `|${$("lo").value}|${$("hi").value}|${$("llrhi").value}|${$("contrast").value}`;
  if (!force && ((paused || key === lastKey) && !view.dirty)) return;
  const newFrames = !paused && key !== lastKey;
  lastKey = key; view.dirty = false;
  const g = `lo=${$("lo").value}&hi=${$("hi").value}&contrast=${$("contrast").value}`;
  const l = `lo=0&hi=${$("llrhi").value}&overlay=1`;
  // newest denoised frame first (or, paused, the one shown); then raw and LLR of that frame number,
  // which the viewer keeps for a while (raw frames arrive a latency earlier); a frame no longer kept
  // is answered with the newest one (fallback=newest; without it the server says 404), and the
  // caption shows which frame number each panel holds
  const keep = (paused || !newFrames) && shown.denoised ? `&seq=${shown.denoised.seq}&fallback=newest` : "";
  if (f.denoised) await loadImage("denoised", g + keep);
  const s = shown.denoised ? `&seq=${shown.denoised.seq}&fallback=newest` : "";
  const jobs = [];
  if (f.raw) jobs.push(loadImage("raw", g + s));
  if (f.llr) jobs.push(loadImage("llr", l + s));
  await Promise.all(jobs);
  if (newFrames && (f.denoised || f.raw)) updTimes.push(performance.now());
  window.sbdStatus.lastView = vkey;
  drawAll();
}

async function tick() {
  if (!inFlight) {
    inFlight = true;
    try {
      const r = await fetch("/api/status", { cache: "no-store" });
      const st = await r.json();
      status = st; window.sbdStatus.status = st;
      if (!view.w && refGeom()) fitView();
      await refresh(st, false);
      showStatus(st);
    } catch (e) {
      window.sbdStatus.errors += 1;
      $("err").textContent = "viewer: " + e;
    } finally {
      inFlight = false;
    }
  }
  setTimeout(tick, 1000 / Number($("fps").value));
}

// --- zoom and pan -------------------------------------------------------------------------------
function toA(cv, ev) {  // event position -> A in the frame
  const r = cv.getBoundingClientRect(), s = view.w / r.width;
  return [view.cx - view.w / 2 + (ev.clientX - r.left) * s, view.cy - view.w / 2 + (ev.clientY - r.top) * s];
}
function zoomAt(ax, ay, factor) {
  const w0 = view.w;
  view.w *= factor; clampView();
  const k = view.w / w0;
  view.cx = ax - (ax - view.cx) * k; view.cy = ay - (ay - view.cy) * k;
  clampView(); drawAll();
}
window.sbdZoom = {  // for tests and keyboard users
  fit() { fitView(); drawAll(); },
  oneToOne() {
    const raw = frameGeom("raw") || refGeom();
    if (!raw) return;
    view.w = $("cv-denoised").getBoundingClientRect().width * raw.px; clampView(); drawAll();
  },
  box(ax0, ay0, ax1, ay1) {
    view.cx = (ax0 + ax1) / 2; view.cy = (ay0 + ay1) / 2;
    view.w = Math.max(Math.abs(ax1 - ax0), Math.abs(ay1 - ay0)); clampView(); drawAll();
  },
  by(factor) { zoomAt(view.cx, view.cy, factor); },
};
$("zoom-fit").onclick = () => window.sbdZoom.fit();
$("zoom-1to1").onclick = () => window.sbdZoom.oneToOne();
$("zoom-in").onclick = () => window.sbdZoom.by(0.5);
$("zoom-out").onclick = () => window.sbdZoom.by(2);
for (const k of KINDS) {
  const cv = $("cv-" + k), stage = cv.parentElement;
  stage.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const [ax, ay] = toA(cv, ev);
    zoomAt(ax, ay, Math.exp(Math.max(-3, Math.min(3, ev.deltaY * 0.002))));
  }, { passive: false });
  stage.addEventListener("dblclick", () => window.sbdZoom.fit());
  stage.addEventListener("mousedown", (ev) => {
    if (!view.w) return;
    ev.preventDefault();
    const start = toA(cv, ev), r0 = stage.getBoundingClientRect(), pan = ev.shiftKey;
    const c0 = [view.cx, view.cy], rub = $("rubber");
    const move = (e) => {
      if (pan) {
        const s = view.w / r0.width;
        view.cx = c0[0] - (e.clientX - ev.clientX) * s; view.cy = c0[1] - (e.clientY - ev.clientY) * s;
        clampView(); drawAll();
      } else if (k === "denoised") {
        rub.style.display = "block";
        rub.style.left = `${Math.min(ev.clientX, e.clientX) - r0.left}px`;
        rub.style.top = `${Math.min(ev.clientY, e.clientY) - r0.top}px`;
        rub.style.width = `${Math.abs(e.clientX - ev.clientX)}px`;
        rub.style.height = `${Math.abs(e.clientY - ev.clientY)}px`;
      }
    };
    const up = (e) => {
      window.removeEventListener("mousemove", move); window.removeEventListener("mouseup", up);
      rub.style.display = "none";
      if (!pan && Math.hypot(e.clientX - ev.clientX, e.clientY - ev.clientY) > 6) {
        const end = toA(cv, e);
        window.sbdZoom.box(start[0], start[1], end[0], end[1]);
      }
    };
    window.addEventListener("mousemove", move); window.addEventListener("mouseup", up);
  });
}

function layout() {  // the main panel as large as the window allows, the side panels half of it
  const top = $("layout").getBoundingClientRect().top;
  const S = Math.max(240, Math.min(window.innerHeight - top - 48, (window.innerWidth - 60) * 0.42));
  document.documentElement.style.setProperty("--S", `${Math.floor(S)}px`);
  document.documentElement.style.setProperty("--s", `${Math.floor((S - 8 - 28) / 2)}px`);
  drawAll();
}
window.addEventListener("resize", layout);
layout();
tick();
