"""The one-writer lock on a store file, and this process's registry of open store files.

The lock is an open-file-description lock (Linux) on one byte above SQLite's own lock bytes
(1 GiB to 1 GiB + 510), elsewhere a flock(). Both belong to the open file, not to a path, so
symlinks and hard links share them. Not flock() on Linux: on NFS it is emulated as a lock on
the whole file, which would collide with SQLite's own locks. Not a classic POSIX lock: closing
any descriptor of the file (SQLite closing a reader's connection) would drop it.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: file stores need POSIX locks (":memory:" still works)
    fcntl = None  # type: ignore[assignment]

__all__: list[str] = []  # used by the store's own modules only

_LOCK_BYTE = 0x40000000 + 0x10000
_OFD = (
    fcntl is not None
    and sys.platform.startswith("linux")
    and hasattr(fcntl, "F_OFD_SETLK")
    and struct.calcsize("@P") == 8  # the struct flock layout below is the 64-bit one
)


def _lock_file(fd: int, kind: str) -> bool:
    """Lock ``fd``'s file without waiting: ``"w"`` exclusive, ``"r"`` shared, ``"u"`` unlock.

    False when another open file (another process, or another descriptor) holds a conflicting
    lock; locks of the same open file replace each other.
    """
    assert fcntl is not None
    if _OFD:
        kinds = {"w": fcntl.F_WRLCK, "r": fcntl.F_RDLCK, "u": fcntl.F_UNLCK}
        # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks), padding
        arg = struct.pack("@hhqqi4x", kinds[kind], os.SEEK_SET, _LOCK_BYTE, 1, 0)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, arg)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True
    ops = {"w": fcntl.LOCK_EX | fcntl.LOCK_NB, "r": fcntl.LOCK_SH | fcntl.LOCK_NB}
    try:
        fcntl.flock(fd, ops.get(kind, fcntl.LOCK_UN))
    except BlockingIOError:
        return False
    return True


class _SharedFile:
    """This process's descriptors of one store file: ``"r"`` (read-only) and ``"w"``."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}
        self.spare: list[int] = []
        self.users = 0


# Store files open in this process, by (device, inode). A descriptor is closed only when no
# store of this process uses the file any more: closing any descriptor of a file drops all of
# this process's POSIX locks on it, SQLite's own included.
_FILES: dict[tuple[int, int], _SharedFile] = {}
# Open writers of this process by file, so that re-running a notebook cell that makes a new
# Session on the same file takes the store over instead of failing on its own lock.
_OPEN: dict[tuple[int, int], weakref.ReferenceType[Any]] = {}
# Guards _FILES and _OPEN. Whoever holds it never waits for a store's own lock (a takeover
# closes the previous store after letting go of it), so any thread may take it.
_OPEN_LOCK = threading.Lock()
# Files whose store was garbage-collected while _OPEN_LOCK was busy (__del__ must not wait:
# the collector may run inside a thread that holds it); released by the next holder.
_DEFERRED: list[tuple[int, int]] = []


@contextmanager
def _registry() -> Iterator[None]:
    """Hold _OPEN_LOCK, releasing the files of collected stores on the way in and out."""
    with _OPEN_LOCK:
        _release_deferred()
        try:
            yield
        finally:
            _release_deferred()


def _release_deferred() -> None:
    while _DEFERRED:
        _release_file(_DEFERRED.pop(), None)


def _release_file(key: tuple[int, int], store: Any) -> None:
    """Let go of ``store``'s use of a file (None: a collected store), unlocking it unless
    another writer of this process has taken it over. Call under _OPEN_LOCK."""
    ref = _OPEN.get(key)
    owner = ref() if ref is not None else None
    if owner is None or owner is store:
        _OPEN.pop(key, None)
        shared = _FILES.get(key)
        if shared is not None and "w" in shared.fds:
            _lock_file(shared.fds["w"], "u")  # no-op when it was not locked
    _leave_file(key)


def _use_file(path: str, mode: str) -> tuple[tuple[int, int], int]:
    """Count one more user of the file at ``path`` and return its key and descriptor.

    ``mode`` ``"w"`` opens it for writing and creates it when missing. Call under _registry().
    """
    try:
        st = os.stat(path)
        shared = _FILES.get((st.st_dev, st.st_ino))
    except FileNotFoundError:
        shared = None
    if shared is None or mode not in shared.fds:
        flags = os.O_RDWR | os.O_CREAT if mode == "w" else os.O_RDONLY
        fd = os.open(path, flags | os.O_CLOEXEC, 0o666)
        st = os.fstat(fd)
        shared = _FILES.setdefault((st.st_dev, st.st_ino), _SharedFile())
        if shared.fds.setdefault(mode, fd) != fd:  # the path was replaced meanwhile
            shared.spare.append(fd)
    shared.users += 1
    st = os.fstat(shared.fds[mode])
    return (st.st_dev, st.st_ino), shared.fds[mode]


def _leave_file(key: tuple[int, int]) -> None:
    """One user less; the last one closes the descriptors. Call under _registry()."""
    shared = _FILES.get(key)
    if shared is None:
        return
    shared.users -= 1
    if shared.users <= 0:
        del _FILES[key]
        for fd in [*shared.fds.values(), *shared.spare]:
            os.close(fd)


def _folder_writable(folder: Path) -> bool:
    """Whether this process may create files in ``folder`` (SQLite's -wal and -shm).

    False for a read-only mount or another user's folder; reading a store there goes through
    a snapshot (see ``LabelStore._read_snapshot``).
    """
    return os.access(folder, os.W_OK)
