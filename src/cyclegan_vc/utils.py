"""Small shared helpers: atomic file writes, JSON I/O, and the errors every stage raises (user mistakes, broken worker pools)."""

from __future__ import annotations

import errno
import glob
import io
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = [
    "DISK_FULL_ERRNOS", "OutsideFailure", "UserError", "WorkersDied", "atomic_write", "atomic_write_bytes",
    "atomic_write_json", "atomic_save_npz", "disk_full", "read_json", "remove_stale_temporaries",
]


#: errno values of a write that failed for want of space (a full disk, an exhausted quota)
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, suffix: str = "", durable: bool = False) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    Either the complete file appears at ``path`` or nothing does: no half-written output. The file gets
    the mode a plain ``open`` would give it (the umask's). ``suffix`` ends the temporary name (for
    writers that infer a format from it); ``durable`` flushes the file to the disk before the rename
    (checkpoints: a power cut then leaves the old file or the new, never an empty one).

    The temporary file is named ``.NAME.HOST-PID.RANDOM.tmp``: temporaries of ``path`` left by a killed
    process of this machine are removed first. A write that failed for want of space raises
    ``OSError(ENOSPC)`` naming ``path``, whatever the writing library made of it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_host()}-{os.getpid()}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())  # mkstemp's 0600 would hide the file from other users
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_folder(path.parent)
    except BaseException as exc:
        full = isinstance(exc, Exception) and disk_full(exc, path.parent)
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise OSError(errno.ENOSPC, f"no space left on the disk writing {path}", str(path)) from exc
        raise
    return path


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32]


def disk_full(exc: BaseException, folder: str | os.PathLike) -> bool:
    """Whether ``exc``, raised while writing into ``folder``, came of a full disk (or quota).

    Libraries do not all say so with ``ENOSPC``: safetensors puts it in its message only, libsndfile
    says "System error."; then the free space of ``folder`` decides (under 1 MiB).
    """
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    if "no space left" in str(exc).lower():
        return True
    if not isinstance(exc, (OSError, RuntimeError)):  # a bug in the writer, not the disk
        return False
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write` in ``folder`` (of the file ``name`` only,
    when given) whose writing process, on this machine, no longer runs; return them."""
    host = _host()
    pattern = f".{glob.escape(name)}.{glob.escape(host)}-*.tmp*" if name else f".*.{glob.escape(host)}-*.tmp*"
    removed = []
    for tmp in Path(folder).glob(pattern):
        match = re.search(rf"\.{re.escape(host)}-(\d+)\.[^.]+\.tmp", tmp.name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: 0666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = False) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), durable=durable)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Save arrays as an uncompressed ``.npz`` atomically (no pickled objects allowed)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    """The JSON document at ``path``; a damaged one is a :class:`UserError` naming the file."""
    text = Path(path).read_bytes()
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise UserError(f"{path}: not a valid JSON file ({exc}); it was damaged or is not the toolkit's") from None


class UserError(ValueError):
    """A mistake in what the user asked for (a path, a flag, a folder's contents): the command line
    prints its message on one line and exits with status 2. Anything else that goes wrong is a fault
    of the toolkit or the machine and is reported as such."""


class OutsideFailure(RuntimeError):
    """A failure outside the toolkit's code and the user's input: the network, an external program,
    worker processes that were killed. The command line prints its message (which says what to do)
    on one line and exits with status 1."""


class WorkersDied(OutsideFailure):
    """The worker processes of a parallel stage ended abruptly, so no file can be blamed.

    The two usual causes: the workers were killed (for memory, say), or a script called the stage at
    import time: the workers are started with "spawn" and import the calling script again, so it must
    call the stage under ``if __name__ == "__main__":``.
    """

    def __init__(self, stage: str):
        super().__init__(
            f"{stage}: its worker processes ended abruptly (killed, e.g. for memory, or started from a script "
            f"that calls {stage} outside an `if __name__ == \"__main__\":` block, which spawned workers import "
            f"again); files finished so far are kept; rerun with one worker (`--jobs 1` on the command line, "
            f"jobs=1 in Python) to see which file fails"
        )
