"""Small shared helpers: atomic file writes, JSON I/O, and the errors every stage raises (user mistakes, broken worker pools)."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["OutsideFailure", "UserError", "WorkersDied", "atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_save_npz", "read_json"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    Either the complete file appears at ``path`` or nothing does: no half-written output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: 0666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Save arrays as an uncompressed ``.npz`` atomically (no pickled objects allowed)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


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
