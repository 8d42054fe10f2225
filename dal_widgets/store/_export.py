"""Copies of a store: labels exported to CSV / JSON Lines, and whole-store backups.

Both are written to a temporary file beside the target, fsynced and renamed into place
(``dal_widgets._files``), so an interrupted export never leaves a half-written file.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from dal_widgets._checks import param_error
from dal_widgets._files import check_path_param, write_atomically
from dal_widgets.store._errors import StoreError
from dal_widgets.store._file import _StoreFile

__all__: list[str] = []  # LabelStore's methods

_COLUMNS = ("sample_id", "label", "round", "source", "annotator", "timestamp")


class _Exports:
    """Export and DataFrame views of a store, on any backend."""

    _api: str

    def records(self) -> list[dict[str, Any]]:
        raise NotImplementedError  # the store's

    # ------------------------------------------------------------------ export
    def export(self, path: str | os.PathLike[str], format: str | None = None) -> Path:
        """Write the current labels to CSV or JSON Lines (by suffix, or ``format``).

        The file is written beside its target and renamed into place, so an interrupted export
        never leaves a half-written file under the final name; temporary files that killed
        exports of the same target left behind are removed.
        """
        where = f"{self._api}.export"
        target = Path(check_path_param(path, "path", where))
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

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                if fmt == "jsonl":
                    fh.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in rows)
                    return
                writer = csv.DictWriter(fh, fieldnames=list(_COLUMNS))
                writer.writeheader()
                for rec in rows:  # multi-label sets as JSON lists, not Python reprs
                    if isinstance(rec["label"], list):
                        rec = {**rec, "label": json.dumps(rec["label"], ensure_ascii=False)}
                    writer.writerow(rec)

        try:
            write_atomically(target, write)
        except OSError as exc:
            raise StoreError(
                f"{where} could not write {str(target)!r}: {exc.strerror or exc}."
            ) from None
        return target

    def to_dataframe(self) -> Any:
        """The current labels as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                f"{self._api}.to_dataframe needs pandas: pip install pandas"
            ) from None
        frame = pd.DataFrame(self.records(), columns=list(_COLUMNS))
        frame["timestamp"] = pd.to_datetime(frame["timestamp"])
        return frame


class _FileBackup(_StoreFile):
    """Whole-store copies of an SQLite store (the base of :class:`LabelStore`)."""

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
        target = Path(check_path_param(path, "path", where))
        if target.is_dir():
            raise StoreError(
                f"{where} cannot write {str(target)!r}: it is a folder; give a file path such as 'labels-copy.db'."
            )
        if not self._memory and target.exists() and os.path.samefile(target, self.path):
            raise param_error("path", where, "another file than the store's own file", str(target))

        def write(tmp: Path) -> None:
            copy = sqlite3.connect(tmp, isolation_level=None)
            try:
                with self._lock:
                    self._check_open()
                    self._conn.backup(copy)
                copy.execute("PRAGMA journal_mode = DELETE").fetchone()
            finally:
                copy.close()

        try:
            write_atomically(target, write)
        except (OSError, sqlite3.Error) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise StoreError(f"{where} could not write {str(target)!r}: {detail}.") from None
        return target
