"""Opening, checking and closing a store file: the base of :class:`LabelStore`.

Everything here is about the file (paths, the lock, read-only snapshots, the schema and its
metadata, closing); the record of actions on top of it is in ``_sqlite.py``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dal_widgets._checks import param_error
from dal_widgets._files import check_path_param
from dal_widgets.store._errors import (
    StoreError,
    StoreLockedError,
)
from dal_widgets.store._locks import (
    _DEFERRED,
    _OPEN,
    _OPEN_LOCK,
    _folder_writable,
    _lock_file,
    _registry,
    _release_deferred,
    _release_file,
    _use_file,
    fcntl,
)
from dal_widgets.store._schema import (
    FIELDS,
    SCHEMA_VERSION,
    SOURCES,
    _default_annotator,
    _Identity,
    _Schema,
)

__all__ = ["FIELDS", "SCHEMA_VERSION", "SOURCES"]


class _StoreFile(_Schema):
    """The file side of a label store (see :class:`LabelStore`)."""

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
        self.path = check_path_param(path, "store", where)
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
                        f"only to read and export: dal_widgets.Session(dataset, store={self.path!r}, "
                        f"read_only=True) or dal_widgets.store.LabelStore.open({self.path!r}, "
                        "read_only=True)."
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

    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    # ------------------------------------------------------------------ closing
    def _shut(self, reason: str, *, taken_over: bool = False) -> list[Callable[[str], Any]]:
        """Close the connection and let go of the file; returns the callbacks to run."""
        with self._lock:
            callbacks = self._mark_closed(reason)
            if callbacks is None:
                return []
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

    def __repr__(self) -> str:
        state = (
            "closed"
            if self._closed_reason is not None
            else ("read-only" if self.read_only else "open")
        )
        return (
            f"LabelStore({self.path!r}, {state}, labels={len(self._labels)}, round={self._round})"
        )


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error; SQLite errors become StoreError.

    After the commit, a passive checkpoint copies the write-ahead log into the main file, so
    that file alone holds every label returned so far (a plain copy of it is a complete store).
    """

    def __init__(self, store: _StoreFile) -> None:
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
