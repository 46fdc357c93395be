"""``virtkit-runc`` / ``virtkit runtime``: an OCI runtime with runc's command line, so tools that drive runc can
drive it. ``create`` builds the container (namespaces, cgroups, the root file system) and leaves its first
process waiting on the exec FIFO; ``start`` lets it ``execve`` the program; ``state``, ``kill``, ``delete``,
``run`` (create + start + wait), ``list``, ``spec``, ``features``.

Kept lean on purpose (the standard library, ctypes, no NumPy, no virtkit CLI): a container's start-up is
dominated by the runtime's own start-up.

Process tree of ``create``: the runtime forks a helper that joins/unshares the namespaces and forks the
container's init (PID 1 when there is a PID namespace); the helper reports init's PID and exits, init
builds the container (``containers/init.py``), says "ready" on the status pipe and blocks opening the exec
FIFO for writing until ``start`` opens it for reading.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
from typing import Any

from virtkit.containers import linux as L
from virtkit.containers import spec as specmod
from virtkit.errors import ConfigError, VirtkitError

DEFAULT_ROOT = "/run/virtkit-runc"  # (an unprivileged user's: $XDG_RUNTIME_DIR/virtkit-runc)
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
VERSION = "1.1.0"  # the runtime-spec version this runtime implements
SIGNALS = {s.name: s for s in signal.Signals}


class RuntimeError_(VirtkitError):
    """A container operation that cannot be done (no such container, wrong state...)."""


# ---- state --------------------------------------------------------------------------------------------------
def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (the process's start time): a PID reused later has another; None when gone
    or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


#: per layout: where the OOM kills, the memory limit and the peak usage are counted
OOM_FILES = {"memory": ("memory.oom_control", "memory.limit_in_bytes", "memory.max_usage_in_bytes"),
             "unified": ("memory.events", "memory.max", "memory.peak")}


class Container:
    """One container's directory under the runtime root: ``state.json`` and, until ``start``, ``exec.fifo``."""

    def __init__(self, root: str, cid: str) -> None:
        if not ID_RE.match(cid):
            raise ConfigError(f"container id {cid!r}: use letters, digits, '_', '.', '+', '-' (at most 128)")
        self.id = cid
        self.dir = os.path.join(root, cid)
        self.state_path = os.path.join(self.dir, "state.json")
        self.fifo = os.path.join(self.dir, "exec.fifo")

    def exists(self) -> bool:
        return os.path.exists(self.state_path)

    def load(self) -> dict[str, Any]:
        try:
            with open(self.state_path) as f:
                return json.load(f)
        except FileNotFoundError:
            raise RuntimeError_(f"container {self.id!r} does not exist") from None
        except (OSError, json.JSONDecodeError) as err:
            raise RuntimeError_(f"container {self.id!r}: its state cannot be read: {err}") from None

    def save(self, st: dict[str, Any]) -> None:
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(st, f)
        os.replace(tmp, self.state_path)

    def status(self, st: dict[str, Any]) -> str:
        """created, running, paused or stopped, as the process and the FIFO say now."""
        pid = st.get("pid", 0)
        if not pid or _start_time(pid) != st.get("_start"):
            return "stopped"
        if os.path.exists(self.fifo):
            return "created"
        cg = st.get("_cgroups", {})
        try:
            if "freezer" in cg:
                with open(os.path.join(cg["freezer"], "freezer.state")) as f:
                    if f.read().strip() == "FROZEN":
                        return "paused"
            elif "unified" in cg:
                with open(os.path.join(cg["unified"], "cgroup.freeze")) as f:
                    if f.read().strip() == "1":
                        return "paused"
        except OSError:
            pass
        return "running"

    def pids(self, st: dict[str, Any]) -> list[int]:
        """Every process of the container (its cgroup's), init first."""
        cg = st.get("_cgroups", {})
        for key in ("pids", "memory", "freezer", "unified", "cpu"):
            if key in cg:
                try:
                    with open(os.path.join(cg[key], "cgroup.procs")) as f:
                        found = [int(x) for x in f.read().split()]
                except OSError:
                    continue
                return sorted(found, key=lambda p: (p != st.get("pid"), p))
        return [st["pid"]] if self.status(st) != "stopped" else []

    def oom(self, st: dict[str, Any]) -> tuple[int, str] | None:
        """(OOM kills in the container's memory cgroup, "limit L bytes, peak usage P bytes"), or None."""
        cg = st.get("_cgroups", {})
        key = "memory" if "memory" in cg else "unified" if "unified" in cg else None
        if key is None:
            return None
        events, limit, peak = (os.path.join(cg[key], n) for n in OOM_FILES[key])
        try:
            with open(events) as f:
                kills = int(dict(line.split() for line in f).get("oom_kill", 0))
            with open(limit) as f:
                lim = f.read().strip()
        except (OSError, ValueError):
            return None
        try:
            with open(peak) as f:
                top = f.read().strip()
        except OSError:  # (memory.peak is newer than some v2 kernels)
            top = "?"
        return kills, f"memory limit {lim} bytes, peak usage {top} bytes"

    def oci_state(self) -> dict[str, Any]:
        """The OCI state document (runtime-spec "State"); a stopped container the OOM killer ended also has
        ``"oomKilled": true`` (a virtkit addition, as ``docker inspect``'s State.OOMKilled)."""
        st = self.load()
        status = self.status(st)
        out = {"ociVersion": VERSION, "id": self.id, "status": status, "pid": st["pid"] if status != "stopped"
               else 0, "bundle": st["bundle"], "rootfs": st.get("rootfs", ""), "created": st["created"],
               "annotations": st.get("annotations", {})}
        if not out["annotations"]:
            del out["annotations"]
        oom = self.oom(st) if status == "stopped" else None
        if oom and oom[0]:
            out["oomKilled"] = True
        return out


