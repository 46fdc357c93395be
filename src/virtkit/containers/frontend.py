"""The container front end (what ``virtkit container`` runs): containers made from images in the store, each
with an overlayfs root, a bundle for the OCI runtime, a log of JSON lines, published ports and a restart
policy, looked after by a monitor process (containerd-shim's and conmon's job) that holds the container's
output, waits for it and records how it ended.

Layout under :func:`virtkit.containers.images.home`: ``containers/<id>/`` (``meta.json``, ``bundle/``,
``upper/``, ``work/``, ``log.json``), ``volumes/<name>/`` and ``runc/`` (the runtime's state)."""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

from virtkit.containers import images as img
from virtkit.containers import linux as L
from virtkit.containers import runtime as rt
from virtkit.errors import ConfigError, VirtkitError

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
               "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
               "CAP_KILL", "CAP_AUDIT_WRITE"]
LOG_MAX = 10 << 20  # a log file rotates at this size; LOG_KEEP old files are kept (docker: --log-opt)
LOG_KEEP = 2
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 1


class ContainerError(VirtkitError):
    """A container request that cannot be done; the message says which container and why."""


def parse_memory(text: str, flag: str = "--memory") -> int:
    """``512m``, ``1g``, ``65536k`` or bytes -> bytes (docker's --memory)."""
    m = re.fullmatch(r"(\d+)([bkmg]?)", text.strip().lower())
    if not m or int(m.group(1)) == 0:
        raise ConfigError(f"{flag} {text!r}: expected a size such as 64m or 1g")
    return int(m.group(1)) << {"": 0, "b": 0, "k": 10, "m": 20, "g": 30}[m.group(2)]


def parse_restart(text: str) -> dict[str, Any]:
    """``no``, ``always``, ``unless-stopped``, ``on-failure[:N]``."""
    name, _, count = text.partition(":")
    if name not in ("no", "always", "unless-stopped", "on-failure") or count and (
            name != "on-failure" or not count.isdigit()):
        raise ConfigError(f"--restart {text!r}: expected no, always, unless-stopped or on-failure[:N]")
    return {"name": name, "max": int(count) if count else 0}


def parse_net(text: str) -> dict[str, Any]:
    """``none`` (its own network namespace, loopback only), ``host``, or
    ``switch:NAME[,vlan=N][,group=G][,ip=ADDR/PREFIX][,mac=M]`` (an interface eth0 on a virtkit switch port,
    beside the VMs on that switch)."""
    if text in ("none", "host"):
        return {"mode": text}
    head, *opts = text.split(",")
    kind, sep, name = head.partition(":")
    if kind != "switch" or not sep or not name:
        raise ConfigError(f"--net {text!r}: expected none, host or switch:NAME[,vlan=N][,group=G][,ip=ADDR/PREFIX]"
                          "[,mac=M]")
    out: dict[str, Any] = {"mode": "switch", "switch": name}
    for o in opts:
        k, _, v = o.partition("=")
        if k not in ("vlan", "group", "ip", "mac") or not v:
            raise ConfigError(f"--net {text!r}: unknown option {o!r} (known: vlan=, group=, ip=, mac=)")
        if k == "vlan" and not (v.isdigit() and 1 <= int(v) <= 4094):
            raise ConfigError(f"--net {text!r}: vlan={v!r} is not a number in 1..4094")
        if k == "ip":
            import ipaddress

            try:
                ipaddress.ip_interface(v)
            except ValueError:
                raise ConfigError(f"--net {text!r}: ip={v!r} is not ADDR/PREFIX") from None
            if "/" not in v:
                raise ConfigError(f"--net {text!r}: ip={v!r} needs a prefix length (10.0.0.2/24)")
        if k == "mac" and not re.fullmatch(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", v):
            raise ConfigError(f"--net {text!r}: mac={v!r} is not a MAC address")
        out[k] = int(v) if k == "vlan" else v
    return out


def parse_log_opts(opts: list[str]) -> dict[str, int]:
    """docker's json-file ``--log-opt max-size=10m`` (bytes before a file rotates) and ``max-file=3``
    (files kept, the current one included)."""
    out = {"max_size": LOG_MAX, "max_file": LOG_KEEP + 1}
    for o in opts:
        k, _, v = o.partition("=")
        if k == "max-size":
            out["max_size"] = parse_memory(v, "--log-opt max-size")
        elif k == "max-file" and v.isdigit() and int(v) >= 1:
            out["max_file"] = int(v)
        else:
            raise ConfigError(f"--log-opt {o!r}: expected max-size=SIZE or max-file=N (N >= 1)")
    return out


def parse_port(text: str) -> dict[str, Any]:
    """``[IP:]HOST:CONTAINER[/tcp]`` -> a published port."""
    spec, _, proto = text.partition("/")
    parts = spec.split(":")
    if proto not in ("", "tcp") or len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[-2:]):
        raise ConfigError(f"-p {text!r}: expected [IP:]HOST_PORT:CONTAINER_PORT (tcp)")
    host, ctr = int(parts[-2]), int(parts[-1])
    if not (0 < host < 65536 and 0 < ctr < 65536):
        raise ConfigError(f"-p {text!r}: ports are 1..65535")
    return {"ip": parts[0] if len(parts) == 3 else "0.0.0.0", "host": host, "container": ctr}


