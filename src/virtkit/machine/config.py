"""MachineConfig: a virtual machine described as plain, typed, validated data.

Everything that builds a VM goes through this: ``virtkit run`` flags become a MachineConfig, a
TOML or JSON file loads into one, and :func:`virtkit.machine.builder.build` turns one into a running
:class:`~virtkit.machine.vm.Vm`. Each option is parsed exactly once, here: ``--disk PATH,ro,format=raw``
by :meth:`DiskConfig.parse`, ``--net switch:lab,vlan=7`` by :meth:`NicConfig.parse`, sizes by
:func:`virtkit.units.parse_size`, MAC addresses by :func:`parse_mac`.

A file (TOML)::

    name = "web1"
    board = "riscv64-virt"
    cpus = 2
    memory = "256M"
    kernel = "Image"            # relative paths are relative to the file
    initrd = "rootfs.cpio.gz"
    cmdline = "console=ttyS0"

    [[disks]]
    path = "data.qcow2"
    format = "qcow2"

    [[nics]]
    backend = "switch"
    name = "lab"
    vlan = 7

A bad file gets one error that names the key and the problem: ``vm.toml: disks[0].format: 'vmdk' is not
one of raw, qcow2``; ``vm.toml: memroy: unknown key (did you mean 'memory'?)``.
"""

from __future__ import annotations

import difflib
import json
import os
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from virtkit.errors import ConfigError
from virtkit.units import format_size, parse_size

MiB = 1 << 20
DISK_FORMATS = ("raw", "qcow2")
ERROR_POLICIES = ("report", "stop", "ignore")
NIC_BACKENDS = ("tap", "switch")
NIC_MODELS = ("virtio", "ethoc")
SERIAL_MODES = ("stdio", "none")
#: ``name`` of a VM: also a file name under the runtime directory and a switch-port label.
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class _Section:
    """Mixin: the one schema-driven loader of every config table (types from the dataclass annotations)."""

    #: keys accepted in files for compatibility, mapped to their field names
    aliases: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Any:
        """Build from a TOML/JSON table; ConfigError naming ``where.key`` for anything wrong."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where or 'top level'}: expected a table, got {_kind(data)}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in fields(cls) if f.init and not f.name.startswith("_")]
        kw: dict[str, Any] = {}
        for key, value in data.items():
            name = cls.aliases.get(key, key)
            if name not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(names)})"
                raise ConfigError(f"{_join(where, key)}: unknown key{hint}")
            kw[name] = _coerce(hints[name], value, _join(where, key))
        for f in fields(cls):
            if f.init and f.name not in kw and f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{_join(where, f.name)}: missing (required)")
        obj = cls(**kw)
        obj.check(where)
        return obj

    def check(self, where: str) -> None:
        """Value checks beyond types (enumerations, ranges); ConfigError naming the key."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (None and empty defaults left out), in field order."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None or f.name.startswith("_"):
                continue
            if isinstance(v, list):
                if not v:
                    continue
                v = [x.to_dict() if isinstance(x, _Section) else x for x in v]
            elif isinstance(v, _Section):
                v = v.to_dict()
                if not v:
                    continue
            out[f.name] = v
        return out


