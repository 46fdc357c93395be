"""Security groups (Eucalyptus/EC2 style): a group owns a VLAN and ordered ingress rules for its ports.

A frame leaving the switch towards a port in a group (traffic *into* the VM) is checked: ARP and
IPv6 neighbour discovery always pass (hosts must resolve each other); replies to connections the
port opened itself pass (a small connection table, like EC2's stateful groups); otherwise the first
rule whose protocol, destination port range and source CIDR match decides, and the group's default
(deny unless set to allow) applies when none does.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from virtkit.errors import ConfigError

PROTOS = {"any": None, "tcp": 6, "udp": 17, "icmp": 1}
ICMPV6 = 58
NDP_TYPES = frozenset((133, 134, 135, 136, 137))
CONNTRACK_MAX = 16384
CONNTRACK_TIMEOUT = 300.0


@dataclass(frozen=True)
class Rule:
    """One ingress rule: ``action`` (allow/deny) traffic of ``proto`` to ports ``lo-hi`` from ``source``."""

    action: str
    proto: str = "any"
    lo: int = 0
    hi: int = 65535
    source: str = "any"

    def __post_init__(self) -> None:
        if self.action not in ("allow", "deny"):
            raise ConfigError(f"rule action must be allow or deny, not {self.action!r}")
        if self.proto not in PROTOS:
            raise ConfigError(f"rule protocol must be one of {', '.join(PROTOS)}, not {self.proto!r}")
        if not 0 <= self.lo <= self.hi <= 65535:
            raise ConfigError(f"bad port range {self.lo}-{self.hi} (0-65535, low <= high)")
        net = parse_cidr(self.source)
        object.__setattr__(self, "_net", None if net is None else (net.version, int(net.network_address),
                                                                   int(net.netmask)))

    def matches(self, version: int, proto: int, src: int, dport: int) -> bool:
        """Does a packet (IP version, protocol number, source address as int, destination port) match?"""
        want = PROTOS[self.proto]
        if want is not None:
            if want == 1:
                if proto not in (1, ICMPV6):
                    return False
            elif proto != want:
                return False
            elif not self.lo <= dport <= self.hi:
                return False
        net = self._net  # type: ignore[attr-defined]
        return net is None or (net[0] == version and src & net[2] == net[1])

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the config file and ``--json``."""
        ports = "any" if (self.lo, self.hi) == (0, 65535) else (str(self.lo) if self.lo == self.hi
                                                                 else f"{self.lo}-{self.hi}")
        return {"action": self.action, "proto": self.proto, "ports": ports, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rule:
        """The inverse of :meth:`as_dict`, with validation."""
        if not isinstance(d, dict):
            raise ConfigError(f"a rule must be a mapping, not {type(d).__name__}")
        lo, hi = parse_port_range(str(d.get("ports", "any")))
        return cls(str(d.get("action", "")), str(d.get("proto", "any")), lo, hi, str(d.get("source", "any")))


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """Parse an IPv4/IPv6 CIDR (``any`` → None); :class:`ConfigError` on anything else."""
    if text in ("any", "", "*"):
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"bad CIDR {text!r} (want e.g. 10.0.0.0/8, 2001:db8::/32 or any)") from None


def parse_port_range(text: str) -> tuple[int, int]:
    """Parse ``22``, ``1000-2000`` or ``any`` into (low, high)."""
    text = text.strip()
    if text in ("any", "*", ""):
        return 0, 65535
    lo_s, sep, hi_s = text.partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    except ValueError:
        raise ConfigError(f"bad port range {text!r} (want 22, 1000-2000 or any)") from None
    if not 0 <= lo <= hi <= 65535:
        raise ConfigError(f"bad port range {text!r} (0-65535, low <= high)")
    return lo, hi


