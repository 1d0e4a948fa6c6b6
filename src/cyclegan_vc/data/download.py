"""Download the Voice Conversion Challenge 2016 corpus (Toda et al., 2016) and unpack it.

The corpus is published by the University of Edinburgh DataShare (item 10283/2211, CC BY 4.0) as
two zip archives. After :func:`download_vcc2016` the destination holds the official layout::

    DEST/vcc2016_training/SF1/100001.wav ... (162 training sentences per speaker)
    DEST/evaluation_all/SF1/200001.wav   ... (54 evaluation sentences per speaker)

Archives are streamed to ``DEST/.downloads/NAME.part``; an interrupted transfer resumes with an
HTTP ``Range`` request on the next call (and automatically, a few times, within one call). Only the
standard library is used for HTTP (``urllib``).
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from .. import __version__
from ..audio import AUDIO_EXTENSIONS
from ..utils import OutsideFailure

__all__ = [
    "DEFAULT_BASE_URL",
    "VCC2016_ARCHIVES",
    "Archive",
    "DownloadError",
    "download_file",
    "download_vcc2016",
]

log = logging.getLogger(__name__)

#: Where the VCC 2016 archives live: Edinburgh DataShare, item 10283/2211.
DEFAULT_BASE_URL = "https://datashare.ed.ac.uk/bitstream/handle/10283/2211"

#: Bytes read from the network per write to disk.
CHUNK_BYTES = 1 << 16

_USER_AGENT = f"cyclegan-vc/{__version__} (+python urllib)"
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


@dataclass(frozen=True)
class Archive:
    """One zip archive of the corpus and the single top folder it unpacks to."""

    name: str
    folder: str


#: The two VCC 2016 archives, in download order.
VCC2016_ARCHIVES = (
    Archive("vcc2016_training.zip", "vcc2016_training"),
    Archive("evaluation_all.zip", "evaluation_all"),
)


class DownloadError(OutsideFailure):
    """A download or an archive that failed; the message says what, where, and what to do."""


class _Interrupted(Exception):
    """The transfer broke off before the end; the ``.part`` file holds what arrived."""


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(first_byte, total_size)`` from a ``Content-Range`` header; ``None`` for what it does not say."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not match:
        return None, None
    first = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return first, total


def _human(size: int | None) -> str:
    if size is None:
        return "an unknown size"
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _advice(dest_path: Path) -> str:
    return (
        "check the network connection, pass another mirror with --base-url, or download the file "
        f"by hand and save it as {dest_path}"
    )


def _transfer(url: str, part: Path, dest_path: Path, timeout: float, progress: bool) -> None:
    """One HTTP request: append to (or restart) ``part``; raise :class:`_Interrupted` if cut short."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 416 and offset:
                _, total = _parse_content_range(exc.headers.get("Content-Range"))
                if total is None or total == offset:
                    log.info("%s: already complete (%s)", part.name, _human(offset))
                    return
                log.warning("%s is larger than the file on the server; starting again", part)
                part.unlink()
                raise _Interrupted("partial file larger than the remote file") from None
            raise DownloadError(
                f"could not download {url}: HTTP {exc.code} {exc.reason}; {_advice(dest_path)}"
            ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"could not download {url}: {reason}; {_advice(dest_path)}") from None

    with response:
        total: int | None
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset and response.status == 206:
            first, total = _parse_content_range(response.headers.get("Content-Range"))
            if first != offset:
                part.unlink()
                raise _Interrupted(f"server resumed at byte {first}, not {offset}")
            log.info("%s: resuming at %s", part.name, _human(offset))
            mode = "ab"
            total = total if total is not None else (offset + length if length is not None else None)
        else:
            if offset:
                log.info("%s: the server does not resume downloads; starting from zero", part.name)
            offset, mode, total = 0, "wb", length
        received = offset
        with open(part, mode) as sink, tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=dest_path.name,
            disable=not progress,
            leave=False,
        ) as bar:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    sink.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                raise _Interrupted(f"connection lost after {_human(received)} ({exc})") from None
    if total is not None and received < total:
        raise _Interrupted(f"connection closed after {_human(received)} of {_human(total)}")
    if total is not None and received > total:
        part.unlink()
        raise DownloadError(f"{url} sent {received} bytes where {total} were announced; the partial file was removed")


