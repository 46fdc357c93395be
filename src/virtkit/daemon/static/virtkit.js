// virtkit's web console: the inventory and actions through the REST API, a VM's serial console through
// xterm.js over the console WebSocket. The token stays in this tab (sessionStorage).
"use strict";
const params = new URLSearchParams(location.search);
if (params.get("token")) {
  sessionStorage.setItem("virtkit-token", params.get("token"));
  history.replaceState(null, "", location.pathname);  // the token does not stay in the address bar
}
let token = sessionStorage.getItem("virtkit-token") || "";
document.getElementById("token").value = token;

async function api(method, path) {
  const r = await fetch(path, { method, headers: token ? { Authorization: "Bearer " + token } : {} });
  const body = r.status === 204 ? null : await r.json();
  if (!r.ok) throw new Error(body && body.error ? body.error.message : r.statusText);
  return body;
}

function showError(err) { document.getElementById("error").textContent = err ? String(err.message || err) : ""; }

async function refresh() {
  try {
    const who = await api("GET", "/whoami");
    document.getElementById("who").textContent = `${who.name} (${who.scope})`;
    const vms = (await api("GET", "/vms")).items;
    const body = document.querySelector("#vms tbody");
    body.replaceChildren(...vms.map(row));
    const others = document.getElementById("others");
    const lists = await Promise.all(["/containers", "/pools", "/switches"].map(p => api("GET", p).catch(() => ({ total: "?" }))));
    others.replaceChildren(...["containers", "pools", "switches"].map((k, i) => {
      const li = document.createElement("li"); li.textContent = `${lists[i].total} ${k}`; return li;
    }));
    showError(null);
  } catch (err) { showError(err); }
}

function button(label, name, action) {
  const b = document.createElement("button");
  b.type = "button"; b.textContent = label; b.setAttribute("aria-label", `${label} ${name}`);
  b.dataset.action = label.toLowerCase(); b.dataset.vm = name;
  b.addEventListener("click", action);
  return b;
}

function row(vm) {
  const tr = document.createElement("tr");
  tr.dataset.vm = vm.name;
  const cells = [vm.name, vm.state, vm.pid ?? ""].map((t, i) => {
    const td = document.createElement("td"); td.textContent = t;
    if (i === 1) { td.className = `state state-${vm.state}`; }
    return td;
  });
  const act = document.createElement("td");
  const op = (verb) => async () => {
    try { await api("POST", `/vms/${encodeURIComponent(vm.name)}/${verb}`); } catch (err) { showError(err); }
    refresh();
  };
  if (vm.state === "stopped") { if (vm.defined) act.append(button("Start", vm.name, op("start"))); }
  else {
    act.append(button("Console", vm.name, () => openConsole(vm.name)));
    act.append(vm.state === "paused" ? button("Resume", vm.name, op("resume")) : button("Pause", vm.name, op("pause")));
    act.append(button("Stop", vm.name, op("stop")));
  }
  tr.append(...cells, act);
  return tr;
}

let term = null, socket = null, fit = null;
function openConsole(name) {
  closeConsole();
  document.getElementById("console-section").hidden = false;
  document.getElementById("console-title").textContent = `Console: ${name}`;
  term = new Terminal({ convertEol: false, cursorBlink: true, scrollback: 5000 });
  fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  const proto = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${proto}://${location.host}/vms/${encodeURIComponent(name)}/console?write=true&token=${encodeURIComponent(token)}`);
  socket.binaryType = "arraybuffer";
  socket.onmessage = (ev) => term.write(new Uint8Array(ev.data));
  socket.onclose = (ev) => term.write(`\r\n[virtkit] console closed${ev.reason ? ": " + ev.reason : ""}\r\n`);
  const enc = new TextEncoder();
  term.onData((data) => { if (socket.readyState === WebSocket.OPEN) socket.send(enc.encode(data)); });
  term.focus();
}

function closeConsole() {
  if (socket) socket.close();
  if (term) term.dispose();
  socket = term = null;
  document.getElementById("console-section").hidden = true;
}

document.getElementById("close-console").addEventListener("click", closeConsole);
document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("virtkit-token", token);
  refresh();
});
window.addEventListener("resize", () => { if (fit) fit.fit(); });
refresh();
setInterval(refresh, 2000);
