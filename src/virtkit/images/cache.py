"""The image cache: every recipe output lives in ``~/.cache/virtkit/images/<recipe>-<key>``.

The key is a hash of everything that went into the build (config fragment, script versions,
Debian package versions), so a changed input gives a new directory and an old one is never
reused by mistake. Builds run in a temporary directory next to the cache and are renamed into
place when complete, under a per-entry file lock, so an interrupted or concurrent build never
leaves a half-written image that looks finished.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.errors import ImageError

#: Name of the metadata file written last into a finished cache entry.
META = "image.json"


class MissingToolError(ImageError):
    """A program, file or Debian package a recipe needs is not installed (tests skip on this)."""


def cache_root() -> Path:
    """Where built images live: ``$VIRTKIT_CACHE`` or ``$XDG_CACHE_HOME/virtkit`` (``~/.cache/virtkit``)."""
    env = os.environ.get("VIRTKIT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "virtkit"


def images_dir() -> Path:
    """The directory holding one subdirectory per built image."""
    return cache_root() / "images"


def hash_inputs(inputs: dict) -> str:
    """A short, stable hash of a recipe's inputs (JSON, sorted keys)."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file (used to key recipes on their scripts and fragments)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def require_program(name: str, package: str, what: str) -> str:
    """Return the path of program ``name`` or raise :class:`MissingToolError` naming its Debian package."""
    path = shutil.which(name)
    if path is None:
        raise MissingToolError(f"{what}: `{name}` not found: install Debian package {package}")
    return path


def require_file(path: Path, package: str, what: str) -> Path:
    """Return ``path`` if it exists or raise :class:`MissingToolError` naming its Debian package."""
    if not path.exists():
        raise MissingToolError(f"{what}: {path} not found: install Debian package {package}")
    return path


DPKG_STATUS = "/var/lib/dpkg/status"


def debian_memo(key: str, stamps: Sequence[str | Path], compute: Callable[[], str]) -> str:
    """``compute()`` remembered while the files ``stamps`` (the Debian package database) are unchanged.

    Recipe keys ask dpkg and apt for package versions: 9 subprocesses, ~0.3 s on every ``virtkit run``
    that uses the default guest. The answers only change when dpkg's status or apt's lists do, so they
    are kept in ``images/.debian-state.json`` with those files' (mtime, size); errors are not kept.
    """
    stamp = []
    for p in stamps:
        try:
            st = os.stat(p)
            stamp.append([st.st_mtime_ns, st.st_size])
        except OSError:
            stamp.append(None)
    path = images_dir() / ".debian-state.json"
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    ent = data.get(key)
    if isinstance(ent, dict) and ent.get("stamp") == stamp and isinstance(ent.get("value"), str):
        return ent["value"]
    value = compute()
    data[key] = {"stamp": stamp, "value": value}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".debian-state.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs the next run the subprocesses
    return value


def deb_version(package: str, what: str) -> str:
    """The installed version of a Debian package, or :class:`MissingToolError` if it is not installed."""
    return debian_memo(f"deb:{package}", [DPKG_STATUS], lambda: _deb_version(package, what))


def _deb_version(package: str, what: str) -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}\t${Version}", package], capture_output=True, text=True, check=False
        )
    except FileNotFoundError as err:
        raise MissingToolError(f"{what}: dpkg-query not found (virtkit builds images on Debian)") from err
    status, _, version = out.stdout.partition("\t")
    if out.returncode != 0 or "install ok installed" not in status:
        raise MissingToolError(f"{what}: Debian package {package} is not installed (apt-get install {package})")
    return version


# ---------------------------------------------------------------------------------------------
# progress reporting


class Reporter:
    """Where a build reports progress. The base class is quiet (tests, ``--quiet``)."""

    def step(self, recipe: str, message: str) -> None:
        """A new phase of a recipe's build started (extract, configure, compile...)."""

    def line(self, recipe: str, text: str) -> None:
        """One line of build tool output (shown as the current activity, always logged)."""

    def done(self, recipe: str, message: str) -> None:
        """A recipe finished (built or found in the cache)."""