def download_file(
    url: str,
    dest_path: str | os.PathLike,
    *,
    timeout: float = 30.0,
    progress: bool = True,
    retries: int = 3,
) -> Path:
    """Stream ``url`` to ``dest_path``, resuming a partial download; return ``dest_path``.

    Bytes go to ``dest_path + ".part"`` and the file is renamed to ``dest_path`` only when complete
    (the announced size arrived), so ``dest_path`` existing means done: it is then returned without
    any request. A ``.part`` left by an earlier attempt is continued with ``Range: bytes=N-``
    (``206 Partial Content`` appends, ``200`` restarts from zero, ``416`` means already complete).

    Args:
        url: an ``http://`` or ``https://`` address.
        dest_path: the final file.
        timeout: seconds to wait for the connection and for each read.
        progress: show a tqdm bar (size, rate, ETA) on stderr.
        retries: how many times a transfer that breaks off midway is resumed within this call.

    Raises:
        DownloadError: unreachable host, HTTP error, or a transfer still incomplete after
            ``retries`` resumptions (the ``.part`` is kept, so calling again resumes).
    """
    dest_path = Path(dest_path)
    if dest_path.is_file():
        log.info("%s already downloaded", dest_path)
        return dest_path
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    part = dest_path.with_name(dest_path.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, dest_path, timeout, progress)
        except _Interrupted as exc:
            if attempt == retries:
                raise DownloadError(
                    f"download of {url} did not finish: {exc}; run again to resume from {part}"
                ) from None
            log.warning("download of %s interrupted (%s); resuming (%d/%d)", url, exc, attempt + 1, retries)
            continue
        os.replace(part, dest_path)
        return dest_path
    raise AssertionError("unreachable")


def _has_audio(folder: Path) -> bool:
    extensions = {ext.lower() for ext in AUDIO_EXTENSIONS}
    return folder.is_dir() and any(
        path.suffix.lower() in extensions and not path.name.startswith(".") for path in folder.rglob("*")
    )


def _check_archive(path: Path, archive: Archive) -> list[zipfile.ZipInfo]:
    """The members of ``path`` under the archive's top folder; raise :class:`DownloadError` if unusable."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise DownloadError(f"{path} is corrupt: member {bad!r} fails its CRC check")
            members = []
            for info in zf.infolist():
                name = PurePosixPath(info.filename.replace("\\", "/"))
                if name.is_absolute() or ".." in name.parts or re.match(r"^[A-Za-z]:", info.filename):
                    raise DownloadError(f"{path} is unsafe: member {info.filename!r} points outside the archive folder")
                if name.parts and name.parts[0] == archive.folder:
                    members.append(info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise DownloadError(f"{path} is not a valid zip archive ({exc})") from None
    if not members:
        raise DownloadError(f"{path} does not contain the expected top folder {archive.folder}/")
    return members


def _extract(path: Path, archive: Archive, members: list[zipfile.ZipInfo], dest: Path) -> Path:
    """Unpack ``members`` into a temporary folder in ``dest``, then rename the top folder into place."""
    target = dest / archive.folder
    scratch = Path(tempfile.mkdtemp(prefix=f".extract-{archive.folder}-", dir=dest))
    try:
        with zipfile.ZipFile(path) as zf:
            for info in members:
                zf.extract(info, scratch)
        if not _has_audio(scratch / archive.folder):
            raise DownloadError(f"{path} holds no audio files under {archive.folder}/")
        if target.exists():
            target.rmdir()  # only an empty leftover gets here (checked before downloading)
        os.replace(scratch / archive.folder, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def download_vcc2016(
    dest: str | os.PathLike,
    base_url: str = DEFAULT_BASE_URL,
    *,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download and unpack VCC 2016 into ``dest``; return ``dest``.

    For each archive of :data:`VCC2016_ARCHIVES`: skip it if ``dest/FOLDER`` already holds audio;
    otherwise download ``base_url/NAME`` (see :func:`download_file`; a copy saved by hand as
    ``dest/NAME`` or ``dest/.downloads/NAME`` is used instead), check it (zip CRCs, expected top
    folder, no member escaping the folder), unpack it into a temporary folder inside ``dest`` and
    rename the top folder into place, then delete the downloaded archive. A corrupt download is
    deleted so that the next call fetches it afresh; a copy saved by hand is never deleted.

    Args:
        dest: the corpus folder (created).
        base_url: the folder URL holding the archives (a mirror, or ``http://127.0.0.1:PORT`` in tests).
        timeout: seconds to wait for the connection and for each read.
        progress: show a tqdm bar per download.

    Raises:
        DownloadError: network failure, HTTP error, corrupt or unexpected archive, or a non-empty
            ``dest/FOLDER`` without audio in the way.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    downloads = dest / ".downloads"
    for archive in VCC2016_ARCHIVES:
        target = dest / archive.folder
        if _has_audio(target):
            log.info("%s already holds audio; nothing to download for %s", target, archive.name)
            continue
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise DownloadError(f"{target} exists but holds no audio files; remove it and run again")
        manual = dest / archive.name
        if manual.is_file():
            log.info("using %s, found in place of a download", manual)
            path = manual
        else:
            url = f"{base_url.rstrip('/')}/{archive.name}"
            log.info("downloading %s", url)
            path = download_file(url, downloads / archive.name, timeout=timeout, progress=progress)
        try:
            members = _check_archive(path, archive)
        except DownloadError as exc:
            if path != manual:
                path.unlink(missing_ok=True)
                raise DownloadError(f"{exc}; the damaged download was removed, run again to fetch it afresh") from None
            raise
        log.info("unpacking %s into %s", path.name, target)
        _extract(path, archive, members, dest)
        if path != manual:
            path.unlink()
    if downloads.is_dir() and not any(downloads.iterdir()):
        downloads.rmdir()
    return dest