def _join(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def _kind(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(v), type(v).__name__)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``hint`` (int, float, bool, str, X | None, list[Sub], Sub)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_kind(value)}")
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(hint, type) and issubclass(hint, _Section):
        return hint.from_dict(value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_kind(value)} {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_kind(value)} {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {_kind(value)} {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_kind(value)} {value!r}")
        if "\0" in value:
            raise ConfigError(f"{where}: contains a NUL byte")
        return value
    if hint is Any:
        return value
    raise TypeError(f"config field type {hint!r} at {where}")  # a programming error, not user input


def _one_of(value: str | None, choices: tuple[str, ...], where: str) -> None:
    if value is not None and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")


def parse_mac(text: str, where: str = "mac") -> bytes:
    """``52:54:00:12:34:56`` (or ``-`` separated) -> 6 bytes; a unicast address, or a clear error."""
    parts = str(text).replace("-", ":").split(":")
    try:
        if len(parts) != 6 or any(len(p) != 2 for p in parts):
            raise ValueError
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ConfigError(f"{where}: bad MAC address {text!r} (expected six hex pairs like 52:54:00:12:34:56)") \
            from None
    if mac[0] & 1:
        raise ConfigError(f"{where}: MAC address {text!r} is a multicast address")
    return mac


def _options(text: str, flag: str) -> tuple[str, list[tuple[str, str]]]:
    head, *opts = text.split(",")
    return head, [(o.partition("=")[0].strip(), o.partition("=")[2].strip()) for o in opts]


# ---------------------------------------------------------------------------------------------- sections
@dataclass
class DiskConfig(_Section):
    """One virtio-blk disk: ``--disk PATH[,ro][,format=raw|qcow2][,werror=stop][,rerror=report][,serial=S]``.

    ``path`` is a file, a block device or ``POOL/VOLUME``. ``format`` None probes: only qcow2 is recognised;
    anything else must say ``format=raw``. ``werror``/``rerror``: what a failed write/read does (``report`` an
    I/O error to the guest, ``stop`` the VM until told to resume, ``ignore`` it).
    """

    path: str
    format: str | None = None
    read_only: bool = False
    werror: str = "report"
    rerror: str = "report"
    serial: str | None = None

    aliases: ClassVar[dict[str, str]] = {"ro": "read_only", "readonly": "read_only"}

    def check(self, where: str) -> None:
        if not self.path:
            raise ConfigError(f"{_join(where, 'path')}: empty")
        _one_of(self.format, DISK_FORMATS, _join(where, "format"))
        _one_of(self.werror, ERROR_POLICIES, _join(where, "werror"))
        _one_of(self.rerror, ("report", "stop"), _join(where, "rerror"))
        if self.serial is not None and (len(self.serial.encode()) > 20 or not self.serial.isprintable()):
            raise ConfigError(f"{_join(where, 'serial')}: at most 20 printable bytes")

    @classmethod
    def parse(cls, text: str) -> DiskConfig:
        """Parse the ``--disk`` flag."""
        path, opts = _options(text, "--disk")
        where = f"--disk {text!r}"
        if not path:
            raise ConfigError(f"{where}: expected PATH[,ro][,format=raw|qcow2][,werror=stop|report|ignore]")
        kw: dict[str, Any] = {"path": path}
        for k, v in opts:
            if k in ("ro", "readonly", "read-only") and not v:
                kw["read_only"] = True
            elif k == "rw" and not v:
                kw["read_only"] = False
            elif k in ("format", "werror", "rerror", "serial") and v:
                kw[k] = v
            else:
                raise ConfigError(f"{where}: unknown option {k!r} (known: ro, rw, format=, werror=, rerror=, serial=)")
        disk = cls(**kw)
        disk.check(where)
        return disk

    def to_flag(self) -> str:
        """The ``--disk`` text that parses back to this disk."""
        out = [self.path] + (["ro"] if self.read_only else [])
        for k in ("format", "werror", "rerror", "serial"):
            v = getattr(self, k)
            if v is not None and v != getattr(DiskConfig, k, None):
                out.append(f"{k}={v}")
        return ",".join(out)


@dataclass
class NicConfig(_Section):
    """One NIC: ``--net tap:NAME[,mac=M]`` or ``--net switch:NAME[,vlan=N|port=ID][,group=G][,mac=M]``, and
    ``model=ethoc`` for an emulated OpenCores Ethernet MAC instead of virtio-net (QEMU's ``-nic ...,model=``)."""

    backend: str
    name: str
    mac: str | None = None
    vlan: int | None = None
    port: str | None = None
    group: str | None = None
    #: the device: virtio-net (paravirtual, the default) or ethoc (an emulated legacy MAC)
    model: str = "virtio"

    def check(self, where: str) -> None:
        _one_of(self.backend, NIC_BACKENDS, _join(where, "backend"))
        _one_of(self.model, NIC_MODELS, _join(where, "model"))
        if not self.name:
            raise ConfigError(f"{_join(where, 'name')}: empty")
        if self.mac is not None:
            parse_mac(self.mac, _join(where, "mac"))
        if self.backend == "tap" and (self.vlan is not None or self.port or self.group):
            raise ConfigError(f"{where}: vlan, port and group are for switch NICs (a TAP device has none)")
        if self.vlan is not None and not 1 <= self.vlan <= 4094:
            raise ConfigError(f"{_join(where, 'vlan')}: {self.vlan} is out of range 1..4094")
        if self.port is not None and (self.vlan is not None or self.group is not None):
            raise ConfigError(f"{where}: a persistent vm: port has its VLAN and group in the switch config; "
                              "give port or vlan/group, not both")

    def mac_bytes(self) -> bytes | None:
        """The MAC address as 6 bytes (None: the device picks one)."""
        return None if self.mac is None else parse_mac(self.mac)

    @classmethod
    def parse(cls, text: str) -> NicConfig:
        """Parse the ``--net`` flag."""
        head, opts = _options(text, "--net")
        backend, sep, name = head.partition(":")
        where = f"--net {text!r}"
        if backend not in NIC_BACKENDS or not sep or not name:
            raise ConfigError(f"{where}: expected tap:NAME[,mac=52:54:00:12:34:56] "
                              "or switch:NAME[,vlan=N][,port=ID][,group=G][,mac=...]")
        kw: dict[str, Any] = {"backend": backend, "name": name}
        known = ("mac", "model") if backend == "tap" else ("mac", "vlan", "port", "group", "model")
        for k, v in opts:
            if k not in known or not v:
                raise ConfigError(f"{where}: unknown option {k!r} (known: {', '.join(o + '=' for o in known)})")
            if k == "vlan":
                try:
                    kw[k] = int(v, 10)
                except ValueError:
                    raise ConfigError(f"{where}: vlan={v!r} is not a number in 1..4094") from None
            else:
                kw[k] = v
        nic = cls(**kw)
        nic.check(where)
        return nic

    def to_flag(self) -> str:
        """The ``--net`` text that parses back to this NIC."""
        out = [f"{self.backend}:{self.name}"]
        out += [f"{k}={getattr(self, k)}" for k in ("vlan", "port", "group", "mac") if getattr(self, k) is not None]
        if self.model != "virtio":
            out.append(f"model={self.model}")
        return ",".join(out)


@dataclass
class ConsoleConfig(_Section):
    """Consoles: where the serial port's output goes, and whether there is a virtio console (hvc0) too."""

    serial: str = "stdio"
    virtio: bool = False

    def check(self, where: str) -> None:
        _one_of(self.serial, SERIAL_MODES, _join(where, "serial"))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_dict().items() if v != getattr(ConsoleConfig, k)}


