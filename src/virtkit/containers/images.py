"""Container images: an OCI image layout on disk (content-addressed blobs, manifests, an index of names),
imported from OCI layouts and ``docker save`` tarballs with every digest checked, and layers unpacked once
into directories that overlayfs stacks into a container's root (whiteouts turned into overlay's own).

Unpacking never writes outside the layer's directory: entries with ``..``, entries that go through a
symlink, hard links that point outside and (when not root) device nodes are errors naming the entry."""

from __future__ import annotations

import abc
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from virtkit.errors import VirtkitError

ENV = "VIRTKIT_CONTAINERS_DIR"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
REF_NAME = "org.opencontainers.image.ref.name"
WH, OPAQUE = ".wh.", ".wh..wh..opq"


class ImageError(VirtkitError):
    """An image that cannot be imported, found or used; the message says which and why."""


def home() -> Path:
    """Where images, layers, containers and volumes live: $VIRTKIT_CONTAINERS_DIR, else
    /var/lib/virtkit/containers for root and ~/.local/share/virtkit/containers for anyone else."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    if os.geteuid() == 0:
        return Path("/var/lib/virtkit/containers")
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "virtkit/containers"


def sha256_of(f: IO[bytes]) -> str:
    """``sha256:<hex>`` of a stream read to its end."""
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def split_ref(ref: str) -> tuple[str, str]:
    """``name[:tag]`` -> (name, tag), tag ``latest`` by default (a ``:`` in a registry port is not a tag)."""
    name, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "latest")
    if not name or not tag or any(c.isspace() for c in ref):
        raise ImageError(f"image name {ref!r}: expected NAME[:TAG]")
    return name, tag


def full_ref(ref: str) -> str:
    """``name:tag`` with the default tag filled in."""
    return "{}:{}".format(*split_ref(ref))


def _decompress(f: IO[bytes], media_type: str) -> IO[bytes]:
    """A layer's uncompressed stream: plain, gzip or zstd by media type (or by its magic bytes)."""
    head = f.read(4)
    f.seek(0)
    if media_type.endswith("+zstd") or head == b"\x28\xb5\x2f\xfd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(f)
    if media_type.endswith("gzip") or head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f)
    return f


