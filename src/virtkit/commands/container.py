"""``virtkit container``: containers made from images, docker's way: run, create, start, stop, restart,
exec, ps, logs, rm, inspect, stats, pause, resume.

Each container has its own root (the image's layers under a writable one, overlayfs), its own namespaces
and cgroups (the virtkit OCI runtime makes them), its own network namespace with loopback (ports published
with -p reach it through a proxy), and a monitor process that keeps its log and applies --restart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from virtkit.commands._help import add, group


def _create_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND", help="the command (default: the image's)")
    p.add_argument("--name", metavar="NAME")
    p.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:/PATH[:ro]",
                   help="a host path or a named volume")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="HOST:CONTAINER",
                   help="publish a TCP port of the container on the host")
    p.add_argument("--memory", "-m", metavar="SIZE", help="memory limit (64m, 1g)")
    p.add_argument("--cpus", type=float, metavar="N", help="CPU limit in CPUs (0.5 = half of one)")
    p.add_argument("--pids-limit", type=int, metavar="N", help="at most N processes")
    p.add_argument("--read-only", action="store_true", help="mount the root file system read-only")
    p.add_argument("--restart", default="no", metavar="POLICY", help="no, always, unless-stopped, on-failure[:N]")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("-u", "--user", metavar="UID[:GID]")
    p.add_argument("-w", "--workdir", metavar="DIR")
    p.add_argument("--entrypoint", metavar="PROGRAM", help="override the image's entrypoint ('' clears it)")
    p.add_argument("-t", "--tty", action="store_true", help="give the container a terminal")
    p.add_argument("-i", "--interactive", action="store_true", help="keep standard input open")
    p.add_argument("--net", "--network", default="none", metavar="MODE",
                   help="none (own namespace, loopback; the default) or host")
    p.add_argument("--hostname", metavar="NAME")
    p.add_argument("--log-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="max-size=SIZE (rotate at; default 10m), max-file=N (files kept; default 3)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``virtkit container ACTION``."""
    _, sub = group(subparsers, "container", "containers from images: run, exec, ps, logs, stop, rm (docker's way)",
                   __doc__, "container_command")
    r = add(sub, "run", "create and start a container (in the foreground unless -d)",
            ["virtkit container run --rm busybox echo hello",
             "virtkit container run -d --name web -p 8080:80 busybox httpd -f -p 80",
             "virtkit container run -it busybox sh"])
    r.add_argument("-d", "--detach", action="store_true", help="run in the background, print the id")
    _create_flags(r)
    r.set_defaults(func=cmd_run)

    c = add(sub, "create", "create a container (start it later)", ["virtkit container create --name c1 busybox"])
    _create_flags(c)
    c.set_defaults(func=cmd_create)

    for verb, text, ex in (("start", "start containers in the background", "virtkit container start c1"),
                           ("stop", "stop containers (SIGTERM, SIGKILL after -t seconds)", "virtkit container stop c1"),
                           ("restart", "stop then start containers", "virtkit container restart c1"),
                           ("pause", "freeze every process of containers", "virtkit container pause c1"),
                           ("resume", "thaw paused containers", "virtkit container resume c1")):
        p = add(sub, verb, text, [ex], aliases=("unpause",) if verb == "resume" else ())
        p.add_argument("names", nargs="+", metavar="CONTAINER")
        if verb in ("stop", "restart"):
            p.add_argument("-t", "--time", type=float, default=10, metavar="SECONDS")
        p.set_defaults(func=cmd_lifecycle, verb=verb)

    e = add(sub, "exec", "run a command in a running container", ["virtkit container exec web ps"])
    e.add_argument("-d", "--detach", action="store_true")
    e.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE")
    e.add_argument("-u", "--user", metavar="UID[:GID]")
    e.add_argument("-w", "--workdir", metavar="DIR")
    e.add_argument("-i", "--interactive", action="store_true", help="(standard input is always passed)")
    e.add_argument("name", metavar="CONTAINER")
    e.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")
    e.set_defaults(func=cmd_exec)

    ps = add(sub, "ps", "the containers (running ones; -a for all)",
             ["virtkit container ps -a", "virtkit container ps --json"], aliases=("ls", "list"))
    ps.add_argument("-a", "--all", action="store_true")
    ps.add_argument("-q", "--quiet", action="store_true", help="ids only")
    ps.add_argument("--json", action="store_true", help="print the list as JSON (nothing else on stdout)")
    ps.set_defaults(func=cmd_ps)

    lg = add(sub, "logs", "what a container printed (its JSON-lines log)", ["virtkit container logs -f web"])
    lg.add_argument("name", metavar="CONTAINER")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the container exits")
    lg.add_argument("-n", "--tail", type=int, metavar="N", help="only the last N lines")
    lg.add_argument("--timestamps", action="store_true")
    lg.set_defaults(func=cmd_logs)

    rm = add(sub, "rm", "remove containers (-f: running ones too)", ["virtkit container rm -f web"])
    rm.add_argument("names", nargs="+", metavar="CONTAINER")
    rm.add_argument("-f", "--force", action="store_true")
    rm.set_defaults(func=cmd_rm)

    ins = add(sub, "inspect", "everything about a container, as JSON", ["virtkit container inspect web"])
    ins.add_argument("name", metavar="CONTAINER")
    ins.set_defaults(func=cmd_inspect)

    st = add(sub, "stats", "CPU, memory, processes and throttling of running containers",
             ["virtkit container stats web", "virtkit container stats --json web"])
    st.add_argument("names", nargs="+", metavar="CONTAINER")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_stats)

    top = add(sub, "top", "the processes of a container", ["virtkit container top web"])
    top.add_argument("name", metavar="CONTAINER")
    top.set_defaults(func=cmd_top)


