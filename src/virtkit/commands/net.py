"""``virtkit net``: create and manage 802.1Q virtual switches (ports, VLANs, security groups, capture)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from virtkit.errors import ConfigError
from virtkit.network import control
from virtkit.network.switch import ALL_VLANS, format_vlans, parse_vlan, parse_vlan_list


def _num(text: str | None, kind: type, flag: str) -> Any:
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not a {'number' if kind is float else 'whole number'}") from None


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"ageing": _num(args.ageing, float, "--ageing"), "max_macs": _num(args.max_macs, int, "--max-macs"),
            "storm_pps": _num(args.storm_pps, float, "--storm-pps"), "mtu": _num(args.mtu, int, "--mtu")}


def _out(args: argparse.Namespace, data: Any, human: str = "") -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
    elif human:
        print(human)


def cmd_create(args: argparse.Namespace) -> int:
    if args.foreground:
        from virtkit.network.daemon import SwitchDaemon

        control.create(args.name, start_daemon=False, **_settings(args))
        SwitchDaemon(args.name).run()
        return 0
    control.create(args.name, **_settings(args))
    _out(args, {"name": args.name, "dir": str(control.statedir(args.name))},
         f"switch {args.name} running ({control.statedir(args.name)})")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    pid = control.start(args.name)
    _out(args, {"name": args.name, "pid": pid}, f"switch {args.name} running (pid {pid})")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    control.stop(args.name)
    _out(args, {"name": args.name}, f"switch {args.name} stopped")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    control.delete(args.name)
    _out(args, {"name": args.name}, f"switch {args.name} deleted")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = control.list_switches()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    t = Table(title="virtual switches")
    for c in ("name", "state", "ports", "directory"):
        t.add_column(c)
    for r in rows:
        state = "running" if r["running"] else ("broken: " + r["error"] if "error" in r else "stopped")
        t.add_row(r["name"], state, str(r["ports"]), r["dir"])
    Console().print(t)
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    control.request(args.name, "set", **_settings(args))
    _out(args, {"name": args.name}, f"switch {args.name} updated")
    return 0


def _vlans(p: dict[str, Any]) -> str:
    if p["mode"] == "access":
        return f"access {p['vlan']}"
    trunk = p.get("trunk", "all")
    s = f"trunk {trunk}"
    if p.get("native") is not None:
        s += f" native {p['native']}"
    if p.get("tpid") == 0x88A8:
        s += " (802.1ad)"
    return s


def cmd_show(args: argparse.Namespace) -> int:
    info = control.request(args.name, "show")
    info.pop("ok", None)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    con = Console() if sys.stdout.isatty() else Console(width=160)
    sw = info["switch"]
    con.print(f"[bold]switch {sw['name']}[/]: ageing {sw['ageing']:g} s, MAC table {sw['mac_count']}/"
              f"{sw['max_macs']} (full: {sw['mac_table_full']}, moves: {sw['mac_moves']}), "
              f"storm control {sw['storm_pps']:g} flooded frames/s per port, MTU {sw['mtu']}")
    t = Table(title="ports")
    for c in ("port", "kind", "VLANs", "group", "rx frames", "rx bytes", "tx frames", "tx bytes", "drops"):
        t.add_column(c, justify="right" if c.startswith(("rx", "tx")) else "left")
    for p in info["ports"]:
        st = p["stats"]
        drops = ", ".join(f"{k} {v}" for k, v in st["drops"].items() if v) or "-"
        if p.get("down"):
            drops = "[red]DOWN (device gone, retrying)[/] " + drops
        t.add_row(p["name"], p["spec"], _vlans(p), p.get("group") or "-", str(st["rx_frames"]), str(st["rx_bytes"]),
                  str(st["tx_frames"]), str(st["tx_bytes"]), drops)
    for p in info["failed"]:
        t.add_row(p["name"], p["spec"], _vlans(p), p.get("group") or "-", "-", "-", "-", "-",
                  f"[red]not open: {p.get('error', '')}[/]")
    con.print(t)
    m = Table(title="MAC table")
    for c in ("VLAN", "MAC", "port", "age (s)"):
        m.add_column(c)
    for e in info["macs"]:
        m.add_row(str(e["vlan"]), e["mac"], e["port"], f"{e['age']:.1f}")
    con.print(m)
    if info["groups"]:
        g = Table(title="security groups")
        for c in ("group", "VLAN", "default", "rules", "denied"):
            g.add_column(c)
        for grp in info["groups"]:
            rules = "\n".join(f"{i}. {r['action']} {r['proto']} ports {r['ports']} from {r['source']}"
                              for i, r in enumerate(grp["rules"], 1)) or "-"
            g.add_row(grp["name"], str(grp["vlan"]), grp["default"], rules, str(grp["denied"]))
        con.print(g)
    return 0


def _port_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.access is not None:
        out["access"] = parse_vlan(args.access)
    if args.trunk is not None:
        vl = parse_vlan_list(args.trunk)
        out["trunk"] = "all" if vl == ALL_VLANS else format_vlans(vl)
    if args.native is not None:
        out["native"] = "none" if args.native.lower() == "none" else parse_vlan(args.native)
    if args.priority is not None:
        pr = _num(args.priority, int, "--priority")
        if not 0 <= pr <= 7:
            raise ConfigError(f"--priority: {pr} is not a PCP value 0-7")
        out["priority"] = pr
    if args.group is not None:
        out["group"] = args.group
    if args.qinq is not None:
        out["qinq"] = args.qinq
    return out


def cmd_port_add(args: argparse.Namespace) -> int:
    reply = control.request(args.name, "port_add", spec=args.spec, name=args.port_name, **_port_args(args))
    _out(args, {"switch": args.name, "port": reply["port"]}, f"port {reply['port']} added to {args.name}")
    return 0


def cmd_port_remove(args: argparse.Namespace) -> int:
    control.request(args.name, "port_remove", name=args.port)
    _out(args, {"switch": args.name, "port": args.port}, f"port {args.port} removed from {args.name}")
    return 0


def cmd_port_set(args: argparse.Namespace) -> int:
    pa = _port_args(args)
    if not pa:
        raise ConfigError("nothing to set: give --access, --trunk, --native, --group, --priority or --qinq")
    control.request(args.name, "port_set", name=args.port, **pa)
    _out(args, {"switch": args.name, "port": args.port}, f"port {args.port} updated")
    return 0


def cmd_group_create(args: argparse.Namespace) -> int:
    control.request(args.name, "group_create", group=args.group, vlan=parse_vlan(args.vlan), default=args.default)
    _out(args, {"switch": args.name, "group": args.group}, f"security group {args.group} created on VLAN {args.vlan}")
    return 0


def cmd_group_delete(args: argparse.Namespace) -> int:
    control.request(args.name, "group_delete", group=args.group)
    _out(args, {"switch": args.name, "group": args.group}, f"security group {args.group} deleted")
    return 0


def cmd_group_set(args: argparse.Namespace) -> int:
    if args.vlan is None and args.default is None:
        raise ConfigError("nothing to set: give --vlan or --default")
    control.request(args.name, "group_set", group=args.group, default=args.default,
                    vlan=parse_vlan(args.vlan) if args.vlan is not None else None)
    _out(args, {"switch": args.name, "group": args.group}, f"security group {args.group} updated")
    return 0


def cmd_group_list(args: argparse.Namespace) -> int:
    groups = control.request(args.name, "show")["groups"]
    if args.json:
        print(json.dumps(groups, indent=2))
        return 0
    t = Table(title=f"security groups of {args.name}")
    for c in ("group", "VLAN", "default", "#", "action", "proto", "ports", "source"):
        t.add_column(c)
    for g in groups:
        if not g["rules"]:
            t.add_row(g["name"], str(g["vlan"]), g["default"], "-", "", "", "", "")
        for i, r in enumerate(g["rules"], 1):
            t.add_row(g["name"] if i == 1 else "", str(g["vlan"]) if i == 1 else "", g["default"] if i == 1 else "",
                      str(i), r["action"], r["proto"], r["ports"], r["source"])
    Console().print(t)
    return 0


def cmd_rule_add(args: argparse.Namespace) -> int:
    pos = _num(args.position, int, "--position")
    reply = control.request(args.name, "rule_add", group=args.group, action=args.action, proto=args.proto,
                            ports=args.port, source=args.source, position=pos)
    _out(args, {"switch": args.name, "group": args.group, "index": reply["index"]},
         f"rule {reply['index']} added to {args.group}")
    return 0


def cmd_rule_remove(args: argparse.Namespace) -> int:
    control.request(args.name, "rule_remove", group=args.group, index=_num(args.index, int, "INDEX"))
    _out(args, {"switch": args.name, "group": args.group}, f"rule {args.index} removed from {args.group}")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    if (args.port is None) == (args.vlan is None):
        raise ConfigError("capture needs exactly one of --port P or --vlan V")
    count = _num(args.count, int, "--count")
    duration = _num(args.duration, float, "--duration")
    path = os.path.abspath(args.write)
    vlan = parse_vlan(args.vlan) if args.vlan is not None else None
    reply = control.request(args.name, "capture_start", port=args.port, vlan=vlan, path=path)
    cid = reply["id"]
    start = time.monotonic()
    frames = 0
    try:
        while True:
            if duration is not None and time.monotonic() - start >= duration:
                break
            if count is not None:
                caps = {c["id"]: c for c in control.request(args.name, "show")["captures"]}
                if caps.get(cid, {}).get("frames", 0) >= count:
                    break
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        frames = control.request(args.name, "capture_stop", id=cid)["frames"]
    _out(args, {"file": path, "frames": frames}, f"{frames} frame(s) written to {path}")
    return 0


EXAMPLES = {
    "create": "virtkit net create lab",
    "start": "virtkit net start lab",
    "stop": "virtkit net stop lab",
    "delete": "virtkit net delete lab",
    "list": "virtkit net list --json",
    "show": "virtkit net show lab",
    "set": "virtkit net set lab --ageing 600 --mtu 9000",
    "port add": ["virtkit net port add lab tap:lab0 --access 7",
                 "virtkit net port add lab host:veth1 --trunk 1,7,10-20 --native 1",
                 "virtkit net port add lab udp:4790:198.51.100.2:4790"],
    "port remove": "virtkit net port remove lab lab0",
    "port set": "virtkit net port set lab lab0 --access 10 --priority 5",
    "group create": "virtkit net group create lab web --vlan 20 --default deny",
    "group delete": "virtkit net group delete lab web",
    "group set": "virtkit net group set lab web --default allow",
    "group list": "virtkit net group list lab",
    "group rule add": "virtkit net group rule add lab web allow --proto tcp --port 22 --source 10.0.0.0/8",
    "group rule remove": "virtkit net group rule remove lab web 1",
    "capture": "virtkit net capture lab --port veth1 -w trunk.pcapng -c 100",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``virtkit net`` and its subcommands."""
    net = subparsers.add_parser("net", help="802.1Q virtual switches: ports, VLANs, security groups, capture")
    sub = net.add_subparsers(dest="net_command", metavar="SUBCOMMAND")
    net.set_defaults(func=lambda a: (net.print_help(), 2)[1])

    def add(parser_sub: Any, name: str, func: Any, help_: str, json_flag: bool = True,
            aliases: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        from virtkit.commands._help import add as add_with_examples

        p = add_with_examples(parser_sub, name, help_, EXAMPLES[name if parser_sub is sub else
                                                                 f"{parser_sub.dest_name} {name}"], aliases)
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        return p

    def settings(p: argparse.ArgumentParser) -> None:
        p.add_argument("--ageing", metavar="SECONDS", help="MAC ageing time (default 300)")
        p.add_argument("--max-macs", metavar="N", help="MAC table size (default 4096)")
        p.add_argument("--storm-pps", metavar="RATE", help="flooded frames/s per port before storm drops "
                                                           "(default 5000, 0 = off)")
        p.add_argument("--mtu", metavar="BYTES", help="largest payload forwarded (default 1500)")

    p = add(sub, "create", cmd_create, "create a switch and start its daemon")
    p.add_argument("name")
    settings(p)
    p.add_argument("--foreground", action="store_true", help="run the switch in this process")
    p = add(sub, "start", cmd_start, "start a stopped switch from its saved configuration")
    p.add_argument("name")
    p = add(sub, "stop", cmd_stop, "stop a switch (configuration kept)")
    p.add_argument("name")
    p = add(sub, "delete", cmd_delete, "stop a switch and remove its configuration")
    p.add_argument("name")
    add(sub, "list", cmd_list, "list switches")
    p = add(sub, "show", cmd_show, "ports, counters, MAC table and groups of a switch")
    p.add_argument("name")
    p = add(sub, "set", cmd_set, "change switch settings")
    p.add_argument("name")
    settings(p)

    def port_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--access", metavar="VLAN", help="untagged access port on VLAN (1-4094)")
        p.add_argument("--trunk", metavar="VLANS", help="tagged trunk carrying VLANS, e.g. 1,7,10-20 or all")
        p.add_argument("--native", metavar="VLAN", help="trunk: VLAN sent and received untagged ('none' to clear)")
        p.add_argument("--group", metavar="G", help="security group (sets the port to the group's VLAN; '' leaves)")
        p.add_argument("--priority", metavar="PCP", help="PCP given to untagged frames received (0-7)")
        p.add_argument("--qinq", action=argparse.BooleanOptionalAction, default=None,
                       help="trunk: 802.1ad S-tags (TPID 0x88a8) instead of 802.1Q")

    port = sub.add_parser("port", help="add, remove or configure ports")
    psub = port.add_subparsers(dest="port_command", metavar="SUBCOMMAND")
    psub.dest_name = "port"
    port.set_defaults(func=lambda a: (port.print_help(), 2)[1])
    p = add(psub, "add", cmd_port_add, "add a port: tap:IF | host:IF | udp:LPORT:HOST:RPORT | vm:ID")
    p.add_argument("name", help="switch")
    p.add_argument("spec", help="tap:IF | host:IF | udp:LOCAL_PORT:REMOTE_HOST:REMOTE_PORT | vm:ID")
    p.add_argument("--name", dest="port_name", metavar="PORT", help="port name (default from the spec)")
    port_flags(p)
    p = add(psub, "remove", cmd_port_remove, "remove a port", aliases=("delete",))
    p.add_argument("name", help="switch")
    p.add_argument("port")
    p = add(psub, "set", cmd_port_set, "change a port's VLANs, group or priority")
    p.add_argument("name", help="switch")
    p.add_argument("port")
    port_flags(p)

    grp = sub.add_parser("group", help="security groups: a VLAN plus ordered ingress rules")
    gsub = grp.add_subparsers(dest="group_command", metavar="SUBCOMMAND")
    gsub.dest_name = "group"
    grp.set_defaults(func=lambda a: (grp.print_help(), 2)[1])
    p = add(gsub, "create", cmd_group_create, "create a security group")
    p.add_argument("name", help="switch")
    p.add_argument("group")
    p.add_argument("--vlan", required=True, help="the group's VLAN")
    p.add_argument("--default", choices=("allow", "deny"), default="deny", help="when no rule matches")
    p = add(gsub, "delete", cmd_group_delete, "delete an unused security group")
    p.add_argument("name", help="switch")
    p.add_argument("group")
    p = add(gsub, "set", cmd_group_set, "change a group's VLAN or default")
    p.add_argument("name", help="switch")
    p.add_argument("group")
    p.add_argument("--vlan")
    p.add_argument("--default", choices=("allow", "deny"))
    p = add(gsub, "list", cmd_group_list, "list groups and their rules")
    p.add_argument("name", help="switch")
    rule = gsub.add_parser("rule", help="add or remove rules")
    rsub = rule.add_subparsers(dest="rule_command", metavar="SUBCOMMAND")
    rsub.dest_name = "group rule"
    rule.set_defaults(func=lambda a: (rule.print_help(), 2)[1])
    p = add(rsub, "add", cmd_rule_add, "add an ingress rule (first match wins)")
    p.add_argument("name", help="switch")
    p.add_argument("group")
    p.add_argument("action", choices=("allow", "deny"))
    p.add_argument("--proto", default="any", help="tcp, udp, icmp or any")
    p.add_argument("--port", default="any", help="destination port or range (tcp/udp), e.g. 22 or 8000-8080")
    p.add_argument("--source", default="any", help="source CIDR (IPv4 or IPv6) or any")
    p.add_argument("--position", help="insert at this position (1 = first); default: append")
    p = add(rsub, "remove", cmd_rule_remove, "remove rule number INDEX", aliases=("delete",))
    p.add_argument("name", help="switch")
    p.add_argument("group")
    p.add_argument("index")

    p = add(sub, "capture", cmd_capture, "mirror a port or VLAN into a pcapng file")
    p.add_argument("name", help="switch")
    p.add_argument("--port", help="port to capture (frames as on its wire: tags kept on trunks)")
    p.add_argument("--vlan", help="VLAN to capture (every frame once, tagged with its VID and PCP)")
    p.add_argument("-w", "--write", required=True, metavar="FILE", help="pcapng file to write")
    p.add_argument("-c", "--count", help="stop after N frames")
    p.add_argument("--duration", metavar="SECONDS", help="stop after this long (default: until Ctrl-C)")
