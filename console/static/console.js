// The console's live view: server-sent events update the page in place. Values are set with textContent, never as
// HTML, so whatever a unit sends shows as text.
"use strict";

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(x, digits) { return (x === null || x === undefined) ? "" : Number(x).toFixed(digits); }

// A small line chart on a canvas: points are [t, y]; y from lo to hi.
function draw(canvas, points, lo, hi) {
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#ccc"; ctx.lineWidth = 1;
  ctx.strokeRect(0.5, 0.5, w - 1, h - 1);
  if (points.length < 2) return;
  const t0 = points[0][0], t1 = points[points.length - 1][0] || t0 + 1;
  if (hi === null) hi = Math.max(1, ...points.map(p => p[1])) * 1.1;
  ctx.strokeStyle = "#1f5fa8"; ctx.lineWidth = 1.5; ctx.beginPath();
  points.forEach((p, i) => {
    const x = 4 + (w - 8) * (p[0] - t0) / Math.max(1e-9, t1 - t0);
    const y = h - 4 - (h - 8) * (p[1] - lo) / Math.max(1e-9, hi - lo);
    i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
  });
  ctx.stroke();
  ctx.fillStyle = "#555"; ctx.font = "11px sans-serif";
  ctx.fillText(fmt(hi, hi < 2 ? 1 : 0), 4, 12); ctx.fillText(fmt(lo, 0), 4, h - 4);
}

function fleet(table, source) {
  const body = table.tBodies[0];
  function row(device) {
    let tr = body.querySelector(`tr[data-unit="${CSS.escape(device)}"]`);
    if (tr) return tr;
    const empty = body.querySelector("tr.empty"); if (empty) empty.remove();
    tr = el("tr"); tr.dataset.unit = device;
    const a = el("a", "", device); a.href = "/units/" + encodeURIComponent(device);
    const first = el("td"); first.appendChild(a); tr.appendChild(first);
    for (const f of ["online", "defective", "model", "camera", "fps", "p95_ms", "outbox", "alert"]) {
      const td = el("td");
      if (f === "defective") td.dataset.defective = "/units/" + encodeURIComponent(device) + "/defective";
      else td.dataset.field = f;
      tr.appendChild(td);
    }
    body.appendChild(tr);
    const count = document.getElementById("fleet-count");
    if (count) count.textContent = body.querySelectorAll("tr[data-unit]").length + " units";
    return tr;
  }
  const set = (tr, field, text, cls) => {
    const td = tr.querySelector(`[data-field="${field}"]`);
    if (!td) return;
    td.textContent = text;
    if (cls !== undefined) td.className = cls;
  };
  // The last hour's parts (or frames) of a unit: asked again of the server after it judged a part, or sent its
  // metrics (a unit judging frames: every metrics interval; the fleet page does not take every result), at most
  // every 2 s per unit, so the counts are the store's own and never drift from a page left open all shift.
  const due = new Map();
  function recount(tr) {
    const td = tr.querySelector("[data-defective]");
    if (!td || due.has(td)) return;
    due.set(td, setTimeout(() => {
      fetch(td.dataset.defective, {credentials: "same-origin"})
        .then(r => r.ok ? r.text() : Promise.reject(r.status))
        .then(html => { td.innerHTML = html; })  // rendered and escaped by the server's template
        .catch(() => {})
        .finally(() => due.delete(td));
    }, 2000));
  }
  source.onmessage = (m) => {
    const e = JSON.parse(m.data), tr = row(e.device);
    if (e.type === "part") {
      recount(tr);
    } else if (e.type === "metrics") {
      recount(tr);
      set(tr, "fps", fmt(e.fps, 1)); set(tr, "p95_ms", e.p95_ms === null ? "" : fmt(e.p95_ms, 1) + " ms");
      set(tr, "outbox", e.outbox === null ? "" : String(e.outbox));
    } else if (e.type === "available") {
      set(tr, "online", e.online ? "online" : "offline", e.online ? "online" : "offline");
    } else if (e.type === "status") {
      set(tr, "model", `${e.model} (${e.quantization} · ${e.sha256})`); set(tr, "camera", e.camera);
    } else if (e.type === "alert") {
      set(tr, "alert", `${e.kind} just now`);
    }
  };
}

function unitPage(box, source) {
  const calls = document.getElementById("calls");
  const chartP = document.getElementById("chart-p"), chartF = document.getElementById("chart-fps");
  const pts = JSON.parse(chartP.dataset.points || "[]"), fps = [];
  draw(chartP, pts, 0, 1);
  source.onmessage = (m) => {
    const e = JSON.parse(m.data);
    if (e.type === "result") {
      const li = el("li", e.label + (e.low_confidence ? " low" : ""));
      li.appendChild(el("span", "label", e.label)); li.appendChild(document.createTextNode(" "));
      li.appendChild(el("span", "p", fmt(e.p_defect, 3))); li.appendChild(document.createTextNode(" "));
      li.appendChild(el("small", "", e.frame_id));
      li.dataset.frame = e.frame_id;
      calls.insertBefore(li, calls.firstChild);
      while (calls.children.length > 30) calls.lastChild.remove();
      pts.push([e.ts, e.p_defect]); if (pts.length > 300) pts.shift();
      draw(chartP, pts, 0, 1);
    } else if (e.type === "metrics") {
      fps.push([Date.now() / 1000, e.fps]); if (fps.length > 120) fps.shift();
      draw(chartF, fps, 0, null);
      const f = document.querySelector('[data-unit-field="fps"]'); if (f) f.textContent = fmt(e.fps, 1);
    } else if (e.type === "available") {
      const o = document.querySelector('[data-unit-field="online"]');
      if (o) { o.textContent = e.online ? "online" : "offline"; o.className = e.online ? "online" : "offline"; }
    } else if (e.type === "status") {
      const c = document.querySelector('[data-unit-field="camera"]'); if (c) c.textContent = e.camera;
    }
  };
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.querySelector("[data-live]");
  if (!live) return;
  const source = new EventSource(live.dataset.live);
  if (live.dataset.rows) alertRows(live, source);
  else if (live.tagName === "TABLE") fleet(live, source);
  else unitPage(live, source);
});

