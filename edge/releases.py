"""``defect-edge models update NAME``: a model release fetched from the console's TUF repository, verified by the
unit itself, proven on its own runtime, installed whole, and the last few kept for a rollback.

The unit trusts one file it was given at install time, the repository's root metadata (``release-root.json``);
everything else it fetches is checked by python-tuf's client against it (``tuf.ngclient``): signatures by the keys and
thresholds the root names, versions that only grow (an older release replayed is refused), expiry (a repository nobody
refreshed is refused as frozen), and every file's length and sha256 as the signed targets record them (a flipped byte
is refused). So the transport need not be trusted: plain HTTP from the console, or any mirror.

Before downloading, the unit checks its free disk. A download cut off (a restart, the network gone) resumes where it
stopped: targets are content-addressed (their sha256 is in the URL), so a partial file kept under the state folder is
continued with an HTTP Range request, and thrown away if the whole then fails its hash. The fetched release is kept in
``<state>/models/NAME/VERSION/``; it goes into the models folder through :func:`edge.modelstore.add` (every file
checked, parity re-proven here, the manifest moved last), and the newest ``keep`` releases stay for a rollback.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile
from tuf.ngclient import FetcherInterface, Updater

from core.verify import VerifyReport
from edge.modelstore import InstallError, add

CHUNK = 256 * 1024


class ReleaseError(InstallError):
    """A release that cannot be fetched, trusted or installed; the message says which and why, on one line."""


class Answer(Protocol):
    """A server's answer to one request for a file from ``start``: what urllib3's response is, and what
    :class:`edge.mqttfetch.MqttTransport` gives for a console answering over the broker."""

    @property
    def status(self) -> int: ...

    def stream(self, amt: int) -> Iterator[bytes]: ...

    def close(self) -> None: ...

    def release_conn(self) -> None: ...

    def drain_conn(self) -> None: ...


class Transport(Protocol):
    def get(self, url: str, start: int) -> Answer:
        """The file at ``url`` from byte ``start`` (the whole with status 200, from ``start`` with 206)."""
        ...

    def close(self) -> None:
        """A fetch is over: let go of connections until the next."""
        ...


def _done(r: Answer) -> None:
    """Read an unwanted answer's body before its connection goes back to the pool: left unread, the next request
    on that connection reads it as its own answer's start."""
    r.drain_conn()
    r.release_conn()


class HttpTransport:
    """Plain HTTP(S), through any mirror: a Range request from ``start``."""

    def __init__(self, timeout_s: float = 30.0):
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s))

    def get(self, url: str, start: int) -> Answer:
        headers = {"Range": f"bytes={start}-"} if start else {}
        try:
            r = self.http.request("GET", url, headers=headers, preload_content=False)
        except urllib3.exceptions.TimeoutError as e:
            raise tuf_errors.SlowRetrievalError(f"{url}: {e}") from e
        except urllib3.exceptions.HTTPError as e:
            raise tuf_errors.DownloadError(f"{url}: {e}") from e
        return r

    def close(self) -> None:
        self.http.clear()


class ResumingFetcher(FetcherInterface):
    """python-tuf's fetcher, resuming targets: each URL's bytes so far are kept in ``partial/`` and continued from
    where they stopped; a server that answers the whole file (200) instead starts it over."""

    def __init__(self, partial: Path, transport: Transport | None = None):
        self.partial = partial
        self.transport = transport or HttpTransport()
        self.resumed_bytes = 0
        self.downloaded_bytes = 0

    def part(self, sha256: str) -> Path:
        """The partial file of the target with this sha256 (its URL's name begins with it): the same from any
        mirror, so a download begun through one is continued through another."""
        return self.partial / sha256

    def _get(self, url: str, start: int) -> Answer:
        return self.transport.get(url, start)

    def _fetch(self, url: str) -> Iterator[bytes]:
        if "/targets/" not in url:  # metadata: small, and never resumed (its contents change under one name)
            r = self._get(url, 0)
            if r.status >= 400:  # a 404 is how a repository says "no newer root": expected
                _done(r)
                raise tuf_errors.DownloadHTTPError(f"HTTP {r.status} for {url}", r.status)
            return self._stream(r, None)
        part = self.part(url.rpartition("/")[2].partition(".")[0])
        have = part.stat().st_size if part.is_file() else 0
        r = self._get(url, have)
        if r.status == 416:  # what we have is all there is (or more): start again
            _done(r)
            part.unlink(missing_ok=True)
            have, r = 0, self._get(url, 0)
        if r.status >= 400:
            _done(r)
            raise tuf_errors.DownloadHTTPError(f"HTTP {r.status} for {url}", r.status)
        if r.status != 206:
            have = 0
        return self._resume(r, part, have)

    def _stream(self, r: Answer, sink: Any) -> Iterator[bytes]:
        complete = False
        try:
            for chunk in r.stream(CHUNK):
                if sink is not None:
                    sink.write(chunk)
                    sink.flush()
                self.downloaded_bytes += len(chunk)
                yield chunk
            complete = True
        except urllib3.exceptions.TimeoutError as e:
            raise tuf_errors.SlowRetrievalError(str(e)) from e
        except urllib3.exceptions.HTTPError as e:
            raise tuf_errors.DownloadError(str(e)) from e
        finally:
            if not complete:  # cut off with its body half read: the connection must not serve the next request
                r.close()
            r.release_conn()

    def _resume(self, r: Answer, part: Path, have: int) -> Iterator[bytes]:
        part.parent.mkdir(parents=True, exist_ok=True)
        if have:
            self.resumed_bytes += have
            with part.open("rb") as old:
                while chunk := old.read(CHUNK):
                    yield chunk
        with part.open("ab" if have else "wb") as sink:
            yield from self._stream(r, sink)


