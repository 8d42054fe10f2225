"""The durable label store: SQLite in WAL mode, one transaction per action.

Every label action (label, unlabel, skip/flag marks, import) is a row in ``actions`` with who,
when, in which round and from which source, plus one ``events`` row per sample and field with
the value before and after. ``state`` holds the current value of each (sample, field). So:

* a label is on disk (committed, ``synchronous=FULL``) before :meth:`LabelStore.label` returns;
* undo restores the previous values of the newest action that is not undone yet, and is itself
  an action, so history is never rewritten;
* relabeling keeps the earlier label in ``events``;
* reopening the file resumes everything: labels, round, query log and per-round history.

One process at a time writes a store. Opening it for writing locks the database file itself
(one byte of it that SQLite never locks), so the lock follows the file, whichever path or
symlink names it, and the OS releases it if the process dies. A second :class:`LabelStore` on
the same file in the same process takes the store over and closes the first; another process
gets :class:`StoreLockedError` and may open the file with ``read_only=True``. A file with more
than one hard link is refused: SQLite keeps its write-ahead log beside the name it was opened
by, so two names of one file would each have their own log. All SQL is parameterized.

The files of a store ``labels.db``:

``labels.db``
    The store. After each action a passive checkpoint copies the write-ahead log into it, so
    it holds every label returned so far (unless a reader in another process was reading at
    that moment: then the next action's checkpoint catches up). A cleanly closed store is this
    one self-contained file.
``labels.db-wal``, ``labels.db-shm``
    SQLite's write-ahead log and its index. They exist only while a writer has the store open
    (or a reader has it open when the writer closes), and after a crash, until the next open
    replays them: never delete them then. Copy a store in use with :meth:`LabelStore.backup`.
``labels.db.dal/``
    The folder for what is derived from the store and the dataset (map caches, model
    checkpoints, embedding caches; :attr:`LabelStore.side_dir`), made by the parts that use it.
    Labels are never kept there.

Exports and backups are written to a hidden temporary file beside their target
(``.<name>.<pid>.<random>.tmp``) and renamed into place; leftovers of killed ones are removed by
the next export or backup to the same target.
"""

from __future__ import annotations

import csv
import datetime as _dt
import errno
import getpass
import json
import os
import re
import secrets
import shutil
import sqlite3
import struct
import sys
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dal_widgets._checks import param_error, short_repr

try:
    import fcntl
except ImportError:  # Windows: file stores need POSIX locks (":memory:" still works)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FIELDS",
    "SOURCES",
    "LabelStore",
    "StoreClosedError",
    "StoreError",
    "StoreLockedError",
    "StoreMismatchError",
]

