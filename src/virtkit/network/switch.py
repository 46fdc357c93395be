"""The forwarding core of the 802.1Q switch: VLAN classification, MAC learning, flooding, egress queues.

No I/O happens here: a port kind (``ports.py``) hands received frames to :meth:`Switch.receive`
and implements :meth:`Port.transmit`; the daemon runs the event loop. Keeping the core pure makes
it testable frame by frame and keeps the per-frame path short (one function, precomputed
per-port VLAN sets, one dict lookup per MAC).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from virtkit.errors import ConfigError
from virtkit.network.ethernet import DEFAULT_MTU, ETH_HLEN, TAG_LEN, TPID_8021AD, TPID_8021Q, VID_RESERVED, mac_str
from virtkit.network.offload import finish

DROP_REASONS = (
    "runt", "oversize", "bad_tag", "vlan_not_allowed", "reserved_vid",
    "security_group", "queue_full", "storm", "loop", "tx_error",
)
ALL_VLANS = frozenset(range(1, 4095))
NUM_QUEUES = 8


class PortStats:
    """Per-port counters: frames and bytes each way, drops by reason."""

    __slots__ = ("rx_frames", "rx_bytes", "tx_frames", "tx_bytes", "drops")

    def __init__(self) -> None:
        self.rx_frames = self.rx_bytes = self.tx_frames = self.tx_bytes = 0
        self.drops = dict.fromkeys(DROP_REASONS, 0)

    def as_dict(self) -> dict[str, Any]:
        """The counters as plain JSON-able data."""
        return {"rx_frames": self.rx_frames, "rx_bytes": self.rx_bytes, "tx_frames": self.tx_frames,
                "tx_bytes": self.tx_bytes, "drops": dict(self.drops)}


class Port:
    """A switch port: VLAN mode, 8 strict-priority egress queues, counters. Subclasses do the I/O."""

    kind = "null"
    #: True when the port's wire takes frames with a virtio-net header (TSO/partial checksum) as they are
    accepts_gso = False

    def __init__(self, name: str, *, mode: str = "access", vlan: int = 1, trunk: Iterable[int] | None = None,
                 native: int | None = None, tpid: int = TPID_8021Q, priority: int = 0, queue_limit: int = 256,
                 spec: str = "") -> None:
        self.name = name
        self.spec = spec or f"{self.kind}:{name}"
        self.stats = PortStats()
        self.queues: list[deque[bytes]] = [deque() for _ in range(NUM_QUEUES)]
        self.queued = 0
        self.queue_limit = queue_limit
        self.group: Any = None  # a secgroup.Group when the port is in a security group
        self.captures: list[Any] = []
        self.storm_tokens = 0.0
        self.storm_time = float("-inf")  # a full bucket at the first flooded frame
        self.configure(mode=mode, vlan=vlan, trunk=trunk, native=native, tpid=tpid, priority=priority)

    # -- configuration ---------------------------------------------------------------------------
    def configure(self, *, mode: str, vlan: int = 1, trunk: Iterable[int] | None = None, native: int | None = None,
                  tpid: int = TPID_8021Q, priority: int = 0) -> None:
        """Set the VLAN mode; precompute what the per-frame path looks up."""
        if mode not in ("access", "trunk"):
            raise ConfigError(f"port mode must be access or trunk, not {mode!r}")
        if tpid not in (TPID_8021Q, TPID_8021AD):
            raise ConfigError(f"TPID must be 0x8100 or 0x88a8, not {tpid:#x}")
        if not 0 <= priority <= 7:
            raise ConfigError(f"priority must be 0-7, not {priority}")
        for v in [vlan] + ([native] if native is not None else []):
            if not 1 <= v <= 4094:
                raise ConfigError(f"VLAN {v} out of range 1-4094")
        self.mode, self.tpid, self.priority = mode, tpid, priority
        if mode == "access":
            self.vlan, self.native = vlan, None
            self.allowed = frozenset((vlan,))
            self.pvid: int | None = vlan
            self.untagged_vlans = frozenset((vlan,))
            self.tagged_vlans: frozenset[int] = frozenset()
        else:
            allowed = frozenset(trunk) if trunk is not None else ALL_VLANS
            if any(not 1 <= v <= 4094 for v in allowed):
                raise ConfigError("trunk VLANs must be in 1-4094")
            if native is not None:
                allowed = allowed | {native}
            self.vlan, self.native, self.allowed, self.pvid = None, native, allowed, native
            self.untagged_vlans = frozenset((native,)) if native is not None else frozenset()
            self.tagged_vlans = allowed - self.untagged_vlans

    def config(self) -> dict[str, Any]:
        """The port's persistent configuration."""
        cfg: dict[str, Any] = {"name": self.name, "spec": self.spec, "mode": self.mode}
        if self.mode == "access":
            cfg["vlan"] = self.vlan
        else:
            cfg["trunk"] = "all" if self.allowed >= ALL_VLANS else format_vlans(self.allowed)
            if self.native is not None:
                cfg["native"] = self.native
        if self.tpid != TPID_8021Q:
            cfg["tpid"] = self.tpid
        if self.priority:
            cfg["priority"] = self.priority
        if self.group is not None:
            cfg["group"] = self.group.name
        return cfg

    #: frames handed to the wire but waiting for a :meth:`kick` (ports that batch their sends)
    tx_pending = 0
    #: the port's device vanished (interface deleted); the daemon stops polling it and retries reopen()
    down = False
    #: index in the compiled datapath (-1: not in it), the datapath's port-state array, vnet header length
    dp_index = -1
    dp_state: Any = None
    dp_table: Any = None
    #: the port kind reads/writes one whole frame per system call on :meth:`dp_fd` (the datapath can serve it)
    dp_capable = False
    dp_hdr = 0

    def dp_fd(self) -> int:
        """A descriptor the compiled datapath may read/write whole frames on (one per call), or -1."""
        return -1

    def dp_decode(self, data: bytes, out: list[bytes]) -> None:
        """Turn one raw read the datapath handed back (with its vnet header) into frames for the slow path."""
        out.append(data)

    def reopen(self) -> bool:
        """Try to open the port's device again after it went down; True on success."""
        return False

    # -- I/O hooks (overridden by port kinds) --------------------------------------------------
    def kick(self) -> None:
        """Push out frames a batching port is holding (called after every batch)."""
    def transmit(self, frame: bytes) -> bool:
        """Put one frame on the wire; False when the wire is busy (the frame stays queued)."""
        return True

    def receive_batch(self, limit: int) -> list[bytes]:
        """Up to ``limit`` frames that arrived, without blocking."""
        return []

    def fileno(self) -> int:
        """A pollable descriptor, or -1 when the port has nothing to poll."""
        return -1

    def close(self) -> None:
        """Release the port's resources."""

    # -- egress --------------------------------------------------------------------------------
    def enqueue(self, frame: bytes, pcp: int) -> None:
        """Send now if nothing is waiting, otherwise queue by PCP (8 queues, strict priority)."""
        if self.queued == 0:
            try:
                sent = self.transmit(frame)
            except OSError:
                self.stats.drops["tx_error"] += 1
                return
            if sent:
                self._sent(frame)
                return
        q = self.queues[pcp]
        if len(q) >= self.queue_limit:  # each priority has its own buffer: low traffic never starves high
            self.stats.drops["queue_full"] += 1
            return
        q.append(frame)
        self.queued += 1
        if self.dp_index >= 0:
            self.dp_state[self.dp_index] = 1  # the datapath must not overtake queued frames

    def flush(self) -> bool:
        """Send queued frames, highest PCP first, until the wire is busy; True when all went."""
        for q in reversed(self.queues):
            while q:
                frame = q[0]
                try:
                    sent = self.transmit(frame)
                except OSError:
                    sent = True
                    self.stats.drops["tx_error"] += 1
                    frame = b""
                if not sent:
                    return False
                q.popleft()
                self.queued -= 1
                if frame:
                    self._sent(frame)
        if self.dp_index >= 0:
            self.dp_state[self.dp_index] = 0
        return True

    def _sent(self, frame: bytes) -> None:
        self.stats.tx_frames += 1
        self.stats.tx_bytes += len(frame)
        for cap in self.captures:
            cap.write(frame, outbound=True)

    def info(self) -> dict[str, Any]:
        """Configuration plus counters, for ``net show``."""
        return {**self.config(), "kind": self.kind, "stats": self.stats.as_dict(), "queued": self.queued,
                "down": self.down}


