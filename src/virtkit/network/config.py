"""Where switches live and how their configuration is persisted (JSON, validated on load).

Each switch has a directory ``$VIRTKIT_NET_DIR/NAME`` (default ``~/.local/share/virtkit/net/NAME``)
holding ``config.json`` (ports, VLANs, groups, settings), ``control.sock`` (the daemon's control
socket), ``switch.pid``, ``switch.log`` and the ``vm-ID.sock`` sockets of VM ports.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from virtkit.errors import ConfigError
from virtkit.network.ports import parse_spec
from virtkit.network.secgroup import Group
from virtkit.network.switch import parse_vlan, parse_vlan_list

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
PORT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,79}$")
DEFAULTS: dict[str, Any] = {"ageing": 300.0, "max_macs": 4096, "storm_pps": 5000.0, "mtu": 1500}


def net_dir() -> Path:
    """The directory holding every switch (``VIRTKIT_NET_DIR`` overrides the default)."""
    env = os.environ.get("VIRTKIT_NET_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "virtkit" / "net"


def check_name(name: str, what: str = "switch") -> str:
    """Validate a switch/port/group name: 1-32 letters, digits, '-' or '_'."""
    if what == "port" and isinstance(name, str) and PORT_NAME_RE.match(name):
        return name
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"bad {what} name {name!r} (1-32 letters, digits, '-' or '_', starting with a letter/digit)")
    return name


def switch_dir(name: str) -> Path:
    """The directory of switch ``name``."""
    return net_dir() / check_name(name)


def new_config(name: str, **settings: Any) -> dict[str, Any]:
    """A fresh configuration with the given settings (validated)."""
    cfg = {"name": check_name(name), **DEFAULTS, "ports": [], "groups": []}
    for k, v in settings.items():
        if v is not None:
            cfg[k] = v
    return validate(cfg, "new switch")


def _num(cfg: dict[str, Any], key: str, kind: type, where: str, lo: float, hi: float) -> None:
    v = cfg.get(key, DEFAULTS[key])
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ConfigError(f"{where}: {key} must be a number, not {v!r}")
    if not lo <= v <= hi:
        raise ConfigError(f"{where}: {key} {v} out of range {lo}-{hi}")
    cfg[key] = kind(v)


def validate_port(p: Any, where: str) -> dict[str, Any]:
    """Check one port entry of a config file (spec, mode, VLANs) and normalise it."""
    if not isinstance(p, dict):
        raise ConfigError(f"{where}: a port must be a mapping, not {type(p).__name__}")
    spec = p.get("spec")
    if not isinstance(spec, str):
        raise ConfigError(f"{where}: port without a 'spec' string")
    parse_spec(spec)
    check_name(str(p.get("name", "")), "port")
    mode = p.get("mode", "access")
    if mode not in ("access", "trunk"):
        raise ConfigError(f"{where}: port {p['name']}: mode must be access or trunk, not {mode!r}")
    if mode == "access":
        p["vlan"] = parse_vlan(p.get("vlan", 1))
    else:
        parse_vlan_list(str(p.get("trunk", "all")))
        if p.get("native") is not None:
            p["native"] = parse_vlan(p["native"])
    if p.get("tpid", 0x8100) not in (0x8100, 0x88A8):
        raise ConfigError(f"{where}: port {p['name']}: tpid must be 33024 (0x8100) or 34984 (0x88a8)")
    pr = p.get("priority", 0)
    if isinstance(pr, bool) or not isinstance(pr, int) or not 0 <= pr <= 7:
        raise ConfigError(f"{where}: port {p['name']}: priority must be 0-7")
    return p


def validate(cfg: Any, where: str) -> dict[str, Any]:
    """Check a whole switch configuration; :class:`ConfigError` names the first problem."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: the configuration must be a JSON object")
    check_name(str(cfg.get("name", "")))
    _num(cfg, "ageing", float, where, 1, 1_000_000)
    _num(cfg, "max_macs", int, where, 1, 10_000_000)
    _num(cfg, "storm_pps", float, where, 0, 100_000_000)
    _num(cfg, "mtu", int, where, 68, 65535)
    ports = cfg.setdefault("ports", [])
    groups = cfg.setdefault("groups", [])
    if not isinstance(ports, list) or not isinstance(groups, list):
        raise ConfigError(f"{where}: 'ports' and 'groups' must be lists")
    gnames = set()
    for g in groups:
        gnames.add(Group.from_dict(g).name)
    seen = set()
    for p in ports:
        validate_port(p, where)
        if p["name"] in seen:
            raise ConfigError(f"{where}: duplicate port name {p['name']!r}")
        seen.add(p["name"])
        if p.get("group") is not None and p["group"] not in gnames:
            raise ConfigError(f"{where}: port {p['name']} is in unknown group {p['group']!r}")
    return cfg


def load(path: Path) -> dict[str, Any]:
    """Read and validate a config file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"no switch configuration at {path}") from None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    return validate(cfg, str(path))


def save(path: Path, cfg: dict[str, Any]) -> None:
    """Write a config file atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