class RichReporter(Reporter):
    """A live rich display: one spinner line per recipe with its phase and the current compile step."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.table import Column

        self.console = Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[recipe]}", table_column=Column(min_width=10, no_wrap=True)),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.tasks: dict[str, object] = {}
        self.phase: dict[str, str] = {}
        self.last_update = 0.0
        self.progress.start()

    def _task(self, recipe: str):
        if recipe not in self.tasks:
            self.tasks[recipe] = self.progress.add_task("", recipe=recipe, total=None)
        return self.tasks[recipe]

    def step(self, recipe: str, message: str) -> None:
        self.phase[recipe] = message
        self.progress.update(self._task(recipe), description=message)

    def line(self, recipe: str, text: str) -> None:
        now = time.monotonic()
        if now - self.last_update < 0.1:
            return
        self.last_update = now
        text = text.strip()[:70]
        self.progress.update(self._task(recipe), description=f"{self.phase.get(recipe, '')} [dim]{text}[/dim]")

    def done(self, recipe: str, message: str) -> None:
        task = self._task(recipe)
        self.progress.update(task, description=f"[green]{message}", total=1, completed=1)

    def close(self) -> None:
        """Stop the live display."""
        self.progress.stop()


# ---------------------------------------------------------------------------------------------
# running build tools


@dataclass
class BuildContext:
    """What a recipe's build function gets: a scratch dir, the output dir, a log and a reporter."""

    name: str
    work: Path
    out: Path
    log_path: Path
    reporter: Reporter
    deps: dict[str, Path] = field(default_factory=dict)

    def step(self, message: str) -> None:
        """Report and log the start of a build phase."""
        self.reporter.step(self.name, message)
        with open(self.log_path, "a", buffering=1) as log:
            log.write(f"== {message}\n")

    def run(self, argv: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        """Run a build command, streaming its output to the log and the reporter; fail with the log tail."""
        full_env = dict(os.environ)
        full_env["LC_ALL"] = "C"
        if env:
            full_env.update(env)
        with open(self.log_path, "a", buffering=1) as log:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            try:
                proc = subprocess.Popen(
                    list(argv), cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, text=True, errors="replace",
                )
            except FileNotFoundError as err:
                raise MissingToolError(f"{self.name}: cannot run {argv[0]}: {err.strerror}") from err
            assert proc.stdout is not None
            for text in proc.stdout:
                log.write(text)
                self.reporter.line(self.name, text)
            rc = proc.wait()
        if rc != 0:
            tail = self.log_tail()
            raise ImageError(f"{self.name}: `{' '.join(argv[:3])}` failed (exit {rc}); log {self.log_path}: {tail}")

    def log_tail(self, lines: int = 3) -> str:
        """The last few non-empty lines of the build log, joined on one line for an error message."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(t.strip() for t in [t for t in text if t.strip()][-lines:])


# ---------------------------------------------------------------------------------------------
# cache entries


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def entry_dir(name: str, key: str) -> Path:
    """The cache directory of recipe ``name`` with input key ``key``."""
    return images_dir() / f"{name}-{key}"


def is_built(name: str, key: str) -> bool:
    """Whether a finished entry exists (its metadata file is written last, before the rename)."""
    return (entry_dir(name, key) / META).is_file()


def build_entry(
    name: str,
    key: str,
    inputs: dict,
    build: Callable[[BuildContext], None],
    reporter: Reporter,
    deps: dict[str, Path] | None = None,
    force: bool = False,
) -> Path:
    """Build one cache entry atomically (temp dir + rename, under a lock) unless it already exists."""
    final = entry_dir(name, key)
    root = images_dir()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".lock-{name}-{key}"):
        if is_built(name, key) and not force:
            return final
        logs = root / "logs"
        logs.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-{key}-", dir=root))
        log_path = logs / f"{name}-{key}.log"
        log_path.write_text(f"virtkit image build: {name} key {key}\n{json.dumps(inputs, indent=1)}\n")
        ctx = BuildContext(name=name, work=tmp / "work", out=tmp / "out", log_path=log_path, reporter=reporter,
                           deps=dict(deps or {}))
        ctx.work.mkdir()
        ctx.out.mkdir()
        start = time.monotonic()
        try:
            build(ctx)
            meta = {
                "name": name,
                "key": key,
                "inputs": inputs,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(time.monotonic() - start, 1),
                "files": sorted(p.name for p in ctx.out.iterdir()),
            }
            (ctx.out / META).write_text(json.dumps(meta, indent=1) + "\n")
            if final.exists():  # force rebuild: move the old entry aside, then drop it
                old = Path(tempfile.mkdtemp(prefix=f".old-{name}-", dir=root))
                final.rename(old / "entry")
                shutil.rmtree(old, ignore_errors=True)
            ctx.out.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_meta(name: str, key: str) -> dict | None:
    """The metadata of a finished entry, or None if it is not built (or unreadable)."""
    try:
        return json.loads((entry_dir(name, key) / META).read_text())
    except (OSError, ValueError):
        return None


def dir_size(path: Path) -> int:
    """Total size in bytes of the regular files under ``path``."""
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total
