"""Signed releases of a model, as a TUF repository (python-tuf) that units verify by themselves.

A release is one version of one model: every file the model needs (its manifest, ``.tflite``, verification set,
signature, parity report and, unless left out, the ``.h5`` heatmaps need), published as TUF targets under
``models/NAME/VERSION/`` with ``release.json`` listing them, and ``models/NAME/latest.json`` naming the newest. TUF
signs what a plain signature cannot: the targets role signs the files' hashes and lengths, the snapshot role the
targets metadata's version (no mix-and-match of old and new), the timestamp role the snapshot's version with a short
expiry (no freeze: a unit refuses a repository nobody refreshed), and every version number only grows (no rollback to
an older release). The root role names the keys of all four, with a threshold, and is rotated by a new root signed by
the old keys and the new.

Layout (consistent snapshots, so a repository can be updated while units read it)::

    REPO/metadata/1.root.json ... N.root.json, timestamp.json, N.snapshot.json, N.targets.json
    REPO/targets/models/NAME/VERSION/<sha256>.<file>

Keys are PEM files in a keys folder, ``<role>-<keyid[:8]>.pem`` (mode 600); the root's belong offline, on a machine
that signs nothing else (docs/releases.md). The console serves ``REPO`` read-only; the transport need not be trusted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from core import manifest as mf
from edge.modelstore import InstallError, files_of, source_manifest

ROLES = ("root", "targets", "snapshot", "timestamp")
EXPIRY_DAYS = {"root": 365.0, "targets": 365.0, "snapshot": 30.0, "timestamp": 7.0}
SERIALIZER = JSONSerializer(compact=False)


class ReleaseError(ValueError):
    """The repository, the keys or the model cannot make a release; the message says which and why."""


def _expiry(role: str, days: float | None = None) -> datetime:
    when = datetime.now(timezone.utc) + timedelta(days=EXPIRY_DAYS[role] if days is None else days)
    return when.replace(microsecond=0)


def _write_key(keys: Path, role: str, signer: CryptoSigner) -> Path:
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = keys / f"{role}-{signer.public_key.keyid[:8]}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(signer.private_bytes)
    return path


def _signers(keys: Path, keyids: list[str]) -> list[CryptoSigner]:
    """The signers among the keys folder's PEM files whose key ids are ``keyids``."""
    found = []
    for pem in sorted(keys.glob("*.pem")):
        signer = CryptoSigner(load_pem_private_key(pem.read_bytes(), None))
        if signer.public_key.keyid in keyids:
            found.append(signer)
    return found


@dataclass
class Repo:
    """A TUF repository on disk and the keys that sign it."""

    path: Path
    keys: Path

    @property
    def metadata(self) -> Path:
        return self.path / "metadata"

    def _file(self, role: str, version: int | None = None) -> Path:
        if role == "timestamp":
            return self.metadata / "timestamp.json"
        if role == "root" and version is None:
            return self.metadata / "root.json"
        v = version if version is not None else self.load(role).signed.version
        return self.metadata / f"{v}.{role}.json"

    def load(self, role: str) -> Metadata[Any]:
        if role in ("timestamp", "root"):
            path = self._file(role)
        else:  # the version the snapshot (or, for the snapshot, the timestamp) names
            named = self.load("timestamp").signed.snapshot_meta if role == "snapshot" else \
                self.load("snapshot").signed.meta[f"{role}.json"]
            path = self.metadata / f"{named.version}.{role}.json"
        if not path.is_file():
            raise ReleaseError(f"{path}: missing; is {self.path} a repository made by 'defect-convert release init'?")
        return Metadata.from_file(str(path))

    def root(self) -> Root:
        root: Root = self.load("root").signed
        return root

    def sign(self, md: Metadata[Any], role: str) -> None:
        """Sign ``md`` with every key of ``role`` in the keys folder; at least the role's threshold of them."""
        r = self.root().roles[role]
        signers = _signers(self.keys, r.keyids)
        if len(signers) < r.threshold:
            raise ReleaseError(f"{self.keys}: {len(signers)} of the {role} role's keys here, its threshold is "
                               f"{r.threshold}")
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)

    def write(self, md: Metadata[Any], role: str) -> None:
        """Write atomically: a unit reading the repository meanwhile sees the old file or the new, never half."""
        path = self._file(role, md.signed.version)
        tmp = path.with_name(f".{path.name}.tmp")
        md.to_file(str(tmp), serializer=SERIALIZER)
        tmp.replace(path)
        if role == "root":
            shutil.copyfile(path, self.metadata / ".root.json.tmp")
            (self.metadata / ".root.json.tmp").replace(self.metadata / "root.json")

    def bump(self, role: str, md: Metadata[Any], days: float | None = None) -> None:
        md.signed.version += 1
        md.signed.expires = _expiry(role, days)
        self.sign(md, role)
        self.write(md, role)

    def chain(self, targets: Metadata[Targets] | None = None, *, timestamp_days: float | None = None) -> None:
        """After the targets changed (when given): a new snapshot naming them, and a new timestamp naming it."""
        snapshot = self.load("snapshot")
        if targets is not None:
            snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        self.bump("snapshot", snapshot)
        timestamp = self.load("timestamp")
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        self.bump("timestamp", timestamp, timestamp_days)


