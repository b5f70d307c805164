"""Files read and written safely: regular files only, whole files or none, appends that never
glue onto a torn line.

- ``read_regular`` opens without blocking and checks what it opened, so a FIFO, a socket
  or a device is refused instead of hanging the reader (a FIFO waits for a writer forever).
- ``write_atomic`` writes a sibling temporary file, flushes it and renames it over the
  target: a full disk or a crash leaves the old file or the new one, never half of one.
- ``append_lines`` repairs a torn last line (a crash mid-write left half a line) before it
  appends, under an exclusive lock, so the new lines start on a line of their own.
- ``describe_os_error`` is the one-line message for an ``OSError``, naming its file.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


class NotRegularFileError(OSError):
    """The path is a FIFO, socket, device or folder, not a file with bytes to read."""


def display_path(path: Path | str) -> str:
    """A path as a person (and JSON) can read it: bytes that are not UTF-8 as ``\\xNN``,
    rather than the lone surrogates Python keeps them as (invalid in UTF-8 and JSON)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def kind_of(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def read_regular(path: Path, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file; ``NotRegularFileError`` for anything else, without waiting
    (a FIFO is opened non-blocking, then refused). Over ``max_bytes``: ``OSError(EFBIG)``."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFileError(errno.EINVAL, f"{kind_of(info.st_mode)}, not a regular file",
                                      str(path))
        if max_bytes is not None and info.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"{info.st_size} bytes, over the limit of {max_bytes}",
                          str(path))
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` whole: written beside it under a temporary name, flushed
    to disk, then renamed; on any error the temporary file is removed and the old file kept."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename in (None, tmp):
            err.filename = str(path)  # the user knows the file they asked for, not our temp name
        raise


def repair_torn_tail(fd: int, path: Path) -> bool:
    """Cut a last line that a crash left without its newline; True if one was cut."""
    size = os.fstat(fd).st_size
    if not size or os.pread(fd, 1, size - 1) == b"\n":
        return False
    start = max(0, size - 65536)
    while True:  # the last newline before the torn line, read backwards in blocks
        block = os.pread(fd, size - start if start == 0 else 65536, start)
        at = block.rfind(b"\n")
        if at >= 0 or start == 0:
            keep = start + at + 1 if at >= 0 else 0
            break
        start = max(0, start - 65536)
    logger.warning("%s: dropping a partial last line (%d bytes) left by an interrupted write",
                   path, size - keep)
    os.ftruncate(fd, keep)
    return True


def append_lines(path: Path, lines: list[str], sync: bool = True) -> None:
    """Append whole ``lines`` (each without its newline) in one write after repairing a torn
    last line; an exclusive lock keeps two writers' lines apart. ``sync``: flushed to disk
    before returning (a person's decisions), or left to the OS (a crawl's many records)."""
    if not lines:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(line + "\n" for line in lines).encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        repair_torn_tail(fd, path)
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, payload)
            if written != len(payload):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))  # a short write
            if sync:
                os.fsync(fd)
        except OSError as err:
            os.ftruncate(fd, size)  # take back a part-written line: the file stays whole lines
            if err.filename is None:
                err.filename = str(path)
            raise
    finally:
        os.close(fd)


def describe_os_error(err: OSError) -> str:
    """One line for an ``OSError``: the file, what went wrong, and for a full disk what to do."""
    where = f"{display_path(err.filename)}: " if err.filename is not None else ""
    what = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}{what}; free some space (or move the project to a larger disk) and run again"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}{what}; check the file's permissions and the disk"
    return f"{where}{what}"