# ---- cgroups ------------------------------------------------------------------------------------------------
def _cgroup_layout() -> str:
    """"v2" (one unified hierarchy) or "v1" (per-controller hierarchies; the hybrid layout included)."""
    return "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1"


def _write(path: str, value: str, what: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as err:
        raise RuntimeError_(f"cgroup {what}: cannot write {value!r} to {path}: {err.strerror}") from None


def cgroup_path(cfg: dict[str, Any], cid: str) -> str:
    """The container's cgroup, relative to each hierarchy's root: ``linux.cgroupsPath`` or /virtkit/ID."""
    rel = cfg.get("linux", {}).get("cgroupsPath") or f"/virtkit/{cid}"
    if ":" in rel:  # systemd's slice:prefix:name form: the name only
        rel = "/virtkit/" + rel.rsplit(":", 1)[-1]
    return "/" + "/".join(p for p in rel.split("/") if p not in ("", ".", ".."))


def _cpuset_init(base: str, rel: str) -> None:
    """A new cpuset cgroup has no CPUs and no memory nodes: copy them down from its parent, level by level."""
    path = base
    for part in rel.strip("/").split("/"):
        parent, path = path, os.path.join(path, part)
        os.makedirs(path, exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            with open(os.path.join(path, name)) as f:
                if f.read().strip():
                    continue
            with open(os.path.join(parent, name)) as f:
                _write(os.path.join(path, name), f.read().strip() or "\n", "cpuset")


#: the v1 hierarchies a container joins, limited or not (as runc does)
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "cpuset", "freezer", "blkio", "devices")


def _limit_files(res: dict[str, Any], v2: bool) -> list[tuple[str, str, str]]:
    """(controller, file, value) of each limit ``linux.resources`` sets, in the layout's names (on v2 the
    controller is "unified"): the one translation ``create`` and ``update`` share."""
    # a 0 means "not set" (runc's reading: containerd and docker send whole resource blocks with zeros)
    mem = {k: v for k, v in res.get("memory", {}).items() if v != 0}
    cpu = {k: v for k, v in res.get("cpu", {}).items() if v not in (0, "")}
    pids = {k: v for k, v in res.get("pids", {}).items() if v != 0}
    out: list[tuple[str, str, str]] = []
    if v2:
        if "limit" in mem:
            out.append(("unified", "memory.max", str(mem["limit"]) if mem["limit"] >= 0 else "max"))
        if "limit" in pids:
            out.append(("unified", "pids.max", str(pids["limit"]) if pids["limit"] > 0 else "max"))
        if "quota" in cpu:
            out.append(("unified", "cpu.max", f"{cpu['quota'] if cpu['quota'] > 0 else 'max'} "
                                              f"{cpu.get('period', 100000)}"))
        return out
    if "limit" in mem:
        out.append(("memory", "memory.limit_in_bytes", str(mem["limit"])))
    if "limit" in pids:
        out.append(("pids", "pids.max", str(pids["limit"]) if pids["limit"] > 0 else "max"))
    for key, name in (("period", "cpu.cfs_period_us"), ("quota", "cpu.cfs_quota_us"), ("shares", "cpu.shares")):
        if key in cpu:
            out.append(("cpu", name, str(cpu[key])))
    for key in ("cpus", "mems"):
        if key in cpu:
            out.append(("cpuset", f"cpuset.{key}", cpu[key]))
    weight = res.get("blockIO", {}).get("weight", 0)
    if weight:
        out.append(("blkio", "blkio.weight" if os.path.exists("/sys/fs/cgroup/blkio/blkio.weight")
                    else "blkio.bfq.weight", str(weight)))
    return out


#: what runc 1.1 allows after the configuration's own device rules (its AllowedDevices): mknod of anything,
#: the default devices, the pty master and slaves, /dev/net/tun
ALLOWED_DEVICES = ("c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                   "c 5:0 rwm", "c 5:2 rwm", "c 10:200 rwm", "c 136:* rwm")


def device_rules(res: dict[str, Any]) -> list[tuple[str, str]]:
    """(devices.allow or devices.deny, rule) for the v1 devices controller: ``linux.resources.devices`` in
    order, then what every container may use (:data:`ALLOWED_DEVICES`), as runc writes them."""
    out = []
    for i, r in enumerate(res.get("devices", [])):
        kind = r.get("type", "a")
        if kind not in ("a", "b", "c"):
            raise ConfigError(f"linux.resources.devices[{i}].type: {kind!r} is not a, b or c")
        access = r.get("access", "rwm")
        if not access or set(access) - set("rwm"):
            raise ConfigError(f"linux.resources.devices[{i}].access: {access!r} is not made of r, w, m")
        major, minor = r.get("major"), r.get("minor")
        if kind == "a" and major is None and minor is None:
            rule = "a"
        else:
            rule = (f"{kind} {'*' if major is None or major < 0 else major}:"
                    f"{'*' if minor is None or minor < 0 else minor} {access}")
        out.append(("devices.allow" if r.get("allow") else "devices.deny", rule))
    if out:
        out += [("devices.allow", rule) for rule in ALLOWED_DEVICES]
    return out


def setup_cgroups(cfg: dict[str, Any], cid: str, pid: int) -> dict[str, str]:
    """Put ``pid`` in the container's cgroups with the limits of ``linux.resources``; the directories made."""
    rel = cgroup_path(cfg, cid)
    v2 = _cgroup_layout() == "v2"
    limits = _limit_files(cfg.get("linux", {}).get("resources", {}), v2)
    made: dict[str, str] = {}
    for ctrl in ("unified",) if v2 else V1_CONTROLLERS:
        base = "/sys/fs/cgroup" if v2 else f"/sys/fs/cgroup/{ctrl}"
        if not os.path.isdir(base) and ctrl in ("cpu", "cpuacct"):
            base = "/sys/fs/cgroup/cpu,cpuacct"
        files = [(name, value) for c, name, value in limits if c == ctrl]
        if ctrl == "devices":  # (on v2 the rules are an eBPF program: not written there yet)
            files = device_rules(cfg.get("linux", {}).get("resources", {}))
        if not os.path.isdir(base):
            if files:
                raise RuntimeError_(f"linux.resources: the {ctrl} cgroup controller is not mounted on this host "
                                    f"(looked at {base})")
            continue
        path = base + rel
        if ctrl == "cpuset":
            _cpuset_init(base, rel)
        os.makedirs(path, exist_ok=True)
        made[ctrl] = path
        for name, value in files:
            _write(os.path.join(path, name), value, f"{ctrl} {name}")
        _write(os.path.join(path, "cgroup.procs"), str(pid), ctrl)
    return made


def remove_cgroups(made: dict[str, str]) -> None:
    for path in made.values():
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:  # processes still leaving
                time.sleep(0.01)


# ---- commands -----------------------------------------------------------------------------------------------
def _ns_flags(cfg: dict[str, Any]) -> tuple[int, list[tuple[str, int]]]:
    """(flags to unshare, [(path, flag) to join])."""
    flags, joins = 0, []
    for ns in cfg.get("linux", {}).get("namespaces", []):
        flag = L.NAMESPACES[ns["type"]]
        if ns.get("path"):
            joins.append((ns["path"], flag))
        else:
            flags |= flag
    return flags, joins


def _id_maps(cfg: dict[str, Any]) -> tuple[str, str]:
    """The uid_map and gid_map contents of a user namespace: the configuration's, or the caller as root."""
    lin = cfg.get("linux", {})
    out = []
    for key, own in (("uidMappings", os.getuid()), ("gidMappings", os.getgid())):
        rows = lin.get(key) or [{"containerID": 0, "hostID": own, "size": 1}]
        for r in rows:
            if r["size"] <= 0 or r["containerID"] < 0 or r["hostID"] < 0:
                raise ConfigError(f"linux.{key}: {r} is not a mapping")
        out.append("".join(f"{r['containerID']} {r['hostID']} {r['size']}\n" for r in rows))
    return out[0], out[1]


def _host_id(id_map: str) -> int:
    """The host id the container's 0 maps to (the first row whose range holds 0)."""
    for row in id_map.splitlines():
        inside, host, size = (int(v) for v in row.split())
        if inside <= 0 < inside + size:
            return host - inside
    raise ConfigError("user namespace: nothing maps to the container's root (uid/gid 0)")


def _map_ids(helper: int, uid_map: str, gid_map: str) -> None:
    """Write the helper's user namespace's maps (an unprivileged caller must deny setgroups first)."""
    try:
        if os.geteuid() != 0:
            with open(f"/proc/{helper}/setgroups", "w") as f:
                f.write("deny")
        for name, text in (("uid_map", uid_map), ("gid_map", gid_map)):
            with open(f"/proc/{helper}/{name}", "w") as f:
                f.write(text)
    except OSError as err:
        raise RuntimeError_(f"user namespace: cannot write the id maps ({err.strerror}); an unprivileged user "
                            "can map only their own uid and gid (newuidmap/newgidmap are not used)") from None


def create(root: str, cid: str, bundle: str, pid_file: str | None = None, console_socket: str | None = None,
           foreground: bool = False) -> tuple[Container, int]:
    """Build the container, its init process waiting for ``start``; (container, init's PID)."""
    from virtkit.containers import init as initmod

    bundle = os.path.abspath(bundle)
    cfg = specmod.load(bundle)
    c = Container(root, cid)
    flags, joins = _ns_flags(cfg)
    userns = bool(flags & L.CLONE_NEWUSER)
    maps = _id_maps(cfg) if userns else ("", "")
    cfg["_userns"] = userns
    cfg["_id"] = cid
    if os.geteuid() != 0 and cfg.get("linux", {}).get("resources", {}).keys() - {"devices"}:
        raise ConfigError("linux.resources: limits need cgroups a rootless container cannot write here")
    if not CGROUPS and cfg.get("linux", {}).get("resources", {}).keys() - {"devices"}:
        raise ConfigError("linux.resources: limits need cgroups, and --cgroup-manager=disabled turns them off")
    if cfg["process"].get("terminal") and console_socket is None and not foreground:
        raise ConfigError("process.terminal: a detached container with a terminal needs --console-socket")
    console = None
    if console_socket is not None:
        console = _connect_console(console_socket)
    os.makedirs(root, mode=0o700, exist_ok=True)
    try:
        os.mkdir(c.dir, 0o700)
    except FileExistsError:
        raise RuntimeError_(f"container {cid!r} already exists") from None
    made: dict[str, str] = {}
    pid, gwr = 0, -1
    try:
        os.mkfifo(c.fifo, 0o600)
        if userns:  # the container's root opens it: it must be theirs (as runc does)
            os.chown(c.fifo, _host_id(maps[0]), _host_id(maps[1]))
        fifo_fd = os.open(c.fifo, os.O_PATH | os.O_CLOEXEC)  # (init reopens it: no path lookup as its user)
        join_fds = [(os.open(path, os.O_RDONLY | os.O_CLOEXEC), flag) for path, flag in joins]
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        grd, gwr = os.pipe2(os.O_CLOEXEC)  # "go": the cgroups are ready (init is in them before it builds)
        mrd, mwr = os.pipe2(os.O_CLOEXEC)  # "mapped": the helper's user namespace has its id maps
        cfg["_cgroup_path"] = cgroup_path(cfg, cid)
        helper = os.fork()
        if helper == 0:  # the helper: into the namespaces, then fork init
            os.close(rfd)
            os.close(gwr)
            os.close(mwr)
            try:
                for fd, flag in join_fds:
                    L.setns(fd, flag)
                if userns:  # first the user namespace alone: the runtime maps it, then we are root in it
                    L.unshare(L.CLONE_NEWUSER)
                    os.write(wfd, b"userns\n")
                    if os.read(mrd, 1) != b"m":
                        os._exit(1)
                    os.setresgid(0, 0, 0)
                    os.setresuid(0, 0, 0)
                L.unshare(flags & ~L.CLONE_NEWUSER)
                init = os.fork()
                if init == 0:
                    _init_child(cfg, bundle, fifo_fd, wfd, grd, console, initmod)
                os.write(wfd, f"pid {init}\n".encode())
                os._exit(0)
            except BaseException as err:  # noqa: BLE001 (the helper must never return into the runtime)
                os.write(wfd, f"error {err}\n".encode()[:4000])
                os._exit(1)
        os.close(wfd)
        os.close(grd)
        os.close(mrd)
        os.close(fifo_fd)
        if console is not None:
            console.close()
        for fd, _ in join_fds:
            os.close(fd)
        text = ""
        with os.fdopen(rfd, "rb") as r:
            while True:
                line = r.readline()
                if not line:
                    break
                text = line.decode(errors="replace").strip()
                if text == "userns":
                    _map_ids(helper, *maps)
                    os.write(mwr, b"m")
                elif text.startswith("pid "):
                    pid = int(text[4:])
                    made = setup_cgroups(cfg, cid, pid) if os.geteuid() == 0 and CGROUPS else {}
                    hooks = cfg.get("hooks", {})
                    for kind in ("createRuntime", "prestart"):  # in the runtime's namespaces, before pivot_root
                        run_hooks(hooks, kind, _hook_state(cid, pid, bundle, cfg, "creating"))
                    os.write(gwr, b"g")
                    os.close(gwr)
                    gwr = -1
                elif text.startswith("error "):
                    raise RuntimeError_(f"container {cid!r}: {text[6:]}")
                elif text == "ready":
                    break
        if gwr >= 0:
            os.close(gwr)
        os.close(mwr)
        os.waitpid(helper, 0)
        if not pid or text != "ready":
            raise RuntimeError_(f"container {cid!r}: its init process ended during set-up")
        st = {"id": cid, "pid": pid, "_start": _start_time(pid), "bundle": bundle, "created": _now(),
              "rootfs": os.path.join(bundle, cfg["root"]["path"]) if not os.path.isabs(cfg["root"]["path"])
              else cfg["root"]["path"], "annotations": cfg.get("annotations", {}), "_cgroups": made,
              "_hooks": cfg.get("hooks", {})}
        c.save(st)
        if pid_file:
            tmp = pid_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(pid))
            os.replace(tmp, pid_file)
        return c, pid
    except BaseException:
        if gwr >= 0:
            os.close(gwr)  # an init still waiting for "go" reads EOF and ends
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for _ in range(500):  # it must leave its cgroups before they can go
                if _start_time(pid) is None:
                    break
                time.sleep(0.002)
        _teardown(c, made)
        raise


def _init_child(cfg: dict[str, Any], bundle: str, fifo_fd: int, wfd: int, go: int, console: Any,
                initmod: Any) -> None:
    """The container's init: build the root, say ready, wait for start, become the program (never returns)."""
    try:
        if os.read(go, 1) != b"g":  # the runtime puts us in the cgroups first (or gave up)
            os._exit(127)
        os.close(go)
        sc = cfg.get("linux", {}).get("seccomp")
        seccomp = L.Seccomp(sc) if sc else None  # built while the host's libseccomp is in reach
        if cfg["process"].get("terminal"):
            os.setsid()
        hooks = cfg.get("hooks", {})
        state = None
        if hooks.get("createContainer") or hooks.get("startContainer"):
            import subprocess  # noqa: F401  (the hooks need it after pivot_root, where the host's library is gone)

            host_pid = int(os.readlink("/proc/self"))  # (the host's /proc is still mounted: our PID out there)
            state = _hook_state(cfg["_id"], host_pid, bundle, cfg, "creating")
        before_pivot = None
        if hooks.get("createContainer"):  # in the container's namespaces, before pivot_root (runtime spec)
            def before_pivot() -> None:
                run_hooks(hooks, "createContainer", state)
        initmod.build_root(cfg, bundle, before_pivot)
        if console is not None:
            _console(console)
        os.write(wfd, b"ready\n")
        w = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)  # blocks until start reads
        os.write(w, b"0")
        os.close(w)
        os.close(fifo_fd)
        if hooks.get("startContainer"):  # in the container, its paths, before the program (runtime spec)
            run_hooks(hooks, "startContainer", dict(state, status="created"))
        initmod.become_process(cfg, seccomp)
    except BaseException as err:  # noqa: BLE001
        msg = str(err) if not isinstance(err, OSError) or not err.filename else f"{err.filename}: {err.strerror}"
        try:
            os.write(wfd, f"error {msg}\n".encode()[:4000])
        except OSError:  # after "ready" nobody reads the pipe: the program's stderr gets it
            try:
                os.write(2, f"virtkit-runc: error: container init: {msg}\n".encode())
            except OSError:
                pass
        os._exit(127)