class Containers:
    """Every container of the store: making, starting, stopping, listing and removing them."""

    def __init__(self, root: Path | None = None) -> None:
        self.home = Path(root or img.home())
        self.store = img.Store(self.home)
        self.dir = self.home / "containers"
        self.runc = str(self.home / "runc")
        self.volumes = self.home / "volumes"
        self.dir.mkdir(parents=True, exist_ok=True)

    # -- records ---------------------------------------------------------------------------------------
    def all(self) -> list[dict[str, Any]]:
        """Every container's record, oldest first, with its current status."""
        out = []
        for d in self.dir.iterdir():
            try:
                out.append(self._status(json.loads((d / "meta.json").read_text())))
            except (OSError, ValueError):
                continue
        return sorted(out, key=lambda m: m["created"])

    def find(self, ref: str) -> dict[str, Any]:
        """A container by name, id or unique id prefix."""
        hits = [m for m in self.all() if ref in (m["name"], m["id"]) or len(ref) >= 3 and m["id"].startswith(ref)]
        if not hits:
            raise ContainerError(f"no container {ref!r} (virtkit container ps -a lists them)")
        if len(hits) > 1:
            raise ContainerError(f"{ref!r} names more than one container: give more of the id")
        return hits[0]

    def get(self, cid: str) -> dict[str, Any]:
        """One container's record with its current status, by full id (no scan of the others)."""
        return self._status(self._load(cid))

    def _save(self, meta: dict[str, Any]) -> None:
        path = self.dir / meta["id"] / "meta.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, path)

    def _load(self, cid: str) -> dict[str, Any]:
        return json.loads((self.dir / cid / "meta.json").read_text())

    def _update(self, cid: str, **changes: Any) -> dict[str, Any]:
        meta = self._load(cid)
        meta.update(changes)
        self._save(meta)
        return meta

    def _status(self, meta: dict[str, Any]) -> dict[str, Any]:
        """``meta`` with ``status`` as things are now: created, running, paused, restarting, exited."""
        st = meta.get("state", "created")
        c = rt.Container(self.runc, meta["id"])
        if st in ("running", "restarting") and not _alive(meta.get("monitor"), meta.get("monitor_start")):
            st = "exited"  # its monitor is gone (killed, or the host rebooted)
        if st == "running" and c.exists():
            rs = c.status(c.load())
            st = "paused" if rs == "paused" else "running" if rs in ("running", "created") else st
        return dict(meta, status=st)

    # -- making --------------------------------------------------------------------------------------
    def create(self, image: str, command: list[str], *, name: str | None = None, entrypoint: str | None = None,
               env: list[str] = (), volumes: list[str] = (), ports: list[str] = (), memory: str | None = None,
               cpus: float | None = None, pids_limit: int | None = None, read_only: bool = False,
               restart: str = "no", auto_remove: bool = False, user: str | None = None,
               workdir: str | None = None, tty: bool = False, interactive: bool = False, net: str = "none",
               hostname: str | None = None, log_opts: list[str] = ()) -> dict[str, Any]:
        """A new container from ``image`` (not started): its record, bundle and (empty) writable layer."""
        _, man, icfg = self.store.resolve(image)
        conf = icfg.get("config", {}) or {}
        if name is not None and not NAME_RE.match(name):
            raise ConfigError(f"--name {name!r}: letters, digits, '_', '.', '-' (at most 63), not starting with "
                              "a punctuation mark")
        taken = {m["name"] for m in self.all()}
        cid = secrets.token_hex(32)
        name = name or _pick_name(taken)
        if name in taken:
            raise ContainerError(f"the name {name!r} is taken by another container (virtkit container rm {name})")
        policy = parse_restart(restart)
        logging = parse_log_opts(list(log_opts))
        if auto_remove and policy["name"] != "no":
            raise ConfigError("--rm and --restart cannot go together (a removed container cannot restart)")
        parse_net(net)
        published = [parse_port(p) for p in ports]
        if published and parse_net(net)["mode"] == "host":
            raise ConfigError("-p with --net host: the container's ports are the host's already")
        ep = [entrypoint] if entrypoint is not None else list(conf.get("Entrypoint") or [])
        if entrypoint == "":
            ep = []
        args = ep + (list(command) if command else list(conf.get("Cmd") or []) if entrypoint is None else [])
        if not args:
            raise ConfigError(f"image {image!r} has no command (no Entrypoint or Cmd): give one")
        env_all = list(conf.get("Env") or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
        for e in env:
            if "=" not in e:
                if e not in os.environ:
                    raise ConfigError(f"-e {e!r}: expected NAME=VALUE (or a NAME set here)")
                e = f"{e}={os.environ[e]}"
            env_all = [x for x in env_all if x.split("=", 1)[0] != e.split("=", 1)[0]] + [e]
        if tty:
            env_all.append("TERM=xterm")
        mounts = [self._volume(v) for v in volumes]
        uid, gid = _user(user if user is not None else conf.get("User") or "0")
        d = self.dir / cid
        pool_vols = []
        for i, m in enumerate(mounts):
            if "pool_volume" in m:
                m["source"] = str(d / "vols" / str(i))
                pool_vols.append({"spec": m.pop("pool_volume"), "dir": m["source"], "ro": "ro" in m["options"]})
        (d / "bundle" / "rootfs").mkdir(parents=True)
        (d / "upper").mkdir()
        (d / "work").mkdir()
        spec = _spec(args, env_all, workdir or conf.get("WorkingDir") or "/", uid, gid, tty, read_only,
                     hostname or cid[:12], mounts, net, cid)
        res: dict[str, Any] = {}
        if memory:
            res["memory"] = {"limit": parse_memory(memory)}
        if cpus is not None:
            if cpus <= 0:
                raise ConfigError(f"--cpus {cpus}: must be more than 0")
            res["cpu"] = {"quota": int(cpus * 100000), "period": 100000}
        if pids_limit is not None:
            res["pids"] = {"limit": pids_limit}
        spec["linux"].setdefault("resources", {}).update(res)
        (d / "bundle" / "config.json").write_text(json.dumps(spec, indent=1))
        meta = {"id": cid, "name": name, "image": image, "image_id": man["config"]["digest"], "command": args,
                "created": time.time(), "state": "created", "restart": policy, "restart_count": 0,
                "auto_remove": auto_remove,
                "ports": published, "volumes": [m["source"] + ":" + m["destination"] for m in mounts],
                "pool_volumes": pool_vols, "log": logging,
                "tty": tty, "interactive": interactive, "net": net, "exit_code": None, "oom_killed": False,
                "started": None, "finished": None, "layers": [p.name for p in self.store.layer_dirs(icfg)]}
        self._save(meta)
        return meta

    def _volume(self, text: str) -> dict[str, Any]:
        """``-v HOST_PATH:CTR_PATH[:ro]`` (a bind mount) or ``-v NAME:CTR_PATH[:ro]`` (a named volume, made in
        the store on first use) -> an OCI mount."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[1].startswith("/") or len(parts) == 3 and parts[2] not in (
                "ro", "rw"):
            raise ConfigError(f"-v {text!r}: expected HOST_PATH:/PATH[:ro] or NAME:/PATH[:ro]")
        src = parts[0]
        if src.startswith("/"):
            if not os.path.exists(src):
                raise ConfigError(f"-v {text!r}: {src} does not exist")
        elif "/" in src:  # POOL/VOLUME: a virtkit pool volume, its file system mounted at each start
            from virtkit.storage.pool import is_volume_spec

            if not is_volume_spec(src):
                raise ConfigError(f"-v {text!r}: {src} is not a volume of a virtkit pool (virtkit volume list)")
            from virtkit.storage.pool import Pool

            pool, _, vol = src.partition("/")
            with Pool.open(pool, read_only=True) as pl:
                try:
                    pl.volume(vol)
                except VirtkitError as err:
                    raise ConfigError(f"-v {text!r}: {err}") from None
            ro = len(parts) == 3 and parts[2] == "ro"
            return {"destination": parts[1], "type": "bind", "source": "", "options": ["rbind", "rprivate"] + (
                ["ro"] if ro else []), "pool_volume": src}
        elif NAME_RE.match(src):
            (self.volumes / src).mkdir(parents=True, exist_ok=True)
            src = str(self.volumes / src)
        else:
            raise ConfigError(f"-v {text!r}: a volume name is letters, digits, '_', '.', '-'")
        opts = ["rbind", "rprivate"] + (["ro"] if len(parts) == 3 and parts[2] == "ro" else [])
        return {"destination": parts[1], "type": "bind", "source": src, "options": opts}

    # -- running -------------------------------------------------------------------------------------
    def mount_root(self, meta: dict[str, Any]) -> str:
        """The container's root: the image's layers under its writable layer (overlayfs; a copy where
        overlayfs cannot be mounted); mounted once, kept until the container is removed."""
        d = self.dir / meta["id"]
        root = d / "bundle" / "rootfs"
        if os.path.ismount(root) or (d / "copied").exists():
            return str(root)
        lower = ":".join(str(self.store.layers / name) for name in reversed(meta["layers"]))
        try:
            L.mount("overlay", str(root), "overlay", 0,
                    f"lowerdir={lower},upperdir={d / 'upper'},workdir={d / 'work'}")
        except OSError as err:
            print(f"virtkit: overlayfs unavailable ({err}): copying the image's layers", file=sys.stderr)
            for name in meta["layers"]:
                _merge_copy(self.store.layers / name, root)
            (d / "copied").touch()
        return str(root)

    def start(self, ref: str) -> dict[str, Any]:
        """Start a created or exited container in the background, under its monitor."""
        meta = self.find(ref)
        if meta["status"] in ("running", "paused", "restarting"):
            raise ContainerError(f"container {meta['name']} is {meta['status']} already")
        self.mount_root(meta)
        self._update(meta["id"], stop_requested=False)
        rd, wr = os.pipe()
        pid = os.fork()
        if pid == 0:  # the monitor: its own session, detached from the caller's terminal
            os.close(rd)
            try:
                os.setsid()
                if os.fork() != 0:
                    os._exit(0)
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                Monitor(self, meta["id"], ready=wr).run()
            except BaseException as err:  # noqa: BLE001 (never return into the caller)
                try:
                    os.write(wr, f"error {err}\n".encode()[:4000])
                except OSError:
                    pass
            os._exit(0)
        os.close(wr)
        os.waitpid(pid, 0)
        with os.fdopen(rd, "rb") as r:
            line = r.readline().decode(errors="replace").strip()
        if line != "started":
            why = line[6:] if line.startswith("error ") else "it did not start"
            raise ContainerError(f"container {meta['name']}: {why}")
        return self.get(meta["id"])

    def run_attached(self, ref: str) -> int:
        """Start a container in the foreground, its output (or terminal) on ours; its exit status."""
        meta = self.find(ref)
        if meta["status"] in ("running", "paused", "restarting"):
            raise ContainerError(f"container {meta['name']} is {meta['status']} already")
        self.mount_root(meta)
        self._update(meta["id"], stop_requested=False)
        return Monitor(self, meta["id"], attached=True).run()

    def stop(self, ref: str, timeout: float = 10) -> dict[str, Any]:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the restart policy does not bring it back."""
        meta = self.find(ref)
        self._update(meta["id"], stop_requested=True)
        if meta["status"] not in ("running", "paused", "restarting"):
            return meta
        c = rt.Container(self.runc, meta["id"])
        if meta["status"] == "paused":
            rt.pause(c, False)
        sig = "SIGTERM"
        deadline = time.monotonic() + timeout
        while self.get(meta["id"])["status"] in ("running", "restarting", "paused"):
            try:
                if c.exists() and c.status(c.load()) != "stopped":
                    rt.kill(c, sig)
            except (VirtkitError, ProcessLookupError):
                pass
            if time.monotonic() > deadline:
                sig = "SIGKILL"
            time.sleep(0.05)
        return self.get(meta["id"])

    def remove(self, ref: str, force: bool = False) -> None:
        """Remove a container: its root, writable layer, log and record (``force``: kill it first)."""
        meta = self.find(ref)
        if meta["status"] in ("running", "paused", "restarting"):
            if not force:
                raise ContainerError(f"container {meta['name']} is {meta['status']}: stop it first or use -f")
            self.stop(meta["id"], timeout=0)
        self._remove(meta["id"])

    def _remove(self, cid: str) -> None:
        d = self.dir / cid
        c = rt.Container(self.runc, cid)
        if c.exists():
            rt.delete(c, force=True)
        root = d / "bundle" / "rootfs"
        if os.path.ismount(root):
            L.umount2(str(root), L.MNT_DETACH)
        shutil.rmtree(d, ignore_errors=True)

    def exec(self, ref: str, command: list[str], env: list[str] = (), user: str | None = None,
             workdir: str | None = None, detach: bool = False) -> int:
        """Run ``command`` in the running container with our standard streams; its exit status."""
        meta = self.find(ref)
        if meta["status"] != "running":
            raise ContainerError(f"container {meta['name']} is {meta['status']}: exec needs a running container")
        spec = json.loads((self.dir / meta["id"] / "bundle" / "config.json").read_text())
        proc = dict(spec["process"], args=list(command), terminal=False)
        proc["env"] = proc["env"] + list(env)
        if user is not None:
            uid, gid = _user(user)
            proc["user"] = {"uid": uid, "gid": gid}
        if workdir:
            proc["cwd"] = workdir
        return rt.exec_in(rt.Container(self.runc, meta["id"]), proc, detach=detach,
                          seccomp=spec.get("linux", {}).get("seccomp"))

    def pause(self, ref: str, paused: bool) -> None:
        """Freeze or thaw the container's processes."""
        rt.pause(rt.Container(self.runc, self.find(ref)["id"]), paused)

    def processes(self, ref: str) -> list[int]:
        """The container's processes (host PIDs), init first."""
        meta = self.find(ref)
        c = rt.Container(self.runc, meta["id"])
        return c.pids(c.load()) if c.exists() else []

    def stats(self, ref: str, interval: float = 0.5) -> dict[str, Any]:
        """Memory use and limit, CPU use over ``interval`` seconds, processes, CPU throttling: from the
        container's cgroups."""
        meta = self.find(ref)
        if meta["status"] not in ("running", "paused"):
            raise ContainerError(f"container {meta['name']} is {meta['status']}: no statistics")
        cg = rt.Container(self.runc, meta["id"]).load().get("_cgroups", {})
        t0, u0 = time.monotonic(), _cpu_ns(cg)
        time.sleep(interval)
        t1, u1 = time.monotonic(), _cpu_ns(cg)
        mem = _read_int(cg, ("memory", "memory.usage_in_bytes"), ("unified", "memory.current"))
        lim = _read_int(cg, ("memory", "memory.limit_in_bytes"), ("unified", "memory.max"))
        thr = _throttled(cg)
        return {"id": meta["id"], "name": meta["name"], "cpu_percent": round((u1 - u0) / 1e9 / (t1 - t0) * 100, 2),
                "memory_bytes": mem, "memory_limit": lim if lim and lim < 1 << 62 else None,
                "pids": len(self.processes(meta["id"])), "throttled_periods": thr[0], "throttled_ns": thr[1]}

    def inspect(self, ref: str) -> dict[str, Any]:
        """Everything known about a container: its record, the runtime's OCI state, its config.json."""
        meta = self.find(ref)
        c = rt.Container(self.runc, meta["id"])
        out = dict(meta)
        out["oci_state"] = c.oci_state() if c.exists() else None
        out["config"] = json.loads((self.dir / meta["id"] / "bundle" / "config.json").read_text())
        out["log_path"] = str(self.dir / meta["id"] / "log.json")
        return out

    def logs(self, ref: str) -> list[Path]:
        """The container's log files, oldest first."""
        meta = self.find(ref)
        d = self.dir / meta["id"]
        keep = meta.get("log", {}).get("max_file", LOG_KEEP + 1) - 1
        files = [d / f"log.json.{i}" for i in range(keep, 0, -1)] + [d / "log.json"]
        return [f for f in files if f.exists()]


class Monitor:
    """Looks after one container from start to end (and through restarts): creates and starts it through
    the runtime with its output on pipes (or a terminal), writes the log, proxies published ports, waits for
    it, records the exit status and OOM kills, applies the restart policy and ``--rm``."""

    def __init__(self, cs: Containers, cid: str, ready: int | None = None, attached: bool = False) -> None:
        self.cs, self.cid, self.ready, self.attached = cs, cid, ready, attached
        self.dir = cs.dir / cid
        self.log = self.dir / "log.json"
        self.listeners: list[socket.socket] = []
        self.port: str | None = None  # the switch port while the container runs
        opts = cs._load(cid).get("log", {})
        self.log_max = opts.get("max_size", LOG_MAX)
        self.log_keep = opts.get("max_file", LOG_KEEP + 1) - 1  # (rotated files kept besides the current one)

    def run(self) -> int:
        """Run the container until it ends for good; its last exit status."""
        L.prctl(L.PR_SET_CHILD_SUBREAPER, 1)  # init is re-parented to us when the runtime's helper exits
        self.cs._update(self.cid, monitor=os.getpid(), monitor_start=rt._start_time(os.getpid()))
        code = 255
        try:
            while True:
                code = self._once()
                meta = self.cs._load(self.cid)
                pol = meta["restart"]
                again = not meta.get("stop_requested") and (
                    pol["name"] in ("always", "unless-stopped") or pol["name"] == "on-failure" and code != 0
                    and (pol["max"] == 0 or meta["restart_count"] < pol["max"]))
                if not again:
                    break
                self.cs._update(self.cid, state="restarting", restart_count=meta["restart_count"] + 1)
                time.sleep(min(0.1 * 2 ** meta["restart_count"], 5))
        except BaseException as err:
            self._say(f"error {err}")
            self.cs._update(self.cid, state="exited", finished=time.time())
            raise
        finally:
            for s in self.listeners:
                s.close()
        if self.cs._load(self.cid).get("auto_remove"):
            self.cs._remove(self.cid)
        return code

    def _say(self, text: str) -> None:
        if self.ready is not None:
            try:
                os.write(self.ready, (text + "\n").encode())
                os.close(self.ready)
            except OSError:
                pass
            self.ready = None

    def _once(self) -> int:
        """One life of the container: create, start, pump its output, wait; its exit status."""
        meta = self.cs._load(self.cid)
        c = rt.Container(self.cs.runc, self.cid)
        if c.exists():  # what a crashed monitor left
            rt.delete(c, force=True)
        bundle = str(self.dir / "bundle")
        self.vols = [PoolVolumeMount(v) for v in meta.get("pool_volumes", [])]
        try:
            for v in self.vols:
                v.attach()
            return self._run_created(meta, c, bundle)
        finally:
            for v in reversed(self.vols):
                v.detach()

    def _run_created(self, meta: dict[str, Any], c: rt.Container, bundle: str) -> int:
        saved = [os.dup(fd) for fd in (0, 1, 2)]
        pipes: dict[int, str] = {}
        master = None
        try:
            if meta["tty"]:
                master = self._create_with_terminal(bundle)
            else:
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
                pipes = {out_r: "stdout", err_r: "stderr"}
                if not (self.attached and meta["interactive"]):
                    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                os.close(out_w)
                os.close(err_w)
                rt.create(self.cs.runc, self.cid, bundle)
        finally:
            for fd, s in zip((0, 1, 2), saved, strict=True):
                os.dup2(s, fd)
                os.close(s)
        st = c.load()
        pid = st["pid"]
        net = parse_net(meta["net"])
        if net["mode"] != "host":
            _loopback_up(pid)
        if net["mode"] == "switch":
            try:
                self.port = _switch_attach(net, self.cid, meta["name"], pid)
            except BaseException:
                rt.delete(c, force=True)
                raise
        rt.start(c)
        self.cs._update(self.cid, state="running", pid=pid, started=time.time(), exit_code=None, oom_killed=False)
        if not self.listeners:
            self.listeners = [_listen(p) for p in meta["ports"]]
        for lsock, port in zip(self.listeners, meta["ports"], strict=True):
            threading.Thread(target=_proxy_accept, args=(lsock, pid, port["container"]), daemon=True).start()
        self._say("started")
        code = self._pump(pid, pipes, master)
        oom = c.oom(c.load())
        self.cs._update(self.cid, state="exited", exit_code=code, finished=time.time(),
                        oom_killed=bool(oom and oom[0]), oom=oom[1] if oom and oom[0] else None, pid=None)
        if oom and oom[0] and self.attached:
            print(f"virtkit: container {meta['name']} was killed by the OOM killer ({oom[1]})", file=sys.stderr)
        rt.delete(c, force=True)
        if self.port is not None:
            _switch_detach(net["switch"], self.port)
            self.port = None
        return code

    def _create_with_terminal(self, bundle: str) -> int:
        """Create the container with a terminal: its pty master comes back over a console socket."""
        path = tempfile_short("virtkit-console-")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(1)
        try:
            rt.create(self.cs.runc, self.cid, bundle, console_socket=path)
            conn, _ = srv.accept()
            with conn:
                _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
            if not fds:
                raise ContainerError("the container's terminal did not arrive")
            return fds[0]
        finally:
            srv.close()
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)

    def _pump(self, pid: int, pipes: dict[int, str], master: int | None) -> int:
        """Copy the container's output to the log (and our terminal when attached) until it exits; with a
        terminal attached, our keystrokes go to it (raw mode)."""
        fwd = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
        old = {}
        if self.attached:
            for s in fwd:
                old[s] = signal.signal(s, lambda n, f: _signal(pid, n))
        fds = dict(pipes)
        if master is not None:
            fds[master] = "stdout"
        tty_in = self.attached and master is not None and os.isatty(0)
        restore = None
        if tty_in:
            import termios
            import tty

            restore = termios.tcgetattr(0)
            tty.setraw(0, termios.TCSANOW)  # (not TCSAFLUSH: what was typed ahead goes to the container)
        code = None
        try:
            while fds:
                watch = list(fds) + ([0] if tty_in else [])
                r, _, _ = select.select(watch, [], [], 0.2)
                for fd in r:
                    if fd == 0:
                        try:
                            data = os.read(0, 4096)
                        except OSError:  # our terminal is gone
                            data = b""
                        if data:
                            os.write(master, data)
                        else:  # end of our input: stop watching it (the container goes on)
                            tty_in = False
                        continue
                    try:
                        data = os.read(fd, 65536)
                    except OSError:  # EIO: the terminal's other side is closed
                        data = b""
                    if not data:
                        del fds[fd]
                        os.close(fd)
                        continue
                    self._write_log(fds[fd], data)
                    if self.attached:
                        os.write(1 if fds[fd] == "stdout" else 2, data)
                if code is None:
                    code = _reap(pid)
                    if code is not None and master is not None and master in fds:
                        del fds[master]  # (a terminal's master never reads EOF on its own)
                        os.close(master)
            while code is None:
                code = _reap(pid, block=True)
            return code
        finally:
            if restore is not None:
                import termios

                termios.tcsetattr(0, termios.TCSADRAIN, restore)
            for s, h in old.items():
                signal.signal(s, h)

    def _write_log(self, stream: str, data: bytes) -> None:
        """Append JSON lines ({"log", "stream", "time"}: docker's json-file format); a file that would grow
        past the size limit is rotated first (``log.json`` -> ``log.json.1`` -> ...), so it is never empty."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}Z"
        text = data.decode(errors="replace")
        lines = [line + "\n" for line in text.split("\n")]
        lines[-1] = lines[-1][:-1]
        f = open(self.log, "a")
        try:
            size = f.tell()
            for line in lines:
                if not line:
                    continue
                rec = json.dumps({"log": line, "stream": stream, "time": stamp}) + "\n"
                if size and size + len(rec) > self.log_max:  # rotate line by line, as docker's json-file
                    f.close()
                    for i in range(self.log_keep, 1, -1):
                        older = self.dir / f"log.json.{i - 1}"
                        if older.exists():
                            os.replace(older, self.dir / f"log.json.{i}")
                    if self.log_keep:
                        os.replace(self.log, self.dir / "log.json.1")
                    else:
                        self.log.unlink()
                    f = open(self.log, "a")
                    size = 0
                f.write(rec)
                size += len(rec)
        finally:
            f.close()


class PoolVolumeMount:
    """A pool volume's file system for a container: ``virtkit nbd serve`` exports the volume on a Unix socket,
    nbdfuse (libnbd's user-space client) shows it as a file, a loop device over that file is mounted (ext4
    made first on a blank volume). Used while the container runs; the volume stays locked by the NBD server,
    so no VM writes it meanwhile."""

    def __init__(self, v: dict[str, Any]) -> None:
        self.spec, self.dir, self.ro = v["spec"], Path(v["dir"]), v["ro"]
        self.work = self.dir.with_name(self.dir.name + ".nbd")
        self.server: Any = None
        self.loop: str | None = None
        self.fuse = False
        self.fuser: Any = None
        self.mounted = False

    def attach(self) -> None:
        """Export, map, loop, mount; a clear error (and nothing left) when a step fails."""
        import subprocess

        for tool in ("nbdfuse", "losetup", "blkid"):
            if shutil.which(tool) is None:
                raise ContainerError(f"-v {self.spec}: needs {tool} (apt-get install libnbd-bin util-linux)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(exist_ok=True)
        sock = tempfile_short("virtkit-vol-")
        try:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "virtkit.cli", "nbd", "serve", "-k", sock, *(["-r"] if self.ro else []),
                 self.spec], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 30
            while not os.path.exists(sock):
                if self.server.poll() is not None:
                    raise ContainerError(f"-v {self.spec}: the NBD export failed: "
                                         f"{self.server.stderr.read().decode(errors='replace').strip()}")
                if time.monotonic() > deadline:
                    raise ContainerError(f"-v {self.spec}: the NBD export did not start")
                time.sleep(0.05)
            fuse_dir = self.work / "fuse"
            fuse_dir.mkdir(exist_ok=True)
            pidfile = self.work / "fuse.pid"
            pidfile.unlink(missing_ok=True)
            self.fuser = subprocess.Popen(["nbdfuse", "-P", str(pidfile), *(["-r"] if self.ro else []),
                                           str(fuse_dir / "disk"), "--unix", sock], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.fuse = True
            while not pidfile.exists() or not pidfile.read_text().strip():  # written once it serves
                if self.fuser.poll() is not None:
                    raise ContainerError(f"-v {self.spec}: nbdfuse failed: "
                                         f"{self.fuser.stderr.read().decode(errors='replace').strip()}")
                if time.monotonic() > deadline:
                    raise ContainerError(f"-v {self.spec}: nbdfuse did not start")
                time.sleep(0.05)
            self.loop = self._run(["losetup", "--find", "--show", *(["-r"] if self.ro else []),
                                   str(fuse_dir / "disk")], "losetup").strip()
            fs = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", self.loop], capture_output=True,
                                text=True).stdout.strip()
            if not fs:
                if self.ro:
                    raise ContainerError(f"-v {self.spec}: the volume has no file system (mount it once "
                                         "read-write: an empty volume gets ext4)")
                self._run(["mkfs.ext4", "-q", "-F", self.loop], "mkfs.ext4")
            L.mount(self.loop, str(self.dir), fs or "ext4", L.MS_RDONLY if self.ro else 0, None)
            self.mounted = True
        except BaseException:
            self.detach()
            raise
        finally:
            shutil.rmtree(os.path.dirname(sock), ignore_errors=True)

    def _run(self, cmd: list[str], what: str) -> str:
        import subprocess

        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise ContainerError(f"-v {self.spec}: {what} failed: {p.stderr.strip()}")
        return p.stdout

    def detach(self) -> None:
        """Undo what attach did, in reverse (the file system synced and unmounted first)."""
        import subprocess

        if self.mounted:
            L.umount2(str(self.dir), 0)
            self.mounted = False
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True)
            self.loop = None
        if self.fuse:  # (nbdfuse ends when its mount goes; it is never killed: that would lose writes)
            subprocess.run(["umount", str(self.work / "fuse")], capture_output=True)
            try:
                self.fuser.wait(timeout=30)
            except Exception:  # noqa: BLE001
                self.fuser.kill()
            self.fuse = False
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(timeout=10)
            except Exception:  # noqa: BLE001
                self.server.kill()
            self.server = None


def tempfile_short(prefix: str) -> str:
    """A socket path in a new private directory under /tmp (a socket path has at most 107 bytes)."""
    import tempfile

    return os.path.join(tempfile.mkdtemp(prefix=prefix), "sock")


# -- helpers -------------------------------------------------------------------------------------------
def _spec(args: list[str], env: list[str], cwd: str, uid: int, gid: int, tty: bool, read_only: bool,
          hostname: str, mounts: list[dict[str, Any]], net: str, cid: str) -> dict[str, Any]:
    """The config.json of a front-end container: the runtime's defaults with docker's capabilities."""
    from virtkit.containers import spec as specmod

    cfg = specmod.default()
    cfg["process"].update(terminal=tty, args=args, env=env, cwd=cwd, user={"uid": uid, "gid": gid},
                          capabilities={k: list(DOCKER_CAPS) for k in ("bounding", "effective", "permitted")},
                          noNewPrivileges=False)
    cfg["root"]["readonly"] = read_only
    cfg["hostname"] = hostname
    cfg["mounts"] += mounts
    cfg["linux"]["cgroupsPath"] = f"/virtkit/{cid}"  # (resources: the default deny-all device rule stays)
    if parse_net(net)["mode"] == "host":
        cfg["linux"]["namespaces"] = [n for n in cfg["linux"]["namespaces"] if n["type"] != "network"]
    return cfg


def _user(text: str) -> tuple[int, int]:
    """``UID[:GID]`` (numbers; a name would need the image's /etc/passwd read before the root is mounted)."""
    uid, _, gid = str(text).partition(":")
    if not uid.isdigit() or gid and not gid.isdigit():
        raise ConfigError(f"--user {text!r}: expected UID[:GID] as numbers")
    return int(uid), int(gid or uid)


ADJ = ["brave", "calm", "eager", "fond", "keen", "lucid", "merry", "noble", "quiet", "swift", "tidy", "witty"]
NOUN = ["turing", "hopper", "lovelace", "knuth", "ritchie", "thompson", "liskov", "dijkstra", "popek", "goldberg"]


def _pick_name(taken: set[str]) -> str:
    """A free adjective_scientist name (Popek and Goldberg among them)."""
    while True:
        name = f"{secrets.choice(ADJ)}_{secrets.choice(NOUN)}"
        if name not in taken:
            return name


def _alive(pid: int | None, start: int | None) -> bool:
    return bool(pid) and rt._start_time(pid) == start


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pid: int, block: bool = False) -> int | None:
    """Reap our children (orphans of the container re-parented to us too); ``pid``'s exit status (128+signal
    when killed) once it ended, else None."""
    while True:
        try:
            got, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return 255 if block else None
        except InterruptedError:
            continue
        if got == 0:
            return None
        if got == pid:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code


