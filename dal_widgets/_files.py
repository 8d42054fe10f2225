"""Files written atomically: a temporary file beside the target, fsync, rename, fsync the folder.

One helper for every writer of the package (label exports and backups, model checkpoints, map
caches), so a crash leaves the previous file or the new one, never half of one, and leftovers of
killed writes are removed by the next write to the same target.

Temporary files are named ``.<target name>.<pid>.<8 hex>.tmp`` (older versions wrote
``.<target name>.<pid>.tmp`` or ``.<target name>.tmp``), plus the ``-journal`` SQLite may leave
beside a killed backup's.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dal_widgets._checks import param_error

__all__ = ["check_path_param", "write_atomically"]

_TMP_PATTERN = re.compile(r"(?:(\d+)(?:\.[0-9a-f]{8})?\.)?tmp(?:-journal)?")
# A temporary file this old is left over whatever its pid says (pids are reused): writing one
# takes seconds.
_STALE_TMP_AGE = 3600.0
_ACTIVE_TMPS: set[Path] = set()
_TMP_LOCK = threading.Lock()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be running (True when we cannot tell)."""
    if pid <= 0 or os.name != "posix":
        # not a pid we could have written; or Windows, where os.kill(pid, 0) would end the
        # process: leftovers there go by age alone
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_tmps(target: Path) -> None:
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
        pid = int(match.group(1)) if match.group(1) else -1
        with _TMP_LOCK:
            base = tmp.with_name(tmp.name.removesuffix("-journal"))
            if tmp in _ACTIVE_TMPS or base in _ACTIVE_TMPS:
                continue
        try:
            age = now - tmp.stat().st_mtime
            if (
                pid == os.getpid()
                or (pid > 0 and not pid_alive(pid))
                or age > _STALE_TMP_AGE
                or match.group(1) is None  # the oldest naming: written by a finished version
            ):
                tmp.unlink()
        except OSError:
            pass  # gone already, or not ours to delete: it does not stop this write


def new_tmp(target: Path) -> Path:
    """Create a fresh, empty temporary file beside ``target`` (after removing stale ones)."""
    remove_stale_tmps(target)
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


def drop_tmp(tmp: Path, *, remove: bool) -> None:
    """The write through ``tmp`` is over; delete it (and a SQLite journal) when ``remove``."""
    with _TMP_LOCK:
        _ACTIVE_TMPS.discard(tmp)
    if remove:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass  # reported by the caller's own error


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (not every filesystem can fsync a folder)."""
    try:
        fsync_file(folder)
    except OSError:
        pass


def write_atomically(target: Path, write: Callable[[Path], Any]) -> None:
    """Run ``write(tmp)`` into a fresh temporary file beside ``target``, fsync it, rename it
    onto ``target`` and fsync the folder. On any error (or interrupt) the temporary file is
    removed and the error goes on; ``target`` is then as it was."""
    tmp = new_tmp(target)
    done = False
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, target)
        done = True
    finally:
        drop_tmp(tmp, remove=not done)
    fsync_dir(target.parent)


def check_path_param(path: Any, name: str, where: str) -> str:
    """``path`` as a str, or a TypeError for bytes, ints and other non-paths."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else path
    if not isinstance(text, str):
        raise param_error(name, where, "a file path (str or os.PathLike)", path, TypeError)
    return text