#: how the guest kernel runs (MachineConfig.mode)
VIRT_MODES = ("emulate", "trap")
#: trap and emulate: RAM above the guest's for each hart's shadow page tables (engines/riscv/consts.TM_POOL_PAGES)
SHADOW_POOL = 4 * MiB


def hidden_ram(cfg: MachineConfig) -> int:
    """Bytes of RAM the VMM keeps above the guest's (the shadow page tables under trap and emulate)."""
    return cfg.cpus * SHADOW_POOL if cfg.mode == "trap" else 0


#: the CPU models and the options each takes (QEMU's names); an option's value is on/off (true/false, yes/no)
CPU_MODELS = {"rv64": {"h": "the hypervisor extension (misa.H): HS/VS/VU modes, two-stage translation"},
              # --engine kvm: the host's CPU as KVM offers it (KVM_GET_SUPPORTED_CPUID), features turned on or off
              "host": {"x2apic": "the x2APIC (CPUID.1:ECX[21])", "cx16": "cmpxchg16b (CPUID.1:ECX[13]; off by default "
                       "on kvm_pvm, whose emulator lacks it)", "avx": "AVX (CPUID.1:ECX[28])",
                       "avx2": "AVX2 (CPUID.7:EBX[5])", "hypervisor": "the hypervisor-present bit (CPUID.1:ECX[31])",
                       "pdpe1gb": "1 GiB pages (CPUID.80000001h:EDX[26])"}}


