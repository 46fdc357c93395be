// virtkit's web console: the inventory and actions through the REST API, kept current by the daemon's event
// stream (Server-Sent Events); a VM's serial console through xterm.js over the console WebSocket; live charts
// of a VM's counters; the modes comparison. The token stays in this tab (sessionStorage). No library but
// xterm.js: the charts are a few lines of SVG.
"use strict";
const params = new URLSearchParams(location.search);
if (params.get("token")) {
  sessionStorage.setItem("virtkit-token", params.get("token"));
  history.replaceState(null, "", location.pathname);  // the token does not stay in the address bar
}
let token = sessionStorage.getItem("virtkit-token") || "";
document.getElementById("token").value = token;
const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

async function api(method, path, body) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = r.status === 204 ? null : await r.json();
  if (!r.ok) throw new Error(data && data.error ? data.error.message : r.statusText);
  return data;
}

function showError(err) { $("error").textContent = err ? String(err.message || err) : ""; }

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  if (cls) td.className = cls;
  return td;
}

function button(label, name, action, verb) {
  const b = document.createElement("button");
  b.type = "button"; b.textContent = label; b.setAttribute("aria-label", `${label} ${name}`);
  b.dataset.action = verb || label.toLowerCase(); b.dataset.vm = name;
  b.addEventListener("click", async () => {
    try { await action(); showError(null); } catch (err) { showError(err); }
    refresh();
  });
  return b;
}

// -- the inventory ----------------------------------------------------------------------------------------
async function refresh() {
  try {
    const who = await api("GET", "/whoami");
    $("who").textContent = `${who.name} (${who.scope})`;
    const [vms, tasks, snaps] = await Promise.all([api("GET", "/vms"), api("GET", "/tasks?limit=10"),
      api("GET", "/snapshots").catch(() => ({ items: [] }))]);
    $("vms").tBodies[0].replaceChildren(...vms.items.map(vmRow));
    $("tasks").tBodies[0].replaceChildren(...tasks.items.map(taskRow));
    $("snapshots").tBodies[0].replaceChildren(...snaps.items.map(snapRow));
    const lists = await Promise.all(["/containers", "/pools", "/switches"].map(p => api("GET", p).catch(() => ({ items: [] }))));
    $("containers").tBodies[0].replaceChildren(...lists[0].items.map(c => tr([c.name, c.image, c.status || c.state])));
    $("pools").tBodies[0].replaceChildren(...lists[1].items.map(p => tr([p.name, p.state, (p.volumes || []).join(", ")])));
    $("switches").tBodies[0].replaceChildren(...lists[2].items.map(s => tr([s.name, s.running ? "running" : "stopped", s.ports])));
    showError(null);
  } catch (err) { showError(err); }
}

function tr(cells) {
  const row = document.createElement("tr");
  row.append(...cells.map(c => cell(c)));
  return row;
}

function vmRow(vm) {
  const row = document.createElement("tr");
  row.dataset.vm = vm.name;
  const act = document.createElement("td");
  const name = vm.name, path = `/vms/${enc(name)}`;
  const post = (verb, body) => () => api("POST", `${path}/${verb}`, body);
  if (vm.state === "stopped") {
    if (vm.defined) {
      act.append(button("Start", name, post("start")));
      act.append(button("Delete", name, () => confirm(`Delete the definition of ${name}?`) && api("DELETE", path)));
    }
  } else {
    act.append(button("Console", name, async () => openConsole(name)));
    act.append(button("Counters", name, async () => openStats(name), "stats"));
    act.append(vm.state === "paused" ? button("Resume", name, post("resume")) : button("Pause", name, post("pause")));
    act.append(button("Snapshot", name, () => {
      const snap = prompt(`Snapshot ${name} as (empty: the time)`, "");
      return snap === null ? null : api("POST", `${path}/snapshots`, snap ? { snapshot: snap } : {});
    }));
    act.append(button("Migrate", name, () => {
      const uri = prompt("Target (tcp:HOST:PORT, waiting with virtkit run --incoming)", "tcp:");
      const tok = uri && prompt("The target's token");
      return tok ? api("POST", `${path}/migrate`, { uri, token: tok }) : null;
    }));
    if (vm.defined) act.append(button("Reboot", name, post("reboot")));
    act.append(button("Stop", name, post("stop")));
  }
  row.append(cell(name), cell(vm.state, `state state-${vm.state}`), cell(vm.pid),
             cell(vm.live && vm.live.mips !== undefined ? vm.live.mips.toFixed(1) : ""), act);
  return row;
}

function taskRow(t) {
  const row = document.createElement("tr");
  const bar = document.createElement("progress");
  bar.max = 1;
  if (t.progress !== null) bar.value = t.progress;  // (no value: indeterminate)
  bar.setAttribute("aria-label", `${t.kind} of ${t.target}`);
  const p = document.createElement("td");
  p.append(bar);
  const result = t.state === "failed" ? t.error : t.state === "succeeded" ? summary(t) : t.message;
  row.append(cell(t.kind), cell(t.target), cell(t.state, `state state-${t.state}`), p, cell(result));
  return row;
}

