"""Download the public datasets (:mod:`nnrun.data.datasets`) into a cache folder, verified by SHA-256.

pooch does the fetching: each file streams into a temporary name in the target folder, its SHA-256
is compared with the pinned one, and only then is it renamed into place; a transfer cut short, a
mismatch or Ctrl-C deletes the temporary file. So a file under its real name is always complete and
verified, and the next run simply downloads what is missing. Mirrors are tried in order: an
unreachable one, an HTTP error or a mismatch moves on to the next; a transfer cut short is tried
once more on the same mirror first. When every mirror fails the caller gets one
:class:`~nnrun.errors.DataError` naming the file, what each mirror did, and how to go on
(a mismatch: the expected and received hashes; offline: where to put files fetched by hand).

- the cache: ``$NNRUN_DATA`` or the platform's cache folder (``pooch.os_cache("nnrun")``:
  ``~/.cache/nnrun`` on Linux, ``~/Library/Caches/nnrun`` on macOS), one subfolder per set;
- ``$NNRUN_DATA_MIRROR``: space-separated base URLs tried before the built-in mirrors, laid out like
  the cache (``<base>/mnist/train-images-idx3-ubyte.gz``), so serving a copy of a cache folder over
  HTTP makes a mirror;
- the library prints nothing: before downloading it sends one :func:`nnrun.progress.notice` (what,
  how big, from where, into which folder), each file is a :func:`nnrun.progress.task`, and
  :func:`public_folder` returns notes for the caller.

pooch (and requests, which it uses) are imported when a download runs, not by every data load.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nnrun import progress
from nnrun.data.datasets import DATASETS, PublicSet, RemoteFile, human_size
from nnrun.errors import DataError, OutputError, did_you_mean, writing

CACHE_ENV = "NNRUN_DATA"
MIRROR_ENV = "NNRUN_DATA_MIRROR"
TIMEOUT_S = 30.0        # seconds to connect and between two reads (requests' timeout)
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Attempt:
    """One failed try of one file on one mirror."""

    url: str
    kind: str                 # unreachable, http, cut (transfer cut short), mismatch
    detail: str
    sha256: str | None = None  # of what arrived (mismatch)
    size: int | None = None


@dataclass
class Fetched:
    """What :func:`ensure` did: the folder to read, and the files it downloaded (none: all cached)."""

    public: PublicSet
    folder: Path
    downloaded: list[tuple[str, str]] = field(default_factory=list)  # (file, url)

    @property
    def bytes(self) -> int:
        sizes = {f.name: f.size for f in self.public.files}
        return sum(sizes[name] for name, _ in self.downloaded)


def cache_root() -> Path:
    """Where downloaded sets live: ``$NNRUN_DATA``, else the platform's cache folder for nnrun."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    if raw:
        return Path(raw).expanduser()
    import pooch

    return Path(pooch.os_cache("nnrun"))


def lookup(name: str, registry: Mapping[str, PublicSet] = DATASETS) -> PublicSet:
    """The public set called ``name``; DataError listing the known ones otherwise."""
    if name not in registry:
        raise DataError(f"`{name}` is not a dataset nnrun can download{did_you_mean(name, registry)}",
                        hint=f"known: {', '.join(registry)}")
    return registry[name]


def mirror_list(public: PublicSet) -> list[str]:
    """``$NNRUN_DATA_MIRROR``'s bases (each + ``<set>/``) first, then the set's own mirrors."""
    extra = [b if b.endswith("/") else b + "/" for b in os.environ.get(MIRROR_ENV, "").split()]
    return [f"{b}{public.name}/" for b in extra] + list(public.mirrors)


def is_ready(public: PublicSet, folder: Path) -> bool:
    """Whether ``folder`` holds the set in the form its source reads (no hashing: see :func:`ensure`)."""
    if public.extract:
        return all((folder / public.extract / n).is_file() for n in public.extracted)
    return all((folder / f.name).is_file() for f in public.files)


def ensure(name: str, folder: Path | str | None = None, *, mirrors: Sequence[str] | None = None,
           registry: Mapping[str, PublicSet] = DATASETS, timeout: float = TIMEOUT_S) -> Fetched:
    """Make ``folder`` (default: the cache's subfolder of the set) hold the set ``name``, downloading
    what is missing or fails its checksum; files already there and verified cost no request.

    Args:
        name: ``mnist``, ``fashion-mnist`` or ``cifar10``.
        folder: where the files go (``nnrun data get --to``).
        mirrors: base URLs to try instead of :func:`mirror_list` (tests).
        registry: the table of sets (tests pass their own).
        timeout: seconds to connect and between reads.

    Raises:
        DataError: a file failed on every mirror (unreachable, HTTP error, checksum mismatch).
        OutputError: the folder cannot be written.
    """
    public = lookup(name, registry)
    folder = Path(folder).expanduser() if folder is not None else cache_root() / public.name
    result = Fetched(public, folder)
    if public.extract and is_ready(public, folder):
        return result
    with writing(f"the data folder {folder}", hint=f"choose a writable folder (--to, or {CACHE_ENV} for the cache)"):
        folder.mkdir(parents=True, exist_ok=True)
    bases = list(mirrors) if mirrors is not None else mirror_list(public)
    missing = [e for e in public.files if not (folder / e.name).is_file()]
    if missing:
        size = human_size(sum(e.size for e in missing))
        progress.notice(f"downloading {public.name}: {len(missing)} file(s), {size}, from {bases[0] if bases else '-'} "
                        f"(then {len(bases) - 1} other mirror(s) if needed) into {folder}, SHA-256 verified")
    for entry in public.files:
        url = _fetch_file(public, entry, folder, bases, timeout)
        if url is not None:
            result.downloaded.append((entry.name, url))
    if public.extract:
        _extract(public, folder)
    return result