def parse_cpu(spec: str, where: str = "cpu") -> dict[str, bool]:
    """The options of a ``-cpu`` string (``rv64,h=on``) as booleans, every option of the model present;
    ConfigError naming the part that is wrong."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"{where}: expected a CPU model such as rv64 or rv64,h=on, got {spec!r}")
    model, *opts = spec.split(",")
    if model not in CPU_MODELS:
        raise ConfigError(f"{where}: unknown CPU model {model!r} (models: {', '.join(CPU_MODELS)})")
    known = CPU_MODELS[model]
    out = dict.fromkeys(known, False)
    for opt in opts:
        key, eq, val = opt.partition("=")
        if key not in known:
            hint = difflib.get_close_matches(key, known, 1)
            raise ConfigError(f"{where}: {model} has no option {key!r}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else f" (options: {', '.join(known)})"))
        if not eq or val.lower() not in ("on", "off", "true", "false", "yes", "no"):
            raise ConfigError(f"{where}: {key}={val}: want {key}=on or {key}=off")
        out[key] = val.lower() in ("on", "true", "yes")
    return out


@dataclass
class MachineConfig(_Section):
    """A whole machine. Paths are kept as given; :meth:`resolve_paths` makes them absolute."""

    name: str | None = None
    board: str = "riscv64-virt"
    engine: str = "riscv"
    #: the CPU model and its options, QEMU's ``-cpu`` syntax: ``rv64`` (the default), ``rv64,h=on`` (with the
    #: hypervisor extension)
    cpu: str = "rv64"
    #: how the guest kernel runs: "emulate" (the software CPU runs it in S-mode, the default) or "trap" (trap
    #: and emulate: it runs deprivileged in U-mode under a monitor with shadow page tables; the SBI is the VMM's)
    mode: str = "emulate"
    cpus: int = 1
    memory: int = 128 * MiB
    #: "default" (the board's usual firmware), "none" (the kernel starts at reset, in M-mode), "builtin" (no
    #: firmware: the kernel starts in S-mode and the VMM itself is the SBI) or a path
    firmware: str = "default"
    #: None: the default guest (built from Debian packages on first use)
    kernel: str | None = None
    initrd: str | None = None
    #: None: the board's default command line
    cmdline: str | None = None
    rng: bool = True
    disks: list[DiskConfig] = field(default_factory=list)
    nics: list[NicConfig] = field(default_factory=list)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    #: a command for the default initramfs to run (then the guest powers off with its status)
    exec: str | None = None
    #: seconds the guest may run before it is stopped (None: forever)
    timeout: float | None = None
    #: seconds to reach the guest's shell (or the --exec command) before the boot is declared hung;
    #: None picks the default (300 s for --exec, off for an interactive console); 0 turns it off
    boot_timeout: float | None = None
    #: bare-metal runs: stop after this many instructions
    max_insns: int | None = None
    #: guest time follows retired instructions, not the host clock (reproducible runs)
    deterministic: bool = False
    #: the software engine's JIT threshold (0 = interpreter only; None = default or $VIRTKIT_JIT)
    jit: int | None = None

    aliases: ClassVar[dict[str, str]] = {"mem": "memory", "append": "cmdline", "bios": "firmware",
                                         "disk": "disks", "nic": "nics", "net": "nics"}

    def __post_init__(self) -> None:
        if isinstance(self.memory, str):
            self.memory = parse_memory(self.memory)

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> MachineConfig:
        if isinstance(data, dict) and "memory" in data or isinstance(data, dict) and "mem" in data:
            data = dict(data)
            key = "memory" if "memory" in data else "mem"
            v = data[key]
            if isinstance(v, bool) or not isinstance(v, int | str):
                raise ConfigError(f"{_join(where, key)}: expected a size such as 256M or 1G, got {_kind(v)} {v!r}")
            data[key] = parse_memory(v, _join(where, key))
        return super().from_dict(data, where)

    def check(self, where: str) -> None:
        if self.name is not None:
            check_vm_name(self.name, _join(where, "name"))
        if self.engine == "kvm":  # --engine kvm picks the x86-64 microVM and the host's CPU
            self.board = "x86_64-microvm" if self.board == "riscv64-virt" else self.board
            self.cpu = "host" if self.cpu == "rv64" else self.cpu
        for key in ("board", "engine"):
            v = getattr(self, key)
            if not v or not all(c.isalnum() or c in "-_" for c in v):
                raise ConfigError(f"{_join(where, key)}: bad name {v!r}")
        if not 1 <= self.cpus <= 64:
            raise ConfigError(f"{_join(where, 'cpus')}: {self.cpus} is out of range 1..64")
        parse_cpu(self.cpu, _join(where, "cpu"))
        _one_of(self.mode, VIRT_MODES, _join(where, "mode"))
        if self.mode == "trap":
            if self.firmware not in ("default", "builtin"):
                raise ConfigError(f"{_join(where, 'mode')}: trap and emulate has no firmware in the guest (the "
                                  f"monitor is the SBI): leave out firmware {self.firmware!r} or say builtin")
            self.firmware = "builtin"
            if parse_cpu(self.cpu)["h"]:
                raise ConfigError(f"{_join(where, 'mode')}: trap and emulate runs the guest without the H "
                                  "extension's help; leave out h=on")
        if self.memory <= 0 or self.memory % 4096:
            raise ConfigError(f"{_join(where, 'memory')}: must be a positive multiple of 4K")
        for key in ("timeout", "boot_timeout"):
            v = getattr(self, key)
            if v is not None and (v < 0 or v != v or v == float("inf")):
                raise ConfigError(f"{_join(where, key)}: must be a number of seconds, 0 or more")
        if self.timeout == 0:
            raise ConfigError(f"{_join(where, 'timeout')}: must be positive (leave it out to run forever)")
        if self.max_insns is not None and self.max_insns <= 0:
            raise ConfigError(f"{_join(where, 'max_insns')}: must be positive")
        if self.jit is not None and self.jit < 0:
            raise ConfigError(f"{_join(where, 'jit')}: must be 0 (off) or a positive threshold")
        if self.exec is not None and not self.exec.strip():
            raise ConfigError(f"{_join(where, 'exec')}: empty command")
        if self.cmdline is not None and "\0" in self.cmdline:
            raise ConfigError(f"{_join(where, 'cmdline')}: contains a NUL byte")

    # -- files ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["memory"] = format_size(self.memory, exact=True)
        return d

    def to_toml(self) -> str:
        """The config as a TOML document (what ``virtkit run ... --dump-config`` prints)."""
        return dump_toml(self.to_dict())

    def to_json(self) -> str:
        """The config as a JSON document."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MachineConfig:
        """Read a ``.toml`` or ``.json`` file (by extension, else by content); relative paths resolve
        against the file's directory. One ConfigError naming the file and the key for anything wrong."""
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file {str(p)!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read config file {str(p)!r}: {getattr(err, 'strerror', None) or err}") \
                from None
        data = parse_text(text, str(p))
        try:
            cfg = cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{p}: {err}") from None
        cfg.resolve_paths(p.parent, where=str(p))
        return cfg

    def resolve_paths(self, base: str | os.PathLike[str], where: str = "") -> None:
        """Make file paths absolute (relative to ``base``) and check that they exist."""
        base = Path(base)

        def fix(v: str | None, key: str, must_exist: bool = True) -> str | None:
            if v is None:
                return None
            p = Path(os.path.expanduser(v))
            p = p if p.is_absolute() else base / p
            if must_exist and not p.exists():
                raise ConfigError(f"{where + ': ' if where else ''}{key}: file {v!r} does not exist")
            return str(p.absolute()) if p.exists() or must_exist else v

        if self.firmware not in ("default", "none", "builtin"):
            self.firmware = fix(self.firmware, "firmware") or "default"
        self.kernel = fix(self.kernel, "kernel")
        self.initrd = fix(self.initrd, "initrd")
        for i, d in enumerate(self.disks):
            p = Path(os.path.expanduser(d.path))
            local = p if p.is_absolute() else base / p
            if local.exists():
                d.path = str(local.absolute())
            elif not _maybe_volume(d.path):
                raise ConfigError(f"{where + ': ' if where else ''}disks[{i}].path: {d.path!r} is neither a file "
                                  "nor POOL/VOLUME of an existing pool")

    def replace(self, **changes: Any) -> MachineConfig:
        """A copy with some fields changed (lists and tables copied too)."""
        data = {**self.to_dict(), **{k: v for k, v in changes.items()}}
        for k, v in changes.items():
            if isinstance(v, list):
                data[k] = [x.to_dict() if isinstance(x, _Section) else x for x in v]
            elif isinstance(v, _Section):
                data[k] = v.to_dict()
        data = {k: v for k, v in data.items() if v is not None}
        return MachineConfig.from_dict(data)

    def equivalent(self, other: MachineConfig) -> bool:
        """Equal as data (what a round trip through a file must preserve)."""
        return asdict(self) == asdict(other)


def _maybe_volume(spec: str) -> bool:
    from virtkit.storage.pool import is_volume_spec

    try:
        return is_volume_spec(spec)
    except Exception:
        return False


def parse_memory(text: str | int, where: str = "memory") -> int:
    """Guest RAM like QEMU's ``-m``: a bare number is MiB; ``K/M/G/T`` suffixes; fractions such as ``1.5G``."""
    return parse_size(text, default_unit="M", what=where, multiple=4096, minimum=4096)


def check_vm_name(name: str, where: str = "name") -> str:
    """A VM name: 1-64 letters, digits, ``_ . -``, not starting with ``.`` or ``-`` (a file and socket name)."""
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or set(name) - NAME_CHARS or name[0] in ".-":
        raise ConfigError(f"{where}: bad VM name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
                          "starting with a letter or digit")
    return name


def parse_text(text: str, origin: str = "config") -> dict[str, Any]:
    """TOML or JSON text -> a dict (JSON when ``origin`` ends in .json or the text starts with '{')."""
    if origin.endswith(".json") or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{origin}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") \
                from None
    else:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{origin}: not valid TOML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a table at the top level, got {_kind(data)}")
    return data


# ---------------------------------------------------------------------------------------------- TOML out
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v).replace("\x7f", "\\u007f")  # JSON's escapes are valid TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def dump_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for config data: scalars, tables and arrays of tables (what configs hold)."""
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for k, v in data.items():
        if isinstance(v, dict) or isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in tables:
        for row in v if isinstance(v, list) else [v]:
            lines.append("")
            lines.append(f"[[{k}]]" if isinstance(v, list) else f"[{k}]")
            lines += [f"{rk} = {_toml_value(rv)}" for rk, rv in row.items()]
    return "\n".join(lines) + "\n"