def _enter_netns(pid: int) -> None:
    """Move the calling thread (only it: setns of a network namespace is per thread) into ``pid``'s network
    namespace; sockets it makes then live there."""
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        L.setns(fd, L.CLONE_NEWNET)
    finally:
        os.close(fd)


def _loopback_up(pid: int) -> None:
    """Bring ``lo`` up in the container's network namespace (a thread of ours enters it for the ioctl)."""
    def up() -> None:
        _enter_netns(pid)
        import fcntl

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = struct.pack("16sH14x", b"lo", 0)
            flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))

    t = threading.Thread(target=up)  # (setns of a network namespace applies to the calling thread only)
    t.start()
    t.join()


def _switch_attach(net: dict[str, Any], cid: str, name: str, pid: int) -> str:
    """A TAP port on the switch, moved into the container's network namespace as eth0 (with the address
    asked for, up); the port's name. The switch keeps the TAP's file: frames flow as for a VM's port."""
    import subprocess

    from virtkit.network import control

    if not control.is_running(net["switch"]):
        raise ContainerError(f"--net switch:{net['switch']}: the switch is not running (virtkit net create "
                             f"{net['switch']}, or virtkit net start)")
    ifname = "vkc" + cid[:12]
    port = f"ctr-{name}"[:40]
    control.request(net["switch"], "port_add", spec=f"tap:{ifname}", name=port, access=net.get("vlan"),
                    group=net.get("group"))
    try:
        cmds = [["ip", "link", "set", ifname, "netns", str(pid)]]
        inside = ["nsenter", "-t", str(pid), "-n", "ip", "link"]
        cmds.append(inside + ["set", ifname, "name", "eth0"])
        # a MAC of its own that stays across restarts (neighbours' ARP caches stay right): from the id
        mac = net.get("mac") or "02:" + ":".join(cid[i:i + 2] for i in range(0, 10, 2))
        cmds.append(inside + ["set", "eth0", "address", mac])
        if net.get("ip"):
            cmds.append(["nsenter", "-t", str(pid), "-n", "ip", "addr", "add", net["ip"], "dev", "eth0"])
        cmds.append(inside + ["set", "eth0", "up"])
        for cmd in cmds:
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                raise ContainerError(f"--net switch:{net['switch']}: {' '.join(cmd)}: {p.stderr.strip()}")
    except BaseException:
        _switch_detach(net["switch"], port)
        raise
    return port


