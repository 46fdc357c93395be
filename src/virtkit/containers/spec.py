"""The OCI runtime specification's ``config.json``: loading with type checks (a wrong-typed field is an error
naming it; an unknown one is ignored, as the specification requires), and the default configuration ``spec``
writes (runc's, field for field)."""

from __future__ import annotations

import json
import os
from typing import Any

from virtkit.errors import ConfigError

OCI_VERSION = "1.1.0"
DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
          "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

# the shape of what the runtime reads: field -> type, or a nested shape; [x] = list of x
_STR, _INT, _BOOL = str, int, bool
_MOUNT = {"destination": _STR, "type": _STR, "source": _STR, "options": [_STR]}
_RLIMIT = {"type": _STR, "hard": _INT, "soft": _INT}
_CAPS = {k: [_STR] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
_IDMAP = {"containerID": _INT, "hostID": _INT, "size": _INT}
SHAPE: dict[str, Any] = {
    "ociVersion": _STR,
    "process": {"terminal": _BOOL, "user": {"uid": _INT, "gid": _INT, "umask": _INT, "additionalGids": [_INT]},
                "args": [_STR], "env": [_STR], "cwd": _STR, "capabilities": _CAPS, "rlimits": [_RLIMIT],
                "noNewPrivileges": _BOOL, "oomScoreAdj": _INT, "apparmorProfile": _STR, "selinuxLabel": _STR},
    "root": {"path": _STR, "readonly": _BOOL},
    "hostname": _STR,
    "domainname": _STR,
    "mounts": [_MOUNT],
    "annotations": {"*": _STR},
    "linux": {"namespaces": [{"type": _STR, "path": _STR}], "uidMappings": [_IDMAP], "gidMappings": [_IDMAP],
              "maskedPaths": [_STR], "readonlyPaths": [_STR], "sysctl": {"*": _STR},
              "resources": {"memory": {"limit": _INT, "reservation": _INT, "swap": _INT},
                            "cpu": {"shares": _INT, "quota": _INT, "period": _INT, "cpus": _STR, "mems": _STR},
                            "pids": {"limit": _INT}, "blockIO": {"weight": _INT},
                            "devices": [{"allow": _BOOL, "type": _STR, "major": _INT, "minor": _INT,
                                         "access": _STR}]},
              "devices": [{"path": _STR, "type": _STR, "major": _INT, "minor": _INT, "fileMode": _INT,
                           "uid": _INT, "gid": _INT}],
              "cgroupsPath": _STR, "rootfsPropagation": _STR,
              "seccomp": {"defaultAction": _STR, "defaultErrnoRet": _INT, "architectures": [_STR],
                          "syscalls": [{"names": [_STR], "action": _STR, "errnoRet": _INT,
                                        "args": [{"index": _INT, "value": _INT, "valueTwo": _INT, "op": _STR}]}]}},
}


def _kind(t: Any) -> str:
    return {str: "a string", int: "an integer", bool: "true or false"}.get(t, "an object")


def check(data: Any, shape: Any, where: str) -> None:
    """Raise ConfigError naming the first field whose type does not fit ``shape`` (unknown fields pass)."""
    if isinstance(shape, list):
        if not isinstance(data, list):
            raise ConfigError(f"{where}: expected a list, got {type(data).__name__}")
        for i, item in enumerate(data):
            check(item, shape[0], f"{where}[{i}]")
        return
    if isinstance(shape, dict):
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
        for key, value in data.items():
            sub = shape.get(key, shape.get("*"))
            if sub is not None:
                check(value, sub, f"{where}.{key}" if where else key)
        return
    if not isinstance(data, shape) or (shape is int and isinstance(data, bool)):
        raise ConfigError(f"{where}: expected {_kind(shape)}, got {type(data).__name__} {data!r}"[:200])


def load(bundle: str) -> dict[str, Any]:
    """``bundle/config.json``, checked: the fields the runtime uses have their types, ``process.args`` and
    ``root.path`` are there, and the root file system exists."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (is --bundle the bundle's directory?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read it: {err}") from None
    check(cfg, SHAPE, "")
    if not isinstance(cfg.get("ociVersion"), str) or not cfg["ociVersion"].startswith("1."):
        raise ConfigError(f"{path}: ociVersion {cfg.get('ociVersion')!r}: this runtime reads version 1.x")
    proc = cfg.get("process")
    if not proc or not proc.get("args"):
        raise ConfigError(f"{path}: process.args: the container needs a program to run")
    root = cfg.get("root", {}).get("path")
    if not root:
        raise ConfigError(f"{path}: root.path is missing")
    root = root if os.path.isabs(root) else os.path.join(bundle, root)
    if not os.path.isdir(root):
        raise ConfigError(f"{path}: root.path {root!r} is not a directory")
    for ns in cfg.get("linux", {}).get("namespaces", []):
        if ns.get("type") not in ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"):
            raise ConfigError(f"{path}: linux.namespaces: unknown namespace type {ns.get('type')!r}")
    return cfg


def default(rootless: bool = False) -> dict[str, Any]:
    """What ``spec`` writes: runc's default configuration (``--rootless``: a user namespace mapping the caller,
    no network namespace, no cgroup mount, sysfs bound from the host)."""
    cfg: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": {"terminal": True, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
                    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
                    "cwd": "/", "capabilities": {k: list(DEFAULT_CAPS) for k in
                                                 ("bounding", "effective", "permitted", "ambient")},
                    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}], "noNewPrivileges": True},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "virtkit",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {"resources": {"devices": [{"allow": False, "access": "rwm"}]},
                  "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
                  "maskedPaths": list(MASKED), "readonlyPaths": list(READONLY)},
    }
    if rootless:
        uid, gid = os.getuid(), os.getgid()
        lin = cfg["linux"]
        lin["namespaces"] = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "user")]
        lin["uidMappings"] = [{"containerID": 0, "hostID": uid, "size": 1}]
        lin["gidMappings"] = [{"containerID": 0, "hostID": gid, "size": 1}]
        lin.pop("resources")
        cfg["mounts"] = [m for m in cfg["mounts"] if m["destination"] != "/sys"] + [
            {"destination": "/sys", "type": "none", "source": "/sys", "options": ["rbind", "nosuid", "noexec",
                                                                                  "nodev", "ro"]}]
    return cfg
