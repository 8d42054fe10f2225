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

from dal_widgets.store._copy import copy_store
from dal_widgets.store._errors import (
    StoreClosedError,
    StoreError,
    StoreLockedError,
    StoreMismatchError,
)
from dal_widgets.store._postgres import PostgresStore
from dal_widgets.store._rounds import RoundRecord
from dal_widgets.store._schema import FIELDS, SCHEMA_VERSION, SOURCES
from dal_widgets.store._sqlite import LabelStore, open_store

__all__ = [
    "FIELDS",
    "SCHEMA_VERSION",
    "SOURCES",
    "LabelStore",
    "PostgresStore",
    "RoundRecord",
    "StoreClosedError",
    "StoreError",
    "StoreLockedError",
    "StoreMismatchError",
    "copy_store",
    "open_store",
]
