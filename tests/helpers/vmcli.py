"""Driving ``virtkit`` as a user does, in subprocesses with private run and snapshot directories: detached
VMs (a bare-metal counter or the Linux guest), their consoles, and the host-side checks of their disks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import virtkit
from tests.helpers.guests import COUNTING
from tests.helpers.opensbi import payload_image

MiB = 1 << 20


def vm_env(tmp_path: Path, **extra: str) -> Iterator[dict]:
    """The environment for the commands (``extra`` added); afterwards every VM still running is killed."""
    e = dict(os.environ, VIRTKIT_RUN_DIR=str(tmp_path / "run"), VIRTKIT_SNAPSHOTS=str(tmp_path / "snaps"), **extra)
    yield e
    for info in (tmp_path / "run").glob("*.json"):
        try:
            os.kill(json.loads(info.read_text())["pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass


def counting_env(tmp_path: Path) -> Iterator[dict]:
    """:func:`vm_env`, with ``tmp_path/Image``: the counting guest that :func:`start` runs."""
    payload_image(tmp_path / "Image", COUNTING)
    yield from vm_env(tmp_path)


def linux_env(tmp_path: Path, guest_images) -> Iterator[dict]:
    """:func:`vm_env`, with the default Linux guest's images (see :func:`guest`)."""
    g = json.dumps([str(guest_images.kernel), str(guest_images.initrd), str(guest_images.firmware)])
    yield from vm_env(tmp_path, GUEST=g)


def vk(env: dict, *args: str, input: str | None = None, timeout: float = 300, check: bool = True):
    """``virtkit ARGS`` (:func:`tests.helpers.virtkit`: no traceback ever), exit status 0 unless ``check=False``."""
    p = virtkit(*args, input=input, env=env, timeout=timeout)
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def start(env: dict, tmp_path: Path, name: str, *extra: str) -> None:
    """A detached VM ``name`` running the counting guest of :func:`counting_env`."""
    vk(env, "run", "-d", "--name", name, "--board", "riscv64-virt", "--bios", "none", "--kernel",
       str(tmp_path / "Image"), "--mem", "32", "--no-rng", *extra)


def running(env: dict, name: str) -> bool:
    """Whether ``virtkit ps`` shows VM ``name`` running."""
    return any(v["name"] == name and v["state"] == "running" for v in json.loads(vk(env, "ps", "--json").stdout))


def guest(env: dict) -> list[str]:
    """The ``run`` flags of the Linux guest of :func:`linux_env`."""
    k, i, f = json.loads(env["GUEST"])
    return ["--kernel", k, "--initrd", i, "--bios", f]


def console_log(env: dict, name: str) -> str:
    """What detached VM ``name`` has printed so far."""
    p = Path(env["VIRTKIT_RUN_DIR"]) / f"{name}.console"
    return p.read_bytes().decode(errors="replace") if p.exists() else ""


def wait_for(pred, timeout: float = 300, what: str = "condition"):
    """``pred()``'s first true value, polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def shell(env: dict, name: str, line: str, marker: str, timeout: float = 120) -> str:
    """Type ``line; echo MARKER`` on the console; return what the console printed between them."""
    before = len(console_log(env, name))
    vk(env, "console", name, input=f"{line}\necho {marker}-$((1+1))\n", timeout=60)
    want = f"{marker}-2"
    try:
        wait_for(lambda: want in console_log(env, name)[before:], timeout, f"{want} on {name}")
    except AssertionError as err:  # say what the console showed instead: a failure in CI has only this
        raise AssertionError(f"{err}; the console since the line was typed:\n"
                             f"{console_log(env, name)[before:][-1500:]}\nthe VM's statistics now (twice, 2 s "
                             f"apart: is it running, taking interrupts, reading its UART?):\n"
                             f"{_vm_stats(env, name)}\n{time.sleep(2) or _vm_stats(env, name)}") from None
    out = console_log(env, name)[before:]
    return out[: out.index(want)]


def _vm_stats(env: dict, name: str) -> str:
    """The VM's ``stats`` control reply (state, MIPS, engine and device counters) as compact JSON, or why not."""
    from virtkit.machine import control

    old = os.environ.get("VIRTKIT_RUN_DIR")
    os.environ["VIRTKIT_RUN_DIR"] = env["VIRTKIT_RUN_DIR"]
    try:
        return json.dumps(control.request(name, "stats"), separators=(",", ":"), default=str)[:6000]
    except Exception as err:  # noqa: BLE001 (a diagnostic must not hide the failure it explains)
        return f"(no statistics: {type(err).__name__}: {err})"
    finally:
        if old is None:
            del os.environ["VIRTKIT_RUN_DIR"]
        else:
            os.environ["VIRTKIT_RUN_DIR"] = old


def numbers(out: str) -> list[int]:
    """The lines of console output that are just a number (the typed commands are echoed too)."""
    return [int(x) for x in re.findall(r"^(\d+)\r?$", out, re.M)]


def loop_count(env: dict, name: str) -> int:
    """The number :data:`LOOP` last wrote to /tmp/mem (it runs in the background: wait for its first one)."""
    got: list[int] = []

    def read() -> bool:
        got[:] = numbers(shell(env, name, "cat /tmp/mem 2>/dev/null", "mem"))
        return bool(got)

    wait_for(read, 120, f"the loop's first number on {name}")
    return got[-1]


def mem_and_disk(env: dict, name: str, tag: str, timeout: float = 120) -> tuple[int, int]:
    """The numbers :data:`LOOP` last wrote to /tmp/mem and /mnt/last. Asked again while one is missing: the
    loop keeps running and ``echo > file`` truncates before it writes, so a read can catch a file empty."""
    got: list[int] = []

    def read() -> bool:
        got[:] = numbers(shell(env, name, "cat /tmp/mem /mnt/last", tag, timeout=timeout))
        return len(got) >= 2

    wait_for(read, timeout, f"both of the loop's numbers on {name}")
    return got[-2], got[-1]


def ext4_qcow2(env: dict, path: Path) -> None:
    """A 64 MiB qcow2 image holding an empty ext4 file system."""
    raw = path.with_suffix(".raw")
    with open(raw, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(raw)], check=True)
    vk(env, "disk", "convert", "-q", str(raw), str(path), timeout=600)
    raw.unlink()


#: mounts the guest's /dev/vda and writes a growing number to /mnt/last and /tmp/mem, syncing each time
LOOP = "mkdir -p /mnt && mount /dev/vda /mnt && (i=0; while :; do i=$((i+1)); echo $i > /mnt/last; " \
       "echo $i > /tmp/mem; sync; done) &"


def host_fsck(env: dict, image: Path, tmp: Path) -> str:
    """Copy ``image`` to raw, replay its journal, check it read-only; return /last as the copy holds it."""
    raw = tmp / "check.raw"
    raw.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(image), str(raw)], check=True)
    p = subprocess.run(["e2fsck", "-y", "-E", "journal_only", str(raw)], capture_output=True, text=True)
    assert p.returncode in (0, 1), p.stdout + p.stderr
    p = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
    assert p.returncode == 0, f"e2fsck found errors:\n{p.stdout}{p.stderr}"
    return subprocess.run(["debugfs", "-R", "cat /last", str(raw)], capture_output=True, text=True).stdout.strip()
