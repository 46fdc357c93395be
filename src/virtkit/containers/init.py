"""The container's first process, between the runtime's fork and the user program's ``execve``: it runs as
PID 1 of the new PID namespace, inside the other new namespaces, and builds the container's world from
``config.json``: mounts (every destination resolved inside the root file system, symlinks and ``..``
included: nothing escapes), devices, ``pivot_root``, masked and read-only paths, hostname, sysctls; then it
waits on the exec FIFO for ``start`` and becomes the program: rlimits, user and groups, capabilities,
no_new_privs, ``execve``. Errors go back to the runtime on the status pipe, one line."""

from __future__ import annotations

import os
import resource
import stat
from typing import Any

from virtkit.containers import linux as L

#: mount options: name -> (flags to set, flags to clear)
MOUNT_FLAGS = {
    "ro": (L.MS_RDONLY, 0), "rw": (0, L.MS_RDONLY), "nosuid": (L.MS_NOSUID, 0), "suid": (0, L.MS_NOSUID),
    "nodev": (L.MS_NODEV, 0), "dev": (0, L.MS_NODEV), "noexec": (L.MS_NOEXEC, 0), "exec": (0, L.MS_NOEXEC),
    "sync": (L.MS_SYNCHRONOUS, 0), "async": (0, L.MS_SYNCHRONOUS), "dirsync": (L.MS_DIRSYNC, 0),
    "remount": (L.MS_REMOUNT, 0), "mand": (L.MS_MANDLOCK, 0), "nomand": (0, L.MS_MANDLOCK),
    "atime": (0, L.MS_NOATIME), "noatime": (L.MS_NOATIME, 0), "diratime": (0, L.MS_NODIRATIME),
    "nodiratime": (L.MS_NODIRATIME, 0), "bind": (L.MS_BIND, 0), "rbind": (L.MS_BIND | L.MS_REC, 0),
    "relatime": (L.MS_RELATIME, 0), "norelatime": (0, L.MS_RELATIME), "strictatime": (L.MS_STRICTATIME, 0),
    "nostrictatime": (0, L.MS_STRICTATIME), "nosymfollow": (L.MS_NOSYMFOLLOW, 0), "defaults": (0, 0),
}
PROPAGATION = {"private": L.MS_PRIVATE, "rprivate": L.MS_PRIVATE | L.MS_REC, "shared": L.MS_SHARED,
               "rshared": L.MS_SHARED | L.MS_REC, "slave": L.MS_SLAVE, "rslave": L.MS_SLAVE | L.MS_REC,
               "unbindable": L.MS_UNBINDABLE, "runbindable": L.MS_UNBINDABLE | L.MS_REC}