class Store:
    """The image store under ``root``: ``images/`` (an OCI image layout) and ``layers/<diff-id>/``."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or home())
        self.layout = self.root / "images"
        self.blobs = self.layout / "blobs" / "sha256"
        self.layers = self.root / "layers"
        self._new: list[Path] = []  # blobs and layers this process added (taken back if an import fails)
        for d in (self.blobs, self.layers):
            d.mkdir(parents=True, exist_ok=True)
        if not (self.layout / "oci-layout").exists():
            (self.layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        if not (self.layout / "index.json").exists():
            self._write_index({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []})

    # -- blobs and the index -------------------------------------------------------------------------
    def blob(self, digest: str) -> Path:
        """The path of blob ``digest`` (``sha256:<hex>``)."""
        return self.blobs / _hex(digest)

    def put_blob(self, f: IO[bytes], expect: str | None = None, what: str = "blob") -> tuple[str, int]:
        """Copy a stream into the store by its digest, checking ``expect``; (digest, size)."""
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".in-")
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            digest = "sha256:" + h.hexdigest()
            if expect is not None and digest != expect:
                raise ImageError(f"{what}: its content has digest {digest}, but the manifest says {expect} "
                                 "(a corrupt or altered image)")
            if not self.blob(digest).exists():
                self._new.append(self.blob(digest))
            os.replace(tmp, self.blob(digest))
            return digest, size
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_json(self, obj: Any) -> tuple[str, int]:
        """Store a JSON document as a blob; (digest, size)."""
        return self.put_blob(io.BytesIO(json.dumps(obj, separators=(",", ":")).encode()))

    def read_json(self, digest: str, what: str) -> Any:
        """A JSON blob, its digest checked."""
        try:
            data = self.blob(digest).read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{what} {digest} is missing from the store") from None
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise ImageError(f"{what} {digest}: the stored content does not match its digest")
        return json.loads(data)

    def index(self) -> dict[str, Any]:
        """The layout's ``index.json``."""
        return json.loads((self.layout / "index.json").read_text())

    def _write_index(self, idx: dict[str, Any]) -> None:
        tmp = self.layout / "index.json.tmp"
        tmp.write_text(json.dumps(idx, indent=1))
        os.replace(tmp, self.layout / "index.json")

    def tag(self, ref: str, manifest_digest: str, size: int) -> None:
        """Point ``name:tag`` at a manifest (moving the name if it pointed elsewhere)."""
        name, tag = split_ref(ref)
        full = f"{name}:{tag}"
        idx = self.index()
        idx["manifests"] = [m for m in idx["manifests"] if m.get("annotations", {}).get(REF_NAME) != full]
        idx["manifests"].append({"mediaType": MT_MANIFEST, "digest": manifest_digest, "size": size,
                                 "annotations": {REF_NAME: full}})
        self._write_index(idx)

    # -- finding images ------------------------------------------------------------------------------
    def images(self) -> list[dict[str, Any]]:
        """Every name in the store: ref, manifest digest, image id (the config digest), created, size."""
        out = []
        for m in self.index()["manifests"]:
            man = self.read_json(m["digest"], "manifest")
            cfg = self.read_json(man["config"]["digest"], "image config")
            out.append({"ref": m.get("annotations", {}).get(REF_NAME, "<none>"), "manifest": m["digest"],
                        "id": man["config"]["digest"], "created": cfg.get("created", ""),
                        "size": sum(layer["size"] for layer in man["layers"])})
        return out

    def _find(self, ref: str) -> tuple[dict[str, Any], bool]:
        """The index entry ``ref`` names, and whether by name (else by image id: a prefix of its config or
        manifest digest, tried when no name matches)."""
        entries = self.index()["manifests"]
        if not ref.startswith("sha256:"):
            full = full_ref(ref)
            hit = next((m for m in entries if m.get("annotations", {}).get(REF_NAME) == full), None)
            if hit is not None:
                return hit, True
        if ref.startswith("sha256:") or len(ref) >= 4 and all(c in "0123456789abcdef" for c in ref):
            prefix = ref if ref.startswith("sha256:") else "sha256:" + ref
            for m in entries:
                man = self.read_json(m["digest"], "manifest")
                if man["config"]["digest"].startswith(prefix) or m["digest"].startswith(prefix):
                    return m, False
        raise ImageError(f"image {ref!r} is not in the store (virtkit image list shows what is; "
                         "virtkit image import or build adds one)")

    def resolve(self, ref: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """``name[:tag]``, or an image id (prefix of its config digest): (manifest digest, manifest, config)."""
        hit, _ = self._find(ref)
        man = self.read_json(hit["digest"], "manifest")
        return hit["digest"], man, self.read_json(man["config"]["digest"], "image config")

    def remove(self, ref: str, keep_layers: set[str] | None = None) -> list[str]:
        """Untag ``ref`` (a name; an id untags every name of that image) and delete the blobs and unpacked
        layers nothing uses any more (``keep_layers``: diff ids containers still stand on); the names removed."""
        hit, by_name = self._find(ref)
        idx = self.index()
        gone = [m for m in idx["manifests"] if (m == hit if by_name else m["digest"] == hit["digest"])]
        idx["manifests"] = [m for m in idx["manifests"] if m not in gone]
        self._write_index(idx)
        self.collect(keep_layers)
        return [m.get("annotations", {}).get(REF_NAME, m["digest"]) for m in gone]

    def _live(self) -> tuple[set[str], set[str]]:
        """(hex digests of the blobs the index reaches, hex diff ids of their images' layers)."""
        blobs: set[str] = set()
        diffs: set[str] = set()
        for m in self.index()["manifests"]:
            man = self.read_json(m["digest"], "manifest")
            cfg = self.read_json(man["config"]["digest"], "image config")
            blobs |= {_hex(d) for d in (m["digest"], man["config"]["digest"], *(x["digest"] for x in man["layers"]))}
            diffs |= {_hex(d) for d in cfg.get("rootfs", {}).get("diff_ids", [])}
        return blobs, diffs

    def collect(self, keep_layers: set[str] | None = None) -> None:
        """Delete blobs no manifest in the index reaches, and unpacked layers none uses (nor ``keep_layers``)."""
        blobs, diffs = self._live()
        diffs |= set(keep_layers or ())
        for p in self.blobs.iterdir():
            if p.name not in blobs and not p.name.startswith(".in-"):  # (an import in progress keeps its file)
                p.unlink()
        for p in self.layers.iterdir():
            if p.name not in diffs and not p.name.startswith(".unpack-"):
                shutil.rmtree(p, ignore_errors=True)

    # -- importing -----------------------------------------------------------------------------------
    def import_path(self, path: str, name: str | None = None) -> list[str]:
        """Import an OCI image layout (a directory or a tar of one) or a ``docker save`` tarball; the names
        it added. Every blob's digest, and each layer's diff id, is checked before anything is named."""
        self._new = []
        try:
            return self._import(path, name)
        except BaseException:
            self._undo()
            raise

    def _undo(self) -> None:
        """Remove what a failed import added that no name in the index uses."""
        blobs, diffs = self._live()
        for p in self._new:
            if p.name not in blobs | diffs:
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        self._new = []

    def _import(self, path: str, name: str | None) -> list[str]:
        src: _Source
        if os.path.isdir(path):
            src = _DirSource(Path(path))
        else:
            try:
                src = _TarSource(tarfile.open(path, "r:*"))
            except (OSError, tarfile.TarError) as err:
                raise ImageError(f"{path}: not an image directory or tarball ({err})") from None
        with src:
            if src.has("index.json") and src.has("oci-layout"):
                return self._import_oci(src, name, path)
            if src.has("manifest.json"):
                return self._import_docker(src, name, path)
        raise ImageError(f"{path}: neither an OCI image layout (oci-layout, index.json) nor a docker save "
                         "tarball (manifest.json)")

    def _import_oci(self, src: _Source, name: str | None, path: str) -> list[str]:
        idx = src.json("index.json")
        refs = []
        for entry in _flatten(src, idx.get("manifests", []), path):
            notes = entry.get("annotations", {})
            ref = name or notes.get("io.containerd.image.name") or notes.get(REF_NAME)
            if not ref:
                raise ImageError(f"{path}: manifest {entry['digest']} has no name: give one with --name")
            if not name and ":" not in ref and "/" not in ref:  # a bare tag (skopeo's oci:DIR:TAG): the
                ref = f"{Path(path).name.split('.')[0]}:{ref}"  # image is named after the file
            raw = src.read(_blob_name(entry["digest"]), entry["digest"], "manifest")
            man = json.loads(raw)
            cfg_digest = man["config"]["digest"]
            self.put_blob(io.BytesIO(src.read(_blob_name(cfg_digest), cfg_digest, "image config")), cfg_digest)
            cfg = self.read_json(cfg_digest, "image config")
            self._put_layers(src, man["layers"], cfg, path)
            mdigest, size = self.put_blob(io.BytesIO(raw), entry["digest"], "manifest")
            self.tag(ref, mdigest, size)
            refs.append(full_ref(ref))
        return refs

    def _import_docker(self, src: _Source, name: str | None, path: str) -> list[str]:
        entries = src.json("manifest.json")
        if not isinstance(entries, list) or not entries:
            raise ImageError(f"{path}: manifest.json lists no image")
        refs = []
        for e in entries:
            cfg_raw = src.read(e["Config"], None, "image config")
            cfg_digest, cfg_size = self.put_blob(io.BytesIO(cfg_raw))
            cfg = json.loads(cfg_raw)
            diff_ids = cfg.get("rootfs", {}).get("diff_ids", [])
            if len(diff_ids) != len(e["Layers"]):
                raise ImageError(f"{path}: {len(e['Layers'])} layers but the config lists {len(diff_ids)} diff ids")
            layers = []
            for member, diff in zip(e["Layers"], diff_ids, strict=True):
                with src.open(member) as f:
                    digest, size = self.put_blob(f, diff, f"layer {member}")  # docker save layers are plain tars
                layers.append({"mediaType": MT_LAYER, "digest": digest, "size": size})
            self._put_layers(None, layers, cfg, path)
            man = {"schemaVersion": 2, "mediaType": MT_MANIFEST,
                   "config": {"mediaType": MT_CONFIG, "digest": cfg_digest, "size": cfg_size}, "layers": layers}
            mdigest, size = self.put_json(man)
            for ref in ([name] if name else e.get("RepoTags") or []):
                self.tag(ref, mdigest, size)
                refs.append(full_ref(ref))
            if not refs:
                raise ImageError(f"{path}: the image has no RepoTags: give it a name with --name")
        return refs

    def _put_layers(self, src: _Source | None, layers: list[dict[str, Any]], cfg: dict[str, Any],
                    path: str) -> None:
        """Copy each layer blob in (digest checked), then unpack it, its diff id checked against the config."""
        diff_ids = cfg.get("rootfs", {}).get("diff_ids", [])
        if len(diff_ids) != len(layers):
            raise ImageError(f"{path}: the manifest has {len(layers)} layers, the config {len(diff_ids)} diff ids")
        for layer, diff in zip(layers, diff_ids, strict=True):
            if src is not None:
                with src.open(_blob_name(layer["digest"])) as f:
                    self.put_blob(f, layer["digest"], f"layer {layer['digest']}")
            self.unpack(layer, diff)

    def unpack(self, layer: dict[str, Any], diff_id: str) -> Path:
        """The directory of a layer (unpacked now if it is not yet), its uncompressed digest checked."""
        out = self.layers / self.blob(diff_id).name
        if out.is_dir():
            return out
        tmp = Path(tempfile.mkdtemp(dir=self.layers, prefix=".unpack-"))
        try:
            with open(self.blob(layer["digest"]), "rb") as raw:
                stream = _HashingReader(_decompress(raw, layer.get("mediaType", MT_LAYER)))
                try:
                    with tarfile.open(fileobj=stream, mode="r|") as tar:
                        extract_layer(tar, tmp)
                except tarfile.TarError as err:
                    raise ImageError(f"layer {layer['digest']}: not a tar archive ({err})") from None
                stream.drain()
            if stream.digest() != diff_id:
                raise ImageError(f"layer {layer['digest']}: its content has diff id {stream.digest()}, "
                                 f"the image config says {diff_id}")
            os.rename(tmp, out)
            self._new.append(out)
            return out
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def layer_dirs(self, cfg: dict[str, Any]) -> list[Path]:
        """An image's unpacked layers, bottom first."""
        dirs = [self.layers / d.split(":")[1] for d in cfg.get("rootfs", {}).get("diff_ids", [])]
        for d in dirs:
            if not d.is_dir():
                raise ImageError(f"layer {d.name} is not unpacked: import the image again")
        return dirs

    def add_layer(self, tar: Path) -> tuple[dict[str, Any], str]:
        """Store an uncompressed layer tarball and unpack it; (its descriptor, its diff id)."""
        with open(tar, "rb") as f:
            digest, size = self.put_blob(f)
        desc = {"mediaType": MT_LAYER, "digest": digest, "size": size}
        self.unpack(desc, digest)
        return desc, digest

    def add_image(self, ref: str, layers: list[dict[str, Any]], diff_ids: list[str], config: dict[str, Any],
                  history: list[dict[str, Any]]) -> str:
        """Name a new image made of stored ``layers`` (bottom first) and ``config``; its id."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        cfg = {"created": now, "architecture": "amd64", "os": "linux", "config": config,
               "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": history}
        cdigest, csize = self.put_json(cfg)
        man = {"schemaVersion": 2, "mediaType": MT_MANIFEST,
               "config": {"mediaType": MT_CONFIG, "digest": cdigest, "size": csize}, "layers": layers}
        mdigest, msize = self.put_json(man)
        self.tag(ref, mdigest, msize)
        return cdigest

    def export(self, ref: str, out: str) -> None:
        """Write image ``ref`` as an OCI image layout tarball (what ``ctr image import`` reads) that is also a
        ``docker save`` tarball (``manifest.json``: what ``docker load`` reads), as Docker 25's are."""
        mdigest, man, _ = self.resolve(ref)
        name, tag = split_ref(ref)
        idx = {"schemaVersion": 2, "manifests": [{"mediaType": MT_MANIFEST, "digest": mdigest,
                                                  "size": self.blob(mdigest).stat().st_size,
                                                  "annotations": {REF_NAME: f"{name}:{tag}",
                                                                  "io.containerd.image.name": f"{name}:{tag}"}}]}
        legacy = [{"Config": _blob_name(man["config"]["digest"]), "RepoTags": [f"{name}:{tag}"],
                   "Layers": [_blob_name(layer["digest"]) for layer in man["layers"]]}]  # docker load < 25 reads it
        with tarfile.open(out, "w") as tar:
            for arc, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                              ("index.json", json.dumps(idx).encode()),
                              ("manifest.json", json.dumps(legacy).encode())):
                info = tarfile.TarInfo(arc)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            for d in [mdigest, man["config"]["digest"], *(layer["digest"] for layer in man["layers"])]:
                tar.add(self.blob(d), _blob_name(d))