function summary(t) {
  const r = t.result || {};
  if (t.kind === "clone") return (r.clones || []).map(c => c.name).join(", ");
  if (t.kind === "migrate") return `downtime ${Math.round((r.downtime || 0) * 1000)} ms`;
  if (t.kind === "snapshot") return `${r.name} (paused ${Math.round((r.paused_seconds || 0) * 1000)} ms)`;
  if (t.kind === "modes") { showModes(r); return `${(r.modes || []).length} mode(s)`; }
  return "done";
}

function snapRow(s) {
  const row = document.createElement("tr");
  const act = document.createElement("td");
  act.append(button("Clone", s.name, () => {
    const n = prompt(`How many clones of ${s.name}?`, "1");
    return n ? api("POST", `/snapshots/${enc(s.name)}/clone`, { count: parseInt(n, 10) }) : null;
  }));
  act.append(button("Delete", s.name, () => confirm(`Delete snapshot ${s.name}?`) && api("DELETE", `/snapshots/${enc(s.name)}`), "delete-snapshot"));
  const taken = s.created ? new Date(s.created).toLocaleString() : "";  // (ISO 8601, UTC)
  row.append(cell(s.name), cell(s.vm), cell(taken), act);
  return row;
}

// -- the console ----------------------------------------------------------------------------------------
let term = null, socket = null, fit = null;
function openConsole(name) {
  closeConsole();
  $("console-section").hidden = false;
  $("console-title").textContent = `Console: ${name}`;
  term = new Terminal({ convertEol: false, cursorBlink: true, scrollback: 5000, screenReaderMode: true });
  fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open($("terminal"));
  fit.fit();
  const proto = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${proto}://${location.host}/vms/${enc(name)}/console?write=true&token=${enc(token)}`);
  socket.binaryType = "arraybuffer";
  socket.onmessage = (ev) => term.write(new Uint8Array(ev.data));
  socket.onclose = (ev) => term && term.write(`\r\n[virtkit] console closed${ev.reason ? ": " + ev.reason : ""}\r\n`);
  const te = new TextEncoder();
  term.onData((data) => { if (socket.readyState === WebSocket.OPEN) socket.send(te.encode(data)); });
  term.focus();
}

function closeConsole() {
  if (socket) socket.close();
  if (term) term.dispose();
  socket = term = null;
  $("console-section").hidden = true;
}

// -- live charts ----------------------------------------------------------------------------------------
const COLORS = ["#23395d", "#e76f51", "#2a9d8f", "#e9c46a", "#8d5a97", "#264653", "#f4a261", "#6c757d"];
let statsTimer = null, series = null;

function openStats(name) {
  closeStats();
  $("stats-section").hidden = false;
  $("stats-title").textContent = `Live counters: ${name}`;
  series = { mips: [], exits: {}, io: {}, last: null };
  const sample = async () => {
    let st;
    try { st = await api("GET", `/vms/${enc(name)}/stats`); } catch (err) { showError(err); closeStats(); return; }
    const now = performance.now() / 1000, s = st.stats, prev = series.last;
    series.mips.push(st.mips);
    const io = ioCounters(s);
    if (prev) {
      const dt = Math.max(now - prev.t, 0.001);
      for (const [k, v] of Object.entries(s.exits || {})) push(series.exits, k, (v - (prev.exits[k] || 0)) / dt);
      for (const [k, v] of Object.entries(io)) push(series.io, k, (v - (prev.io[k] || 0)) / dt);
    }
    series.last = { t: now, exits: { ...(s.exits || {}) }, io };
    draw($("chart-mips"), { MIPS: series.mips }, null, "MIPS");
    draw($("chart-exits"), nonZero(series.exits), $("legend-exits"), "exits per second");
    draw($("chart-io"), nonZero(series.io), $("legend-io"), "bytes per second");
  };
  sample();
  statsTimer = setInterval(sample, 1000);
}

function ioCounters(s) {
  const out = {};  // every device counter named *bytes* (block, network, rng), and the UART's
  for (const [dev, c] of Object.entries(s.devices || {}))
    for (const [k, v] of Object.entries(c)) if (typeof v === "number" && k.includes("bytes")) out[`${dev} ${k}`] = v;
  if (s.uart) { out["uart tx"] = s.uart.tx_bytes || 0; out["uart rx"] = s.uart.rx_bytes || 0; }
  return out;
}

function push(obj, k, v) { (obj[k] = obj[k] || []).push(v); if (obj[k].length > 120) obj[k].shift(); }
function nonZero(obj) { return Object.fromEntries(Object.entries(obj).filter(([, v]) => v.some(x => x > 0))); }