@dataclass(frozen=True)
class Fetched:
    name: str
    version: int
    folder: Path  # <state>/models/NAME/VERSION, holding NAME.json and the rest
    files: list[str]
    downloaded_bytes: int
    resumed_bytes: int

    @property
    def source(self) -> Path:
        """DIR/NAME, as ``models add`` takes it."""
        return self.folder / self.name

    @property
    def manifest(self) -> Path:
        return self.folder / f"{self.name}.json"


def _refused(e: Exception) -> str:
    """What python-tuf refused, as a person reads it."""
    kinds = [(tuf_errors.ExpiredMetadataError, "expired metadata (is the repository's timestamp refreshed?)"),
             (tuf_errors.UnsignedMetadataError, "metadata not signed by the keys the trusted root names"),
             (tuf_errors.BadVersionNumberError, "an older version than one already trusted (a rollback)"),
             (tuf_errors.EqualVersionNumberError, "a version already trusted, with other contents"),
             (tuf_errors.LengthOrHashMismatchError, "a file whose length or sha256 is not the signed one"),
             (tuf_errors.DownloadLengthMismatchError, "a file longer than the signed length")]
    for kind, words in kinds:
        if isinstance(e, kind):
            return f"refused {words}: {e}"
    if isinstance(e, tuf_errors.DownloadError):
        return f"cannot download: {e.__cause__ or e}"
    return f"refused: {e}"