#: the devices every container gets (OCI runtime spec, "Default Devices")
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
RLIMITS = {name: getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")}


class SetupError(Exception):
    """A step of the container's set-up failed: the message goes to the runtime as is."""


def resolve_in(root: str, path: str) -> str:
    """``path`` inside ``root`` as the container will see it: every symlink on the way followed *within*
    ``root`` (an absolute link is relative to ``root``, ``..`` stops at ``root``), so the result can never
    be outside it. Components that do not exist yet are kept as they are."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    out: list[str] = []
    hops = 0
    while parts:
        p = parts.pop(0)
        if p == "..":
            if out:
                out.pop()
            continue
        cand = os.path.join(root, *out, p)
        try:
            st = os.lstat(cand)
        except FileNotFoundError:
            out.append(p)
            continue
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:
                raise SetupError(f"{path}: too many levels of symbolic links inside the root file system")
            target = os.readlink(cand)
            if target.startswith("/"):
                out = []
            parts = [q for q in target.split("/") if q not in ("", ".")] + parts
            continue
        out.append(p)
    return os.path.join(root, *out)


def _options(opts: list[str]) -> tuple[int, int, str]:
    """(flags, propagation flags, data string) of a mount's options."""
    flags, prop, data = 0, 0, []
    for o in opts:
        if o in MOUNT_FLAGS:
            on, off = MOUNT_FLAGS[o]
            flags = (flags | on) & ~off
        elif o in PROPAGATION:
            prop |= PROPAGATION[o]
        else:
            data.append(o)
    return flags, prop, ",".join(data)


def _cgroup_mount(target: str, flags: int, rel: str) -> None:
    """``type: cgroup`` as runc mounts it: on a v2 host a cgroup2; on a v1 (or hybrid) host a tmpfs holding
    each v1 hierarchy, bound at the container's own cgroup in it (read-only as the options say)."""
    os.makedirs(target, exist_ok=True)
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        L.mount("cgroup2", target, "cgroup2", flags)
        return
    L.mount("tmpfs", target, "tmpfs", flags & ~L.MS_RDONLY, "mode=755")
    with open("/proc/self/mountinfo") as f:
        hierarchies = [line.split()[4] for line in f if " - cgroup " in line]
    for mnt in hierarchies:
        name = os.path.basename(mnt)
        src = mnt + rel if os.path.isdir(mnt + rel) else mnt
        dest = os.path.join(target, name)
        os.makedirs(dest, exist_ok=True)
        L.mount(src, dest, None, L.MS_BIND)
        L.mount(None, dest, None, L.MS_BIND | L.MS_REMOUNT | (flags & (L.MS_RDONLY | L.MS_NOSUID | L.MS_NODEV
                                                                        | L.MS_NOEXEC)))
    if flags & L.MS_RDONLY:
        L.mount(None, target, None, L.MS_REMOUNT | flags, "mode=755")


def _mount_at(root: str, target: str, source: str | None, fstype: str | None, flags: int,
              data: str | None = None) -> None:
    """``mount(2)`` onto ``target`` through a descriptor: opened without following a final symlink, checked
    to be inside ``root`` *after* it is open, and mounted on as ``/proc/self/fd/N``, so a process that swaps
    a component of the path for a symlink between the resolution and the mount cannot redirect the mount
    outside the container (runc's fix for CVE-2021-30465)."""
    fd = os.open(target, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
        if real != root and not real.startswith(root.rstrip("/") + "/"):
            raise SetupError(f"mount destination {target!r} now leads to {real!r}, outside the root file system "
                             "(it changed while the container was being built): refused")
        L.mount(source, f"/proc/self/fd/{fd}", fstype, flags, data)
    finally:
        os.close(fd)


def _mount_one(root: str, m: dict[str, Any], cgroup: str, userns: bool = False) -> None:
    dest = m.get("destination", "")
    if not dest.startswith("/"):
        raise SetupError(f"mount destination {dest!r}: must be an absolute path in the container")
    target = resolve_in(root, dest)
    kind = m.get("type", "none")
    flags, prop, data = _options(m.get("options", []))
    src = m.get("source", kind)
    if flags & L.MS_BIND:
        if not os.path.isabs(src):
            raise SetupError(f"bind mount source {src!r}: must be an absolute path on the host")
        if not os.path.exists(src):
            raise SetupError(f"bind mount source {src!r}: no such file or directory")
        if os.path.isdir(src):
            os.makedirs(target, exist_ok=True)
        elif not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        _mount_at(root, target, src, None, flags & (L.MS_BIND | L.MS_REC))
        rest = flags & ~(L.MS_BIND | L.MS_REC)
        if rest:  # a bind mount takes its flags in a second, remounting call
            if userns:  # in a user namespace the source's nosuid/nodev/noexec/atime flags are locked: keep them
                f = os.statvfs(target).f_flag
                rest |= (f & (L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC | L.MS_NOATIME | L.MS_NODIRATIME)) | (
                    L.MS_RELATIME if f & 4096 else 0)
            _mount_at(root, target, None, None, rest | L.MS_BIND | L.MS_REMOUNT)
    else:
        if kind == "cgroup":
            _cgroup_mount(target, flags, cgroup)
            return
        os.makedirs(target, exist_ok=True)
        _mount_at(root, target, src, kind, flags, data or None)
    if prop:
        _mount_at(root, target, None, None, prop)


def _devices(root: str, cfg: dict[str, Any]) -> None:
    dev = resolve_in(root, "/dev")
    os.makedirs(dev, exist_ok=True)
    for name, major, minor in DEVICES:
        path = os.path.join(dev, name)
        if os.path.exists(path):
            continue
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(path, 0o666)
        except PermissionError:  # no CAP_MKNOD (a user namespace): the host's node, bound
            open(path, "a").close()
            L.mount(f"/dev/{name}", path, None, L.MS_BIND)
    for i, d in enumerate(cfg.get("linux", {}).get("devices", [])):  # linux.devices: made as asked
        kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}.get(d.get("type", ""))
        if kind is None or not str(d.get("path", "")).startswith("/dev/"):
            raise SetupError(f"linux.devices[{i}]: want a path under /dev and a type c, u, b or p")
        path = resolve_in(root, d["path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path):
            os.unlink(path)
        mode = d.get("fileMode", 0o666) & 0o7777
        try:
            os.mknod(path, mode | kind, os.makedev(d.get("major", 0), d.get("minor", 0)))
        except PermissionError:  # no CAP_MKNOD: the host's node of that path, bound
            if not os.path.exists(d["path"]):
                raise SetupError(f"linux.devices[{i}]: cannot make {d['path']} (no CAP_MKNOD) and the host "
                                 "has none to bind") from None
            open(path, "a").close()
            L.mount(d["path"], path, None, L.MS_BIND)
            continue
        os.chmod(path, mode)
        os.chown(path, d.get("uid", 0), d.get("gid", 0))
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")):
        path = os.path.join(dev, link)
        if not os.path.lexists(path):
            os.symlink(target, path)


def _mask(path: str) -> None:
    if not os.path.exists(path):
        return
    if os.path.isdir(path):
        L.mount("tmpfs", path, "tmpfs", L.MS_RDONLY)
    else:
        L.mount("/dev/null", path, None, L.MS_BIND)


def _readonly(path: str) -> None:
    if not os.path.exists(path):
        return
    L.mount(path, path, None, L.MS_BIND | L.MS_REC)
    L.mount(None, path, None, L.MS_BIND | L.MS_REMOUNT | L.MS_RDONLY | L.MS_REC)


def build_root(cfg: dict[str, Any], bundle: str, before_pivot: Any = None) -> None:
    """Mounts, devices, pivot_root, masked and read-only paths, hostname, sysctls (in the new namespaces);
    ``before_pivot()`` runs when the mounts are made and the host's root is still reachable (the
    createContainer hooks)."""
    lin = cfg.get("linux", {})
    kinds = {ns["type"] for ns in lin.get("namespaces", [])}
    root = cfg["root"]["path"]
    root = os.path.realpath(root if os.path.isabs(root) else os.path.join(bundle, root))
    if "mount" in kinds:
        prop = PROPAGATION.get(lin.get("rootfsPropagation", "rprivate"), L.MS_PRIVATE | L.MS_REC)
        L.mount(None, "/", None, prop | L.MS_REC)
        L.mount(root, root, None, L.MS_BIND | L.MS_REC)
        for m in cfg.get("mounts", []):
            _mount_one(root, m, cfg.get("_cgroup_path", "/"), cfg.get("_userns", False))
        _devices(root, cfg)
        if before_pivot is not None:
            before_pivot()
        os.chdir(root)
        L.pivot_root(".", ".")
        L.umount2(".", L.MNT_DETACH)  # the old root, stacked under the new one
        os.chdir("/")
    else:
        if before_pivot is not None:
            before_pivot()
        os.chroot(root)
        os.chdir("/")
    if "uts" in kinds:
        if cfg.get("hostname"):
            L.sethostname(cfg["hostname"])
        if cfg.get("domainname"):
            L.setdomainname(cfg["domainname"])
    for key, value in lin.get("sysctl", {}).items():  # before /proc/sys is made read-only, as runc does
        path = "/proc/sys/" + key.replace(".", "/")
        if ".." in key.split("."):
            raise SetupError(f"sysctl {key!r}: not a sysctl name")
        with open(path, "w") as f:
            f.write(value)
    if "mount" in kinds:
        for p in lin.get("maskedPaths", []):
            _mask(resolve_in("/", p))
        for p in lin.get("readonlyPaths", []):
            _readonly(resolve_in("/", p))
        if cfg["root"].get("readonly"):
            L.mount(None, "/", None, L.MS_BIND | L.MS_REMOUNT | L.MS_RDONLY)


def _caps(names: list[str], where: str) -> int:
    mask = 0
    for n in names:
        if n not in L.CAP_NUMBERS:
            raise SetupError(f"process.capabilities.{where}: unknown capability {n!r}")
        mask |= 1 << L.CAP_NUMBERS[n]
    return mask


def become_process(cfg: dict[str, Any], seccomp: Any = None) -> None:
    """The program's own state, then execve (never returns); ``seccomp``: a built filter, loaded last."""
    proc = cfg["process"]
    for rl in proc.get("rlimits", []):
        kind = RLIMITS.get(rl["type"])
        if kind is None:
            raise SetupError(f"process.rlimits: unknown limit {rl['type']!r}")
        resource.setrlimit(kind, (rl["soft"], rl["hard"]))
    if "oomScoreAdj" in proc:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(proc["oomScoreAdj"]))
    user = proc.get("user", {})
    if "umask" in user:
        os.umask(user["umask"])
    caps = proc.get("capabilities")
    last = L.last_cap()
    if caps is not None:
        bounding = _caps(caps.get("bounding", []), "bounding")
        for c in range(last + 1):
            if not bounding >> c & 1:
                L.prctl(L.PR_CAPBSET_DROP, c)
        L.prctl(L.PR_SET_KEEPCAPS, 1)
    os.setgroups(user.get("additionalGids", []))
    os.setgid(user.get("gid", 0))
    os.setuid(user.get("uid", 0))
    if caps is not None:
        L.capset(_caps(caps.get("effective", []), "effective"), _caps(caps.get("permitted", []), "permitted"),
                 _caps(caps.get("inheritable", []), "inheritable"))
        L.prctl(L.PR_CAP_AMBIENT, L.PR_CAP_AMBIENT_CLEAR_ALL)
        for c in range(last + 1):
            if _caps(caps.get("ambient", []), "ambient") >> c & 1:
                try:
                    L.prctl(L.PR_CAP_AMBIENT, L.PR_CAP_AMBIENT_RAISE, c)
                except OSError:  # not in permitted and inheritable: the kernel refuses; runc goes on too
                    pass
    if proc.get("noNewPrivileges"):
        L.prctl(L.PR_SET_NO_NEW_PRIVS, 1)
    if seccomp is not None:
        seccomp.load()
    cwd = proc.get("cwd", "/")
    try:
        os.chdir(cwd)
    except OSError as err:
        raise SetupError(f"process.cwd {cwd!r}: {err.strerror}") from None
    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in proc.get("env", []))
    args = proc["args"]
    try:
        os.execvpe(args[0], args, env)
    except OSError as err:
        raise SetupError(f"exec {args[0]!r}: {err.strerror}") from None