function draw(svg, data, legend, unit) {
  const W = 360, H = 140, names = Object.keys(data);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const max = Math.max(1e-9, ...names.flatMap(n => data[n]));
  const ns = "http://www.w3.org/2000/svg";
  const kids = names.map((n, i) => {
    const pts = data[n].slice(-120), span = Math.max(pts.length, 30) - 1;  // (a minute wide at first, then two)
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts.map((v, j) => `${(j / span) * W},${H - 4 - (v / max) * (H - 20)}`).join(" "));
    line.setAttribute("fill", "none"); line.setAttribute("stroke", COLORS[i % COLORS.length]); line.setAttribute("stroke-width", "2");
    return line;
  });
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", 4); label.setAttribute("y", 12); label.setAttribute("class", "axis");
  label.textContent = `max ${fmt(max)} ${unit}`;
  svg.replaceChildren(label, ...kids);
  const latest = names.map(n => `${n} ${fmt(data[n][data[n].length - 1] || 0)}`).join(", ");
  svg.setAttribute("aria-label", `${unit}: ${latest || "nothing yet"}`);
  if (legend) legend.replaceChildren(...names.map((n, i) => {
    const li = document.createElement("li");
    li.style.setProperty("--c", COLORS[i % COLORS.length]);
    li.textContent = `${n}: ${fmt(data[n][data[n].length - 1] || 0)}`;
    return li;
  }));
}

function fmt(v) { return v >= 1e6 ? (v / 1e6).toFixed(1) + "M" : v >= 1e3 ? (v / 1e3).toFixed(1) + "k" : v.toFixed(v < 10 ? 1 : 0); }

function closeStats() {
  clearInterval(statsTimer);
  statsTimer = null;
  $("stats-section").hidden = true;
}

// -- the modes comparison -------------------------------------------------------------------------------
function showModes(r) {
  const rows = r.modes || [];
  const cols = [["mode", "Mode"], ["wall_seconds", "Wall (s)"], ["instructions", "Guest instructions"], ["traps", "Traps in the guest"],
    ["exits_total", "Exits to the VMM"], ["mmio_without_exit", "MMIO without an exit"]];
  const head = document.createElement("tr");
  head.append(...cols.map(([, h]) => { const th = document.createElement("th"); th.scope = "col"; th.textContent = h; return th; }));
  $("modes").tHead.replaceChildren(head);
  $("modes").tBodies[0].replaceChildren(...rows.map(m => tr(cols.map(([k]) => typeof m[k] === "number" ? m[k].toLocaleString() : m[k]))));
  const svg = $("chart-modes"), ns = "http://www.w3.org/2000/svg", W = 360, bh = 22;
  svg.hidden = rows.length === 0;
  svg.setAttribute("viewBox", `0 0 ${W} ${rows.length * (bh + 6) + 4}`);
  const max = Math.max(1e-9, ...rows.map(m => m.wall_seconds));
  svg.replaceChildren(...rows.flatMap((m, i) => {
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", 90); rect.setAttribute("y", i * (bh + 6) + 4); rect.setAttribute("height", bh);
    rect.setAttribute("width", (m.wall_seconds / max) * (W - 150)); rect.setAttribute("fill", COLORS[i % COLORS.length]);
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", 2); t.setAttribute("y", i * (bh + 6) + 20); t.textContent = m.mode;
    const v = document.createElementNS(ns, "text");
    v.setAttribute("x", 95 + (m.wall_seconds / max) * (W - 150)); v.setAttribute("y", i * (bh + 6) + 20);
    v.textContent = `${m.wall_seconds.toFixed(2)} s`;
    return [rect, t, v];
  }));
  svg.setAttribute("aria-label", "wall time per mode: " + rows.map(m => `${m.mode} ${m.wall_seconds} s`).join(", "));
}

$("modes-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const modes = [...document.querySelectorAll('input[name="mode"]:checked')].map(i => i.value);
  try { await api("POST", "/modes", { exec: $("modes-exec").value || "true", modes }); showError(null); } catch (err) { showError(err); }
  refresh();
});

// -- wiring ---------------------------------------------------------------------------------------------
$("close-console").addEventListener("click", closeConsole);
$("close-stats").addEventListener("click", closeStats);
$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("virtkit-token", token);
  listen();
  refresh();
});
window.addEventListener("resize", () => { if (fit) fit.fit(); });

let events = null, pending = null;
function listen() {  // every change the daemon streams triggers one refresh (bursts are merged)
  if (events) events.close();
  events = new EventSource(`/events${token ? "?token=" + enc(token) : ""}`);
  const soon = () => { if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 100); };
  events.addEventListener("vm", soon);
  events.addEventListener("task", soon);
}
listen();
refresh();
api("GET", "/modes").then(showModes).catch(() => {});
setInterval(refresh, 10000);  // (a slow safety net: MIPS figures change without events)