def _hex(digest: str) -> str:
    """The hex part of a ``sha256:<64 hex>`` digest; ImageError for anything else (a path must never come
    from a digest that is not one)."""
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
        raise ImageError(f"digest {digest!r}: only sha256 digests are supported")
    return hexd


def _blob_name(digest: str) -> str:
    return f"blobs/sha256/{_hex(digest)}"


def _flatten(src: _Source, entries: list[dict[str, Any]], path: str) -> Iterator[dict[str, Any]]:
    """The image manifests an index lists, nested indexes opened (linux/amd64 picked from a multi-arch one)."""
    for e in entries:
        mt = e.get("mediaType", MT_MANIFEST)
        if mt in (MT_INDEX, DOCKER_LIST):
            sub = json.loads(src.read(_blob_name(e["digest"]), e["digest"], "image index"))
            ms = sub.get("manifests", [])
            pick = [m for m in ms if m.get("platform", {}).get("architecture") == "amd64"] or ms[:1]
            for m in pick:
                m = dict(m, annotations={**e.get("annotations", {}), **m.get("annotations", {})})
                yield from _flatten(src, [m], path)
        elif mt in (MT_MANIFEST, DOCKER_MANIFEST):
            yield e
        else:
            raise ImageError(f"{path}: index entry {e.get('digest')} has media type {mt!r}, not an image manifest")