def _cs():  # noqa: ANN202
    from virtkit.containers.frontend import Containers

    return Containers()


def _create(args: argparse.Namespace) -> dict[str, Any]:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    return _cs().create(args.image, command, name=args.name, entrypoint=args.entrypoint, env=args.env,
                        volumes=args.volume, ports=args.publish, memory=args.memory, cpus=args.cpus,
                        pids_limit=args.pids_limit, read_only=args.read_only, restart=args.restart,
                        auto_remove=args.rm, user=args.user, workdir=args.workdir, tty=args.tty,
                        interactive=args.interactive, net=args.net, hostname=args.hostname, log_opts=args.log_opt)


def cmd_create(args: argparse.Namespace) -> int:
    """Create; print the id."""
    print(_create(args)["id"])
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Create and start; in the foreground, exit with the container's status."""
    from virtkit.errors import ConfigError

    if args.tty and not args.detach and not os.isatty(0):
        raise ConfigError("-t: standard input is not a terminal (drop -t, or run from a terminal)")
    meta = _create(args)
    cs = _cs()
    if args.detach:
        try:
            cs.start(meta["id"])
        except BaseException:
            if args.rm:
                cs.remove(meta["id"], force=True)
            raise
        print(meta["id"])
        return 0
    try:
        return cs.run_attached(meta["id"])
    finally:
        if args.rm and (cs.dir / meta["id"]).exists():
            cs.remove(meta["id"], force=True)


def cmd_lifecycle(args: argparse.Namespace) -> int:
    """start/stop/restart/pause/resume each name."""
    cs = _cs()
    for n in args.names:
        if args.verb in ("stop", "restart"):
            cs.stop(n, args.time)
        if args.verb in ("start", "restart"):
            cs.start(n)
        if args.verb in ("pause", "resume"):
            cs.pause(n, args.verb == "pause")
        print(n)
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    """Exec; exit with the command's status."""
    from virtkit.errors import ConfigError

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ConfigError("exec: give a command")
    return _cs().exec(args.name, command, env=args.env, user=args.user, workdir=args.workdir, detach=args.detach)


def _age(t: float | None) -> str:
    if not t:
        return ""
    s = int(time.time() - t)
    return f"{s} s" if s < 120 else f"{s // 60} min" if s < 7200 else f"{s // 3600} h"


def _status_text(m: dict[str, Any]) -> str:
    st = m["status"]
    if st == "running":
        return f"Up {_age(m.get('started'))}"
    if st == "exited":
        oom = " (OOM killed)" if m.get("oom_killed") else ""
        return f"Exited ({m.get('exit_code')}){oom} {_age(m.get('finished'))} ago"
    return st.capitalize()


def cmd_ps(args: argparse.Namespace) -> int:
    """The table, ids or JSON."""
    rows = [m for m in _cs().all() if args.all or m["status"] in ("running", "paused", "restarting")]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if args.quiet:
        for m in rows:
            print(m["id"][:12])
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table()
    for col in ("ID", "NAME", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS"):
        t.add_column(col)
    for m in rows:
        ports = ", ".join(f"{p['ip']}:{p['host']}->{p['container']}/tcp" for p in m["ports"])
        t.add_row(m["id"][:12], m["name"], m["image"], " ".join(m["command"])[:30], _age(m["created"]) + " ago",
                  _status_text(m), ports)
    Console().print(t)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Print the log's lines to stdout/stderr by stream; -f follows until the container exits."""
    cs = _cs()
    meta = cs.find(args.name)
    lines: list[dict[str, Any]] = []
    for f in cs.logs(meta["id"]):
        with open(f) as fh:
            lines += [json.loads(x) for x in fh if x.strip()]
    if args.tail is not None:
        lines = lines[-args.tail:] if args.tail else []
    for rec in lines:
        _emit(rec, args.timestamps)
    if not args.follow:
        return 0
    path = cs.dir / meta["id"] / "log.json"
    pos = path.stat().st_size if path.exists() else 0
    while True:
        done = cs.get(meta["id"])["status"] not in ("running", "restarting", "paused")
        if path.exists():
            if path.stat().st_size < pos:  # rotated
                pos = 0
            with open(path) as fh:
                fh.seek(pos)
                for x in fh:
                    if x.endswith("\n"):
                        _emit(json.loads(x), args.timestamps)
                        pos += len(x.encode())
        if done:
            return 0
        time.sleep(0.2)


def _emit(rec: dict[str, Any], stamps: bool) -> None:
    out = sys.stdout if rec.get("stream") != "stderr" else sys.stderr
    out.write((rec["time"] + " " if stamps else "") + rec["log"])
    out.flush()


def cmd_rm(args: argparse.Namespace) -> int:
    """Remove each."""
    cs = _cs()
    for n in args.names:
        cs.remove(n, args.force)
        print(n)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """JSON."""
    print(json.dumps(_cs().inspect(args.name), indent=1))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """One sample per container."""
    from virtkit.units import format_size

    cs = _cs()
    rows = [cs.stats(n) for n in args.names]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table()
    for col in ("NAME", "CPU %", "MEM USAGE / LIMIT", "PIDS", "THROTTLED"):
        t.add_column(col)
    for r in rows:
        lim = format_size(r["memory_limit"]) if r["memory_limit"] else "-"
        t.add_row(r["name"], f"{r['cpu_percent']:.1f}", f"{format_size(r['memory_bytes'] or 0)} / {lim}",
                  str(r["pids"]), f"{r['throttled_periods']} periods")
    Console().print(t)
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    """The host's ps for the container's processes."""
    import subprocess

    pids = _cs().processes(args.name)
    if not pids:
        return 0
    return subprocess.run(["ps", "-o", "pid,user,etime,args", "-p", ",".join(map(str, pids))]).returncode
