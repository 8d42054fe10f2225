"""The label store on SQLite: an event-sourced record of label actions (see the package doc)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dal_widgets._checks import param_error
from dal_widgets.store._export import _Exports, _FileBackup
from dal_widgets.store._log import _EventLog
from dal_widgets.store._schema import _Identity

if TYPE_CHECKING:
    from dal_widgets.store._postgres import PostgresStore

__all__ = ["LabelStore", "open_store"]


class LabelStore(_EventLog, _Exports, _FileBackup):
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

    # ------------------------------------------------------------------ reading
    @property
    def side_dir(self) -> Path | None:
        """The folder beside the store for everything derived from it (map caches, model
        checkpoints, embedding caches): ``<store>.dal/``; None for ``":memory:"``. Not created
        here: whoever writes into it creates it."""
        return None if self._memory else Path(self.path + ".dal")


def open_store(
    store: Any,
    *,
    fingerprint: str,
    classes: Sequence[str],
    dataset_name: str = "",
    multi_label: bool = False,
    annotator: str | None = None,
    read_only: bool = False,
    project: str | None = None,
    shared: bool = False,
    side_dir: Any = None,
    where: str = "Session",
) -> LabelStore | PostgresStore:
    """The store a session asks for: a :class:`LabelStore` or :class:`PostgresStore` as it
    is, a file path (opened or created for this dataset), a ``postgresql://`` URL with
    ``project``, or None / ``":memory:"`` for one kept in memory."""
    from dal_widgets._pgurl import is_url
    from dal_widgets.store._log import _EventLog

    if not isinstance(read_only, bool):
        raise param_error("read_only", where, "True or False", read_only, TypeError)
    if isinstance(store, _EventLog):
        return store  # type: ignore[return-value]
    identity: dict[str, Any] = {
        "fingerprint": fingerprint,
        "classes": classes,
        "dataset_name": dataset_name,
        "annotator": annotator,
        "multi_label": multi_label,
        "read_only": read_only,
    }
    if is_url(store):
        if project is None:
            raise ValueError(
                f"The 'project' parameter of {where} must name the project when the store is "
                "a PostgreSQL URL (one database holds many projects), e.g. project='digits-v1'."
            )
        from dal_widgets.store._postgres import PostgresStore, check_project

        check_project(project, where)
        return PostgresStore(store, project=project, shared=shared, side_dir=side_dir, **identity)
    if shared:
        raise ValueError(
            f"{where} shares a store only on a PostgreSQL server (store='postgresql://...', "
            "project=...): a team labels one project there."
        )
    if project is not None:
        raise ValueError(
            f"The 'project' parameter of {where} is for a PostgreSQL store "
            "(store='postgresql://...'); a store file holds one project. Got "
            f"project={project!r} with a file store."
        )
    if store is None or isinstance(store, (str, os.PathLike)):
        return LabelStore(":memory:" if store is None else store, **identity)
    raise param_error(
        "store",
        where,
        "a file path (str or os.PathLike), ':memory:', None, a 'postgresql://' URL, or a "
        "LabelStore or PostgresStore",
        store,
        TypeError,
    )