class _HashingReader(io.RawIOBase):
    """A read-only stream that hashes what passes through it (the layer's diff id)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.h = f, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Read to the end (tar's trailing blocks count in the digest)."""
        while self.read(1 << 20):
            pass

    def digest(self) -> str:
        return "sha256:" + self.h.hexdigest()


class _Source(abc.ABC):
    """Files of an image being imported, from a directory or a tarball (the two kinds below)."""

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc: object) -> None:  # noqa: B027 (a directory has nothing to close; a tar does)
        """Release what the source holds (nothing, unless a kind says otherwise)."""

    @abc.abstractmethod
    def has(self, name: str) -> bool:
        """Whether the image has the file ``name`` (a path relative to its top)."""

    @abc.abstractmethod
    def open(self, name: str) -> IO[bytes]:
        """The file ``name`` for reading; ImageError when it is missing."""

    def read(self, name: str, digest: str | None, what: str) -> bytes:
        """A whole file, its digest checked when one is given."""
        with self.open(name) as f:
            data = f.read()
        if digest is not None and "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise ImageError(f"{what} {name}: its content does not match its digest {digest}")
        return data

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name, None, name))
        except ValueError as err:
            raise ImageError(f"{name}: not valid JSON ({err})") from None


class _DirSource(_Source):
    def __init__(self, root: Path) -> None:
        self.root = root

    def has(self, name: str) -> bool:
        return (self.root / name).is_file()

    def open(self, name: str) -> IO[bytes]:
        p = (self.root / name).resolve()
        if not p.is_relative_to(self.root.resolve()) or not p.is_file():
            raise ImageError(f"{self.root}: {name} is missing")
        return open(p, "rb")