class Switch:
    """MAC learning per VLAN, flooding within the VLAN only, VLAN tag push/pop, storm control, loop guard."""

    def __init__(self, name: str = "sw", *, ageing: float = 300.0, max_macs: int = 4096, storm_pps: float = 5000.0,
                 mtu: int = DEFAULT_MTU) -> None:
        if ageing <= 0:
            raise ConfigError(f"MAC ageing must be > 0 seconds, not {ageing}")
        if max_macs < 1:
            raise ConfigError(f"MAC table size must be >= 1, not {max_macs}")
        if storm_pps < 0:
            raise ConfigError(f"storm control rate must be >= 0, not {storm_pps}")
        if not 68 <= mtu <= 65535:
            raise ConfigError(f"MTU must be 68-65535, not {mtu}")
        self.name, self.ageing, self.max_macs, self.storm_pps, self.mtu = name, ageing, max_macs, storm_pps, mtu
        self.ports: dict[str, Port] = {}
        self.macs: dict[int, dict[bytes, list[Any]]] = {}
        self.mac_count = 0
        self.counters = {"mac_table_full": 0, "mac_moves": 0, "mac_aged": 0}
        self.vlan_captures: dict[int, list[Any]] = {}
        self._members: dict[int, list[Port]] = {}
        self._last_sweep = 0.0
        #: the compiled datapath (:mod:`virtkit.network.datapath`), when enabled
        self.dp: Any = None
        #: a MAC seen on one port is not moved to another within this many seconds: a frame from it
        #: arriving elsewhere that soon is one of our own floods coming back through a loop
        self.loop_hold = 1.0

    # -- ports -----------------------------------------------------------------------------------
    def add_port(self, port: Port) -> Port:
        """Attach a port; names are unique."""
        if port.name in self.ports:
            raise ConfigError(f"port {port.name!r} already exists on switch {self.name!r}")
        self.ports[port.name] = port
        self.changed()
        return port

    def remove_port(self, name: str) -> Port:
        """Detach a port and forget the MACs learned on it."""
        port = self.port(name)
        del self.ports[name]
        self.forget(port)
        self.changed()
        return port

    def port(self, name: str) -> Port:
        """The named port, or a clear error."""
        try:
            return self.ports[name]
        except KeyError:
            raise ConfigError(f"no port {name!r} on switch {self.name!r}") from None

    def attach_datapath(self, dp: Any) -> Any:
        """Forward known unicast between fd ports (TAP) in a compiled datapath built over this switch
        (``Datapath(switch)``, handed over by the daemon); returns it."""
        if self.dp is None:
            self.dp = dp
            self.dp.reload()
        return self.dp

    def invalidate(self) -> None:
        """Call after a change the datapath must see (capture, device reopened, MTU): re-read ports, drop flows."""
        if self.dp is not None:
            self.dp.reload()

    def changed(self) -> None:
        """Call after any port VLAN change: drops cached flood lists and stale MAC entries."""
        self._members.clear()
        if self.dp is not None:
            self.dp.sync()
        for vlan, table in self.macs.items():
            for mac in [m for m, e in table.items() if vlan not in e[0].allowed or e[0].name not in self.ports]:
                del table[mac]
                self.mac_count -= 1
        self.invalidate()

    def forget(self, port: Port) -> None:
        """Remove every MAC entry pointing at ``port``."""
        if self.dp is not None:
            self.dp.flush()
        for table in self.macs.values():
            for mac in [m for m, e in table.items() if e[0] is port]:
                del table[mac]
                self.mac_count -= 1

    def members(self, vlan: int) -> list[Port]:
        """Ports that carry ``vlan`` (cached until the next change)."""
        m = self._members.get(vlan)
        if m is None:
            m = self._members[vlan] = [p for p in self.ports.values() if vlan in p.allowed]
        return m

    # -- MAC table -------------------------------------------------------------------------------
    def sweep(self, now: float) -> int:
        """Drop entries older than the ageing time; returns how many went."""
        gone = 0
        limit = now - self.ageing
        if self.dp is not None:
            self.dp.sync()
        for table in self.macs.values():
            for mac in [m for m, e in table.items() if e[1] < limit]:
                del table[mac]
                gone += 1
        self.mac_count -= gone
        self.counters["mac_aged"] += gone
        if gone and self.dp is not None:
            self.dp.flush()
        self._last_sweep = now
        return gone

    def lookup(self, vlan: int, mac: bytes, now: float | None = None) -> Port | None:
        """The port ``mac`` was last seen on in ``vlan`` (None when unknown or aged out)."""
        if self.dp is not None:
            self.dp.sync()
        e = self.macs.get(vlan, {}).get(mac)
        if e is None or (now if now is not None else time.monotonic()) - e[1] > self.ageing:
            return None
        return e[0]

    def mac_table(self) -> list[dict[str, Any]]:
        """The MAC table as rows (vlan, mac, port, age)."""
        if self.dp is not None:
            self.dp.sync()
        now = time.monotonic()
        return [{"vlan": vlan, "mac": mac_str(mac), "port": e[0].name, "age": round(now - e[1], 1)}
                for vlan, table in sorted(self.macs.items()) for mac, e in table.items()]

    # -- the per-frame path ----------------------------------------------------------------------
    def receive(self, port: Port, frames: Iterable[bytes], now: float | None = None) -> None:
        """Forward a batch of frames that arrived on ``port``."""
        if now is None:
            now = time.monotonic()
        dp = self.dp
        if dp is not None:
            dp.sync()
            if port.dp_index < 0:
                dp = None
        if now - self._last_sweep > 1.0 and self.mac_count >= self.max_macs:
            self.sweep(now)
        stats = port.stats
        drops = stats.drops
        ptpid = port.tpid
        access = port.mode == "access"
        allowed = port.allowed
        pvid = port.pvid
        mtu = self.mtu
        macs = self.macs
        ageing = self.ageing
        group = port.group
        loop_hold = self.loop_hold
        caps = port.captures
        egress = self._egress
        vlan_captures = self.vlan_captures
        rx_frames = rx_bytes = 0
        # Exact-match cache (like OVS's EMC): a run of frames with the same addresses and tag from this
        # port in this batch gets the forwarding decision of the first one. Only plain known-unicast
        # decisions are cached, and any learning change in the batch drops the cache.
        cache_ok = not caps and group is None
        c_hdr: bytes | None = None
        c_tci = b""
        c_strip = False
        c_min = c_max = 0
        c_out: Port = port
        c_transmit = port.transmit
        c_txf = c_txb = 0  # frames/bytes sent through the cache, added to c_out's counters at the end
        c_vid = c_pcp = c_dei = 0
        try:
            for frame in frames:
                n = len(frame)
                rx_frames += 1
                rx_bytes += n
                if c_hdr is not None and c_min <= n <= c_max and frame[:14] == c_hdr and type(frame) is bytes \
                        and (not c_strip or frame[14:16] == c_tci):
                    untagged = frame[:12] + frame[16:] if c_strip else frame
                    if not c_out.queued:
                        try:
                            sent = c_transmit(untagged)
                        except OSError:
                            c_out.stats.drops["tx_error"] += 1
                            continue
                        if sent:
                            c_txf += 1
                            c_txb += len(untagged)
                            continue
                    egress(c_out, c_vid, c_pcp, c_dei, untagged, frame, ptpid, now)
                    continue
                if caps:
                    for cap in caps:
                        cap.write(frame, outbound=False)
                if n < ETH_HLEN:
                    drops["runt"] += 1
                    continue
                etype = (frame[12] << 8) | frame[13]
                if etype == ptpid:
                    if n < ETH_HLEN + TAG_LEN:
                        drops["bad_tag"] += 1
                        continue
                    tci = (frame[14] << 8) | frame[15]
                    vid = tci & 0xFFF
                    pcp = tci >> 13
                    dei = (tci >> 12) & 1
                    if vid == VID_RESERVED:
                        drops["reserved_vid"] += 1
                        continue
                    if vid == 0:
                        if pvid is None:
                            drops["vlan_not_allowed"] += 1
                            continue
                        vid = pvid
                    elif access or vid not in allowed:
                        drops["vlan_not_allowed"] += 1
                        continue
                    inner = (frame[16] << 8) | frame[17]
                    if n - 18 > mtu + (4 if inner == TPID_8021Q or inner == TPID_8021AD else 0):
                        drops["oversize"] += 1
                        continue
                    untagged = frame[:12] + frame[16:]
                else:
                    if pvid is None:
                        drops["vlan_not_allowed"] += 1
                        continue
                    if n - ETH_HLEN > mtu + (4 if etype == TPID_8021Q or etype == TPID_8021AD else 0) \
                            and type(frame) is bytes:  # a GSO super-frame is cut to size on egress
                        drops["oversize"] += 1
                        continue
                    vid, pcp, dei, untagged = pvid, port.priority, 0, frame
                if group is not None:
                    group.outbound(untagged, now)
                # learn the source
                src = frame[6:12]
                table = macs.get(vid)
                if table is None:
                    table = macs[vid] = {}
                e = src_e = table.get(src)
                if e is None:
                    if not frame[6] & 1:
                        c_hdr = None
                        if self.mac_count < self.max_macs:
                            table[src] = src_e = [port, now]
                            self.mac_count += 1
                        else:
                            self.counters["mac_table_full"] += 1
                else:
                    if e[0] is not port:
                        if now - e[1] < loop_hold:
                            # seen on its own port a moment ago and now here: our own frame came back (a loop)
                            drops["loop"] += 1
                            continue
                        c_hdr = None
                        e[0] = port
                        self.counters["mac_moves"] += 1
                        if self.dp is not None:
                            self.dp.flush()
                    e[1] = now
                if vlan_captures and vlan_captures.get(vid):
                    vcaps = vlan_captures[vid]
                    tci = (pcp << 13) | (dei << 12) | vid
                    tagged = untagged[:12] + bytes((0x81, 0, tci >> 8, tci & 0xFF)) + untagged[12:]
                    for cap in vcaps:
                        cap.write(tagged, outbound=False)
                # forward
                if not frame[0] & 1:
                    e = table.get(frame[0:6])
                    if e is not None and now - e[1] <= ageing:
                        out = e[0]
                        if out is not port:
                            if dp is not None and out.dp_index >= 0 and src_e is not None and cache_ok \
                                    and type(frame) is bytes and out.group is None and not out.captures \
                                    and not (vlan_captures and vlan_captures.get(vid)):
                                dp.install(port, frame, vid, pcp, dei, out, src_e, e)
                            if out.queued == 0 and out.group is None and vid in out.untagged_vlans \
                                    and not out.captures and (out.accepts_gso or type(untagged) is bytes):
                                # the common case inline: known unicast to an idle untagged port
                                try:
                                    sent = out.transmit(untagged)
                                except OSError:
                                    out.stats.drops["tx_error"] += 1
                                    continue
                                if sent:
                                    ostats = out.stats
                                    ostats.tx_frames += 1
                                    ostats.tx_bytes += len(untagged)
                                    if cache_ok and type(frame) is bytes and not (
                                            vlan_captures and vlan_captures.get(vid)):
                                        if c_txf:
                                            c_out.stats.tx_frames += c_txf
                                            c_out.stats.tx_bytes += c_txb
                                            c_txf = c_txb = 0
                                        c_hdr, c_out, c_vid, c_pcp, c_dei = frame[:14], out, vid, pcp, dei
                                        c_transmit = out.transmit
                                        c_strip = untagged is not frame
                                        c_tci = frame[14:16]
                                        c_min = 18 if c_strip else 14
                                        c_max = mtu + c_min
                                    continue
                            egress(out, vid, pcp, dei, untagged, frame, ptpid, now)
                        continue
                # flood within the VLAN (broadcast, multicast, unknown unicast) under storm control
                if self.storm_pps:
                    tokens = min(self.storm_pps, port.storm_tokens + (now - port.storm_time) * self.storm_pps)
                    port.storm_time = now
                    if tokens < 1.0:
                        port.storm_tokens = tokens
                        drops["storm"] += 1
                        continue
                    port.storm_tokens = tokens - 1.0
                for out in self._members.get(vid) or self.members(vid):
                    if out is not port:
                        egress(out, vid, pcp, dei, untagged, frame, ptpid, now)
        finally:
            stats.rx_frames += rx_frames
            stats.rx_bytes += rx_bytes
            if c_txf:
                c_out.stats.tx_frames += c_txf
                c_out.stats.tx_bytes += c_txb

    def _egress(self, out: Port, vid: int, pcp: int, dei: int, untagged: bytes, frame: bytes, in_tpid: int,
                now: float) -> None:
        """Send one frame out of ``out`` in VLAN ``vid``: untagged, tagged, or not at all."""
        if out.group is not None and not out.group.admit(untagged, now):
            out.stats.drops["security_group"] += 1
            return
        if type(untagged) is not bytes and not (out.accepts_gso and vid in out.untagged_vlans):
            for seg in finish(untagged):  # segment / checksum in software for this port
                self._egress(out, vid, pcp, dei, seg, seg, in_tpid, now)
            return
        if vid in out.untagged_vlans:
            out.enqueue(untagged, pcp)
        elif vid in out.tagged_vlans:
            if frame is not untagged and out.tpid == in_tpid and (frame[14] & 0x0F) << 8 | frame[15] == vid:
                out.enqueue(frame, pcp)  # arrived with the very same tag: reuse it
            else:
                tci = (pcp << 13) | (dei << 12) | vid
                tp = out.tpid
                out.enqueue(b"".join((untagged[:12], bytes((tp >> 8, tp & 0xFF, tci >> 8, tci & 0xFF)),
                                      untagged[12:])), pcp)
        else:
            out.stats.drops["vlan_not_allowed"] += 1

    def info(self) -> dict[str, Any]:
        """Switch-wide settings and counters."""
        return {"name": self.name, "ageing": self.ageing, "max_macs": self.max_macs, "storm_pps": self.storm_pps,
                "mtu": self.mtu, "mac_count": self.mac_count, **self.counters,
                "datapath": self.dp.info() if self.dp is not None else None}


