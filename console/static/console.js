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

// Charts: uPlot (vendored in static/, MIT; a small time-series library made for many points on modest machines).
// Time axes are the browser's local time. ``series``: [{label, stroke, dash}], ``data``: [xs, ys...] as uPlot takes.
const COLOURS = ["#1f5fa8", "#b3261e", "#1e7b34", "#9a6700", "#6a3d9a", "#00838f"];

function timeChart(box, series, data, yRange, yLabel, xRange) {
  return box.chart = new uPlot({  // kept on its box: what is drawn can be asked of the page
    width: Math.max(280, box.clientWidth || 520), height: 180,
    // a range: a [lo, hi] pair, or a function of the data's (x: seconds since the epoch)
    scales: {x: xRange ? {time: true, range: xRange} : {time: true}, y: yRange ? {range: yRange} : {}},
    axes: [{}, {label: yLabel, size: 56}],
    series: [{}, ...series.map((s, i) => ({label: s.label, stroke: s.stroke || COLOURS[i % COLOURS.length],
                                           width: 1.5, dash: s.dash, points: {show: s.points !== false}}))],
  }, data, box);
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
  const boxP = document.getElementById("chart-p"), boxF = document.getElementById("chart-fps");
  const pts = JSON.parse(boxP.dataset.points || "[]");
  const fps = JSON.parse(boxF.dataset.points || "[]");  // the last hour, minute by minute, from the store
  const threshold = boxP.dataset.threshold === "" ? null : Number(boxP.dataset.threshold);
  const pData = () => [pts.map(p => p[0]), pts.map(p => p[1]), pts.map(() => threshold)];
  const chartP = timeChart(boxP, [{label: "p_defect", points: true}, {label: "threshold", stroke: "#b3261e",
                                                                      dash: [6, 4], points: false}],
                           pData(), [0, 1], "p_defect");
  const lastHour = () => [Date.now() / 1000 - 3600, Date.now() / 1000];  // (uPlot pads a lone point by years)
  const chartF = timeChart(boxF, [{label: "fps"}], [fps.map(p => p[0]), fps.map(p => p[1])],
                           (_u, _lo, hi) => [0, Math.max(1, (hi || 0) * 1.1)], "fps", lastHour);
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
      chartP.setData(pData());
    } else if (e.type === "metrics") {
      fps.push([Date.now() / 1000, e.fps]); if (fps.length > 180) fps.shift();
      chartF.setData([fps.map(p => p[0]), fps.map(p => p[1])]);
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
  // The session ended (logout elsewhere, a new password, disabled, "sign out everywhere"): the page says so by
  // going to the login, rather than stand still with figures that no longer move.
  source.addEventListener("signed-out", () => {
    source.close();
    location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
  });
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
  if (rate) {  // the defect rate per unit over time: one line per unit, a point per period, labelled times
    const rows = JSON.parse(rate.dataset.rates || "[]"), units = [...new Set(rows.map(r => r.unit))];
    const xs = [...new Set(rows.map(r => Date.parse(r.period.replace(" ", "T")) / 1000))].sort((a, b) => a - b);
    const at = new Map(rows.map(r => [r.unit + "|" + Date.parse(r.period.replace(" ", "T")) / 1000, r.rate]));
    const data = [xs, ...units.map(u => xs.map(x => { const v = at.get(u + "|" + x); return v === undefined ? null : v; }))];
    const span = Number(rate.dataset.span) || 86400;  // the report's own span, ending now
    timeChart(rate, units.map(u => ({label: u})), data, (_u, _lo, hi) => [0, Math.max(0.05, hi || 0)], "defect rate",
              () => [Date.now() / 1000 - span, Date.now() / 1000]);
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
  if (!button) return;
  e.preventDefault();
  // A key pressed as soon as the next item shows can come before htmx has taken up its new form: the click then
  // submitted it natively, a whole page load (every other key, in bench.console's run). htmx.process is idempotent.
  if (window.htmx) htmx.process(form);
  button.click();
});