def _switch_detach(switch: str, port: str) -> None:
    """Remove the container's port from the switch (its TAP went with the network namespace)."""
    from virtkit.network import control

    try:
        control.request(switch, "port_remove", name=port)
    except VirtkitError:
        pass


def _listen(port: dict[str, Any]) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((port["ip"], port["host"]))
    except OSError as err:
        s.close()
        raise ContainerError(f"-p {port['host']}:{port['container']}: cannot listen on {port['ip']}:"
                             f"{port['host']} ({err.strerror})") from None
    s.listen(64)
    return s


def _proxy_accept(lsock: socket.socket, pid: int, port: int) -> None:
    """Accept on the host's published port; each connection is joined to ``port`` on the container's
    loopback by a thread that enters its network namespace (docker-proxy's job, in user space)."""
    while True:
        try:
            conn, _ = lsock.accept()
        except OSError:
            return
        threading.Thread(target=_proxy_one, args=(conn, pid, port), daemon=True).start()


def _proxy_one(conn: socket.socket, pid: int, port: int) -> None:
    try:
        _enter_netns(pid)
        inner = socket.create_connection(("127.0.0.1", port), timeout=5)
        inner.settimeout(None)
    except OSError:
        conn.close()
        return
    with conn, inner:
        socks = [conn, inner]
        while True:
            r, _, _ = select.select(socks, [], [])
            for s in r:
                data = s.recv(65536)
                if not data:
                    other = inner if s is conn else conn
                    try:
                        other.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    socks.remove(s)
                    if not socks:
                        return
                    continue
                (inner if s is conn else conn).sendall(data)