// Alerts: a new one has the page ask the server for its rows again (rendered and escaped by the same template), at
// most once a second.
function alertRows(table, source) {
  let due = null;
  source.onmessage = () => {
    if (due) return;
    due = setTimeout(() => {
      fetch(table.dataset.rows, {credentials: "same-origin"})
        .then(r => r.ok ? r.text() : Promise.reject(r.status))
        .then(html => { table.tBodies[0].innerHTML = html; })
        .catch(() => {})
        .finally(() => { due = null; });
    }, 1000);
  };
}

// Reports: the defect rate over time (one line per unit) and the p_defect histograms of two weeks (bars).
function reports() {
  const rate = document.getElementById("chart-rate"), drift = document.getElementById("chart-drift");
  if (rate) {
    const rows = JSON.parse(rate.dataset.rates || "[]"), units = {};
    rows.forEach(r => { (units[r.unit] = units[r.unit] || []).push([Date.parse(r.period.replace(" ", "T")) / 1000, r.rate || 0]); });
    const ctx = rate.getContext("2d"), colours = ["#1f5fa8", "#b3261e", "#1e7b34", "#9a6700", "#6a3d9a", "#00838f"];
    ctx.clearRect(0, 0, rate.width, rate.height);
    const all = Object.values(units).flat();
    if (all.length) {
      const t0 = Math.min(...all.map(p => p[0])), t1 = Math.max(...all.map(p => p[0])) || t0 + 1;
      const hi = Math.max(0.05, ...all.map(p => p[1]));
      Object.entries(units).forEach(([u, pts], k) => {
        ctx.strokeStyle = colours[k % colours.length]; ctx.lineWidth = 1.5; ctx.beginPath();
        pts.forEach((p, i) => {
          const x = 40 + (rate.width - 50) * (p[0] - t0) / Math.max(1, t1 - t0), y = rate.height - 14 - (rate.height - 24) * p[1] / hi;
          i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
        });
        ctx.stroke(); ctx.fillStyle = ctx.strokeStyle; ctx.font = "11px sans-serif";
        pts.forEach(p => {  // a dot per period: one period alone is still seen
          const x = 40 + (rate.width - 50) * (p[0] - t0) / Math.max(1, t1 - t0), y = rate.height - 14 - (rate.height - 24) * p[1] / hi;
          ctx.beginPath(); ctx.arc(x, y, 2.5, 0, 2 * Math.PI); ctx.fill();
        });
        ctx.fillText(u, rate.width - 120, 14 + 13 * k);
      });
      ctx.fillStyle = "#555"; ctx.fillText((hi * 100).toFixed(0) + " %", 2, 12); ctx.fillText("0 %", 2, rate.height - 14);
    }
  }
  if (drift) {
    const d = JSON.parse(drift.dataset.drift), ctx = drift.getContext("2d"), n = d.bins.length;
    const w = (drift.width - 40) / n, hi = Math.max(0.01, ...d.this_week, ...d.last_week);
    ctx.clearRect(0, 0, drift.width, drift.height); ctx.font = "11px sans-serif";
    d.bins.forEach((b, i) => {
      const x = 30 + i * w, h1 = (drift.height - 30) * d.last_week[i] / hi, h2 = (drift.height - 30) * d.this_week[i] / hi;
      ctx.fillStyle = "#b8cde6"; ctx.fillRect(x + 4, drift.height - 16 - h1, w / 2 - 6, h1);
      ctx.fillStyle = "#1f5fa8"; ctx.fillRect(x + w / 2, drift.height - 16 - h2, w / 2 - 6, h2);
      ctx.fillStyle = "#555"; ctx.fillText(b, x + 4, drift.height - 3);
    });
  }
}
document.addEventListener("DOMContentLoaded", reports);

// Inspect: files dropped on the box go into the form's file input.
document.addEventListener("DOMContentLoaded", () => {
  const drop = document.getElementById("drop");
  if (!drop) return;
  const input = drop.querySelector("input[type=file]");
  ["dragenter", "dragover"].forEach(t => drop.addEventListener(t, e => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach(t => drop.addEventListener(t, e => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", e => { input.files = e.dataTransfer.files; });
});

// Review: an image shows at its own size on a click (a crack a few pixels wide), and back on another.
document.addEventListener("click", (e) => {
  const img = e.target.closest && e.target.closest(".evidence img");
  if (img) img.classList.toggle("zoomed");
});

// Review: one key per verdict; "n" writes a note, and Enter or Escape there ends it, to choose the verdict with its
// key. A note never chooses a verdict: Enter in it used to submit the form's first button, "right".
document.addEventListener("keydown", (e) => {
  const form = document.getElementById("verdict");
  if (!form || e.ctrlKey || e.metaKey || e.altKey) return;
  if (document.activeElement && document.activeElement.id === "note") {
    if (e.key === "Enter" || e.key === "Escape") { e.preventDefault(); document.activeElement.blur(); }
    return;
  }
  if (e.key === "n") { e.preventDefault(); document.getElementById("note").focus(); return; }
  const button = form.querySelector(`button[data-key="${CSS.escape(e.key)}"]`);
  if (button) { e.preventDefault(); button.click(); }
});