class _TarSource(_Source):
    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.members = {os.path.normpath(m.name.lstrip("/")): m for m in tar.getmembers() if m.isfile()}

    def __exit__(self, *exc: object) -> None:
        self.tar.close()

    def has(self, name: str) -> bool:
        return os.path.normpath(name) in self.members

    def open(self, name: str) -> IO[bytes]:
        m = self.members.get(os.path.normpath(name))
        f = self.tar.extractfile(m) if m else None
        if f is None:
            raise ImageError(f"the tarball has no {name}")
        return f


# -- layers -------------------------------------------------------------------------------------------
def _safe_parent(root: Path, parts: list[str], entry: str) -> Path:
    """The directory for an entry's last component: each parent must be a real directory inside ``root``
    (made if missing); a symlink on the way is an error, so nothing is ever written through one."""
    d = root
    for p in parts[:-1]:
        d = d / p
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            os.mkdir(d, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise ImageError(f"layer entry {entry!r} goes through the symlink {p!r}: refused (it could write "
                             "outside the image)")
        if not stat.S_ISDIR(st.st_mode):
            raise ImageError(f"layer entry {entry!r}: {p!r} is not a directory")
    return d


def _entry_parts(name: str) -> list[str]:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ImageError(f"layer entry {name!r} has a '..' component: refused (it could write outside the image)")
    return parts


def extract_layer(tar: tarfile.TarFile, root: Path) -> None:
    """Unpack one layer tarball into ``root`` (overlay form: ``.wh.NAME`` becomes a 0/0 character device,
    ``.wh..wh..opq`` the ``trusted.overlay.opaque`` attribute of its directory)."""
    root_user = os.geteuid() == 0
    dirs: list[tuple[Path, tarfile.TarInfo]] = []
    for m in tar:
        parts = _entry_parts(m.name)
        if not parts:
            continue
        parent = _safe_parent(root, parts, m.name)
        base = parts[-1]
        if base == OPAQUE:
            os.setxattr(parent, "trusted.overlay.opaque", b"y")
            continue
        if base.startswith(WH):
            target = parent / base[len(WH):]
            _clear(target)
            if not root_user:
                raise ImageError(f"layer entry {m.name!r}: a whiteout needs a device node, which only root can "
                                 "make (a rootless import cannot keep it)")
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
            continue
        target = parent / base
        if m.isdir():
            try:
                if not stat.S_ISDIR(os.lstat(target).st_mode):
                    _clear(target)
                    os.mkdir(target, 0o700)
            except FileNotFoundError:
                os.mkdir(target, 0o700)
            dirs.append((target, m))
            continue
        _clear(target)
        if m.isreg():
            src = tar.extractfile(m)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)  # type: ignore[arg-type]
        elif m.issym():
            os.symlink(m.linkname, target)
        elif m.islnk():
            lparts = _entry_parts(m.linkname)
            src_path = _safe_parent(root, lparts, m.linkname) / lparts[-1] if lparts else root
            if not lparts or not os.path.lexists(src_path):
                raise ImageError(f"layer entry {m.name!r}: hard link to {m.linkname!r}, which is not in this layer")
            os.link(src_path, target, follow_symlinks=False)
        elif m.ischr() or m.isblk() or m.isfifo():
            if not root_user and not m.isfifo():
                raise ImageError(f"layer entry {m.name!r} is a device node: a rootless import cannot make it")
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
            os.mknod(target, kind | 0o600, os.makedev(m.devmajor, m.devminor))
        else:
            raise ImageError(f"layer entry {m.name!r}: unsupported tar entry type {m.type!r}")
        _attrs(target, m, root_user)
    for target, m in reversed(dirs):  # directories last: their modes may forbid writing into them
        _attrs(target, m, root_user)