def _fetch_file(public: PublicSet, entry: RemoteFile, folder: Path, bases: Sequence[str], timeout: float) -> str | None:
    """Download one file unless a verified copy is there; the URL it came from (None: cached)."""
    import pooch

    target = folder / entry.name
    if target.is_file() and pooch.file_hash(str(target)) == entry.sha256:
        return None
    failed: list[Attempt] = []
    for base in bases:
        url = base + entry.name
        for _ in range(2):  # a transfer cut short is tried once more on the same mirror
            attempt = _try(url, public, entry, folder, timeout)
            if attempt is None:
                return url
            failed.append(attempt)
            if attempt.kind != "cut":
                break
    raise _failure(public, entry, failed)


class _Bar:
    """pooch's tqdm-like progress bar (``total``, ``update``, ``reset``, ``close``) on a progress handle.

    pooch advances by its chunk size (one past the end at the last chunk) and ends with
    ``reset(); update(total)`` to fill the bar: the handle never goes past the file's size."""

    def __init__(self, handle: progress.Handle, size: int):
        self.handle, self.size, self.done, self.total = handle, size, 0, size

    def update(self, n: int) -> None:
        n = max(0, min(int(n), self.size - self.done))
        if n:
            self.done += n
            self.handle.advance(n)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Download:
    """pooch's HTTP download that remembers the size and SHA-256 of what arrived (pooch deletes a
    file that fails its checksum; the message still names what it received)."""

    def __init__(self, bar: _Bar, timeout: float):
        import pooch

        self.http = pooch.HTTPDownloader(progressbar=bar, chunk_size=CHUNK_BYTES, timeout=timeout)
        self.sha256: str | None = None
        self.size: int | None = None

    def __call__(self, url: str, output_file, pooch_obj, check_only: bool = False):
        import pooch

        out = self.http(url, output_file, pooch_obj, check_only=check_only)
        if not check_only:
            self.size, self.sha256 = os.path.getsize(output_file), pooch.file_hash(str(output_file))
        return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pooch logs each download at INFO on stderr; the library prints nothing (progress says it)."""
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel("WARNING")
    try:
        yield
    finally:
        logger.setLevel(level)


def _try(url: str, public: PublicSet, entry: RemoteFile, folder: Path, timeout: float) -> Attempt | None:
    """One download of ``entry`` from ``url`` into ``folder``; None when it arrived verified."""
    import pooch
    import requests

    with progress.task(f"downloading {public.name}/{entry.name} ({human_size(entry.size)}) from {url}",
                       entry.size) as handle:
        download = _Download(_Bar(handle, entry.size), timeout)
        try:
            with _quiet():
                pooch.retrieve(url, known_hash=f"sha256:{entry.sha256}", fname=entry.name, path=folder,
                               downloader=download)
        except ValueError:  # pooch: the checksum does not match (it deleted the temporary file)
            return Attempt(url, "mismatch", "checksum mismatch", download.sha256, download.size)
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "error"
            return Attempt(url, "http", f"HTTP {status}")
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError):
            return Attempt(url, "cut", "the transfer was cut short")
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            return Attempt(url, "unreachable", _reason(exc))
        except requests.exceptions.RequestException as exc:
            return Attempt(url, "http", type(exc).__name__)
        except OSError as exc:
            raise OutputError(f"cannot write {folder / entry.name}: {exc.strerror or exc}",
                              hint=f"choose a writable folder (--to, or {CACHE_ENV} for the cache)") from exc
    return None


def _reason(exc: Exception) -> str:
    """A few words for an unreachable mirror: `connection refused`, `timed out`, `name not resolved`."""
    text = str(exc).lower()
    for needle, words in (("refused", "connection refused"), ("timed out", "timed out"),
                          ("name or service", "name not resolved"), ("resolve", "name not resolved"),
                          ("unreachable", "network unreachable"), ("ssl", "TLS error")):
        if needle in text:
            return words
    return "unreachable"


def _failure(public: PublicSet, entry: RemoteFile, failed: list[Attempt]) -> DataError:
    """The one message for a file that no mirror delivered intact."""
    what = f"{public.name}/{entry.name}"
    bad = [a for a in failed if a.kind == "mismatch"]
    if bad:
        got = ", ".join(f"{a.sha256} ({a.size:,} bytes) from {a.url}" for a in bad)
        others = "; ".join(f"{a.url}: {a.detail}" for a in failed if a.kind != "mismatch")
        return DataError(f"checksum mismatch: expected sha256 {entry.sha256} ({entry.size:,} bytes), got {got}; "
                         f"nothing was kept" + (f" (also tried {others})" if others else ""), where=what,
                         hint=f"a mirror or a proxy serves other bytes than the published file: try again later, "
                              f"or set {MIRROR_ENV} to a mirror with the original files, or download "
                              f"{entry.name} by hand, check it with `sha256sum`, and set data.path to its folder")
    tried = "; ".join(f"{a.url}: {a.detail}" for a in failed)
    names = " ".join(f.name for f in public.files)
    return DataError(f"cannot download ({human_size(entry.size)}): no mirror delivered it ({tried})", where=what,
                     hint=f"offline? copy the files ({names}) into a folder and set data.path to it (on a machine "
                          f"with internet `nnrun data get {public.name} --to DIR` fetches and verifies them), "
                          f"or set {MIRROR_ENV} to a mirror you can reach; `nnrun train --no-download` or "
                          "data.download: false never downloads")


def _extract(public: PublicSet, folder: Path) -> None:
    """Unpack the verified archive's ``<extract>/`` files (regular files of the expected names only:
    nothing else in an archive is written) into a temporary folder, renamed when complete."""
    final = folder / public.extract
    if is_ready(public, folder):
        return
    if final.exists():
        raise DataError(f"{final} exists but lacks some of {', '.join(public.extracted)}", where=str(final),
                        hint="remove that folder: the next run extracts the archive again")
    archive = folder / public.files[0].name
    hint = f"choose a writable folder with free space (--to, or {CACHE_ENV} for the cache)"
    tmp: Path | None = None
    try:
        with writing(f"the extracted {public.title} in {folder}", hint=hint):
            tmp = Path(tempfile.mkdtemp(prefix=f".{public.extract}.", dir=folder))
            with tarfile.open(archive, "r:gz") as tar, \
                    progress.task(f"extracting {archive.name}", len(public.extracted)) as handle:
                for member in tar:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and member.name == f"{public.extract}/{base}" and base in public.extracted:
                        with tar.extractfile(member) as src, open(tmp / base, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                        handle.advance(1)
            missing = [n for n in public.extracted if not (tmp / n).is_file()]
            if missing:
                raise DataError(f"{archive.name} lacks {', '.join(missing)}", where=str(archive),
                                hint="delete the archive: the next run downloads it again")
            os.replace(tmp, final)
            tmp = None
    except (tarfile.TarError, EOFError) as exc:
        raise DataError(f"cannot unpack {archive.name}: {exc}", where=str(archive),
                        hint="delete the archive: the next run downloads it again") from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the hook of data loading


def is_conventional(raw: str) -> bool:
    """``data/<set>`` (what the shipped recipes set, made absolute by the recipe loader)."""
    parts = Path(raw).parts
    return len(parts) >= 2 and parts[-2] == "data" and parts[-1] in DATASETS


def public_folder(source: str, *, download: bool, missing: str | None = None) -> tuple[Path, list[str]]:
    """The cache folder of the public set ``source``, downloaded first when needed and allowed.

    Args:
        source: the ``data.source`` (a key of :data:`~nnrun.data.datasets.DATASETS`).
        download: ``data.download``; False never downloads (a cached copy is still used).
        missing: the ``data.path`` that did not exist, when one was set (named in the note).

    Returns:
        The folder and the notes for the person running (what was downloaded, why the cache).
    """
    public = DATASETS[source]
    folder = cache_root() / public.name
    notes = [f"data.path {missing} does not exist: using {public.title} from the cache {folder}"] if missing else []
    if not download:
        if not is_ready(public, folder):
            raise DataError(f"{public.title} is not in the cache ({folder}) and data.download is false",
                            where="data.download",
                            hint=f"fetch it where there is internet with `nnrun data get {public.name} --to DIR` "
                                 "and set data.path to DIR, or allow the download (data.download: true, no "
                                 "--no-download)")
        return folder, notes
    fetched = ensure(public.name, folder)
    if fetched.downloaded:
        sources = sorted({url.rsplit("/", 1)[0] + "/" for _, url in fetched.downloaded})
        notes.append(f"downloaded {public.title}: {len(fetched.downloaded)} file(s), {human_size(fetched.bytes)}, "
                     f"SHA-256 verified, from {' '.join(sources)} into {folder}")
    return folder, notes
