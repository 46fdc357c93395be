"""``virtkit daemon``: virtkitd, the host daemon: an inventory of VMs (SQLite) and a REST API on a Unix socket
and, with --listen, on TCP with API tokens. VMs it starts keep running when it stops.
"""

from __future__ import annotations

import argparse
import json

from virtkit.commands._help import add, group


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``virtkit daemon ACTION``."""
    _, sub = group(subparsers, "daemon", "virtkitd: the host daemon and its REST API (start, stop, tokens)",
                   __doc__, "daemon_command")
    s = add(sub, "start", "start virtkitd in the background",
            ["virtkit daemon start", "virtkit daemon start --listen 127.0.0.1:8006"])
    r = add(sub, "run", "run virtkitd in the foreground (what start runs; a service manager's command)",
            ["virtkit daemon run --listen 127.0.0.1:8006 --tls"])
    for p in (s, r):
        p.add_argument("--listen", metavar="HOST:PORT", help="also serve on TCP (callers need a token)")
        p.add_argument("--tls", action="store_true", help="HTTPS on TCP (a self-signed certificate is generated "
                       "in the daemon's directory unless --tls-cert/--tls-key give one)")
        p.add_argument("--tls-cert", metavar="PEM", help="the certificate (chain) for HTTPS")
        p.add_argument("--tls-key", metavar="PEM", help="its private key")
    s.set_defaults(func=cmd_start)
    r.set_defaults(func=cmd_run)
    st = add(sub, "stop", "stop virtkitd (its VMs keep running)", ["virtkit daemon stop"])
    st.set_defaults(func=cmd_stop)
    ss = add(sub, "status", "whether virtkitd runs, its socket and database", ["virtkit daemon status --json"])
    ss.add_argument("--json", action="store_true")
    ss.set_defaults(func=cmd_status)
    t = add(sub, "token", "API tokens: create NAME --scope read|operate|admin [--vm NAME], list, revoke NAME",
            ["virtkit daemon token create ci --scope operate", "virtkit daemon token create tank-admin --scope admin "
             "--pool tank", "virtkit daemon token list",
             "virtkit daemon token revoke ci"])
    t.add_argument("verb", choices=("create", "list", "revoke"))
    t.add_argument("name", nargs="?", metavar="NAME")
    t.add_argument("--scope", default="read", choices=("read", "operate", "admin"))
    t.add_argument("--vm", metavar="NAME", help="the token may act on this VM only")
    t.add_argument("--pool", metavar="NAME", help="the token may act on this storage pool only")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_token)


def cmd_start(args: argparse.Namespace) -> int:
    """Start in the background."""
    from virtkit.daemon import server

    tls = args.tls or bool(args.tls_cert or args.tls_key)
    if tls and not args.listen:
        from virtkit.errors import ConfigError

        raise ConfigError("--tls is for the TCP listener: give --listen HOST:PORT too")
    pid = server.start(args.listen, tls=tls, cert=args.tls_cert, key=args.tls_key)
    scheme = "https" if tls else "http"
    print(f"virtkitd running (pid {pid}); socket {server.paths()['sock']}"
          + (f", {scheme}://{args.listen}" if args.listen else "")
          + (f" (certificate {server.tls_files(None, args.tls_cert, args.tls_key)[0]})" if tls else ""))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Serve in the foreground."""
    from virtkit.daemon import server

    server.serve(args.listen, tls=args.tls, cert=args.tls_cert, key=args.tls_key)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop it."""
    from virtkit.daemon import server

    print("virtkitd stopped" if server.stop() else "virtkitd was not running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Running or not."""
    from virtkit.daemon import server

    p = server.paths()
    out = {"running": server.running_pid() is not None, "pid": server.running_pid(), "socket": str(p["sock"]),
           "database": str(p["db"])}
    print(json.dumps(out) if args.json else
          (f"virtkitd running (pid {out['pid']}), socket {out['socket']}" if out["running"] else
           "virtkitd is not running"))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Tokens are written to the database directly (the daemon reads them per request)."""
    from virtkit.daemon import server
    from virtkit.daemon.db import Inventory
    from virtkit.errors import ConfigError

    inv = Inventory(server.paths()["db"])
    if args.verb == "list":
        rows = inv.tokens()
        print(json.dumps(rows) if args.json else "\n".join(
            f"{r['name']}\t{r['scope']}\t" + (f"vm:{r['vm']}" if r["vm"] else f"pool:{r['pool']}" if r["pool"] else "-")
            for r in rows))
        return 0
    if not args.name:
        raise ConfigError(f"token {args.verb}: give the token's NAME")
    if args.verb == "create":
        tok = inv.new_token(args.name, args.scope, args.vm, args.pool)
        print(json.dumps({"name": args.name, "scope": args.scope, "token": tok}) if args.json else tok)
        return 0
    if not inv.revoke(args.name):
        raise ConfigError(f"no token named {args.name!r}")
    return 0
