"""``virtkit run``: boot a VM (its console on this terminal, or detached), or run a bare-metal program.

The flags describe a :class:`~virtkit.machine.config.MachineConfig` (``--dump-config`` prints it as TOML,
``--config FILE`` reads one; flags given with a file override its values); the one builder assembles the
machine and :class:`~virtkit.machine.runner.RunningVm` runs it with a control socket, so ``virtkit ps``,
``pause``, ``resume``, ``stop``, ``kill`` and ``console`` reach it from other terminals.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from virtkit.errors import ConfigError, VirtkitError

EPILOG = """\
console escapes (interactive console): Ctrl-A x quit, Ctrl-A s statistics, Ctrl-A p pause/resume,
  Ctrl-A b break (+ a key: Linux SysRq), Ctrl-A h help, Ctrl-A a a literal Ctrl-A.

ranges: --cpus 1..8 and --mem 16M..16G (whole MiB) on riscv64-virt; --cpus 1..64 and up to 16G on
  riscv64-spike. --mem takes QEMU's -m syntax: a bare number is MiB (256 = 256M), K/M/G/T suffixes, 1.5G.

--json prints one JSON document on stdout and nothing else there: the guest console (or the --exec
  command's output) is inside it ("console", "output").

examples:
  virtkit run                                      boot the default guest, console here
  virtkit run --exec 'uname -a'                    run one command in the guest, exit with its status
  virtkit run --cpus 2 --mem 512M --disk data.qcow2,format=qcow2 --net switch:lab,vlan=7
  virtkit run --detach --name web1                 boot in the background (virtkit console web1)
  virtkit run --cpus 2 --dump-config > vm.toml     the flags as a config file; virtkit run --config vm.toml
  virtkit run --bios none --kernel prog.elf        a bare-metal ELF (HTIF exit code: 0 = pass)
  virtkit run --bios builtin                       no firmware in the guest: virtkit itself is the SBI
  virtkit run -s -S                                wait for gdb-multiarch (target remote :1234) before booting
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``run`` subcommand."""
    p = subparsers.add_parser("run", help="boot a VM (or a bare-metal program) with its console here or detached",
                              description=__doc__.split("\n\n")[0], epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("machine (each maps to a key of the config file)")
    m.add_argument("--config", metavar="FILE", help="a machine config (TOML or JSON); flags override its values")
    m.add_argument("--name", help="the VM's name (default: generated); `virtkit ps` lists it")
    m.add_argument("--board", help="riscv64-virt (default) or riscv64-spike (bare-metal, HTIF)")
    m.add_argument("--engine", help="the CPU engine (default: riscv, the software engine)")
    m.add_argument("--cpu", "-cpu", help="CPU model and options, as QEMU's -cpu: rv64 (default), rv64,h=on (the "
                   "hypervisor extension: run a hypervisor such as KVM in the guest)")
    m.add_argument("--mode", choices=["emulate", "trap"], help="how the guest kernel runs: emulate (default: the "
                   "software CPU runs it in S-mode) or trap (trap and emulate: deprivileged in U-mode under a "
                   "monitor with shadow page tables; implies --bios builtin)")
    m.add_argument("--cpus", "-smp", type=int, help="number of harts (default 1)")
    m.add_argument("--mem", "-m", help="guest RAM, QEMU -m syntax: 256 = 256M, 1G, 1.5G (default 128M)")
    m.add_argument("--kernel", help="kernel Image or ELF (default: the default guest's), or the bare-metal ELF")
    m.add_argument("--initrd", help="initramfs (cpio, gzip/zstd/xz cpio)")
    m.add_argument("--append", help="kernel command line (default: console=ttyS0 earlycon=sbi)")
    m.add_argument("--bios", help="firmware: default (OpenSBI fw_jump), builtin (no firmware: virtkit is the SBI, "
                   "the kernel starts in S-mode), none (bare-metal: --board riscv64-spike), or a file")
    m.add_argument("--disk", action="append", metavar="PATH[,ro][,format=raw|qcow2][,werror=stop]",
                   help="virtio-blk disk: a file, block device or POOL/VOLUME (repeatable; first is /dev/vda)")
    m.add_argument("--net", action="append", metavar="tap:NAME|switch:NAME[,vlan=N]",
                   help="virtio-net NIC on a TAP device or a port of a virtkit switch (repeatable)")
    m.add_argument("--no-rng", action="store_true", default=None, help="no virtio-rng device")
    m.add_argument("--virtio-console", action="store_true", default=None, help="add a virtio console (hvc0)")
    m.add_argument("--serial", choices=["stdio", "none"], help="where the serial console goes (none: only to "
                   "`virtkit console` viewers)")
    m.add_argument("--exec", dest="exec_cmd", metavar="CMD",
                   help="run CMD in the guest, print its output, exit with its status")
    m.add_argument("--timeout", help="stop the guest after this many seconds")
    m.add_argument("--boot-timeout", help="seconds to reach the guest's shell or command (default: 300 with "
                   "--exec, off otherwise; 0 = off)")
    m.add_argument("--max-insns", type=int, help="(bare-metal) stop after this many instructions")
    m.add_argument("--deterministic", action="store_true", default=None,
                   help="guest time follows instructions, not the host clock")
    r = p.add_argument_group("from a snapshot (docs/vm-state.md)")
    r.add_argument("--restore", metavar="SNAPSHOT", help="start the VM as it was at SNAPSHOT (disks rolled back)")
    r.add_argument("--clone", action="store_true", help="with --restore: a new VM (own name, MACs, disk overlays)")
    r.add_argument("--template", metavar="T", help="deploy a clone of template T (virtkit template create)")
    r.add_argument("--disk-dir", help="with --clone/--template: where the new disk overlays go; with --incoming: "
                   "where the disks of a migrate --copy-storage are created")
    r.add_argument("--no-verify", action="store_true", help="with --restore: do not hash the RAM file first")
    r.add_argument("--incoming", metavar="tcp:HOST:PORT", help="wait for a live migration (virtkit migrate) and "
                   "run the VM it brings; prints the token the source must give")
    r.add_argument("--token", help="with --incoming: the migration token (default: a new random one)")
    r.add_argument("--incoming-fd", type=int, help=argparse.SUPPRESS)  # a detached target's listening socket
    o = p.add_argument_group("front end")
    o.add_argument("--detach", "-d", action="store_true", help="run in the background; print the name")
    o.add_argument("--dump-config", nargs="?", const="toml", choices=["toml", "json"],
                   help="print the config the flags describe and exit")
    o.add_argument("--dump-dtb", metavar="FILE", help="write the guest's device tree (rng-seed zeroed) and exit")
    o.add_argument("--gdb", metavar="tcp::PORT", help="wait for gdb on this address (QEMU's -gdb: tcp::PORT, "
                   "tcp:HOST:PORT, unix:PATH): registers with CSRs and privilege, memory, breakpoints, steps")
    o.add_argument("-s", dest="gdb", action="store_const", const="tcp::1234", help="--gdb tcp::1234 (as QEMU)")
    o.add_argument("--gdb-wait", "-S", action="store_true", help="with --gdb: hold the guest before its first "
                   "instruction until gdb continues it")
    o.add_argument("--stats", action="store_true", help="print instructions, MIPS and exits by reason at the end")
    o.add_argument("--json", action="store_true", help="print one JSON document on stdout (console inside)")
    o.add_argument("--console-log", metavar="FILE", help=argparse.SUPPRESS)  # detached VMs: console to a file
    p.set_defaults(func=cmd_run)
    return p


# ------------------------------------------------------------------------------------------------- config
def config_from_args(args: argparse.Namespace) -> Any:
    """The MachineConfig the flags (and ``--config``) describe; every option parsed once, in the config."""
    from virtkit.machine.config import ConsoleConfig, DiskConfig, MachineConfig, NicConfig, parse_memory
    from virtkit.units import format_size, parse_duration

    cfg = MachineConfig.load(args.config) if args.config else MachineConfig()
    data = cfg.to_dict()
    spike = args.bios == "none" and not args.board and not args.config
    if spike:
        data["board"] = "riscv64-spike"  # QEMU's `-M spike -bios none -kernel prog.elf`
    flags = {"name": args.name, "board": args.board, "engine": args.engine, "cpu": args.cpu, "mode": args.mode,
             "cpus": args.cpus,
             "kernel": args.kernel, "initrd": args.initrd, "cmdline": args.append, "exec": args.exec_cmd,
             "max_insns": args.max_insns, "deterministic": args.deterministic,
             "firmware": None if spike else args.bios}
    if args.mem is not None:
        flags["memory"] = format_size(parse_memory(args.mem, "--mem"), exact=True)
    if args.timeout is not None:
        flags["timeout"] = parse_duration(args.timeout, what="--timeout")
        if not flags["timeout"]:
            raise ConfigError("--timeout must be positive")
    if args.boot_timeout is not None:
        flags["boot_timeout"] = parse_duration(args.boot_timeout, what="--boot-timeout")
    if args.no_rng:
        flags["rng"] = False
    for k, v in flags.items():
        if v is not None:
            data[k] = v
    if args.disk:
        data["disks"] = [DiskConfig.parse(d).to_dict() for d in args.disk]
    if args.net:
        data["nics"] = [NicConfig.parse(n).to_dict() for n in args.net]
    if args.serial is not None or args.virtio_console:
        con = ConsoleConfig.from_dict(data.get("console", {}), "console")
        data["console"] = ConsoleConfig(args.serial or con.serial, bool(args.virtio_console or con.virtio)).to_dict()
    cfg = MachineConfig.from_dict(data)
    cfg.resolve_paths(os.getcwd())
    return cfg


# ------------------------------------------------------------------------------------------------- run
def cmd_run(args: argparse.Namespace) -> int:
    """Boot (or dump, or detach) the machine the flags describe."""
    if args.max_insns is not None and args.max_insns <= 0:
        raise ConfigError(f"--max-insns must be positive: {args.max_insns}")
    if args.gdb_wait and not args.gdb:
        raise ConfigError("--gdb-wait (-S) goes with --gdb ADDRESS (or -s)")
    if args.incoming:
        if args.clone or args.no_verify:
            raise ConfigError("--clone and --no-verify go with --restore or --template")
        return _incoming(args)
    if args.restore or args.template:
        return _from_snapshot(args)
    if args.clone or args.disk_dir or args.no_verify:
        raise ConfigError("--clone, --disk-dir and --no-verify go with --restore or --template")
    cfg = config_from_args(args)
    if args.dump_config:
        print(cfg.to_json() if args.dump_config == "json" else cfg.to_toml(), end="" if args.dump_config == "toml"
              else "\n")
        return 0
    if cfg.board != "riscv64-spike" and (cfg.max_insns is not None or cfg.deterministic):
        raise ConfigError("--max-insns and --deterministic only apply to bare-metal runs (--bios none)")
    if args.detach:
        return detach(cfg, args)
    from virtkit.machine.control import generate_name

    if cfg.name is None:
        cfg.name = generate_name()
    if args.dump_dtb:
        return dump_dtb(cfg, args.dump_dtb)
    if cfg.board == "riscv64-spike":
        return run_bare_metal(cfg, args)
    return run_board(cfg, args)


def _machine_flags(args: argparse.Namespace) -> list[str]:
    """The machine-describing flags given (refused when the machine comes from elsewhere)."""
    return [f"--{k.replace('_', '-')}" for k in ("config", "board", "engine", "cpu", "mode", "cpus", "mem", "kernel",
                                                 "initrd", "append", "bios", "disk", "net", "exec_cmd", "max_insns",
                                                 "dump_config", "dump_dtb") if getattr(args, k, None)]


def _incoming(args: argparse.Namespace) -> int:
    """``--incoming tcp:HOST:PORT``: wait for a live migration, then run the VM it carries."""
    import socket

    from virtkit.machine import control
    from virtkit.machine.migration import Target, new_token, parse_uri

    flags = _machine_flags(args) + [f for f in ("--restore", "--template") if getattr(args, f[2:])]
    if flags:
        raise ConfigError(f"{', '.join(flags)}: the machine comes from the migration")
    host, port = parse_uri(args.incoming, listen=True)
    if args.disk_dir and not os.path.isdir(args.disk_dir):
        raise ConfigError(f"--disk-dir {args.disk_dir}: no such directory")
    token = args.token or new_token()
    name = args.name or control.generate_name()
    if args.detach:
        refuse_name_in_use(name)
        try:
            lsock = socket.create_server((host, port))
        except OSError as err:
            raise ConfigError(f"cannot listen on {args.incoming}: {err.strerror}") from None
        cmd = [sys.executable, "-m", "virtkit.cli", "run", "--incoming", args.incoming, "--incoming-fd",
               str(lsock.fileno()), "--token", token, "--name", name, "--serial", "none", "--console-log",
               str(control.run_dir() / f"{name}.console")]
        if args.disk_dir:
            cmd += ["--disk-dir", os.path.abspath(args.disk_dir)]
        bound = lsock.getsockname()[1]
        try:
            pid = spawn_detached(name, cmd, pass_fds=(lsock.fileno(),))  # returns once `ps` shows it
        finally:
            lsock.close()
        if args.json:
            print(json.dumps({"name": name, "pid": pid, "token": token, "port": bound}))
        else:
            print(f"{name}: waiting for a migration on {host or '*'}:{bound}, token {token}")
        return 0
    target = Target(args.incoming, token, listener_fd=args.incoming_fd, disk_dir=args.disk_dir)
    waiting = _incoming_server(name, target)
    from virtkit.commands import _terminal as term

    if args.incoming_fd is None:
        term.stderr_line(f"virtkit: waiting for a migration on {host or '*'}:{target.port}, token {token}",
                         raw=False)
    from virtkit.machine.config import ConsoleConfig, MachineConfig

    cfg = MachineConfig(name=name)
    if args.serial:
        cfg.console = ConsoleConfig(args.serial, False)

    def make(hub: Any) -> Any:
        try:
            m = target.receive(hub, name)
        finally:
            waiting.close()  # the VM's own control socket takes the name over
        if args.serial:
            m.cfg.console = cfg.console
        cfg.board, cfg.cpus, cfg.memory = m.cfg.board, m.cfg.cpus, m.cfg.memory
        return m

    return run_board(cfg, args, make=make)


def _incoming_server(name: str, target: Any) -> Any:
    """The name of a VM waiting for a migration is taken at once: ``virtkit ps`` shows it as ``incoming``;
    ``stop``/``kill`` end the wait (or the migration under way, which the source survives)."""
    import threading

    from virtkit.machine.control import ControlServer

    started = time.time()

    def status() -> dict[str, Any]:
        return {"name": name, "pid": os.getpid(), "state": "incoming", "board": "",
                "reason": f"waiting for a migration on port {target.port}", "port": target.port,
                "uptime": round(time.time() - started, 3), "mips": 0.0}

    def end(**_: Any) -> dict[str, Any]:
        # after the reply has gone out: stop listening, and end a migration under way (the source goes on)
        threading.Timer(0.1, target.close).start()
        threading.Timer(0.5, os._exit, (1,)).start()
        return {"state": "stopped", "reason": "no longer waiting for a migration"}

    return ControlServer(name, {"ping": lambda: {"name": name}, "status": status, "stop": end, "kill": end},
                         {"state": "incoming", "port": target.port})


def _from_snapshot(args: argparse.Namespace) -> int:
    """``--restore SNAPSHOT [--clone]`` or ``--template T``: the machine comes from a snapshot."""
    from virtkit.machine.snapshot import resolve, template_path

    if args.restore and args.template:
        raise ConfigError("--restore and --template exclude each other")
    machine_flags = _machine_flags(args)
    if machine_flags:
        raise ConfigError(f"{', '.join(machine_flags)}: the machine comes from the snapshot")
    if args.template:
        return start_from_snapshot(template_path(args.template), args, clone=True, disk_dir=args.disk_dir)
    return start_from_snapshot(resolve(args.restore).absolute(), args, clone=args.clone, disk_dir=args.disk_dir)


def run_restored(bundle: Any, args: argparse.Namespace, *, name: str | None, clone: bool,
                 disk_dir: str | None) -> int:
    """The VM of a snapshot, with its console here (``run_board`` with the machine taken from the bundle)."""
    from virtkit.machine import snapshot as snap
    from virtkit.machine import vmsnap
    from virtkit.machine.config import ConsoleConfig, MachineConfig
    from virtkit.machine.control import generate_name

    man = snap.read_manifest(bundle)
    cfg = MachineConfig.from_dict(man["machine"], "snapshot machine")
    cfg.name = name or generate_name()
    if getattr(args, "serial", None):
        cfg.console = ConsoleConfig(args.serial, cfg.console.virtio)
    elif cfg.console.serial == "none":  # (taken from a detached VM: in the foreground its console is here)
        cfg.console = ConsoleConfig("stdio", cfg.console.virtio)
    if getattr(args, "timeout", None):
        from virtkit.units import parse_duration

        cfg.timeout = parse_duration(args.timeout, what="--timeout")
    cfg.exec = None
    notes: list[str] = []

    def make(hub: Any) -> Any:
        m, n = vmsnap.restore(bundle, hub, name=cfg.name, clone=clone, disk_dir=disk_dir,
                              verify_memory=not getattr(args, "no_verify", False))
        m.cfg.console = cfg.console
        notes.extend(n)
        return m

    for k in ("stats", "console_log", "timeout", "boot_timeout"):
        if not hasattr(args, k):
            setattr(args, k, None)
    return run_board(cfg, args, make=make, notes=notes)


def start_from_snapshot(bundle: Any, args: argparse.Namespace, clone: bool, disk_dir: str | None = None) -> int:
    """Start a VM from ``bundle`` here (console on this terminal) or detached (``args.detach``)."""
    from virtkit.machine import snapshot as snap

    man = snap.read_manifest(bundle)
    if getattr(args, "detach", False):
        return detach_restored(bundle, args, clone, disk_dir)
    name = args.name or (None if clone else man.get("vm"))
    return run_restored(bundle, args, name=name, clone=clone, disk_dir=disk_dir)


def detach_restored(bundle: Any, args: argparse.Namespace, clone: bool, disk_dir: str | None) -> int:
    """The background VM is ``virtkit run --restore`` in a new session (as ``run -d`` does)."""
    from virtkit.machine import control
    from virtkit.machine import snapshot as snap

    man = snap.read_manifest(bundle)
    name = args.name or (None if clone else man.get("vm")) or control.generate_name()
    refuse_name_in_use(name)
    d = control.run_dir()
    d.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "virtkit.cli", "run", "--restore", str(bundle), "--name", name, "--serial", "none",
           "--console-log", str(d / f"{name}.console")]
    if clone:
        cmd.append("--clone")
    if disk_dir:
        cmd += ["--disk-dir", disk_dir]
    if getattr(args, "no_verify", False):
        cmd.append("--no-verify")
    pid = spawn_detached(name, cmd)
    if args.json:
        print(json.dumps({"name": name, "pid": pid, "socket": str(control.socket_path(name))}))
    else:
        print(name)
    return 0


def dump_dtb(cfg: Any, path: str) -> int:
    """Build the machine (nothing runs), write its device tree."""
    from virtkit.machine.builder import build

    m = build(cfg)
    try:
        dump = getattr(m.board, "dump_dtb", None)
        if dump is None:
            raise ConfigError(f"board {cfg.board} has no device tree")
        with open(path, "wb") as f:
            f.write(dump())
    finally:
        m.vm.close()
    return 0


def _start(cfg: Any, console: Any, warn: Any, make: Any = None) -> Any:
    from virtkit.machine.builder import build
    from virtkit.machine.runner import RunningVm

    boot_timeout = cfg.boot_timeout
    if boot_timeout is None:
        boot_timeout = 300.0 if cfg.exec is not None else 0.0
    machine = make(console) if make is not None else build(cfg, console)
    try:
        return RunningVm(machine, cfg.name, timeout=cfg.timeout, boot_timeout=boot_timeout, warn=warn)
    except BaseException:
        machine.vm.close()
        raise


def run_board(cfg: Any, args: argparse.Namespace, make: Any = None, notes: list[str] | None = None) -> int:
    """Boot the board with its console on this terminal (or filtered for --exec, or inside --json).
    ``make(hub)`` builds the machine instead of the builder (a restored snapshot); ``notes`` are said first."""
    from virtkit.commands import _terminal as term
    from virtkit.machine.console import ConsoleHub

    hub = ConsoleHub()
    exec_filter = None
    interactive = cfg.exec is None and not args.json and cfg.console.serial == "stdio" and not args.console_log
    log = bytearray()
    if cfg.exec is not None:
        exec_filter = term.ExecFilter((lambda b: None) if args.json else term.stdout_write)
        hub.sinks.append(exec_filter)
    if args.json:
        hub.sinks.append(log.extend)
    elif interactive:
        hub.sinks.append(term.stdout_write)
    logfile = None
    if args.console_log:
        logfile = open(args.console_log, "wb", buffering=0)
        hub.sinks.append(logfile.write)
    raw = term.RawTerminal(0)
    is_raw = interactive and raw.is_tty

    def warn(msg: str) -> None:
        term.stderr_line(f"virtkit: warning: {msg}", raw=is_raw)

    rv = _start(cfg, hub, warn, make)
    attach_gdb(rv, args)
    vm = rv.vm
    for n in notes or []:
        term.stderr_line(f"virtkit: {n}", raw=False)

    def stats_now() -> None:
        term.print_stats(_stats(rv), title=f"virtkit run: {cfg.board}", to_terminal_raw=True)

    def on_escape(key: str) -> None:
        if key == "x":
            vm.stop("stopped")
        elif key == "s":
            stats_now()
        elif key == "p":
            if vm.paused:
                vm.resume()
                term.stderr_line("virtkit: resumed", raw=True)
            else:
                vm.pause("paused from the console")
                term.stderr_line("virtkit: paused (Ctrl-A p resumes)", raw=True)
        elif key == "b" and hub.send_break is not None:
            hub.send_break(b"")
        elif key in ("h", "?"):
            os.write(1, term.help_text(term.ESCAPES))

    esc = term.EscapeReader(on_escape, enabled=raw.is_tty and interactive)

    def deliver(data: bytes) -> None:
        data = esc.feed(data)
        if data:
            hub.type(data)

    def eof() -> None:
        vm.io.remove_reader(0) if vm.io is not None else None

    with term.StopSignals(lambda name: vm.stop("stopped", f"stopped by {name}")) as sigs:
        with raw if interactive else _Null():
            if cfg.console.serial == "stdio" and not args.console_log:
                if term.is_regular_or_null(0):
                    data = term.read_all(0)
                    if data:
                        hub.type(data)
                else:
                    vm.io.add_reader(0, term.stdin_reader(0, deliver, eof), guest=False)
            res = rv.run()
    if logfile is not None:
        logfile.close()
    return _report_board(cfg, args, rv, res, exec_filter, log, sigs.received)


def attach_gdb(rv: Any, args: argparse.Namespace) -> None:
    """``--gdb``/``-s`` and ``--gdb-wait``/``-S``: a GDB remote stub for the machine, closed with the VM."""
    addr = getattr(args, "gdb", None)
    if addr is None:
        return
    from virtkit.machine.gdbstub import GdbStub

    try:
        stub = GdbStub(rv.machine, addr, wait=args.gdb_wait)
    except BaseException:
        rv.vm.close()
        raise
    rv.vm.closers.append(("gdb stub", stub.close))
    where = stub.address if isinstance(stub.address, str) else f"{stub.address[0]}:{stub.address[1]}"
    print(f"virtkit: gdb stub listening on {where}" + (" (the guest waits for gdb)" if args.gdb_wait else ""),
          file=sys.stderr)


class _Null:
    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _stats(rv: Any) -> dict[str, Any]:
    from virtkit.engines.riscv.engine import selected_core

    s = rv.machine.stats()
    s["core"] = selected_core()
    return s


def _report_board(cfg: Any, args: argparse.Namespace, rv: Any, res: Any, exec_filter: Any, log: bytearray,
                  signal_name: str | None) -> int:
    rc = res.exit_status
    problem = ""
    if res.reason in ("error", "panic", "boot-timeout", "timeout", "killed"):
        problem = f"virtkit: guest stopped ({res.reason}): {res.message}" if res.message else \
            f"virtkit: guest stopped ({res.reason})"
    if exec_filter is not None:
        if exec_filter.status is None:
            if res.reason == "poweroff":
                problem = problem or ("virtkit: the guest powered off without reporting the command's exit status "
                                      "(is the initramfs virtkit's?)")
            rc = rc or 1
        else:
            rc = exec_filter.status
    for e in res.errors:
        problem += f"\nvirtkit: error: {e}"
    stats = _stats(rv)
    if args.json:
        out: dict[str, Any] = {"name": cfg.name, "reason": res.reason, "code": res.code, "message": res.message,
                               "exit_status": rc, "seconds": round(res.seconds, 3), "warnings": rv.warnings,
                               "errors": res.errors, "stats": stats}
        if exec_filter is not None:
            out["command_exit_status"] = exec_filter.status
            out["output"] = exec_filter.output.decode(errors="replace")
        out["console"] = log.decode(errors="replace")
        print(json.dumps(out, default=str))
        if problem:
            print(problem.strip(), file=sys.stderr)
        return rc
    if problem:
        print(problem.strip(), file=sys.stderr)
    if args.stats:
        from virtkit.commands._terminal import print_stats

        print_stats(stats, title=f"virtkit run: {cfg.board}")
    return rc


def run_bare_metal(cfg: Any, args: argparse.Namespace) -> int:
    """Run a bare-metal ELF on the riscv64-spike board: exit 0 on pass, 1 with 'FAIL: test N' on failure."""
    from virtkit.commands import _terminal as term
    from virtkit.machine.console import ConsoleHub

    hub = ConsoleHub()
    out = bytearray()
    hub.sinks.append(out.extend)
    if not args.json:
        hub.sinks.append(term.stdout_write)
    rv = _start(cfg, hub, lambda msg: term.stderr_line(f"virtkit: warning: {msg}"))
    attach_gdb(rv, args)
    with term.StopSignals(lambda name: rv.vm.stop("stopped", f"stopped by {name}")):
        res = rv.run()
    st = _stats(rv)
    if res.reason == "exit" and res.code == 0:
        rc, verdict = 0, "PASS"
    elif res.reason == "exit":
        rc, verdict = 1, f"FAIL: test {res.code}"
    elif res.reason == "stuck":
        rc, verdict = 3, "STUCK: every hart waits for an interrupt that cannot come"
    elif res.reason == "budget":
        rc, verdict = 2, "TIMEOUT: instruction budget spent without an exit code"
    else:
        rc, verdict = res.exit_status or 1, f"STOPPED ({res.reason}): {res.message}".rstrip(": ")
    instructions = int(st.get("instructions", 0))
    if args.json:
        print(json.dumps({"name": cfg.name, "result": verdict, "exit_code": res.code if res.reason == "exit" else None,
                          "reason": {"exit": "exit", "stuck": "wfi"}.get(res.reason, res.reason),
                          "exit_status": rc, "instructions": instructions, "seconds": round(res.seconds, 6),
                          "mips": round(instructions / res.seconds / 1e6, 2) if res.seconds > 0 else 0.0,
                          "output": out.decode("utf-8", "replace"), "errors": res.errors, "stats": st},
                         default=str))
        return rc
    if rc:
        print(verdict, file=sys.stderr)
    for e in res.errors:
        print(f"virtkit: error: {e}", file=sys.stderr)
    if args.stats:
        term.print_stats(st, title="virtkit run: RISC-V engine (bare metal)")
    return rc


# ------------------------------------------------------------------------------------------------- detach
def detach(cfg: Any, args: argparse.Namespace) -> int:
    """Start the VM in a background process; return once its control socket answers, print its name."""
    from virtkit.machine import control

    if cfg.name is None:
        cfg.name = control.generate_name()
    name = cfg.name
    d = control.run_dir()
    d.mkdir(parents=True, exist_ok=True)
    refuse_name_in_use(name)
    if cfg.board == "riscv64-virt" and cfg.kernel is None:
        from virtkit.images import default_guest

        default_guest(progress=sys.stderr.isatty())  # build the images here, with progress, not in the child
    conf = d / f"{name}.run.toml"
    conf.write_text(cfg.to_toml())
    cmd = [sys.executable, "-m", "virtkit.cli", "run", "--config", str(conf), "--serial", "none",
           "--console-log", str(d / f"{name}.console")]
    try:
        pid = spawn_detached(name, cmd)
    finally:
        conf.unlink(missing_ok=True)  # the VM has its config: `virtkit` can ask it for it (op config)
    if args.json:
        print(json.dumps({"name": name, "pid": pid, "socket": str(control.socket_path(name))}))
    else:
        print(name)
    return 0


def refuse_name_in_use(name: str) -> None:
    """A clear error when a VM named ``name`` answers on its control socket (checked before spawning a
    detached VM: the child would fail the same way, less visibly)."""
    from virtkit.machine import control

    try:
        control.request(name, "ping", wait=2)
    except control.ControlError:
        return
    raise ConfigError(f"a VM named {name!r} is already running; pick another --name or stop it first")


def spawn_detached(name: str, cmd: list[str], pass_fds: tuple[int, ...] = ()) -> int:
    """Run ``cmd`` (a ``virtkit run`` of VM ``name``) in a new session; return its pid once the VM's control
    socket answers (or raise with the tail of its log). ``pass_fds``: descriptors the child inherits."""
    from virtkit.machine import control

    d = control.run_dir()
    d.mkdir(parents=True, exist_ok=True)
    log = d / f"{name}.log"
    with open(log, "wb") as lf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf, start_new_session=True,
                                pass_fds=pass_fds)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise VirtkitError(f"VM {name!r} exited at start: {' / '.join(tail) or 'see ' + str(log)}")
        try:
            control.request(name, "ping", wait=2)
            return proc.pid
        except control.ControlError:
            time.sleep(0.05)
    proc.kill()
    raise VirtkitError(f"VM {name!r} did not come up within 120 s (see {log})")