def init(path: Path, keys: Path, *, root_keys: int = 1, threshold: int = 1) -> Repo:
    """A new, empty repository with fresh keys for each role (``root_keys`` for the root, ``threshold`` of them
    needed to sign it)."""
    if not 1 <= threshold <= root_keys:
        raise ReleaseError(f"a threshold of {threshold} needs at least that many root keys (1 <= threshold <= keys)")
    if (path / "metadata").exists():
        raise ReleaseError(f"{path}: already a repository")
    repo = Repo(path, keys)
    repo.metadata.mkdir(parents=True)
    (path / "targets").mkdir(exist_ok=True)
    root = Metadata(Root(expires=_expiry("root"), consistent_snapshot=True))
    signers: dict[str, list[CryptoSigner]] = {}
    for role in ROLES:
        signers[role] = [CryptoSigner.generate_ed25519() for _ in range(root_keys if role == "root" else 1)]
        for s in signers[role]:
            root.signed.add_key(s.public_key, role)
            _write_key(keys, role, s)
    root.signed.roles["root"].threshold = threshold
    for s in signers["root"]:
        root.sign(s, append=True)
    repo.write(root, "root")
    targets = Metadata(Targets(expires=_expiry("targets")))
    targets.sign(signers["targets"][0])
    repo.write(targets, "targets")
    snapshot = Metadata(Snapshot(expires=_expiry("snapshot")))
    snapshot.sign(signers["snapshot"][0])
    repo.write(snapshot, "snapshot")
    timestamp = Metadata(Timestamp(expires=_expiry("timestamp")))
    timestamp.sign(signers["timestamp"][0])
    repo.write(timestamp, "timestamp")
    return repo


@dataclass(frozen=True)
class Published:
    name: str
    version: int
    files: list[str]
    size_bytes: int


def _release_files(source: Path, with_h5: bool) -> tuple[str, list[tuple[str, Path]]]:
    """(model name, [(name in the release, local file)]): what ``defect-edge models add`` installs, every file of
    every folder, and the parity report when it is there."""
    manifest_path = source_manifest(source)
    try:
        m = mf.load(manifest_path)
        files = files_of(manifest_path, m)
    except (mf.ManifestError, InstallError) as e:
        raise ReleaseError(str(e)) from None
    out: list[tuple[str, Path]] = []
    for f in files:
        if f.suffix == ".h5" and not with_h5:
            continue
        if f.is_dir():
            out += [(str(p.relative_to(manifest_path.parent)), p) for p in sorted(f.rglob("*")) if p.is_file()]
        else:
            out.append((f.name, f))
    for extra in (f"{m.name}.parity.json", f"{m.name}.parity.md"):
        if (manifest_path.parent / extra).is_file():
            out.append((extra, manifest_path.parent / extra))
    return m.name, out