def parse_vlan_list(text: str) -> frozenset[int]:
    """Parse ``1,7,10-20`` (or ``all``) into a set of VIDs in 1-4094; :class:`ConfigError` otherwise."""
    text = str(text).strip()
    if text.lower() == "all":
        return ALL_VLANS
    if not text:
        raise ConfigError("empty VLAN list (want e.g. 1,7,10-20 or all)")
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo = int(lo_s, 10)
            hi = int(hi_s, 10) if sep else lo
        except ValueError:
            raise ConfigError(f"bad VLAN list {text!r}: {part!r} is not a VLAN or range (e.g. 1,7,10-20)") from None
        if lo > hi:
            raise ConfigError(f"bad VLAN list {text!r}: range {part!r} is backwards")
        if lo < 1 or hi > 4094:
            raise ConfigError(f"bad VLAN list {text!r}: VLANs must be in 1-4094 (0 and 4095 are reserved)")
        out.update(range(lo, hi + 1))
    return frozenset(out)


def parse_vlan(text: str | int) -> int:
    """Parse one VID in 1-4094."""
    try:
        v = int(str(text).strip(), 10)
    except ValueError:
        raise ConfigError(f"bad VLAN {text!r}: want a number in 1-4094") from None
    if not 1 <= v <= 4094:
        raise ConfigError(f"bad VLAN {text!r}: must be in 1-4094 (0 and 4095 are reserved)")
    return v


def format_vlans(vlans: Iterable[int]) -> str:
    """The compact ``1,7,10-20`` form of a VLAN set."""
    vs = sorted(vlans)
    parts: list[str] = []
    i = 0
    while i < len(vs):
        j = i
        while j + 1 < len(vs) and vs[j + 1] == vs[j] + 1:
            j += 1
        parts.append(str(vs[i]) if i == j else f"{vs[i]}-{vs[j]}")
        i = j + 1
    return ",".join(parts)