def _connect_console(path: str) -> Any:
    """A connection to ``--console-socket``, made now, with the modules :func:`_console` needs imported: in
    the container (after pivot_root or setns) the host's paths and Python's library are out of reach."""
    import fcntl  # noqa: F401
    import socket
    import struct  # noqa: F401
    import termios  # noqa: F401

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError as err:
        s.close()
        raise ConfigError(f"--console-socket {path}: {err.strerror}") from None
    return s


def _console(s: Any) -> None:
    """A pty in the container: the master goes to ``--console-socket`` (SCM_RIGHTS over the socket ``s``,
    connected before pivot_root), the slave is stdio."""
    import fcntl
    import socket
    import struct
    import termios

    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, termios.TIOCSPTLCK if hasattr(termios, "TIOCSPTLCK") else 0x40045431, struct.pack("i", 0))
    n = struct.unpack("I", fcntl.ioctl(master, 0x80045430, b"\0" * 4))[0]  # TIOCGPTN
    slave = os.open(f"/dev/pts/{n}", os.O_RDWR | os.O_NOCTTY)
    socket.send_fds(s, [f"/dev/pts/{n}".encode()], [master])
    s.close()
    os.close(master)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def start(c: Container) -> None:
    """Let the created container's init execve the program."""
    st = c.load()
    status = c.status(st)
    if status != "created":
        raise RuntimeError_(f"container {c.id!r} is {status}: only a created container starts")
    fd = os.open(c.fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if os.read(fd, 1):
                    break
            except BlockingIOError:
                pass
            if _start_time(st["pid"]) != st.get("_start"):
                raise RuntimeError_(f"container {c.id!r}: its init process is gone")
            if time.monotonic() > deadline:
                raise RuntimeError_(f"container {c.id!r}: its init process did not take the start")
            time.sleep(0.0005)
    finally:
        os.close(fd)
    os.unlink(c.fifo)
    hooks = st.get("_hooks", {})
    if hooks.get("poststart"):
        try:
            run_hooks(hooks, "poststart", _hook_state(c.id, st["pid"], st["bundle"], st, "running"))
        except RuntimeError_ as err:  # the container runs: a failed poststart hook is a warning (runtime spec)
            print(f"virtkit-runc: warning: {err}", file=sys.stderr)


def kill(c: Container, sig: str = "SIGTERM") -> None:
    """Send ``sig`` (a name, with or without SIG, or a number) to the container's init."""
    st = c.load()
    name = sig.upper()
    if name.isdigit():
        num = int(name)
        if num not in {int(s) for s in signal.Signals}:
            raise ConfigError(f"signal {sig!r}: no such signal")
    else:
        s = SIGNALS.get(name) or SIGNALS.get("SIG" + name)
        if s is None:
            raise ConfigError(f"signal {sig!r}: no such signal")
        num = int(s)
    if c.status(st) == "stopped":
        raise RuntimeError_(f"container {c.id!r} is not running")
    os.kill(st["pid"], num)


def _teardown(c: Container, made: dict[str, str]) -> None:
    remove_cgroups(made)
    for name in ("exec.fifo", "state.json", "state.json.tmp"):
        try:
            os.unlink(os.path.join(c.dir, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(c.dir)
    except OSError:
        pass


def delete(c: Container, force: bool = False) -> None:
    """Remove a stopped container (``force``: kill it first)."""
    st = c.load()
    status = c.status(st)
    if status != "stopped":
        if status == "running" and not force:
            raise RuntimeError_(f"container {c.id!r} is running: stop it first or use --force")
        os.kill(st["pid"], signal.SIGKILL)
        for _ in range(500):
            if _start_time(st["pid"]) != st.get("_start"):
                break
            time.sleep(0.002)
    hooks = st.get("_hooks", {})
    if hooks.get("poststop"):
        try:
            run_hooks(hooks, "poststop", _hook_state(c.id, 0, st["bundle"], st, "stopped"))
        except RuntimeError_ as err:
            print(f"virtkit-runc: warning: {err}", file=sys.stderr)
    _teardown(c, st.get("_cgroups", {}))


def run(root: str, cid: str, bundle: str, pid_file: str | None, console_socket: str | None, detach: bool,
        keep: bool) -> int:
    """create + start; in the foreground, wait for the program and return its exit status (128+signal), then
    delete the container (``keep``: leave it stopped)."""
    if not detach:
        L.prctl(L.PR_SET_CHILD_SUBREAPER, 1)  # init is reparented to us when its helper exits: we can wait
    c, pid = create(root, cid, bundle, pid_file, console_socket, foreground=not detach)
    try:
        start(c)
    except BaseException:
        delete(c, force=True)
        raise
    if detach:
        return 0
    fwd = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGWINCH)
    for s in fwd:
        signal.signal(s, lambda n, f: os.kill(pid, n))
    code = 255
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if got == pid:
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
            break
    oom = c.oom(c.load())
    if oom and oom[0]:
        print(f"virtkit-runc: container {c.id!r} was killed by the OOM killer ({oom[1]})", file=sys.stderr)
    if not keep:
        delete(c, force=True)
    return code


def _hook_state(cid: str, pid: int, bundle: str, cfg: dict[str, Any], status: str) -> dict[str, Any]:
    st = {"ociVersion": VERSION, "id": cid, "status": status, "pid": pid, "bundle": bundle}
    if cfg.get("annotations"):
        st["annotations"] = cfg["annotations"]
    return st


def run_hooks(hooks: dict[str, Any], kind: str, state: dict[str, Any]) -> None:
    """Run the ``kind`` hooks in order, each with the container's state JSON on stdin (runtime spec "Hooks");
    RuntimeError_ naming the hook when one fails or overruns its timeout."""
    todo = hooks.get(kind, [])
    if not todo:
        return
    import subprocess

    data = json.dumps(state).encode()
    for h in todo:
        path = h.get("path", "")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise ConfigError(f"hooks.{kind}: path {path!r} must be an absolute path")
        args = h.get("args") or [path]
        env = dict(e.split("=", 1) for e in h.get("env", []) if "=" in e)
        try:
            p = subprocess.run(args, executable=path, input=data, env=env, capture_output=True,
                               timeout=h.get("timeout"))
        except subprocess.TimeoutExpired:
            raise RuntimeError_(f"hooks.{kind}: {path} did not finish in {h.get('timeout')} s") from None
        except OSError as err:
            raise RuntimeError_(f"hooks.{kind}: {path}: {err.strerror}") from None
        if p.returncode != 0:
            raise RuntimeError_(f"hooks.{kind}: {path} exited with {p.returncode}: "
                                f"{p.stderr.decode(errors='replace').strip()[-300:]}")


def pause(c: Container, paused: bool) -> None:
    """Freeze (or thaw) every process of the container (the freezer cgroup, or cgroup.freeze on v2)."""
    st = c.load()
    status = c.status(st)
    want = "running" if paused else "paused"
    if status != want:
        raise RuntimeError_(f"container {c.id!r} is {status}: only a {want} container can be "
                            f"{'paused' if paused else 'resumed'}")
    cg = st.get("_cgroups", {})
    if "freezer" in cg:
        _write(os.path.join(cg["freezer"], "freezer.state"), "FROZEN" if paused else "THAWED", "freezer")
        for _ in range(1000):
            with open(os.path.join(cg["freezer"], "freezer.state")) as f:
                if f.read().strip() == ("FROZEN" if paused else "THAWED"):
                    return
            time.sleep(0.001)
        raise RuntimeError_(f"container {c.id!r}: the freezer did not settle")
    if "unified" in cg:
        _write(os.path.join(cg["unified"], "cgroup.freeze"), "1" if paused else "0", "freeze")
        return
    raise RuntimeError_(f"container {c.id!r}: no freezer cgroup on this host")


def exec_in(c: Container, process: dict[str, Any], detach: bool = False, seccomp: dict | None = None,
            pid_file: str | None = None, console_socket: str | None = None) -> int:
    """Run another process in the running container: its namespaces, cgroups, root and the process's own
    user, capabilities and environment; its exit status (0 at once with ``detach``). ``pid_file`` gets its
    host PID (containerd's shim waits on it); with ``process.terminal`` its pty master goes to
    ``console_socket``."""
    from virtkit.containers import init as initmod

    st = c.load()
    if c.status(st) != "running":
        raise RuntimeError_(f"container {c.id!r} is {c.status(st)}: exec needs a running container")
    pid = st["pid"]
    fds = []
    for name in ("user", "ipc", "uts", "net", "pid", "cgroup", "mnt"):  # the mount namespace last: it moves root
        try:
            if os.stat(f"/proc/{pid}/ns/{name}").st_ino != os.stat(f"/proc/self/ns/{name}").st_ino:
                fds.append(os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC))
        except FileNotFoundError:
            continue
    cgs = list(st.get("_cgroups", {}).values())
    filt = L.Seccomp(seccomp) if seccomp else None  # (the container's profile applies to its new process too)
    console = None
    if process.get("terminal"):
        if console_socket is None:
            raise ConfigError("exec: process.terminal needs --console-socket")
        console = _connect_console(console_socket)
    prd, pwr = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        try:
            os.close(prd)
            for path in cgs:
                with open(os.path.join(path, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            for fd in fds:
                L.setns(fd, 0)
            grand = os.fork()  # (the PID namespace applies to children)
            if grand == 0:
                if console is not None:
                    os.setsid()
                    _console(console)
                initmod.become_process({"process": process}, filt)
            os.write(pwr, f"{grand}\n".encode())
            os.close(pwr)
            if detach:
                os._exit(0)
            _, status = os.waitpid(grand, 0)
            code = os.waitstatus_to_exitcode(status)
            os._exit(128 - code if code < 0 else code)
        except BaseException as err:  # noqa: BLE001
            try:
                os.write(2, f"virtkit-runc: error: exec: {err}\n".encode())
            except OSError:
                pass
            os._exit(255)
    for fd in fds:
        os.close(fd)
    os.close(pwr)
    if console is not None:
        console.close()
    with os.fdopen(prd, "rb") as r:
        grand = r.readline().strip()
    if pid_file and grand.isdigit():
        tmp = pid_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(grand.decode())
        os.replace(tmp, pid_file)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def update(c: Container, res: dict[str, Any]) -> None:
    """Change a live container's limits (``linux.resources`` shape: memory, pids, cpu)."""
    specmod.check(res, specmod.SHAPE["linux"]["resources"], "resources")
    st = c.load()
    if c.status(st) == "stopped":
        raise RuntimeError_(f"container {c.id!r} is stopped")
    cg = st.get("_cgroups", {})
    for ctrl, name, value in _limit_files(res, "unified" in cg):
        if ctrl not in cg:
            raise RuntimeError_(f"container {c.id!r} has no {ctrl} cgroup on this host")
        _write(os.path.join(cg[ctrl], name), value, f"{ctrl} {name}")


def features() -> dict[str, Any]:
    """The OCI ``features`` document: what this runtime supports."""
    from virtkit.containers.init import MOUNT_FLAGS

    return {"ociVersionMin": "1.0.0", "ociVersionMax": VERSION,
            "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
            "mountOptions": sorted(MOUNT_FLAGS),
            "linux": {"namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "uts"],
                      "capabilities": L.CAPS[:L.last_cap() + 1],
                      "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
                      "seccomp": {"enabled": True, "actions": sorted(L.SCMP_ACTIONS), "operators": sorted(L.SCMP_OPS)},
            "apparmor": {"enabled": False}, "selinux": {"enabled": False}},
            "annotations": {"org.virtkit.runtime": "virtkit-runc"}}


# ---- the command line (runc's) ------------------------------------------------------------------------------
USAGE = """usage: virtkit-runc [--root DIR] [--log FILE] [--log-format text|json] COMMAND [ARGS]

commands:
  create [--bundle DIR] [--pid-file F] [--console-socket S] ID   build the container, ready to start
  start ID                                                       run its program
  run [--bundle DIR] [-d] [--keep] [--pid-file F] ID              create + start (+ wait, + delete)
  state ID                                                       the OCI state JSON
  kill ID [SIGNAL]                                               send a signal (default SIGTERM)
  delete [--force] ID                                            remove it
  list [--format table|json] [-q]                                the containers
  spec [--bundle DIR] [--rootless]                               write a default config.json
  features                                                       what this runtime supports (JSON)
  pause ID / resume ID                                           freeze or thaw every process
  ps [--format table|json] ID [PS-ARGS]                          its processes
  exec [--process F] [-e ENV] [--cwd D] [-u UID[:GID]] [-d] ID [CMD ARGS]   another process inside
  update [-r RESOURCES.json] [--memory N] [--pids-limit N] [--cpu-quota N] ... ID   change its limits
"""


def _parse(argv: list[str], opts: dict[str, str | None], flags: set[str]) -> tuple[dict[str, Any], list[str]]:
    """runc-style options: ``--name value``, ``--name=value``, ``-b value``; the rest positional."""
    out: dict[str, Any] = {}
    pos: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-") and a != "-":
            key, eq, val = a.lstrip("-").partition("=")
            name = opts.get(key, key) if key in opts else key
            if key in flags or name in flags:
                out[name] = True
            elif key in opts:
                if not eq:
                    i += 1
                    if i >= len(argv):
                        raise ConfigError(f"option -{'-' if len(key) > 1 else ''}{key} needs a value")
                    val = argv[i]
                out[opts[key] or key] = val
            else:
                raise ConfigError(f"unknown option {a!r}")
        else:
            pos.append(a)
        i += 1
    return out, pos


#: crun's ``--cgroup-manager=disabled`` turns it off: the container gets no cgroups (and can take no limits)
CGROUPS = True
GLOBAL_OPTS = {"root": None, "log": None, "log-format": None, "cgroup-manager": None, "criu": None,
               "rootless": None}
GLOBAL_FLAGS = {"systemd-cgroup", "debug"}


def main(argv: list[str] | None = None) -> int:
    """The runc-compatible command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    log, log_format = None, "text"
    try:
        # global options come before the command
        g: dict[str, Any] = {}
        while args and args[0].startswith("-"):
            if args[0] in ("-h", "--help"):
                print(USAGE, end="")
                return 0
            if args[0] in ("-v", "--version"):
                print(f"virtkit-runc version 0.1.0\nspec: {VERSION}")
                return 0
            key, eq, val = args[0].lstrip("-").partition("=")
            if key in GLOBAL_FLAGS:
                g[key] = True
                args.pop(0)
                continue
            if key not in GLOBAL_OPTS:
                raise ConfigError(f"unknown global option {args[0]!r}")
            args.pop(0)
            if not eq:
                if not args:
                    raise ConfigError(f"option --{key} needs a value")
                val = args.pop(0)
            g[key] = val
        manager = g.get("cgroup-manager", "cgroupfs")
        if manager not in ("cgroupfs", "systemd", "disabled"):
            raise ConfigError(f"--cgroup-manager {manager!r}: cgroupfs, systemd or disabled")
        global CGROUPS  # noqa: PLW0603 (one command per process: the global option sets it once)
        CGROUPS = manager != "disabled"
        log, log_format = g.get("log"), g.get("log-format", "text")
        if log_format not in ("text", "json"):
            raise ConfigError(f"--log-format {log_format!r}: text or json")
        root = g.get("root") or (DEFAULT_ROOT if os.geteuid() == 0 else os.path.join(
            os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/virtkit-runc-{os.getuid()}", "virtkit-runc"))
        if not args:
            print(USAGE, end="", file=sys.stderr)
            return 2
        cmd, rest = args[0], args[1:]
        return _command(cmd, rest, root)
    except (VirtkitError, L.SeccompError) as err:
        return _fail(str(err), log, log_format)
    except OSError as err:
        return _fail(f"{err.filename + ': ' if err.filename else ''}{err.strerror or err}", log, log_format)


def _fail(msg: str, log: str | None, log_format: str) -> int:
    print(f"virtkit-runc: error: {msg}", file=sys.stderr)
    if log:
        try:
            with open(log, "a") as f:
                if log_format == "json":
                    f.write(json.dumps({"level": "error", "msg": msg, "time": _now()}) + "\n")
                else:
                    f.write(f"time={_now()} level=error msg={json.dumps(msg)}\n")
        except OSError:
            pass
    return 1


def _exec_split(rest: list[str]) -> int:
    """Where exec's own options end: after the container id (the rest is the command, options and all)."""
    takes = {"--process", "-p", "--cwd", "--env", "-e", "--user", "-u", "--console-socket", "--pid-file",
             "--format", "-f"}
    i = 0
    while i < len(rest):
        a = rest[i]
        if a in takes:
            i += 2
        elif a.startswith("-"):
            i += 1
        else:
            return i + 1
    return i


def _one_id(pos: list[str], cmd: str) -> str:
    if len(pos) != 1:
        raise ConfigError(f"{cmd}: expected one container id, got {len(pos)} arguments")
    return pos[0]


def _command(cmd: str, rest: list[str], root: str) -> int:
    bundle_opts = {"bundle": "bundle", "b": "bundle", "pid-file": "pid-file", "console-socket": "console-socket",
                   "preserve-fds": "preserve-fds", "criu": None}
    if cmd == "create":
        o, pos = _parse(rest, bundle_opts, {"no-pivot", "no-new-keyring"})
        create(root, _one_id(pos, cmd), o.get("bundle", "."), o.get("pid-file"), o.get("console-socket"))
        return 0
    if cmd == "start":
        _, pos = _parse(rest, {}, set())
        start(Container(root, _one_id(pos, cmd)))
        return 0
    if cmd == "run":
        o, pos = _parse(rest, bundle_opts, {"detach", "d", "keep", "no-pivot", "no-new-keyring"})
        return run(root, _one_id(pos, cmd), o.get("bundle", "."), o.get("pid-file"), o.get("console-socket"),
                   bool(o.get("detach") or o.get("d")), bool(o.get("keep")))
    if cmd == "state":
        _, pos = _parse(rest, {}, set())
        print(json.dumps(Container(root, _one_id(pos, cmd)).oci_state(), indent=2))
        return 0
    if cmd == "kill":
        o, pos = _parse(rest, {}, {"all", "a"})
        if not 1 <= len(pos) <= 2:
            raise ConfigError("kill: expected a container id and an optional signal")
        kill(Container(root, pos[0]), pos[1] if len(pos) == 2 else "SIGTERM")
        return 0
    if cmd == "delete":
        o, pos = _parse(rest, {}, {"force", "f"})
        c, force = Container(root, _one_id(pos, cmd)), bool(o.get("force") or o.get("f"))
        if force and not c.exists():  # as runc: a forced delete of what is not there (an aborted create) is done
            shutil.rmtree(c.dir, ignore_errors=True)
            return 0
        delete(c, force)
        return 0
    if cmd == "list":
        o, pos = _parse(rest, {"format": "format", "f": "format"}, {"quiet", "q"})
        rows = []
        if os.path.isdir(root):
            for cid in sorted(os.listdir(root)):
                c = Container(root, cid) if ID_RE.match(cid) else None
                if c is not None and c.exists():
                    rows.append(c.oci_state())
        if o.get("quiet") or o.get("q"):
            print("\n".join(r["id"] for r in rows))
        elif o.get("format", "table") == "json":
            print(json.dumps(rows))
        else:
            print(f"{'ID':<20} {'PID':<8} {'STATUS':<10} {'BUNDLE':<40} CREATED")
            for r in rows:
                print(f"{r['id']:<20} {r['pid']:<8} {r['status']:<10} {r['bundle']:<40} {r['created']}")
        return 0
    if cmd == "spec":
        o, pos = _parse(rest, {"bundle": "bundle", "b": "bundle"}, {"rootless"})
        path = os.path.join(o.get("bundle", "."), "config.json")
        if os.path.exists(path):
            raise ConfigError(f"{path} exists: remove it first")
        with open(path, "w") as f:
            json.dump(specmod.default(bool(o.get("rootless"))), f, indent=2)
        return 0
    if cmd == "features":
        print(json.dumps(features(), indent=2))
        return 0
    if cmd == "update":
        o, pos = _parse(rest, {"resources": "resources", "r": "resources", "memory": "memory",
                               "pids-limit": "pids-limit", "cpu-quota": "cpu-quota", "cpu-period": "cpu-period",
                               "cpu-share": "cpu-share", "cpuset-cpus": "cpuset-cpus",
                               "cpuset-mems": "cpuset-mems"}, set())
        res: dict[str, Any] = {}
        if o.get("resources"):
            with open(o["resources"]) if o["resources"] != "-" else sys.stdin as f:
                res = json.load(f)
        for flag, sect, key in (("memory", "memory", "limit"), ("pids-limit", "pids", "limit"),
                                ("cpu-quota", "cpu", "quota"), ("cpu-period", "cpu", "period"),
                                ("cpu-share", "cpu", "shares"), ("cpuset-cpus", "cpu", "cpus"),
                                ("cpuset-mems", "cpu", "mems")):
            if flag in o:
                v = o[flag]
                if key not in ("cpus", "mems"):
                    if not v.lstrip("-").isdigit():
                        raise ConfigError(f"--{flag} {v!r}: expected a number")
                    v = int(v)
                res.setdefault(sect, {})[key] = v
        update(Container(root, _one_id(pos, cmd)), res)
        return 0
    if cmd in ("pause", "resume"):
        _, pos = _parse(rest, {}, set())
        pause(Container(root, _one_id(pos, cmd)), cmd == "pause")
        return 0
    if cmd == "ps":
        split = _exec_split(rest)
        o, pos = _parse(rest[:split], {"format": "format", "f": "format"}, set())
        c = Container(root, _one_id(pos, cmd))
        pids = c.pids(c.load())
        if o.get("format", "table") == "json":
            print(json.dumps(pids))
            return 0
        import subprocess

        out = subprocess.run(["ps", *(rest[split:] or ["-ef"])], capture_output=True, text=True)
        lines = out.stdout.splitlines()
        if lines:
            col = lines[0].split().index("PID") if "PID" in lines[0].split() else 1
            print(lines[0])
            for line in lines[1:]:
                f = line.split()
                if len(f) > col and f[col].isdigit() and int(f[col]) in pids:
                    print(line)
        return 0
    if cmd == "exec":
        o, pos = _parse(rest[:_exec_split(rest)], {"process": "process", "p": "process", "cwd": "cwd",
                                                  "env": "env", "e": "env", "user": "user", "u": "user",
                                                  "console-socket": "console-socket", "pid-file": "pid-file"},
                        {"detach", "d", "tty", "t", "no-new-privs"})
        args = rest[_exec_split(rest):]
        if not pos:
            raise ConfigError("exec: expected a container id")
        c = Container(root, pos[0])
        cmdline = pos[1:] + args
        st = c.load()
        seccomp = specmod.load(st["bundle"]).get("linux", {}).get("seccomp")
        if o.get("process"):
            with open(o["process"]) as f:
                process = json.load(f)
            specmod.check(process, specmod.SHAPE["process"], "process")
        else:
            cfg = specmod.load(st["bundle"])
            process = dict(cfg["process"])
            if not cmdline:
                raise ConfigError("exec: expected a command (or --process FILE)")
            process["args"] = cmdline
        if o.get("cwd"):
            process["cwd"] = o["cwd"]
        if o.get("env"):
            process["env"] = list(process.get("env", [])) + [o["env"]]
        if o.get("user"):
            uid, _, gid = o["user"].partition(":")
            if not uid.isdigit() or (gid and not gid.isdigit()):
                raise ConfigError(f"exec --user {o['user']!r}: want UID[:GID]")
            process["user"] = {"uid": int(uid), "gid": int(gid or 0)}
        if not process.get("args"):
            raise ConfigError("process.args: the process needs a program to run")
        if o.get("tty") or o.get("t"):
            process["terminal"] = True
        return exec_in(c, process, bool(o.get("detach") or o.get("d")), seccomp, o.get("pid-file"),
                       o.get("console-socket"))
    raise ConfigError(f"unknown command {cmd!r} (virtkit-runc --help lists them)")


if __name__ == "__main__":
    sys.exit(main())