def ip_info(frame: bytes) -> tuple[int, int, int, int, int, int] | None:
    """(version, proto, src, dst, sport, dport) of an untagged IPv4/IPv6 frame; None if not IP or truncated.

    For ICMP the "ports" are (type, code) — used to recognise NDP.
    """
    if len(frame) < 34:
        return None
    et = (frame[12] << 8) | frame[13]
    if et == 0x0800:
        ihl = (frame[14] & 0x0F) * 4
        proto = frame[23]
        src = int.from_bytes(frame[26:30], "big")
        dst = int.from_bytes(frame[30:34], "big")
        off = 14 + ihl
        frag = ((frame[20] & 0x1F) << 8) | frame[21]
        version = 4
    elif et == 0x86DD:
        if len(frame) < 54:
            return None
        proto = frame[20]
        src = int.from_bytes(frame[22:38], "big")
        dst = int.from_bytes(frame[38:54], "big")
        off = 54
        frag = 0
        for _ in range(8):  # walk extension headers
            if proto in (0, 43, 60) and off + 2 <= len(frame):
                proto, off = frame[off], off + (frame[off + 1] + 1) * 8
            elif proto == 44 and off + 8 <= len(frame):
                frag = ((frame[off + 2] << 8) | frame[off + 3]) >> 3
                proto, off = frame[off], off + 8
            else:
                break
        version = 6
    else:
        return None
    sport = dport = 0
    if frag == 0 and off + 4 <= len(frame):
        if proto in (6, 17):
            sport = (frame[off] << 8) | frame[off + 1]
            dport = (frame[off + 2] << 8) | frame[off + 3]
        elif proto in (1, ICMPV6):
            sport, dport = frame[off], frame[off + 1]
    return version, proto, src, dst, sport, dport


@dataclass
class Group:
    """A security group: its VLAN, default policy and ordered ingress rules, plus its connection table."""

    name: str
    vlan: int
    default: str = "deny"
    rules: list[Rule] = field(default_factory=list)
    denied: int = 0

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"bad group name {self.name!r} (letters, digits, - and _)")
        if not 1 <= self.vlan <= 4094:
            raise ConfigError(f"group VLAN {self.vlan} out of range 1-4094")
        if self.default not in ("allow", "deny"):
            raise ConfigError(f"group default must be allow or deny, not {self.default!r}")
        self.conns: dict[tuple[int, int, int, int, int], float] = {}

    def outbound(self, frame: bytes, now: float) -> None:
        """Note a frame a member port sent, so the replies to it are let back in."""
        info = ip_info(frame)
        if info is None:
            return
        _, proto, src, dst, sport, dport = info
        if proto in (1, ICMPV6):
            sport = dport = 0
        key = (proto, src, dst, sport, dport)
        conns = self.conns
        if key in conns:
            conns[key] = now
            return
        if len(conns) >= CONNTRACK_MAX:
            conns.pop(next(iter(conns)))
        conns[key] = now

    def admit(self, frame: bytes, now: float) -> bool:
        """May this frame go out to a member port?"""
        et = (frame[12] << 8) | frame[13] if len(frame) >= 14 else 0
        if et == 0x0806:
            return True
        info = ip_info(frame)
        if info is None:
            ok = self.default == "allow"
        else:
            version, proto, src, dst, sport, dport = info
            if proto == ICMPV6 and sport in NDP_TYPES:
                return True
            key = (proto, dst, src, 0, 0) if proto in (1, ICMPV6) else (proto, dst, src, dport, sport)
            t = self.conns.get(key)
            if t is not None and now - t < CONNTRACK_TIMEOUT:
                return True
            for rule in self.rules:
                if rule.matches(version, proto, src, dport):
                    ok = rule.action == "allow"
                    break
            else:
                ok = self.default == "allow"
        if not ok:
            self.denied += 1
        return ok

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the config file and ``--json``."""
        return {"name": self.name, "vlan": self.vlan, "default": self.default,
                "rules": [r.as_dict() for r in self.rules]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Group:
        """The inverse of :meth:`as_dict`, with validation."""
        if not isinstance(d, dict):
            raise ConfigError(f"a group must be a mapping, not {type(d).__name__}")
        rules = d.get("rules", [])
        if not isinstance(rules, list):
            raise ConfigError("group rules must be a list")
        try:
            vlan = int(d.get("vlan", 0))
        except (TypeError, ValueError):
            raise ConfigError(f"bad group VLAN {d.get('vlan')!r}") from None
        return cls(str(d.get("name", "")), vlan, str(d.get("default", "deny")), [Rule.from_dict(r) for r in rules])