def _merge_copy(src: Path, dst: Path) -> None:
    """Apply one unpacked layer onto a copied root (the fallback without overlayfs): whiteouts delete."""
    import stat as st

    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target_dir = dst / rel
        try:
            if os.getxattr(dirpath, "trusted.overlay.opaque") == b"y" and rel != ".":
                shutil.rmtree(target_dir, ignore_errors=True)
        except OSError:
            pass
        target_dir.mkdir(parents=True, exist_ok=True)
        for name in dirnames + filenames:
            s, t = os.path.join(dirpath, name), target_dir / name
            info = os.lstat(s)
            if st.S_ISCHR(info.st_mode) and info.st_rdev == 0:
                if t.is_dir() and not t.is_symlink():
                    shutil.rmtree(t)
                elif os.path.lexists(t):
                    t.unlink()
                continue
            if name in dirnames and not os.path.islink(s):
                continue
            if os.path.lexists(t) and not (t.is_dir() and not t.is_symlink()):
                t.unlink()
            if os.path.islink(s):
                os.symlink(os.readlink(s), t)
            else:
                shutil.copy2(s, t, follow_symlinks=False)


def _cpu_ns(cg: dict[str, str]) -> int:
    if "cpuacct" in cg:
        v = _read_int(cg, ("cpuacct", "cpuacct.usage"))
        return v or 0
    try:
        with open(os.path.join(cg["unified"], "cpu.stat")) as f:
            return int(dict(line.split() for line in f)["usage_usec"]) * 1000
    except (KeyError, OSError, ValueError):
        return 0


def _read_int(cg: dict[str, str], *choices: tuple[str, str]) -> int | None:
    for ctrl, name in choices:
        if ctrl in cg:
            try:
                with open(os.path.join(cg[ctrl], name)) as f:
                    text = f.read().strip()
                return 1 << 62 if text == "max" else int(text)
            except (OSError, ValueError):
                continue
    return None


def _throttled(cg: dict[str, str]) -> tuple[int, int]:
    """(throttled periods, throttled time in ns) of the CPU controller."""
    for ctrl in ("cpu", "unified"):
        if ctrl in cg:
            try:
                with open(os.path.join(cg[ctrl], "cpu.stat")) as f:
                    d = dict(line.split() for line in f)
                ns = int(d.get("throttled_time", 0)) or int(d.get("throttled_usec", 0)) * 1000
                return int(d.get("nr_throttled", 0)), ns
            except (OSError, ValueError):
                continue
    return 0, 0