class Releases:
    """The unit's side of a TUF repository at ``url`` (``<url>/metadata/``, ``<url>/targets/``)."""

    def __init__(self, url: str, trusted_root: Path, state: Path, *, keep: int = 3, reserve_mb: float = 100.0,
                 transport: Transport | None = None):
        self.url = url.rstrip("/")
        self.trusted_root = trusted_root
        self.state = state
        self.keep = max(1, keep)
        self.reserve_bytes = int(reserve_mb * 1e6)
        self.fetcher = ResumingFetcher(state / "partial", transport)

    def _updater(self) -> Updater:
        metadata = self.state / "metadata"
        metadata.mkdir(parents=True, exist_ok=True)
        if not (metadata / "root.json").is_file():
            if not self.trusted_root.is_file():
                raise ReleaseError(f"{self.trusted_root}: no trusted root; copy the repository's root.json there "
                                   "when the unit is installed (docs/releases.md)")
            shutil.copyfile(self.trusted_root, metadata / "root.json")
        u = Updater(str(metadata), f"{self.url}/metadata/", str(self.state / "downloads"), f"{self.url}/targets/",
                    fetcher=self.fetcher, bootstrap=None)
        try:
            u.refresh()
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
            raise ReleaseError(f"repository {self.url}: {_refused(e)}") from None
        return u

    def _target(self, u: Updater, path: str) -> TargetFile:
        info = u.get_targetinfo(path)
        if info is None:
            raise ReleaseError(f"repository {self.url}: no {path} (not published, or not signed)")
        return info

    def _download(self, u: Updater, info: TargetFile, dest: Path) -> None:
        part = self.fetcher.part(info.hashes["sha256"])
        try:
            u.download_target(info, str(dest))
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
            if isinstance(e, (tuf_errors.RepositoryError, tuf_errors.DownloadLengthMismatchError)):
                part.unlink(missing_ok=True)  # a bad whole: never resumed
            raise ReleaseError(f"{info.path}: {_refused(e)}") from None
        part.unlink(missing_ok=True)

    def fetch(self, name: str, version: int | None = None) -> Fetched:
        """The release (the newest, or ``version``), every file verified, in ``<state>/models/NAME/VERSION``."""
        if not name or "/" in name or name.startswith("."):
            raise ReleaseError(f"{name!r} is not a model name")
        try:
            return self._fetch(name, version)
        finally:
            self.fetcher.transport.close()

    def _fetch(self, name: str, version: int | None) -> Fetched:
        u = self._updater()
        pointer = f"models/{name}/latest.json" if version is None else f"models/{name}/{version}/release.json"
        listing_info = self._target(u, pointer)
        work = self.state / "models" / name
        work.mkdir(parents=True, exist_ok=True)
        listing_path = work / ".listing.json"
        self._download(u, listing_info, listing_path)
        doc = json.loads(listing_path.read_text())
        version = int(doc["version"])
        base = f"models/{name}/{version}"
        infos = [(rel, self._target(u, f"{base}/{rel}")) for rel in doc["files"]]
        folder = work / str(version)
        if (folder / ".complete").is_file():
            return Fetched(name, version, folder, doc["files"], 0, 0)
        need = sum(i.length for _, i in infos) * 2  # the release here, and its copy staged in the models folder
        free = shutil.disk_usage(self.state).free
        if free - need < self.reserve_bytes:
            raise ReleaseError(f"{name} {version}: {need / 1e6:.0f} MB needed and {self.reserve_bytes / 1e6:.0f} MB "
                               f"kept free, {free / 1e6:.0f} MB free in {self.state}")
        before = (self.fetcher.downloaded_bytes, self.fetcher.resumed_bytes)
        incoming = work / f".{version}.incoming"
        for rel, info in infos:
            dest = incoming / rel
            if not (dest.is_file() and dest.stat().st_size == info.length):
                dest.parent.mkdir(parents=True, exist_ok=True)
                self._download(u, info, dest)
        (incoming / ".complete").write_text(json.dumps(doc))
        if folder.exists():
            shutil.rmtree(folder)
        incoming.replace(folder)
        return Fetched(name, version, folder, doc["files"], self.fetcher.downloaded_bytes - before[0],
                       self.fetcher.resumed_bytes - before[1])

    def kept(self, name: str) -> list[int]:
        """The complete releases of ``name`` kept here, newest first."""
        folder = self.state / "models" / name
        if not folder.is_dir():
            return []
        return sorted((int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / ".complete").is_file()),
                      reverse=True)

    def installed(self, name: str) -> int | None:
        """The release of ``name`` last installed from here, or None."""
        marker = self.state / "models" / name / "installed"
        return int(marker.read_text()) if marker.is_file() else None

    def _put(self, fetched: Fetched, models_dir: Path, threads: int | None, min_agreement: float,
             memory_budget_mb: float) -> VerifyReport:
        report = add(fetched.source, models_dir, num_threads=threads, min_agreement=min_agreement,
                     memory_budget_mb=memory_budget_mb)
        marker = self.state / "models" / fetched.name / "installed"
        marker.with_suffix(".tmp").write_text(str(fetched.version))
        marker.with_suffix(".tmp").replace(marker)
        return report

    def install(self, name: str, models_dir: Path, version: int | None = None, *, threads: int | None = None,
                min_agreement: float = 0.99, memory_budget_mb: float = 0.0) -> tuple[Fetched, VerifyReport]:
        """Fetch (unless kept) and install into ``models_dir``; older releases beyond ``keep`` are removed (never
        the one installed)."""
        fetched = self.fetch(name, version)
        report = self._put(fetched, models_dir, threads, min_agreement, memory_budget_mb)
        for old in self.kept(name)[self.keep:]:
            shutil.rmtree(self.state / "models" / name / str(old), ignore_errors=True)
        return fetched, report

    def rollback(self, name: str, models_dir: Path, *, threads: int | None = None,
                 min_agreement: float = 0.99, memory_budget_mb: float = 0.0) -> tuple[Fetched, VerifyReport]:
        """Install the newest kept release older than the installed one, from the unit's own copy: no repository
        needed (it was verified when it was fetched, and is proven here again)."""
        current = self.installed(name)
        older = [v for v in self.kept(name) if current is None or v < current]
        if not older:
            raise ReleaseError(f"{name}: no release kept here older than the installed {current}; kept: "
                               f"{', '.join(map(str, self.kept(name))) or 'none'}")
        folder = self.state / "models" / name / str(older[0])
        doc = json.loads((folder / ".complete").read_text())
        fetched = Fetched(name, older[0], folder, doc["files"], 0, 0)
        return fetched, self._put(fetched, models_dir, threads, min_agreement, memory_budget_mb)