def _clear(target: Path) -> None:
    """Remove what an entry replaces (a later entry of the same name wins, as tar does)."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(target)
    else:
        os.unlink(target)


def _attrs(target: Path, m: tarfile.TarInfo, root_user: bool) -> None:
    if root_user:
        os.lchown(target, m.uid, m.gid)
    if not m.issym():
        os.chmod(target, m.mode & 0o7777)
    os.utime(target, (m.mtime, m.mtime), follow_symlinks=False)


def tar_layer(src: Path, out: Path, overlay_upper: bool = False) -> None:
    """Write directory ``src`` as a layer tarball (``overlay_upper``: an overlayfs upper directory, whose
    0/0 devices and opaque directories become ``.wh.`` entries). Entries are sorted: the same tree makes the
    same digest."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            rel = os.path.relpath(dirpath, src)
            for name in sorted(dirnames + filenames):
                path = os.path.join(dirpath, name)
                arc = os.path.normpath(os.path.join(rel, name))
                st = os.lstat(path)
                if overlay_upper and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    info = tarfile.TarInfo(os.path.normpath(os.path.join(os.path.dirname(arc), WH + name)))
                    info.mtime = int(st.st_mtime)
                    tar.addfile(info)
                    continue
                info = tar.gettarinfo(path, arc)
                info.uname = info.gname = ""
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
                if overlay_upper and stat.S_ISDIR(st.st_mode):
                    try:
                        opaque = os.getxattr(path, "trusted.overlay.opaque") == b"y"
                    except OSError:
                        opaque = False
                    if opaque:
                        w = tarfile.TarInfo(os.path.join(arc, OPAQUE))
                        w.mtime = int(st.st_mtime)
                        tar.addfile(w)
