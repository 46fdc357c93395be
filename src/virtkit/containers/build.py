"""Making images (``virtkit image build``): a tiny one from the host's static busybox, a Debian one from
packages (mmdebstrap), and images from a Containerfile subset — FROM, RUN, COPY, ENV, WORKDIR, USER,
LABEL, EXPOSE, ENTRYPOINT, CMD — where each RUN runs in a real container (the virtkit runtime) on an
overlay of the layers so far, and its changes (whiteouts included) become the next layer."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virtkit.containers import images as img
from virtkit.containers import linux as L
from virtkit.containers import runtime as rt
from virtkit.errors import ConfigError

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX = "/bin/busybox"


def _history(by: str) -> dict[str, Any]:
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "created_by": by}


def build_busybox(store: img.Store, ref: str, busybox: str = BUSYBOX) -> str:
    """A one-layer image: the host's static busybox with a link per applet, /etc/passwd and group; its id."""
    if not os.path.isfile(busybox):
        raise ConfigError(f"{busybox} is missing: install busybox-static (apt-get install busybox-static)")
    out = subprocess.run(["file", "-L", busybox], capture_output=True, text=True).stdout
    if "dynamically linked" in out:
        raise ConfigError(f"{busybox} is dynamically linked: the image needs busybox-static")
    with tempfile.TemporaryDirectory(dir=store.root) as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "etc", "root", "tmp", "proc", "sys", "dev", "home", "var", "usr/bin", "usr/sbin", "sbin"):
            (root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(root / "tmp", 0o1777)
        shutil.copy(busybox, root / "bin/busybox")
        applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
        for a in applets:
            target = root / a
            if a != "bin/busybox" and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink("/bin/busybox", target)
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
        tar = Path(tmp) / "layer.tar"
        img.tar_layer(root, tar)
        desc, diff = store.add_layer(tar)
    return store.add_image(ref, [desc], [diff], {"Env": [PATH_ENV], "Cmd": ["sh"]},
                           [_history(f"virtkit image build --busybox ({busybox})")])


def build_debian(store: img.Store, ref: str, suite: str, include: list[str] = (),
                 mirror: str | None = None) -> str:
    """A one-layer Debian image made by mmdebstrap (minbase variant) from the configured apt mirror; its id."""
    if shutil.which("mmdebstrap") is None:
        raise ConfigError("mmdebstrap is missing: install it (apt-get install mmdebstrap)")
    with tempfile.TemporaryDirectory(dir=store.root) as tmp:
        tar = Path(tmp) / "rootfs.tar"
        cmd = ["mmdebstrap", "--variant=minbase", "--format=tar", "--quiet"]
        if include:
            cmd.append("--include=" + ",".join(include))
        cmd += [suite, str(tar)] + ([mirror] if mirror else [])
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise ConfigError(f"mmdebstrap {suite} failed: {p.stderr.strip()[-500:]}")
        desc, diff = store.add_layer(tar)
    return store.add_image(ref, [desc], [diff], {"Env": [PATH_ENV], "Cmd": ["bash"]},
                           [_history(f"mmdebstrap --variant=minbase {suite}")])


def parse_containerfile(text: str) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, arguments) of each instruction; continuation lines joined, comments gone."""
    out, buf, start = [], "", 0
    for n, line in enumerate(text.splitlines(), 1):
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not buf:
            start = n
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    if buf:
        raise ConfigError(f"Containerfile line {start}: the last line ends with a continuation '\\'")
    return out


def _exec_form(text: str, where: str) -> list[str]:
    """A JSON array (exec form) or a shell command (run by /bin/sh -c)."""
    if text.startswith("["):
        try:
            v = json.loads(text)
        except ValueError:
            raise ConfigError(f"{where}: not a valid JSON array: {text}") from None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{where}: the JSON form is a list of strings")
        return v
    return ["/bin/sh", "-c", text]


def build_file(cs: Any, ref: str, containerfile: str, context: str,
               say: Callable[[str], None] = print) -> str:
    """Build ``ref`` from a Containerfile (``cs``: the :class:`~virtkit.containers.frontend.Containers` whose
    store and runtime it uses); its image id."""
    store: img.Store = cs.store
    try:
        text = Path(containerfile).read_text()
    except OSError as err:
        raise ConfigError(f"{containerfile}: {err.strerror}") from None
    ctx = Path(context).resolve()
    if not ctx.is_dir():
        raise ConfigError(f"build context {context}: not a directory")
    steps = parse_containerfile(text)
    if not steps or steps[0][1] != "FROM":
        raise ConfigError(f"{containerfile}: the first instruction must be FROM")
    layers: list[dict[str, Any]] = []
    diffs: list[str] = []
    history: list[dict[str, Any]] = []
    config: dict[str, Any] = {"Env": [PATH_ENV]}
    for i, (line, word, arg) in enumerate(steps, 1):
        where = f"{containerfile} line {line} ({word})"
        say(f"STEP {i}/{len(steps)}: {word} {arg}")
        if word == "FROM":
            if i != 1:
                raise ConfigError(f"{where}: one FROM, first (multi-stage builds are not supported)")
            if arg != "scratch":
                _, man, bcfg = store.resolve(arg)
                layers, diffs = list(man["layers"]), list(bcfg["rootfs"]["diff_ids"])
                history = list(bcfg.get("history", []))
                config = dict(bcfg.get("config") or {})
                config.setdefault("Env", [PATH_ENV])
        elif word == "ENV":
            pairs = _env_pairs(arg, where)
            env = [e for e in config.get("Env", []) if e.split("=", 1)[0] not in dict(pairs)]
            config["Env"] = env + [f"{k}={v}" for k, v in pairs]
        elif word == "WORKDIR":
            config["WorkingDir"] = os.path.normpath(os.path.join(config.get("WorkingDir") or "/", arg))
        elif word == "USER":
            config["User"] = arg
        elif word == "LABEL":
            config.setdefault("Labels", {}).update(dict(_env_pairs(arg, where)))
        elif word == "EXPOSE":
            for p in arg.split():
                config.setdefault("ExposedPorts", {})[p if "/" in p else p + "/tcp"] = {}
        elif word in ("ENTRYPOINT", "CMD"):
            config["Entrypoint" if word == "ENTRYPOINT" else "Cmd"] = _exec_form(arg, where)
        elif word == "COPY":
            with tempfile.TemporaryDirectory(dir=store.root) as tmp:
                _copy_step(ctx, arg, Path(tmp) / "root", config.get("WorkingDir") or "/", where)
                img.tar_layer(Path(tmp) / "root", Path(tmp) / "layer.tar")
                desc, diff = store.add_layer(Path(tmp) / "layer.tar")
            layers.append(desc)
            diffs.append(diff)
        elif word == "RUN":
            if not diffs:
                raise ConfigError(f"{where}: RUN needs a FROM image with a shell (not scratch)")
            desc, diff = _run_step(cs, diffs, config, _exec_form(arg, where), where)
            layers.append(desc)
            diffs.append(diff)
        else:
            raise ConfigError(f"{where}: {word} is not supported (FROM, RUN, COPY, ENV, WORKDIR, USER, LABEL, "
                              "EXPOSE, ENTRYPOINT, CMD are)")
        history.append(_history(f"{word} {arg}"))
    cid = store.add_image(ref, layers, diffs, config, history)
    say(f"built {img.full_ref(ref)} {cid[7:19]}")
    return cid


def _env_pairs(arg: str, where: str) -> list[tuple[str, str]]:
    """``K=V K2="V 2"`` or the old ``K V`` form."""
    words = shlex.split(arg)
    if words and "=" not in words[0]:
        if len(words) < 2:
            raise ConfigError(f"{where}: expected NAME=VALUE or NAME VALUE")
        return [(words[0], arg.split(None, 1)[1])]
    if not words or not all("=" in w and w.split("=", 1)[0] for w in words):
        raise ConfigError(f"{where}: expected NAME=VALUE ...")
    return [tuple(w.split("=", 1)) for w in words]  # type: ignore[misc]


def _copy_step(ctx: Path, arg: str, root: Path, workdir: str, where: str) -> None:
    """COPY SRC... DEST: sources from the build context (never outside it), into a fresh layer tree."""
    words = [w for w in shlex.split(arg) if not w.startswith("--")]
    if len(words) < 2:
        raise ConfigError(f"{where}: expected COPY SRC... DEST")
    *srcs, dest = words
    dest_abs = os.path.normpath(os.path.join(workdir, dest))
    into_dir = dest.endswith("/") or len(srcs) > 1
    for s in srcs:
        src = (ctx / s).resolve()
        if not src.is_relative_to(ctx):
            raise ConfigError(f"{where}: {s} is outside the build context {ctx}")
        if not src.exists():
            raise ConfigError(f"{where}: {s} is not in the build context")
        target = root / dest_abs.lstrip("/")
        if src.is_dir():
            shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
            continue
        if into_dir:
            target = target / src.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def _run_step(cs: Any, diffs: list[str], config: dict[str, Any], args: list[str],
              where: str) -> tuple[dict[str, Any], str]:
    """Run one RUN in a container on the layers so far; its changes as a new layer."""
    from virtkit.containers.frontend import _spec, _user

    store: img.Store = cs.store
    work = Path(tempfile.mkdtemp(dir=store.root, prefix=".build-"))
    rootfs = work / "bundle" / "rootfs"
    for d in (rootfs, work / "upper", work / "work"):
        d.mkdir(parents=True)
    lower = ":".join(str(store.layers / d.split(":")[1]) for d in reversed(diffs))
    cid = "build-" + secrets.token_hex(8)
    mounted = False
    try:
        L.mount("overlay", str(rootfs), "overlay", 0,
                f"lowerdir={lower},upperdir={work / 'upper'},workdir={work / 'work'}")
        mounted = True
        uid, gid = _user(config.get("User") or "0")
        spec = _spec(args, list(config.get("Env", [])), config.get("WorkingDir") or "/", uid, gid, False, False,
                     "build", [], "host", cid)  # the host's network: RUN may fetch (apt, pip)
        (work / "bundle" / "config.json").write_text(json.dumps(spec))
        code = rt.run(cs.runc, cid, str(work / "bundle"), None, None, detach=False, keep=False)
        if code != 0:
            raise ConfigError(f"{where}: {shlex.join(args)} exited with status {code}")
        L.umount2(str(rootfs), 0)
        mounted = False
        tar = work / "layer.tar"
        img.tar_layer(work / "upper", tar, overlay_upper=True)
        return store.add_layer(tar)
    finally:
        if mounted:
            L.umount2(str(rootfs), L.MNT_DETACH)
        shutil.rmtree(work, ignore_errors=True)