def publish(repo: Repo, source: Path, *, version: int | None = None, with_h5: bool = True) -> Published:
    """Publish the model ``source`` names (DIR/NAME, as the converter wrote it) as its next version (or
    ``version``, which must be newer than any published)."""
    name, files = _release_files(source, with_h5)
    targets = repo.load("targets")
    latest_path = f"models/{name}/latest.json"
    latest = targets.signed.targets.get(latest_path)
    current = int(latest.custom.get("version", 0)) if latest else 0
    version = current + 1 if version is None else version
    if version <= current:
        raise ReleaseError(f"{name} version {version} is not newer than the published {current}")
    base = f"models/{name}/{version}"
    with tempfile.TemporaryDirectory() as tmp:
        doc = {"name": name, "version": version, "files": [n for n, _ in files],
               "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        listing = Path(tmp) / "release.json"
        listing.write_text(json.dumps(doc, indent=1) + "\n")
        entries = [*files, ("release.json", listing)]
        for rel, local in entries:
            tf = TargetFile.from_file(f"{base}/{rel}", str(local), ["sha256"])
            dest = repo.path / "targets" / base / Path(rel).parent / f"{tf.hashes['sha256']}.{Path(rel).name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, dest)
            targets.signed.targets[tf.path] = tf
        pointer = TargetFile.from_file(latest_path, str(listing), ["sha256"])
        pointer.unrecognized_fields["custom"] = {"version": version}
        dest = repo.path / "targets" / f"models/{name}" / f"{pointer.hashes['sha256']}.latest.json"
        shutil.copyfile(listing, dest)
        targets.signed.targets[latest_path] = pointer
    repo.bump("targets", targets)
    repo.chain(targets)
    return Published(name, version, [n for n, _ in files] + ["release.json"], sum(p.stat().st_size for _, p in files))


def refresh(repo: Repo, *, days: float | None = None) -> datetime:
    """A new snapshot and timestamp with fresh expiry: run it more often than the timestamp expires (a systemd timer
    on the host with the timestamp key), or units refuse the repository as frozen."""
    repo.chain(timestamp_days=days)
    expires: datetime = repo.load("timestamp").signed.expires
    return expires


def rotate(repo: Repo, role: str) -> str:
    """A new key for ``role`` in place of its old ones: a new root names it, signed by the old root keys and (for
    the root itself) the new; the role's metadata is re-signed with it. Returns the new key id."""
    if role not in ROLES:
        raise ReleaseError(f"no role {role!r}; the roles are {', '.join(ROLES)}")
    root_md = repo.load("root")
    root: Root = root_md.signed
    old = list(root.roles[role].keyids)
    old_root_signers = _signers(repo.keys, root.roles["root"].keyids)
    if len(old_root_signers) < root.roles["root"].threshold:  # units would refuse a root signed by fewer
        raise ReleaseError(f"{repo.keys}: {len(old_root_signers)} of the root role's keys here, its threshold is "
                           f"{root.roles['root'].threshold}: a new root needs them (bring the offline ones)")
    new = CryptoSigner.generate_ed25519()
    _write_key(repo.keys, role, new)
    for keyid in old:
        root.revoke_key(keyid, role)
    root.add_key(new.public_key, role)
    if role == "root":
        root.roles["root"].threshold = 1
    root.version += 1
    root.expires = _expiry("root")
    root_md.signatures.clear()
    for s in [*old_root_signers, *_signers(repo.keys, root.roles["root"].keyids)]:
        if s.public_key.keyid not in root_md.signatures:
            root_md.sign(s, append=True)
    repo.write(root_md, "root")
    for pem in repo.keys.glob(f"{role}-*.pem"):  # the old private keys go: they sign nothing any more
        if pem.stem.split("-", 1)[1] in {k[:8] for k in old}:
            pem.unlink()
    if role == "targets":
        repo.bump("targets", (targets := repo.load("targets")))
        repo.chain(targets)
    elif role in ("snapshot", "timestamp"):
        repo.chain()
    return str(new.public_key.keyid)