SCHEMA_VERSION = 1
#: Where a label came from.
SOURCES = ("human", "oracle", "import", "suggestion")
#: The per-sample fields the store keeps: the label, and the skip and flag marks.
FIELDS = ("label", "skip", "flag")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS actions(
    action_id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    annotator TEXT,
    round INTEGER NOT NULL,
    ts REAL NOT NULL,
    undoes INTEGER,
    undone_by INTEGER
);
CREATE TABLE IF NOT EXISTS events(
    action_id INTEGER NOT NULL,
    sample_id NOT NULL,
    field TEXT NOT NULL,
    old TEXT,
    old_action INTEGER,
    new TEXT
);
CREATE INDEX IF NOT EXISTS events_by_action ON events(action_id);
CREATE INDEX IF NOT EXISTS events_by_sample ON events(sample_id);
CREATE TABLE IF NOT EXISTS state(
    sample_id NOT NULL,
    field TEXT NOT NULL,
    value TEXT NOT NULL,
    action_id INTEGER NOT NULL,
    PRIMARY KEY(sample_id, field)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queries(
    query_id INTEGER PRIMARY KEY AUTOINCREMENT,
    round INTEGER NOT NULL,
    strategy TEXT NOT NULL,
    ts REAL NOT NULL,
    model_version INTEGER,
    sample_ids TEXT NOT NULL,
    scores TEXT
);
CREATE TABLE IF NOT EXISTS rounds(round INTEGER PRIMARY KEY, data TEXT NOT NULL);
"""


class StoreError(ValueError):
    """A label store cannot be opened or written as asked."""


class StoreMismatchError(StoreError):
    """The store file belongs to another dataset (or an incompatible class list)."""


class StoreLockedError(StoreError):
    """Another process has the store open for writing."""


class StoreClosedError(StoreError):
    """The store was closed, or taken over by a newer LabelStore on the same file."""


@dataclass(frozen=True)
class _Identity:
    """What a store is made for: checked against the file when it is opened."""

    fingerprint: str
    classes: list[str]
    dataset_name: str
    multi_label: bool


# ---------------------------------------------------------------------- the write lock
# The lock is an open-file-description lock (Linux) on one byte above SQLite's own lock bytes
# (1 GiB to 1 GiB + 510), elsewhere a flock(). Both belong to the open file, not to a path, so
# symlinks and hard links share them. Not flock() on Linux: on NFS it is emulated as a lock on
# the whole file, which would collide with SQLite's own locks. Not a classic POSIX lock: closing
# any descriptor of the file (SQLite closing a reader's connection) would drop it.
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
_OPEN: dict[tuple[int, int], weakref.ReferenceType[LabelStore]] = {}
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


def _release_file(key: tuple[int, int], store: LabelStore | None) -> None:
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


# ---------------------------------------------------------------------- temporary files
# Temporary files of exports and backups: ``.<target name>.<pid>.<8 hex>.tmp`` (older versions:
# ``.<target name>.<pid>.tmp``), plus the ``-journal`` SQLite may leave beside a killed backup's.
_TMP_PATTERN = re.compile(r"(\d+)(?:\.[0-9a-f]{8})?\.tmp(?:-journal)?")
# A temporary file this old is left over whatever its pid says (pids are reused): writing one
# takes seconds.
_STALE_TMP_AGE = 3600.0
_ACTIVE_TMPS: set[Path] = set()
_TMP_LOCK = threading.Lock()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we could have written: leave the file alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_stale_tmps(target: Path) -> None:
    """Delete temporary files of earlier writes to ``target`` that can no longer finish: their
    process is gone, or is this one (an interrupted write), or they are over an hour old."""
    prefix = f".{target.name}."
    now = time.time()
    try:
        candidates = [p for p in target.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return  # the write itself will report the folder
    for tmp in candidates:
        match = _TMP_PATTERN.fullmatch(tmp.name[len(prefix) :])
        if match is None:
            continue
        pid = int(match.group(1))
        with _TMP_LOCK:
            if tmp in _ACTIVE_TMPS or tmp.with_name(tmp.name.removesuffix("-journal")) in (
                _ACTIVE_TMPS
            ):
                continue
        try:
            age = now - tmp.stat().st_mtime
            if pid == os.getpid() or not _pid_alive(pid) or age > _STALE_TMP_AGE:
                tmp.unlink()
        except OSError:
            pass  # gone already, or not ours to delete: it does not stop this write


def _new_tmp(target: Path) -> Path:
    """Create a fresh, empty temporary file beside ``target`` (after removing stale ones)."""
    _remove_stale_tmps(target)
    while True:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        with _TMP_LOCK:
            _ACTIVE_TMPS.add(tmp)
        return tmp


def _drop_tmp(tmp: Path, *, remove: bool) -> None:
    with _TMP_LOCK:
        _ACTIVE_TMPS.discard(tmp)
    if remove:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass  # reported by the caller's own error


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (not every filesystem can fsync a folder)."""
    try:
        _fsync_file(folder)
    except OSError:
        pass


def _check_file_param(path: Any, name: str, where: str) -> str:
    """``path`` as a str, or a TypeError for bytes, ints and other non-paths."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else path
    if not isinstance(text, str):
        raise param_error(
            name, where, "a str or os.PathLike file path such as 'labels.db'", path, TypeError
        )
    return text


def _now() -> float:
    return time.time()


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc).isoformat(timespec="milliseconds")


def _default_annotator() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in some containers
        return "unknown"


class LabelStore:
    """A durable, undoable record of labels for one dataset.

    Parameters
    ----------
    path : str or path
        The SQLite file (created if missing). ``":memory:"`` keeps everything in memory
        (no durability: for tests and throwaway experiments).
    fingerprint : str
        The dataset's fingerprint (``Dataset.fingerprint``); a store made for another dataset
        raises :class:`StoreMismatchError`.
    classes : sequence of str
        The class list. A store whose class list extends this one (classes added while
        labeling) is accepted and its list wins; any other difference is an error.
    dataset_name : str
        Stored for the error messages.
    annotator : str, optional
        Recorded with each action (default: the OS user name).
    read_only : bool
        Open without the write lock, for reading or exporting while another process labels.
        In a folder this user cannot write (a read-only mount, a colleague's folder), the store
        is read into memory when opened (a snapshot) unless a writer has it open.
    multi_label : bool
        Each label is a set of classes (stored as a JSON list in class order; ``labels`` gives
        tuples). Fixed when the store is made.

    See Also
    --------
    LabelStore.open : open an existing store, taking its dataset and classes from the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fingerprint: str,
        classes: Sequence[str],
        dataset_name: str = "",
        annotator: str | None = None,
        read_only: bool = False,
        multi_label: bool = False,
    ) -> None:
        expected = _Identity(fingerprint, list(classes), dataset_name, bool(multi_label))
        self._open(path, expected, read_only=read_only, annotator=annotator, where="LabelStore")

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        read_only: bool = True,
        annotator: str | None = None,
    ) -> LabelStore:
        """Open an existing store, reading its fingerprint, classes, dataset name and
        multi-label setting from the file (to read or export a colleague's store).

        Parameters
        ----------
        path : str or path
            The store file; it must exist.
        read_only : bool
            Open without the write lock (the default). With False, labels can be added as with
            the constructor (and the one-writer lock applies).
        annotator : str, optional
            Recorded with each action (default: the OS user name).

        Raises
        ------
        StoreError
            The path does not exist, or is not a dal_widgets label store.
        """
        store = cls.__new__(cls)
        store._open(path, None, read_only=read_only, annotator=annotator, where="LabelStore.open")
        return store

    # ------------------------------------------------------------------ opening
    def _open(
        self,
        path: Any,
        expected: _Identity | None,
        *,
        read_only: bool,
        annotator: str | None,
        where: str,
    ) -> None:
        """Open or create the store; ``expected`` None takes the identity from the file."""
        self._lock = threading.RLock()
        self._closed_reason: str | None = None
        self._close_callbacks: dict[object, Callable[[str], Any]] = {}
        #: Tracebacks of close callbacks that raised (closing went on regardless).
        self.close_callback_errors: list[str] = []
        self._file_key: tuple[int, int] | None = None
        self.path = _check_file_param(path, "store", where)
        self.read_only = bool(read_only)
        self.annotator = annotator or _default_annotator()
        self.multi_label = bool(expected.multi_label) if expected is not None else False
        self._memory = self.path == ":memory:"
        # A file opened for writing: checkpointed after each action, out of WAL when closed.
        self._wal = not self._memory and not self.read_only
        if self._memory and expected is None:
            raise param_error("store", where, "the path of an existing store file", path)
        if self._memory:
            self._conn = self._connect()
        else:
            self._check_path(where, must_exist=self.read_only or expected is None)
            if self.read_only:
                self._conn = self._connect_read_only()
            else:
                expected = self._take_lock(expected)
                try:
                    self._conn = self._connect()
                except BaseException:
                    self._release_lock()
                    raise
        try:
            self._init_schema(expected)
            self._labels: dict[Any, Any] = {}
            self._marks: dict[str, set[Any]] = {"skip": set(), "flag": set()}
            self._load_state()
            # Another thread may have opened the same file again meanwhile.
            self._check_open()
        except BaseException:
            self._conn.close()
            self._release_lock()
            raise

    def _check_path(self, where: str, *, must_exist: bool) -> None:
        path = Path(self.path)
        if path.is_dir():
            raise StoreError(
                f"The 'store' path {self.path!r} given to {where} is a folder; expected a file path such as 'labels.db'."
            )
        parent = path.parent if str(path.parent) else Path(".")
        if must_exist:
            if not path.is_file():
                opens = "LabelStore.open" if where == "LabelStore.open" else "read_only=True"
                raise StoreError(
                    f"The 'store' path {self.path!r} given to {where} does not exist ({opens} opens existing stores only)."
                )
            return
        if not parent.is_dir():
            raise StoreError(
                f"The 'store' path {self.path!r} given to {where} is in a folder that does not exist: {str(parent)!r}."
            )
        if not _folder_writable(parent) or (path.exists() and not os.access(path, os.W_OK)):
            raise StoreError(
                f"The 'store' path {self.path!r} given to {where} is not writable. Choose a path in "
                "a writable folder, or open it with read_only=True to only read it."
            )

    def _hard_link_error(self, links: int) -> StoreError:
        return StoreError(
            f"The label store {self.path!r} has {links} hard links (names). SQLite keeps a "
            "store's write-ahead log beside the name it was opened by, so labels written through "
            "one name can be missed, or overwritten, through another. Remove the other names, or "
            "use a copy (LabelStore.backup) or a symlink instead."
        )

    def _take_lock(self, expected: _Identity | None) -> _Identity | None:
        """Take the write lock after checking that the file is this dataset's store (returns
        the file's identity), then close a previous LabelStore of this process on the file."""
        if fcntl is None:
            raise StoreError(
                f"The label store {self.path!r} needs file locks (fcntl), which this system lacks; "
                "use ':memory:' or a POSIX system."
            )
        with _registry():
            try:
                key, fd = _use_file(self.path, "w")
            except OSError as exc:
                raise StoreError(
                    f"The 'store' path {self.path!r} cannot be written ({exc.strerror}: {exc.filename}). "
                    "Choose a path in a writable folder."
                ) from None
            self._file_key = key
            ref = _OPEN.get(key)
            previous = ref() if ref is not None else None
            try:
                # A previous store of this process holds the lock on the same open file, which
                # is no conflict; it is closed only once this store is sure to open.
                if not _lock_file(fd, "w"):
                    raise StoreLockedError(
                        f"The label store {self.path!r} is open in another process. One process writes a "
                        "store at a time: close the other session (session.close()), or open this one "
                        "with read_only=True to read and export."
                    )
                st = os.fstat(fd)
                if st.st_nlink > 1:
                    raise self._hard_link_error(st.st_nlink)
                if st.st_size > 0:  # check that the file is ours before taking it over
                    expected = self._peek(expected)
                elif expected is None:  # LabelStore.open on an empty file
                    raise StoreError(
                        f"The 'store' path {self.path!r} is an empty file, not a dal_widgets label store."
                    )
            except BaseException:
                self._file_key = None
                _release_file(key, self)
                raise
            _OPEN[key] = weakref.ref(self)
        if previous is not None:
            # Outside _OPEN_LOCK: closing waits for the previous store's lock. It finds this
            # store registered, so it leaves the file locked.
            previous._close(
                "it was opened again by a newer LabelStore (for example a new Session) on the same file",
                taken_over=True,
            )
        return expected

    def _release_lock(self) -> None:
        """Unlock the file (unless a newer store of this process took it over) and let go of
        this store's use of it."""
        key, self._file_key = self._file_key, None
        if key is not None:
            with _registry():
                _release_file(key, self)

    def _usable_error(self, exc: BaseException) -> StoreError:
        return StoreError(
            f"The 'store' path {self.path!r} is not a usable SQLite label store: {exc}."
        )

    def _connect(self) -> sqlite3.Connection:
        """The writer's connection (file or memory)."""
        try:
            conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=10.0
            )
            if not self._memory:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(
                        f"The label store {self.path!r} could not switch to WAL mode (got {mode!r})."
                    )
            # FULL: a committed transaction survives power loss too, not only a crash.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            return conn
        except sqlite3.DatabaseError as exc:
            raise self._usable_error(exc) from None

    def _connect_in_place(self) -> sqlite3.Connection:
        """A read-only connection to the file where it is."""
        uri = Path(self.path).resolve().as_uri() + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise self._usable_error(exc) from None
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens -wal, -shm
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise self._usable_error(exc) from None
        return conn

    def _connect_read_only(self) -> sqlite3.Connection:
        with _registry():
            try:
                key, fd = _use_file(self.path, "r")
            except OSError as exc:
                raise StoreError(
                    f"The 'store' path {self.path!r} cannot be read ({exc.strerror})."
                ) from None
            self._file_key = key
        try:
            links = os.fstat(fd).st_nlink
            if links > 1:
                raise self._hard_link_error(links)
            # SQLite puts -wal and -shm beside the real file (it follows symlinks).
            folder = Path(os.path.realpath(self.path)).parent
            if _folder_writable(folder):
                return self._connect_in_place()
            return self._read_snapshot(fd, folder)
        except BaseException:
            self._release_lock()
            raise

    def _read_snapshot(self, fd: int, folder: Path) -> sqlite3.Connection:
        """Read a store in a folder this process cannot write into memory.

        SQLite reads a file in WAL mode only with a -shm index, which it must create there.
        With no writer (a shared lock makes sure none starts meanwhile): a file without a
        write-ahead log is read as ``immutable``; one with a log a killed writer left is read
        from a private copy of both. While a writer has it open, its -wal and -shm exist and
        SQLite reads them in place.
        """
        with _registry():
            if not _lock_file(fd, "r"):
                try:
                    return self._connect_in_place()
                except StoreError:
                    raise StoreError(
                        f"The label store {self.path!r} is being written by another process, and "
                        f"its folder {str(folder)!r} is not writable by this user, so SQLite cannot "
                        "read its write-ahead log. Open it once that session is closed (a closed "
                        "store is one self-contained file), or ask for a copy made with "
                        "LabelStore.backup()."
                    ) from None
            try:
                snapshot = sqlite3.connect(
                    ":memory:", check_same_thread=False, isolation_level=None
                )
                try:
                    self._copy_into(snapshot, fd)
                except BaseException:
                    snapshot.close()
                    raise
                return snapshot
            finally:
                _lock_file(fd, "u")

    def _copy_into(self, snapshot: sqlite3.Connection, fd: int) -> None:
        wal = Path(os.path.realpath(self.path) + "-wal")
        try:
            if wal.is_file() and wal.stat().st_size > 0:
                with tempfile.TemporaryDirectory(prefix="dal_widgets-") as tmp:
                    copy = os.path.join(tmp, "store.db")
                    # Read through our descriptor: opening and closing another one would drop
                    # the POSIX locks SQLite connections of this process hold on the file.
                    with open(copy, "wb") as out:
                        offset = 0
                        while chunk := os.pread(fd, 1 << 20, offset):
                            out.write(chunk)
                            offset += len(chunk)
                    shutil.copyfile(wal, copy + "-wal")
                    source = sqlite3.connect(copy, isolation_level=None)
                    try:
                        source.backup(snapshot)
                    finally:
                        source.close()
            else:
                uri = Path(self.path).resolve().as_uri() + "?immutable=1"
                source = sqlite3.connect(uri, uri=True, isolation_level=None)
                try:
                    source.backup(snapshot)
                finally:
                    source.close()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise self._usable_error(exc) from None

    def _read_meta(self, conn: sqlite3.Connection) -> dict[str, str]:
        try:
            return dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            if "no such table" in str(exc):
                raise StoreError(
                    f"The 'store' path {self.path!r} is an SQLite file but not a dal_widgets label store."
                ) from None
            raise self._usable_error(exc) from None

    def _peek(self, expected: _Identity | None) -> _Identity:
        """Check the identity of an existing file before taking it over; returns it."""
        conn = self._connect_in_place()
        try:
            return self._check_meta(self._read_meta(conn), expected)[0]
        finally:
            conn.close()

    def _damaged(self, what: str) -> StoreError:
        return StoreError(
            f"The label store {self.path!r} is damaged: {what}. Restore it from a copy (see "
            "LabelStore.backup), or repair that row with an SQLite tool."
        )

    def _check_meta(
        self, meta: dict[str, str], expected: _Identity | None
    ) -> tuple[_Identity, int]:
        """Parse the meta rows (the file's identity and round) and compare them with
        ``expected`` (None: accept the file's)."""
        if "fingerprint" not in meta:
            raise StoreError(
                f"The 'store' path {self.path!r} is an SQLite file but not a dal_widgets label store."
            )
        raw_version = meta.get("schema_version", "0")
        try:
            version = int(raw_version)
        except ValueError:
            raise self._damaged(
                f"its meta row 'schema_version' is {short_repr(raw_version)}, not an integer"
            ) from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"The label store {self.path!r} was written by a newer dal_widgets (schema {version})."
            )
        raw_classes = meta.get("classes", "")
        try:
            stored = json.loads(raw_classes)
        except ValueError:
            stored = None
        if (
            not isinstance(stored, list)
            or not all(isinstance(c, str) for c in stored)
            or len(set(stored)) != len(stored)
        ):
            raise self._damaged(
                f"its meta row 'classes' is {short_repr(raw_classes)}, not a JSON list of distinct class names"
            )
        if "round" not in meta:
            raise self._damaged("its meta row 'round' is missing")
        try:
            rnd = int(meta["round"])
        except ValueError:
            rnd = -1
        if rnd < 0:
            raise self._damaged(
                f"its meta row 'round' is {short_repr(meta['round'])}, not an integer >= 0"
            )
        raw_multi = meta.get("multi_label", "0")
        if raw_multi not in ("0", "1"):
            raise self._damaged(
                f"its meta row 'multi_label' is {short_repr(raw_multi)}, not 0 or 1"
            )
        found = _Identity(
            meta["fingerprint"], stored, meta.get("dataset_name", ""), raw_multi == "1"
        )
        if expected is None:
            return found, rnd
        if found.fingerprint != expected.fingerprint:
            raise StoreMismatchError(
                f"The label store {self.path!r} belongs to another dataset: it was made for "
                f"{found.dataset_name or 'an unnamed dataset'!r} (fingerprint {found.fingerprint}), and "
                f"this one is {expected.dataset_name or 'unnamed'!r} (fingerprint {expected.fingerprint}). Use another "
                "store path for this dataset, or open the store with the dataset it was made for."
            )
        if found.multi_label != expected.multi_label:
            kind = "multi-label" if found.multi_label else "single-label"
            raise StoreMismatchError(
                f"The label store {self.path!r} is {kind}; this session is "
                f"{'multi-label' if expected.multi_label else 'single-label'}. Use another store path."
            )
        if stored[: len(expected.classes)] != expected.classes:
            raise StoreMismatchError(
                f"The label store {self.path!r} has the classes {stored}, which do not start with "
                f"the dataset's classes {expected.classes}. The class list is fixed when a store is made."
            )
        return found, rnd

    def _init_schema(self, expected: _Identity | None) -> None:
        conn = self._conn
        try:
            if not self.read_only:
                with self._transaction():
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            conn.execute(stmt)
                    existing = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                    if not existing and expected is not None:
                        rows = {
                            "schema_version": str(SCHEMA_VERSION),
                            "fingerprint": expected.fingerprint,
                            "dataset_name": expected.dataset_name,
                            "classes": json.dumps(expected.classes),
                            "round": "0",
                            "created": _iso(_now()),
                            "multi_label": "1" if expected.multi_label else "0",
                        }
                        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", rows.items())
            meta = self._read_meta(conn)
        except sqlite3.DatabaseError as exc:
            raise self._usable_error(exc) from None
        found, self._round = self._check_meta(meta, expected)
        self.multi_label = found.multi_label
        self._classes = list(found.classes)
        self._fingerprint = found.fingerprint
        self._dataset_name = found.dataset_name

    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    def _load_state(self) -> None:
        try:
            rows = self._conn.execute("SELECT sample_id, field, value FROM state").fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._usable_error(exc) from None
        classes = set(self._classes)
        for sample_id, field, value in rows:
            if isinstance(sample_id, bool) or not isinstance(sample_id, (int, str)):
                raise self._damaged(
                    f"a state row has the sample id {short_repr(sample_id)}, not an int or str"
                )
            if field == "label":
                self._labels[sample_id] = self._checked_label(sample_id, value, classes)
            elif field in self._marks:
                self._marks[field].add(sample_id)

    def _checked_label(self, sample_id: Any, value: Any, classes: set[str]) -> Any:
        """A stored label, decoded, or StoreError when it is not one the store can hold."""
        if not self.multi_label:
            if value not in classes:
                raise self._damaged(
                    f"the label of sample {sample_id!r} is {short_repr(value)}, which is not one of its classes {self._classes}"
                )
            return value
        try:
            names = json.loads(value)
        except (TypeError, ValueError):
            names = None
        if not isinstance(names, list) or not all(
            isinstance(c, str) and c in classes for c in names
        ):
            raise self._damaged(
                f"the label of sample {sample_id!r} is {short_repr(value)}, not a JSON list of "
                f"names from its classes {self._classes} (it is a multi-label store)"
            )
        return tuple(names)

    # ------------------------------------------------------------------ closing
    @property
    def closed(self) -> bool:
        """Whether this store can no longer be used."""
        return self._closed_reason is not None

    def add_close_callback(self, callback: Callable[[str], Any]) -> Callable[[], None]:
        """Call ``callback(reason)`` once when this store closes: :meth:`close`, or a takeover
        by a newer LabelStore on the same file (then in the thread that opened the new one).

        Callbacks run after the store is closed, outside its lock, so a callback may stop a
        thread that was using the store. One that raises is recorded (a traceback) in
        ``close_callback_errors`` and the others still run. Added to a closed store, the
        callback is called at once.

        Returns
        -------
        callable
            Call it (no arguments) to unsubscribe.
        """
        if not callable(callback):
            raise param_error(
                "callback",
                "LabelStore.add_close_callback",
                "a callable taking the reason (a str)",
                callback,
                TypeError,
            )
        token = object()
        with self._lock:
            reason = self._closed_reason
            if reason is None:
                self._close_callbacks[token] = callback

        def unsubscribe() -> None:
            with self._lock:
                self._close_callbacks.pop(token, None)

        if reason is not None:
            self._run_close_callbacks([callback], reason)
        return unsubscribe

    def _shut(self, reason: str, *, taken_over: bool = False) -> list[Callable[[str], Any]]:
        """Close the connection and let go of the file; returns the callbacks to run."""
        with self._lock:
            if self._closed_reason is not None:
                return []
            self._closed_reason = reason
            callbacks = list(self._close_callbacks.values())
            self._close_callbacks.clear()
            conn = getattr(self, "_conn", None)  # None: taken over while still opening
            try:
                if conn is not None:
                    if self._wal and not taken_over:
                        self._leave_wal()
                    conn.close()
            finally:
                # Lock order: a store's lock, then _OPEN_LOCK (whose holders never wait for a
                # store's lock), never the other way round.
                self._release_lock()
        return callbacks

    def _leave_wal(self) -> None:
        """Switch the file out of WAL mode, which checkpoints and deletes -wal and -shm: a
        closed store is one self-contained file, which can be copied alone and read where no
        -shm can be made. Skipped while another process has the file open (it stays in WAL
        mode, complete up to the last checkpoint)."""
        try:
            self._conn.execute("PRAGMA busy_timeout = 0")
            self._conn.execute("PRAGMA journal_mode = DELETE").fetchone()
        except sqlite3.Error:
            pass

    def _run_close_callbacks(self, callbacks: list[Callable[[str], Any]], reason: str) -> None:
        for callback in callbacks:
            try:
                callback(reason)
            except Exception:  # noqa: BLE001 (recorded; a view's bug must not block closing)
                self.close_callback_errors.append(traceback.format_exc())

    def _close(self, reason: str, *, taken_over: bool = False) -> None:
        self._run_close_callbacks(self._shut(reason, taken_over=taken_over), reason)

    def close(self) -> None:
        """Close the file and release the write lock. Idempotent."""
        self._close("close() was called")

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self._closed_reason is None:
                self._conn.close()
            key, self._file_key = self._file_key, None
            if key is None:
                return
            # Never wait here: the collector may run in a thread that holds _OPEN_LOCK.
            _DEFERRED.append(key)
            if _OPEN_LOCK.acquire(blocking=False):
                try:
                    _release_deferred()
                finally:
                    _OPEN_LOCK.release()
        except Exception:  # noqa: BLE001 (interpreter shutdown: nothing sensible to do)
            pass

    def _check_open(self, writing: bool = False) -> None:
        if self._closed_reason is not None:
            raise StoreClosedError(
                f"The label store {self.path!r} is closed: {self._closed_reason}."
            )
        if writing and self.read_only:
            raise StoreError(
                f"The label store {self.path!r} was opened with read_only=True; it cannot be written."
            )

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("read-only" if self.read_only else "open")
        return (
            f"LabelStore({self.path!r}, {state}, labels={len(self._labels)}, round={self._round})"
        )

    # ------------------------------------------------------------------ reading
    @property
    def side_dir(self) -> Path | None:
        """The folder beside the store for everything derived from it (map caches, model
        checkpoints, embedding caches): ``<store>.dal/``; None for ``":memory:"``. Not created
        here: whoever writes into it creates it."""
        return None if self._memory else Path(self.path + ".dal")

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the dataset the store was made for."""
        return self._fingerprint

    @property
    def dataset_name(self) -> str:
        """The name of the dataset the store was made for (as stored when it was made)."""
        return self._dataset_name

    @property
    def classes(self) -> list[str]:
        """The class list (it only grows, through :meth:`add_class`)."""
        return list(self._classes)

    @property
    def round(self) -> int:
        """The current round: 0 before the first query, then one more per query."""
        return self._round

    def _encode(self, label: Any) -> str:
        if not self.multi_label:
            return label
        order = {c: i for i, c in enumerate(self._classes)}
        return json.dumps(sorted(set(label), key=order.__getitem__), ensure_ascii=False)

    def _decode(self, value: str | None) -> Any:
        if value is None or not self.multi_label:
            return value
        return tuple(json.loads(value))

    @property
    def labels(self) -> dict[Any, Any]:
        """Current labels: sample id -> class name (a tuple of names when multi-label; a copy)."""
        with self._lock:
            return dict(self._labels)

    def marked(self, field: str) -> set[Any]:
        """Ids currently marked ``"skip"`` or ``"flag"``."""
        if field not in self._marks:
            raise param_error("field", "LabelStore.marked", "'skip' or 'flag'", field)
        with self._lock:
            return set(self._marks[field])

    def __len__(self) -> int:
        return len(self._labels)

    def history(self, sample_id: Any = None) -> list[dict[str, Any]]:
        """Every event (oldest first), or those of one sample: what changed, when, by whom."""
        sql = (
            "SELECT e.sample_id, e.field, e.old, e.new, a.action_id, a.kind, a.source, a.annotator, "
            "a.round, a.ts, a.undoes, a.undone_by FROM events e JOIN actions a USING(action_id)"
        )
        args: tuple[Any, ...] = ()
        if sample_id is not None:
            sql += " WHERE e.sample_id = ?"
            args = (sample_id,)
        sql += " ORDER BY a.action_id, e.rowid"
        with self._lock:
            self._check_open()
            rows = self._conn.execute(sql, args).fetchall()
        keys = (
            "sample_id",
            "field",
            "old",
            "new",
            "action_id",
            "kind",
            "source",
            "annotator",
            "round",
            "ts",
            "undoes",
            "undone_by",
        )
        out = [dict(zip(keys, r)) for r in rows]
        for rec in out:
            rec["timestamp"] = _iso(rec.pop("ts"))
        return out

    def records(self) -> list[dict[str, Any]]:
        """One row per labeled sample: id, label, round, source, annotator, ISO timestamp."""
        with self._lock:
            self._check_open()
            rows = self._conn.execute(
                "SELECT s.sample_id, s.value, a.round, a.source, a.annotator, a.ts FROM state s "
                "JOIN actions a ON a.action_id = s.action_id WHERE s.field = 'label' ORDER BY a.action_id, "
                "(SELECT MIN(e.rowid) FROM events e WHERE e.action_id = s.action_id AND e.sample_id = s.sample_id)"
            ).fetchall()
        return [
            {
                "sample_id": r[0],
                "label": list(self._decode(r[1])) if self.multi_label else r[1],
                "round": r[2],
                "source": r[3],
                "annotator": r[4],
                "timestamp": _iso(r[5]),
            }
            for r in rows
        ]

    # ------------------------------------------------------------------ writing
    def _validate_ids(self, ids: Sequence[Any], where: str) -> list[Any]:
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, (int, str)):
                raise param_error("ids", where, "plain int or str sample ids", i, TypeError)
            out.append(i)
        if len(set(out)) != len(out):
            dup = sorted({str(i) for i in out if out.count(i) > 1})[:5]
            raise ValueError(
                f"The 'ids' parameter of {where} must not repeat an id. Got duplicates: {dup}."
            )
        return out

    def _apply(
        self,
        kind: str,
        changes: Iterable[tuple[Any, str, str | None]],
        *,
        source: str,
        annotator: str | None,
    ) -> int:
        """Write one action: (sample_id, field, new value or None to clear). One transaction."""
        self._check_open(writing=True)
        if source not in SOURCES:
            raise param_error("source", "LabelStore", f"one of {SOURCES}", source)
        changes = list(changes)
        with self._lock:
            with self._transaction() as conn:
                cur = conn.execute(
                    "INSERT INTO actions(kind, source, annotator, round, ts) VALUES (?, ?, ?, ?, ?)",
                    (kind, source, annotator or self.annotator, self._round, _now()),
                )
                action_id = int(cur.lastrowid or 0)
                self._write_changes(conn, action_id, changes)
            self._apply_to_cache(changes)
        return action_id

    def _write_changes(
        self, conn: sqlite3.Connection, action_id: int, changes: list[tuple[Any, str, str | None]]
    ) -> None:
        events = []
        for sample_id, field, new in changes:
            row = conn.execute(
                "SELECT value, action_id FROM state WHERE sample_id = ? AND field = ?",
                (sample_id, field),
            ).fetchone()
            old, old_action = (row[0], row[1]) if row else (None, None)
            events.append((action_id, sample_id, field, old, old_action, new))
            if new is None:
                conn.execute(
                    "DELETE FROM state WHERE sample_id = ? AND field = ?", (sample_id, field)
                )
            else:
                conn.execute(
                    "INSERT INTO state(sample_id, field, value, action_id) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(sample_id, field) DO UPDATE SET value = excluded.value, action_id = excluded.action_id",
                    (sample_id, field, new, action_id),
                )
        conn.executemany(
            "INSERT INTO events(action_id, sample_id, field, old, old_action, new) VALUES (?, ?, ?, ?, ?, ?)",
            events,
        )

    def _apply_to_cache(self, changes: Iterable[tuple[Any, str, str | None]]) -> None:
        for sample_id, field, new in changes:
            if field == "label":
                if new is None:
                    self._labels.pop(sample_id, None)
                else:
                    self._labels[sample_id] = self._decode(new)
            elif new is None:
                self._marks[field].discard(sample_id)
            else:
                self._marks[field].add(sample_id)

    def label(
        self,
        ids: Sequence[Any],
        labels: Sequence[str],
        *,
        source: str = "human",
        annotator: str | None = None,
    ) -> int:
        """Record labels (class names) for ids as one action; committed when this returns.

        Labeling a sample marked "skip" clears the skip mark in the same action.

        Returns
        -------
        int
            The action id (what :meth:`undo` reverts).
        """
        where = "LabelStore.label"
        ids = self._validate_ids(ids, where)
        labels = list(labels)
        if len(labels) != len(ids):
            raise ValueError(
                f"The 'labels' parameter of {where} must have one label per id ({len(ids)}). Got {len(labels)}."
            )
        if self.multi_label:
            bad = [
                lab
                for lab in labels
                if isinstance(lab, str)
                or not isinstance(lab, (list, tuple, set, frozenset))
                or any(c not in self._classes for c in lab)
            ]
            expected = f"collections of class names from {self._classes} (multi-label store)"
        else:
            bad = [lab for lab in labels if not isinstance(lab, str) or lab not in self._classes]
            expected = f"class names from {self._classes}"
        if bad:
            raise ValueError(
                f"The 'labels' parameter of {where} must hold {expected}. Got {short_repr(bad[:5])} instead."
            )
        labels = [self._encode(lab) for lab in labels]
        if not ids:
            raise param_error("ids", where, "at least one sample id", ids)
        changes: list[tuple[Any, str, str | None]] = [
            (i, "label", lab) for i, lab in zip(ids, labels)
        ]
        skipped = self._marks["skip"]
        changes += [(i, "skip", None) for i in ids if i in skipped]
        return self._apply("label", changes, source=source, annotator=annotator)

    def unlabel(self, ids: Sequence[Any], *, annotator: str | None = None) -> int:
        """Remove the labels of ids (one undoable action; history keeps them)."""
        where = "LabelStore.unlabel"
        ids = [i for i in self._validate_ids(ids, where) if i in self._labels]
        if not ids:
            raise ValueError(f"{where} was given no labeled sample ids.")
        return self._apply(
            "unlabel", [(i, "label", None) for i in ids], source="human", annotator=annotator
        )

    def mark(
        self, ids: Sequence[Any], field: str, value: bool = True, *, annotator: str | None = None
    ) -> int:
        """Set or clear the ``"skip"`` or ``"flag"`` mark of ids (one undoable action)."""
        where = "LabelStore.mark"
        if field not in ("skip", "flag"):
            raise param_error("field", where, "'skip' or 'flag'", field)
        ids = self._validate_ids(ids, where)
        if not ids:
            raise param_error("ids", where, "at least one sample id", ids)
        return self._apply(
            "mark",
            [(i, field, "1" if value else None) for i in ids],
            source="human",
            annotator=annotator,
        )

    def undo(self, *, annotator: str | None = None) -> list[Any] | None:
        """Revert the newest action that is not undone yet.

        Returns the ids it changed back, or None when there is nothing to undo. The undo is
        recorded as an action of its own; labels are never deleted from history.
        """
        self._check_open(writing=True)
        with self._lock:
            with self._transaction() as conn:
                row = conn.execute(
                    "SELECT action_id FROM actions WHERE kind != 'undo' AND undone_by IS NULL "
                    "ORDER BY action_id DESC LIMIT 1"
                ).fetchone()
                if row is None:
                    return None
                target = int(row[0])
                events = conn.execute(
                    "SELECT sample_id, field, old, old_action FROM events WHERE action_id = ? ORDER BY rowid DESC",
                    (target,),
                ).fetchall()
                cur = conn.execute(
                    "INSERT INTO actions(kind, source, annotator, round, ts, undoes) VALUES ('undo', 'human', ?, ?, ?, ?)",
                    (annotator or self.annotator, self._round, _now(), target),
                )
                undo_id = int(cur.lastrowid or 0)
                conn.execute(
                    "UPDATE actions SET undone_by = ? WHERE action_id = ?", (undo_id, target)
                )
                restored: list[tuple[Any, str, str | None]] = []
                undo_events = []
                for sample_id, field, old, old_action in events:
                    now = conn.execute(
                        "SELECT value, action_id FROM state WHERE sample_id = ? AND field = ?",
                        (sample_id, field),
                    ).fetchone()
                    undo_events.append(
                        (
                            undo_id,
                            sample_id,
                            field,
                            now[0] if now else None,
                            now[1] if now else None,
                            old,
                        )
                    )
                    if old is None:
                        conn.execute(
                            "DELETE FROM state WHERE sample_id = ? AND field = ?",
                            (sample_id, field),
                        )
                    else:
                        conn.execute(
                            "INSERT OR REPLACE INTO state(sample_id, field, value, action_id) VALUES (?, ?, ?, ?)",
                            (sample_id, field, old, old_action),
                        )
                    restored.append((sample_id, field, old))
                conn.executemany(
                    "INSERT INTO events(action_id, sample_id, field, old, old_action, new) VALUES (?, ?, ?, ?, ?, ?)",
                    undo_events,
                )
            self._apply_to_cache(restored)
        seen: dict[Any, None] = {}
        for sample_id, _, _ in reversed(restored):
            seen.setdefault(sample_id, None)
        return list(seen)

    def add_class(self, name: str) -> None:
        """Append a class to the list (classes are never removed or reordered)."""
        where = "LabelStore.add_class"
        if not isinstance(name, str) or not name.strip():
            raise param_error("name", where, "a non-empty str", name, TypeError)
        if name in self._classes:
            raise ValueError(
                f"The 'name' parameter of {where} must be a new class. {name!r} exists already."
            )
        self._check_open(writing=True)
        with self._lock:
            with self._transaction() as conn:
                conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'classes'",
                    (json.dumps([*self._classes, name]),),
                )
            self._classes.append(name)

    # ------------------------------------------------------------------ rounds and queries
    def begin_round(self) -> int:
        """Start the next round (called when a query batch is made); returns its number."""
        self._check_open(writing=True)
        with self._lock:
            with self._transaction() as conn:
                conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'round'", (str(self._round + 1),)
                )
            self._round += 1
            return self._round

    def log_query(
        self,
        strategy: str,
        ids: Sequence[Any],
        *,
        scores: Sequence[float] | None = None,
        model_version: int | None = None,
    ) -> None:
        """Record the batch a strategy picked in the current round (for replay and resume)."""
        self._check_open(writing=True)
        with self._lock, self._transaction() as conn:
            conn.execute(
                "INSERT INTO queries(round, strategy, ts, model_version, sample_ids, scores) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    self._round,
                    strategy,
                    _now(),
                    model_version,
                    json.dumps(list(ids)),
                    None if scores is None else json.dumps([float(s) for s in scores]),
                ),
            )

    def queries(self) -> list[dict[str, Any]]:
        """The query log, oldest first: round, strategy, ids, scores, model version, timestamp."""
        with self._lock:
            self._check_open()
            rows = self._conn.execute(
                "SELECT round, strategy, ts, model_version, sample_ids, scores FROM queries ORDER BY query_id"
            ).fetchall()
        return [
            {
                "round": r[0],
                "strategy": r[1],
                "timestamp": _iso(r[2]),
                "model_version": r[3],
                "ids": json.loads(r[4]),
                "scores": None if r[5] is None else json.loads(r[5]),
            }
            for r in rows
        ]

    def update_round(self, round: int | None = None, **fields: Any) -> None:
        """Merge JSON-serializable fields into the history row of a round (default: current)."""
        self._check_open(writing=True)
        rnd = self._round if round is None else int(round)
        with self._lock, self._transaction() as conn:
            row = conn.execute("SELECT data FROM rounds WHERE round = ?", (rnd,)).fetchone()
            data = json.loads(row[0]) if row else {"round": rnd}
            data.update(fields)
            conn.execute(
                "INSERT OR REPLACE INTO rounds(round, data) VALUES (?, ?)", (rnd, json.dumps(data))
            )

    def rounds(self) -> list[dict[str, Any]]:
        """The per-round history rows, in round order."""
        with self._lock:
            self._check_open()
            rows = self._conn.execute("SELECT data FROM rounds ORDER BY round").fetchall()
        return [json.loads(r[0]) for r in rows]

    # ------------------------------------------------------------------ export
    def export(self, path: str | os.PathLike[str], format: str | None = None) -> Path:
        """Write the current labels to CSV or JSON Lines (by suffix, or ``format``).

        The file is written beside its target and renamed into place, so an interrupted export
        never leaves a half-written file under the final name; temporary files that killed
        exports of the same target left behind are removed.
        """
        where = "LabelStore.export"
        target = Path(_check_file_param(path, "path", where))
        fmt = format or {
            ".csv": "csv",
            ".jsonl": "jsonl",
            ".json": "jsonl",
            ".ndjson": "jsonl",
        }.get(target.suffix.lower())
        if fmt not in ("csv", "jsonl"):
            raise param_error(
                "format",
                where,
                "'csv' or 'jsonl' (or a path ending in .csv or .jsonl)",
                format or str(target),
            )
        rows = self.records()
        tmp: Path | None = None
        try:
            tmp = _new_tmp(target)
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                if fmt == "csv":
                    writer = csv.DictWriter(
                        fh,
                        fieldnames=[
                            "sample_id",
                            "label",
                            "round",
                            "source",
                            "annotator",
                            "timestamp",
                        ],
                    )
                    writer.writeheader()
                    for rec in rows:  # multi-label sets as JSON lists, not Python reprs
                        if isinstance(rec["label"], list):
                            rec = {**rec, "label": json.dumps(rec["label"], ensure_ascii=False)}
                        writer.writerow(rec)
                else:
                    for rec in rows:
                        fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            if tmp is not None:
                _drop_tmp(tmp, remove=True)
            raise StoreError(
                f"{where} could not write {str(target)!r}: {exc.strerror or exc}."
            ) from None
        except BaseException:
            if tmp is not None:
                _drop_tmp(tmp, remove=True)
            raise
        _drop_tmp(tmp, remove=False)
        _fsync_dir(target.parent)
        return target

    def backup(self, path: str | os.PathLike[str]) -> Path:
        """Copy the store to ``path``, safely while it is in use (also while other threads label).

        SQLite's online backup copies one consistent state of the store; the copy is one
        self-contained file (not in WAL mode), written beside its target, flushed to disk and
        renamed into place, so ``path`` never holds a partial copy. Open it like any store.
        A plain file copy of the store is only complete between actions, and only of the main
        file; this is the way to copy a store someone is labeling.

        Returns
        -------
        Path
            ``path``.
        """
        where = "LabelStore.backup"
        target = Path(_check_file_param(path, "path", where))
        if target.is_dir():
            raise StoreError(
                f"{where} cannot write {str(target)!r}: it is a folder; give a file path such as 'labels-copy.db'."
            )
        if not self._memory and target.exists() and os.path.samefile(target, self.path):
            raise param_error("path", where, "another file than the store's own file", str(target))
        tmp: Path | None = None
        try:
            tmp = _new_tmp(target)
            copy = sqlite3.connect(tmp, isolation_level=None)
            try:
                with self._lock:
                    self._check_open()
                    self._conn.backup(copy)
                copy.execute("PRAGMA journal_mode = DELETE").fetchone()
            finally:
                copy.close()
            _fsync_file(tmp)
            os.replace(tmp, target)
        except (OSError, sqlite3.Error) as exc:
            if tmp is not None:
                _drop_tmp(tmp, remove=True)
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise StoreError(f"{where} could not write {str(target)!r}: {detail}.") from None
        except BaseException:
            if tmp is not None:
                _drop_tmp(tmp, remove=True)
            raise
        _drop_tmp(tmp, remove=False)
        _fsync_dir(target.parent)
        return target

    def to_dataframe(self) -> Any:
        """The current labels as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("LabelStore.to_dataframe needs pandas: pip install pandas") from None
        frame = pd.DataFrame(
            self.records(),
            columns=["sample_id", "label", "round", "source", "annotator", "timestamp"],
        )
        frame["timestamp"] = pd.to_datetime(frame["timestamp"])
        return frame


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error; SQLite errors become StoreError.

    After the commit, a passive checkpoint copies the write-ahead log into the main file, so
    that file alone holds every label returned so far (a plain copy of it is a complete store).
    """

    def __init__(self, store: LabelStore) -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        conn = self.store._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.ProgrammingError:  # closed by another thread (a takeover) meanwhile
            self.store._check_open(writing=True)
            raise
        except sqlite3.OperationalError as exc:
            raise StoreError(
                f"The label store {self.store.path!r} could not start a write: {exc}."
            ) from None
        return conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        conn = self.store._conn
        if exc_type is None:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as err:
                exc = err
            else:
                if self.store._wal:
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    except sqlite3.Error:
                        pass  # the action is committed; the next checkpoint copies it
                return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the failed COMMIT may have rolled back already
        if isinstance(exc, sqlite3.Error):
            raise StoreError(
                f"The label store {self.store.path!r} could not save this change ({exc}); nothing of "
                "it was saved. Free disk space or check the file's permissions, then retry."
            ) from None
