"""The switch process: an epoll loop over the ports plus a JSON control socket.

``python -m virtkit.network.daemon NAME`` (what ``virtkit net create/start`` spawns) loads
``config.json``, opens every port, and serves requests on ``control.sock``: one JSON object per
line in, one JSON object per line out (``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``).
Every change is saved to ``config.json`` so a restarted switch comes back as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from virtkit.errors import ConfigError, VirtkitError
from virtkit.network import config as cfgmod
from virtkit.network.pcapng import PcapngWriter
from virtkit.network.ports import VmPort, default_name, open_port
from virtkit.network.secgroup import Group, Rule, parse_port_range
from virtkit.network.switch import Port, Switch, parse_vlan, parse_vlan_list

BATCH = 256
MAX_REQUEST = 1 << 20


def port_kwargs(p: dict[str, Any]) -> dict[str, Any]:
    """The VLAN keyword arguments of a port config entry."""
    kw: dict[str, Any] = {"mode": p.get("mode", "access"), "tpid": p.get("tpid", 0x8100),
                          "priority": p.get("priority", 0)}
    if kw["mode"] == "access":
        kw["vlan"] = parse_vlan(p.get("vlan", 1))
    else:
        kw["trunk"] = parse_vlan_list(str(p.get("trunk", "all")))
        kw["native"] = p.get("native")
    return kw


class Capture:
    """A pcapng mirror of one port (frames as on that port's wire) or one VLAN (tagged with VID and PCP)."""

    def __init__(self, cid: int, path: str, port: str | None, vlan: int | None, switch: str) -> None:
        self.id, self.port, self.vlan = cid, port, vlan
        what = f"port {port}" if port else f"VLAN {vlan}"
        self.writer = PcapngWriter(path, ifname=f"{switch}:{port or f'vlan{vlan}'}",
                                   comment=f"virtkit switch {switch}, {what}")

    def write(self, frame: bytes, outbound: bool = False) -> None:
        self.writer.write(frame, outbound)


class SwitchDaemon:
    """One running switch: ports, forwarding core, control socket, persistence."""

    def __init__(self, name: str, directory: Path | None = None) -> None:
        self.name = name
        self.dir = directory or cfgmod.switch_dir(name)
        self.cfg_path = self.dir / "config.json"
        cfg = cfgmod.load(self.cfg_path)
        self.switch = Switch(name, ageing=cfg["ageing"], max_macs=cfg["max_macs"], storm_pps=cfg["storm_pps"],
                             mtu=cfg["mtu"])
        self.groups: dict[str, Group] = {g["name"]: Group.from_dict(g) for g in cfg["groups"]}
        self.failed: dict[str, dict[str, Any]] = {}
        self.captures: dict[int, Capture] = {}
        self.next_capture = 1
        self.attached = 0
        self.sel = selectors.DefaultSelector()
        self.registered: dict[str, tuple[int, int]] = {}
        self.running = True
        if os.environ.get("VIRTKIT_NET_DATAPATH", "1") != "0":
            # VIRTKIT_NET_DATAPATH=0 keeps every frame on the Python path
            from virtkit.network.datapath import Datapath

            self.switch.attach_datapath(Datapath(self.switch)).warm_up()  # compiled before the control socket answers
        for p in cfg["ports"]:
            try:
                self._open(p)
            except VirtkitError as err:
                p["error"] = str(err)
                self.failed[p["name"]] = p
                self.log(f"port {p['name']} ({p['spec']}) not opened: {err}")

    def log(self, msg: str) -> None:
        """One line to the switch log (stderr of the daemon)."""
        print(f"{time.strftime('%H:%M:%S')} {self.name}: {msg}", file=sys.stderr, flush=True)

    # -- ports -----------------------------------------------------------------------------------
    def _open(self, p: dict[str, Any]) -> Port:
        port = open_port(p["name"], p["spec"], self.dir, **port_kwargs(p))
        try:
            self._join_group(port, p.get("group"))
            self.switch.add_port(port)
        except VirtkitError:
            port.close()
            raise
        self._register(port)
        return port

    def _join_group(self, port: Port, group: str | None) -> None:
        if group is None or group == "":
            port.group = None
            return
        g = self.groups.get(group)
        if g is None:
            raise ConfigError(f"no security group {group!r} on switch {self.name!r}")
        port.group = g
        port.configure(mode="access", vlan=g.vlan, tpid=port.tpid, priority=port.priority)

    def _register(self, port: Port) -> None:
        fd = port.fileno()
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if port.queued else 0)
        old = self.registered.get(port.name)
        if old == (fd, events):
            return
        if old is not None and old[0] >= 0:
            try:
                self.sel.unregister(old[0])
            except (KeyError, ValueError):
                pass
        if fd >= 0:
            self.sel.register(fd, events, port)
            self.registered[port.name] = (fd, events)
        else:
            self.registered.pop(port.name, None)

    def _unregister(self, port: Port) -> None:
        old = self.registered.pop(port.name, None)
        if old is not None and old[0] >= 0:
            try:
                self.sel.unregister(old[0])
            except (KeyError, ValueError):
                pass

    def _remove(self, name: str) -> None:
        port = self.switch.remove_port(name)
        self._unregister(port)
        port.close()

    # -- persistence -----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The configuration as it is now (what ``config.json`` holds)."""
        sw = self.switch
        ports = [p.config() for p in sw.ports.values() if not (isinstance(p, VmPort) and p.ephemeral)]
        ports += [{k: v for k, v in p.items() if k != "error"} for p in self.failed.values()]
        return {"name": self.name, "ageing": sw.ageing, "max_macs": sw.max_macs, "storm_pps": sw.storm_pps,
                "mtu": sw.mtu, "ports": ports, "groups": [g.as_dict() for g in self.groups.values()]}

    def save(self) -> None:
        """Persist the configuration."""
        cfgmod.save(self.cfg_path, self.config())

    # -- control ---------------------------------------------------------------------------------
    def handle(self, req: dict[str, Any], conn: socket.socket) -> dict[str, Any]:
        """Serve one control request; errors come back as ``{"ok": false, "error": ...}``."""
        op = req.get("op")
        fn = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if fn is None:
            raise ConfigError(f"unknown control request {op!r}")
        return fn(req, conn) or {}

    def op_ping(self, req: dict[str, Any], conn: socket.socket) -> dict[str, Any]:
        return {"pid": os.getpid()}

    def op_show(self, req: dict[str, Any], conn: socket.socket) -> dict[str, Any]:
        sw = self.switch
        return {"switch": sw.info(), "ports": [p.info() for p in sw.ports.values()],
                "failed": list(self.failed.values()), "macs": sw.mac_table(),
                "groups": [{**g.as_dict(), "denied": g.denied, "connections": len(g.conns)}
                           for g in self.groups.values()],
                "captures": [{"id": c.id, "port": c.port, "vlan": c.vlan, "path": c.writer.path,
                              "frames": c.writer.count} for c in self.captures.values()]}

    def op_set(self, req: dict[str, Any], conn: socket.socket) -> None:
        cfg = self.config()
        for k in ("ageing", "max_macs", "storm_pps", "mtu"):
            if req.get(k) is not None:
                cfg[k] = req[k]
        cfgmod.validate(cfg, "switch settings")
        sw = self.switch
        sw.ageing, sw.max_macs, sw.storm_pps, sw.mtu = cfg["ageing"], cfg["max_macs"], cfg["storm_pps"], cfg["mtu"]
        sw.invalidate()
        self.save()

    def op_port_add(self, req: dict[str, Any], conn: socket.socket) -> dict[str, Any]:
        spec = str(req.get("spec", ""))
        p: dict[str, Any] = {"spec": spec, "name": req.get("name") or default_name(spec)}
        if p["name"] in self.switch.ports or p["name"] in self.failed:
            raise ConfigError(f"port {p['name']!r} already exists on switch {self.name!r}")
        if spec.startswith("udp:") and req.get("access") is None and req.get("group") is None:
            p.update(mode="trunk", trunk="all")  # a link between switches is a trunk unless told otherwise
        self._apply_vlan_args(p, req)
        cfgmod.validate_port(p, "port add")
        self._open(p)
        self.save()
        return {"port": p["name"]}

    @staticmethod
    def _apply_vlan_args(p: dict[str, Any], req: dict[str, Any]) -> None:
        if req.get("access") is not None and (req.get("trunk") is not None or req.get("native") is not None):
            raise ConfigError("a port is either --access VLAN or --trunk VLANS [--native VLAN], not both")
        if req.get("access") is not None:
            p.update(mode="access", vlan=parse_vlan(req["access"]))
            p.pop("trunk", None)
            p.pop("native", None)
        if req.get("trunk") is not None:
            p.update(mode="trunk", trunk=str(req["trunk"]))
            parse_vlan_list(p["trunk"])
            p.pop("vlan", None)
        if req.get("native") is not None:
            if p.get("mode") != "trunk":
                raise ConfigError("--native only applies to trunk ports (give --trunk VLANS too)")
            p["native"] = None if str(req["native"]).lower() == "none" else parse_vlan(req["native"])
        if req.get("qinq") is not None:
            p["tpid"] = 0x88A8 if req["qinq"] else 0x8100
        if req.get("priority") is not None:
            try:
                p["priority"] = int(req["priority"])
            except (TypeError, ValueError):
                raise ConfigError(f"bad priority {req['priority']!r}: want 0-7") from None
        if req.get("group") is not None:
            p["group"] = req["group"] or None

    def op_port_remove(self, req: dict[str, Any], conn: socket.socket) -> None:
        name = str(req.get("name"))
        if name in self.failed:
            del self.failed[name]
        else:
            self._remove(name)
        self.save()

    def op_port_set(self, req: dict[str, Any], conn: socket.socket) -> None:
        name = str(req.get("name"))
        if name in self.failed:
            p = self.failed[name]
            self._apply_vlan_args(p, req)
            cfgmod.validate_port(p, "port set")
            self.save()
            return
        port = self.switch.port(name)
        p = port.config()
        if req.get("trunk") is not None and req.get("native") is None:
            p.pop("native", None)
        self._apply_vlan_args(p, req)
        if p.get("group") and (req.get("access") is not None or req.get("trunk") is not None):
            if req.get("group") is None:
                raise ConfigError(f"port {name} is in group {p['group']!r} (its VLAN); leave it with --group ''")
        cfgmod.validate_port(p, "port set")
        kw = port_kwargs(p)
        old = port.config()
        port.configure(**kw)
        try:
            self._join_group(port, p.get("group"))
        except VirtkitError:
            port.configure(**port_kwargs(old))
            raise
        self.switch.changed()
        self.save()

    def op_group_create(self, req: dict[str, Any], conn: socket.socket) -> None:
        name = str(req.get("group", ""))
        if name in self.groups:
            raise ConfigError(f"security group {name!r} already exists")
        self.groups[name] = Group(name, parse_vlan(req.get("vlan", "")), str(req.get("default") or "deny"))
        self.save()

    def op_group_delete(self, req: dict[str, Any], conn: socket.socket) -> None:
        g = self._group(req)
        users = [p.name for p in self.switch.ports.values() if p.group is g]
        if users:
            raise ConfigError(f"security group {g.name!r} is used by port(s) {', '.join(users)}")
        del self.groups[g.name]
        self.save()

    def op_group_set(self, req: dict[str, Any], conn: socket.socket) -> None:
        g = self._group(req)
        if req.get("default") is not None:
            if req["default"] not in ("allow", "deny"):
                raise ConfigError(f"group default must be allow or deny, not {req['default']!r}")
            g.default = req["default"]
        if req.get("vlan") is not None:
            g.vlan = parse_vlan(req["vlan"])
            for p in self.switch.ports.values():
                if p.group is g:
                    p.configure(mode="access", vlan=g.vlan, tpid=p.tpid, priority=p.priority)
            self.switch.changed()
        self.save()

    def _group(self, req: dict[str, Any]) -> Group:
        g = self.groups.get(str(req.get("group")))
        if g is None:
            raise ConfigError(f"no security group {req.get('group')!r} on switch {self.name!r}")
        return g

    def op_rule_add(self, req: dict[str, Any], conn: socket.socket) -> dict[str, Any]:
        g = self._group(req)
        lo, hi = parse_port_range(str(req.get("ports") or "any"))
        rule = Rule(str(req.get("action", "")), str(req.get("proto") or "any"), lo, hi,
                    str(req.get("source") or "any"))
        pos = req.get("position")
        if pos is None:
            g.rules.append(rule)
        else:
            if not isinstance(pos, int) or not 1 <= pos <= len(g.rules) + 1:
                raise ConfigError(f"rule position must be 1-{len(g.rules) + 1}, not {pos!r}")
            g.rules.insert(pos - 1, rule)
        self.save()
        return {"index": g.rules.index(rule) + 1}

    def op_rule_remove(self, req: dict[str, Any], conn: socket.socket) -> None:
        g = self._group(req)
        idx = req.get("index")
        if not isinstance(idx, int) or not 1 <= idx <= len(g.rules):
            raise ConfigError(f"group {g.name} has no rule {idx!r} (rules are numbered 1-{len(g.rules)})")
        del g.rules[idx - 1]
        self.save()

    def op_capture_start(self, req: dict[str, Any], conn: socket.socket) -> dict[str, Any]:
        port_name, vlan, path = req.get("port"), req.get("vlan"), req.get("path")
        if (port_name is None) == (vlan is None):
            raise ConfigError("capture needs exactly one of --port P or --vlan V")
        if not isinstance(path, str) or not path:
            raise ConfigError("capture needs an output file (-w FILE)")
        if port_name is not None:
            port = self.switch.port(str(port_name))
        else:
            vlan = parse_vlan(vlan)
        cap = Capture(self.next_capture, path, port_name, vlan, self.name)
        self.next_capture += 1
        self.captures[cap.id] = cap
        if port_name is not None:
            port.captures.append(cap)
        else:
            self.switch.vlan_captures.setdefault(vlan, []).append(cap)
        self.switch.invalidate()  # captured frames take the slow path
        return {"id": cap.id}

    def op_capture_stop(self, req: dict[str, Any], conn: socket.socket) -> dict[str, Any]:
        cap = self.captures.pop(req.get("id"), None)  # type: ignore[arg-type]
        if cap is None:
            raise ConfigError(f"no capture {req.get('id')!r}")
        self._drop_capture(cap)
        return {"frames": cap.writer.count}

    def _drop_capture(self, cap: Capture) -> None:
        for p in self.switch.ports.values():
            if cap in p.captures:
                p.captures.remove(cap)
        for caps in self.switch.vlan_captures.values():
            if cap in caps:
                caps.remove(cap)
        self.switch.invalidate()
        cap.writer.close()

    def op_attach(self, req: dict[str, Any], conn: socket.socket) -> dict[str, Any]:
        vlan = req.get("vlan")
        kw: dict[str, Any] = {"mode": "access", "vlan": parse_vlan(vlan) if vlan is not None else 1}
        group = req.get("group")
        self.attached += 1
        name = f"vm-auto{self.attached}"
        while name in self.switch.ports:
            self.attached += 1
            name = f"vm-auto{self.attached}"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        port = VmPort(name, f"auto{self.attached}", conn=ours, **kw)
        try:
            self._join_group(port, group)
            self.switch.add_port(port)
        except VirtkitError:
            port.close()
            theirs.close()
            raise
        self._register(port)
        reply = json.dumps({"ok": True, "port": name}).encode() + b"\n"
        socket.send_fds(conn, [reply], [theirs.fileno()])
        theirs.close()
        return {"_sent": True}

    def op_shutdown(self, req: dict[str, Any], conn: socket.socket) -> None:
        self.running = False

    def _retry_failed(self) -> None:
        """Ports that could not be opened at start (interface missing...) are tried again each second."""
        for name, p in list(self.failed.items()):
            try:
                self._open({k: v for k, v in p.items() if k != "error"})
            except VirtkitError as err:
                p["error"] = str(err)
                continue
            del self.failed[name]
            self.log(f"port {name} ({p['spec']}) opened")

    def _serve_control(self, ls: socket.socket) -> None:
        try:
            conn, _ = ls.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(2.0)
            try:
                buf = b""
                while not buf.endswith(b"\n") and len(buf) < MAX_REQUEST:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                try:
                    req = json.loads(buf)
                    if not isinstance(req, dict):
                        raise ValueError("not an object")
                except ValueError as err:
                    raise ConfigError(f"malformed control request: {err}") from None
                reply = self.handle(req, conn)
                if reply.get("_sent"):
                    return
                conn.sendall(json.dumps({"ok": True, **reply}).encode() + b"\n")
            except VirtkitError as err:
                self._reply_error(conn, str(err))
            except (TimeoutError, OSError):
                pass
            except Exception as err:  # noqa: BLE001 - a bad request must never take the switch down
                self.log(f"internal error on control request: {err!r}")
                self._reply_error(conn, f"internal error: {err!r}")

    @staticmethod
    def _reply_error(conn: socket.socket, msg: str) -> None:
        try:
            conn.sendall(json.dumps({"ok": False, "error": msg}).encode() + b"\n")
        except OSError:
            pass

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until SIGTERM/SIGINT or a shutdown request."""
        ctl = self.dir / "control.sock"
        if ctl.exists():
            ctl.unlink()
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(str(ctl))
        ls.listen(128)
        ls.setblocking(False)
        self.sel.register(ls, selectors.EVENT_READ, None)
        (self.dir / "switch.pid").write_text(f"{os.getpid()}\n")
        self.save()

        def stop(signum: int, frame: Any) -> None:
            self.running = False

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.log(f"running, {len(self.switch.ports)} port(s)")
        sw = self.switch
        last_tick = time.monotonic()
        pending = False
        try:
            while self.running:
                events = self.sel.select(timeout=0.01 if pending else 1.0)
                now = time.monotonic()
                for key, mask in events:
                    port = key.data
                    if port is None:
                        self._serve_control(ls)
                        continue
                    if port.name not in sw.ports:
                        continue
                    if mask & selectors.EVENT_WRITE:
                        port.flush()
                    if mask & selectors.EVENT_READ:
                        if port.dp_index >= 0:
                            sw.dp.receive(port, now, BATCH)  # compiled fast path, upcalls to sw.receive
                        else:
                            frames = port.receive_batch(BATCH)
                            if frames:
                                sw.receive(port, frames, now)
                        if port.down:
                            self._unregister(port)
                            sw.invalidate()
                            self.log(f"port {port.name} ({port.spec}) is down; retrying every second")
                            continue
                        if isinstance(port, VmPort):
                            if port.closed_by_peer:
                                self._remove(port.name)
                                continue
                            self._register(port)
                pending = False
                for port in list(sw.ports.values()):
                    if port.down:
                        continue
                    if port.queued:
                        port.flush()
                    if port.tx_pending:
                        port.kick()
                        pending = pending or bool(port.tx_pending)
                    if port.queued or self.registered.get(port.name, (0, 1))[1] & selectors.EVENT_WRITE:
                        self._register(port)
                if now - last_tick >= 1.0:
                    last_tick = now
                    sw.sweep(now)
                    for port in sw.ports.values():
                        if port.down and port.reopen():
                            port.down = False
                            sw.invalidate()  # a new descriptor
                            self._register(port)
                            self.log(f"port {port.name} ({port.spec}) is back")
                    self._retry_failed()
                    for cap in self.captures.values():
                        cap.writer.flush()
        finally:
            for cap in list(self.captures.values()):
                self._drop_capture(cap)
            for name in list(sw.ports):
                sw.ports[name].close()
            ls.close()
            for f in (ctl, self.dir / "switch.pid"):
                try:
                    f.unlink()
                except FileNotFoundError:
                    pass
            self.log("stopped")


def main(argv: list[str] | None = None) -> int:
    """Run one switch in the foreground."""
    ap = argparse.ArgumentParser(prog="python -m virtkit.network.daemon")
    ap.add_argument("name")
    ap.add_argument("--dir", help="switch directory (default: $VIRTKIT_NET_DIR/NAME)")
    args = ap.parse_args(argv)
    try:
        d = SwitchDaemon(args.name, Path(args.dir) if args.dir else None)
        d.run()
    except VirtkitError as err:
        print(f"virtkit: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
