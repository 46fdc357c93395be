"""Network namespaces and veth pairs as throw-away hosts (for interop tests, benchmarks and demos).

A :class:`Netns` is a Linux network namespace standing in for a machine; :meth:`Netns.veth`
gives it an interface whose peer stays in the root namespace (to become a ``host:IF`` port) and
:meth:`Netns.adopt` moves an existing interface (a TAP a switch created) into it. Everything is
removed by :meth:`Netns.close`. Needs root and iproute2.
"""

from __future__ import annotations

import shutil
import subprocess

from virtkit.errors import VirtkitError


class NetnsError(VirtkitError):
    """An ``ip`` command failed."""


def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command; :class:`NetnsError` with its stderr when it fails."""
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {p.stderr.strip() or p.stdout.strip()}")
    return p


class Netns:
    """One network namespace (``ip netns add NAME``) with helpers to wire and run things in it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.root_ifs: list[str] = []
        sh("ip", "netns", "del", name, check=False)
        sh("ip", "netns", "add", name)
        self.exec("ip", "link", "set", "lo", "up")

    def exec(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command inside the namespace."""
        return sh("ip", "netns", "exec", self.name, *argv, check=check, timeout=timeout)

    def popen(self, *argv: str, **kw) -> subprocess.Popen:
        """Start a background command inside the namespace."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kw)

    def _offloads_off(self, ifname: str) -> None:
        # A veth hands 64 KiB TSO/GSO super-frames to AF_PACKET sockets; a switch port needs real frames.
        if shutil.which("ethtool"):
            self.exec("ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off", "tx", "off", check=False)

    def veth(self, inside: str, outside: str, addr: str | None = None, mtu: int | None = None,
             offloads: bool = False) -> str:
        """Create a veth pair: ``inside`` in this namespace (up, optional address), ``outside`` in the root one.

        Offloads are turned off (real frames for an AF_PACKET ``host:`` port) unless ``offloads``.
        """
        sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", self.name)
        self.root_ifs.append(outside)
        sh("ip", "link", "set", outside, "up")
        if shutil.which("ethtool") and not offloads:
            sh("ethtool", "-K", outside, "tso", "off", "gso", "off", "gro", "off", "tx", "off", check=False)
        self._setup(inside, addr, mtu, offloads_off=not offloads)
        return outside

    def adopt(self, ifname: str, addr: str | None = None, mtu: int | None = None) -> None:
        """Move a root-namespace interface (e.g. a switch's TAP) into this namespace and bring it up.

        Offloads stay as they are: a virtkit TAP port takes TSO super-frames and partial checksums.
        """
        sh("ip", "link", "set", ifname, "netns", self.name)
        self._setup(ifname, addr, mtu, offloads_off=False)

    def _setup(self, ifname: str, addr: str | None, mtu: int | None, offloads_off: bool = True) -> None:
        if offloads_off:
            self._offloads_off(ifname)
        if mtu:
            self.exec("ip", "link", "set", ifname, "mtu", str(mtu))
        if addr:
            self.exec("ip", "addr", "add", addr, "dev", ifname)
        self.exec("ip", "link", "set", ifname, "up")

    def vlan(self, parent: str, vid: int, addr: str | None = None, egress_qos: str | None = None) -> str:
        """An 802.1Q sub-interface ``parent.vid`` (optionally mapping skb priority → PCP with egress-qos-map)."""
        name = f"{parent}.{vid}"
        argv = ["ip", "link", "add", "link", parent, "name", name, "type", "vlan", "id", str(vid)]
        if egress_qos:
            argv += ["egress-qos-map", egress_qos]
        self.exec(*argv)
        if addr:
            self.exec("ip", "addr", "add", addr, "dev", name)
        self.exec("ip", "link", "set", name, "up")
        return name

    def ping(self, addr: str, count: int = 3, wait: float = 1.0) -> bool:
        """True when ``addr`` answers ICMP echo from inside the namespace."""
        p = self.exec("ping", "-c", str(count), "-W", str(wait), "-i", "0.2", addr, check=False,
                      timeout=count * (wait + 1) + 10)
        return p.returncode == 0

    def close(self) -> None:
        """Delete the namespace (its interfaces go with it) and the root-side veth ends."""
        sh("ip", "netns", "del", self.name, check=False)
        for ifname in self.root_ifs:
            sh("ip", "link", "del", ifname, check=False)
