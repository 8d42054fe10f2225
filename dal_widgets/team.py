"""Labeling as a team on PostgreSQL: a shared work queue with leases, overlap and per-annotator
labels (the first slice of the team store; ``Session`` does not use it yet).

>>> from dal_widgets.team import TeamQueue
>>> q = TeamQueue("postgresql://alice@db.example/labels", project="digits-v1",
...               annotator="alice", overlap=2)                          # doctest: +SKIP
>>> q.add_items(range(1000))          # once, by whoever sets the project up   # doctest: +SKIP
>>> ids = q.claim(10)                 # a batch, leased for lease_seconds        # doctest: +SKIP
>>> q.label(ids[0], "7")              # returns once the label is committed      # doctest: +SKIP

The rules, enforced by the database whatever the number of annotators:

- An item is served to at most ``overlap`` annotators at a time, counting the labels it has and
  the leases not yet expired; an annotator is never served an item they already labeled.
- A claim is one transaction: it locks candidate items with ``FOR UPDATE SKIP LOCKED`` (two
  annotators never wait on each other or take the same slot), then counts labels and live
  leases on a fresh snapshot while holding the locks, and leases the best ``n`` by priority.
- A lease lasts ``lease_seconds``; :meth:`TeamQueue.heartbeat` extends the live ones while the
  batch is on screen. A lease that expired (a kernel killed mid-batch) is simply not counted,
  so its items are served again.
- Labels are rows, one per (item, annotator): a relabel (``replace=True``) changes it and
  :meth:`TeamQueue.withdraw` removes it (a session's event log keeps the history of both).
  :meth:`TeamQueue.label` locks the item, refuses a label beyond the overlap (a lease that
  expired while another annotator took the slot), and returns only after the commit: a label
  it acknowledged is on the server.
- A lost connection (the server restarting) is retried for ``reconnect_seconds``; a label whose
  commit was lost with the connection is found on retry and not written twice.

Credentials: the URL may carry a password (or use ``PGPASSWORD`` / ``~/.pgpass``); it is never
shown in errors or reprs. ``url=None`` reads ``DAL_POSTGRES_URL``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from dal_widgets._checks import check_int, check_real, param_error
from dal_widgets._files import check_path_param
from dal_widgets._pgurl import Secret, redact

__all__ = ["RULES", "SCHEMA_VERSION", "LeaseLostError", "Team", "TeamQueue", "decide", "redact"]

#: Version of the tables below; a database with a newer one is refused.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dal_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS dal_projects (
    project text PRIMARY KEY, overlap integer NOT NULL, created timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS dal_items (
    project text NOT NULL, item_id text NOT NULL, priority double precision NOT NULL DEFAULT 0,
    needed integer NOT NULL, done integer NOT NULL DEFAULT 0,
    PRIMARY KEY (project, item_id));
CREATE INDEX IF NOT EXISTS dal_items_open ON dal_items (project, priority DESC, item_id)
    WHERE done < needed;
CREATE TABLE IF NOT EXISTS dal_leases (
    project text NOT NULL, item_id text NOT NULL, annotator text NOT NULL,
    expires timestamptz NOT NULL, PRIMARY KEY (project, item_id, annotator));
CREATE TABLE IF NOT EXISTS dal_labels (
    seq bigserial PRIMARY KEY, project text NOT NULL, item_id text NOT NULL,
    annotator text NOT NULL, label text NOT NULL, at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project, item_id, annotator));
CREATE TABLE IF NOT EXISTS dal_decisions (
    seq bigserial PRIMARY KEY, project text NOT NULL, item_id text NOT NULL,
    adjudicator text NOT NULL, label text NOT NULL, at timestamptz NOT NULL DEFAULT now(),
    token text NOT NULL UNIQUE);
"""

#: How an item's training label comes from its labels (see :meth:`TeamQueue.training_labels`).
RULES = ("first", "majority", "adjudicated")

# Per item with labels or a decision: the most common label when one leads (NULL on a tie),
# the first label given, whether all labels agree, the newest decision, and whether the item
# has all its labels.
_TALLY = """
WITH c AS (
    SELECT item_id, label, count(*) AS n FROM dal_labels WHERE project = %(p)s
    AND (%(all)s OR item_id = ANY(%(ids)s)) GROUP BY item_id, label),
r AS (
    SELECT c.*, rank() OVER (PARTITION BY item_id ORDER BY n DESC) AS rk,
           count(*) OVER (PARTITION BY item_id) AS kinds FROM c),
top AS (
    SELECT item_id, min(label) AS label, count(*) AS leaders, max(kinds) AS kinds
    FROM r WHERE rk = 1 GROUP BY item_id),
firsts AS (
    SELECT DISTINCT ON (item_id) item_id, label FROM dal_labels
    WHERE project = %(p)s AND (%(all)s OR item_id = ANY(%(ids)s)) ORDER BY item_id, seq),
d AS (
    SELECT DISTINCT ON (item_id) item_id, label FROM dal_decisions
    WHERE project = %(p)s AND (%(all)s OR item_id = ANY(%(ids)s)) ORDER BY item_id, seq DESC)
SELECT i.item_id, CASE WHEN top.leaders = 1 THEN top.label END, firsts.label,
       top.kinds = 1, d.label, i.done >= i.needed
FROM dal_items i LEFT JOIN top USING (item_id) LEFT JOIN firsts USING (item_id)
    LEFT JOIN d USING (item_id)
WHERE i.project = %(p)s AND (%(all)s OR i.item_id = ANY(%(ids)s))
    AND (top.item_id IS NOT NULL OR d.item_id IS NOT NULL)
"""

# Item ``i`` can be leased to annotator ``%(me)s``: they have not labeled it, and its labels
# plus the live leases of others leave a slot (claim uses it to pre-filter, then to decide).
_OPEN_TO_ME = (
    "NOT EXISTS (SELECT 1 FROM dal_labels l WHERE l.project = i.project "
    "AND l.item_id = i.item_id AND l.annotator = %(me)s) "
    "AND i.done + (SELECT count(*) FROM dal_leases s WHERE s.project = i.project "
    "AND s.item_id = i.item_id AND s.annotator <> %(me)s "
    "AND s.expires > clock_timestamp()) < i.needed"
)

T = TypeVar("T")


def check_rule(rule: Any, where: str) -> str:
    if rule not in RULES:
        raise param_error("rule", where, " or ".join(map(repr, RULES)), rule)
    return str(rule)


def decide(
    conn: Any, project: str, rule: str, items: Sequence[Any] | None = None
) -> dict[Any, str]:
    """The training label of each item (of ``items``, or all) by ``rule``, read with
    ``conn`` (any connection to the database; inside the caller's transaction)."""
    keys = None if items is None else [_key(i) for i in items]
    rows = conn.execute(_TALLY, {"p": project, "all": keys is None, "ids": keys or []})
    out = {}
    for item, majority, first, unanimous, decided, complete in rows.fetchall():
        if decided is not None:
            pick = decided
        elif rule == "first":
            pick = first
        elif not complete:  # majority and adjudicated wait for all of an item's labels
            pick = None
        else:
            pick = majority if rule == "majority" else (first if unanimous else None)
        if pick is not None:
            out[json.loads(item)] = pick
    return out


@dataclass(frozen=True)
class Team:
    """How a :class:`~dal_widgets.Session` labels as one of a team (``Session(team=...)``).

    Parameters
    ----------
    overlap : int
        Independent labels wanted per item (fixed when the project's queue is made).
    rule : {"first", "majority", "adjudicated"}
        How an item's training label comes from its labels (see
        :meth:`TeamQueue.training_labels`); an adjudicator's decision always wins.
    lease_seconds : float
        How long a claimed batch stays reserved for its annotator without a heartbeat; the
        session heartbeats while it is open, so only a dead kernel's items go back.
    trainer : bool or None
        Whether this session may train and rank the queue for the team. None (default):
        it takes the role when no other session has it (and takes over when that one
        goes away). False: never (a laptop that only labels).
    model_dir : str or path, optional
        Where the trainer saves each model and the others load it from: a folder every
        annotator's machine can read (a network share). Default: this machine's cache
        folder, which is enough when the whole team works on one machine (a JupyterHub).
    unsure_extra : int
        More labels for the items the model is unsure of: when the trainer ranks the queue,
        each ranked item whose top class probability is below ``unsure_below`` asks for
        ``overlap + unsure_extra`` labels (0, the default: never).
    unsure_below : float
        The top class probability under which the model counts as unsure.
    """

    overlap: int = 1
    rule: str = "majority"
    lease_seconds: float = 120.0
    trainer: bool | None = None
    model_dir: Any = None
    unsure_extra: int = 0
    unsure_below: float = 0.6

    def validated(self, where: str) -> Team:
        check_int(self.overlap, "overlap", where, lo=1, hi=100)
        check_rule(self.rule, where)
        check_real(self.lease_seconds, "lease_seconds", where, lo=1.0)
        if self.trainer not in (None, True, False):
            raise param_error("trainer", where, "None, True or False", self.trainer, TypeError)
        if self.model_dir is not None:
            check_path_param(self.model_dir, "model_dir", where)
        check_int(self.unsure_extra, "unsure_extra", where, lo=0, hi=100 - self.overlap)
        check_real(self.unsure_below, "unsure_below", where, lo=0.0, hi=1.0)
        return self


class LeaseLostError(RuntimeError):
    """A label came after the annotator's lease expired and the item's slots were taken."""


def _key(item: Any) -> str:
    """An item id as the database keeps it: JSON, so 7 and "7" stay different."""
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        if hasattr(item, "item"):  # numpy scalars
            item = item.item()
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        raise param_error("ids", "TeamQueue", "int or str item ids", item, TypeError)
    return json.dumps(item)


class TeamQueue:
    """One annotator's handle on a project's shared queue (see the module's notes).

    Parameters
    ----------
    url : str or None
        A PostgreSQL URL (``postgresql://user@host:port/db``); None reads ``DAL_POSTGRES_URL``.
    project : str
        The project's name; the tables hold many projects.
    annotator : str
        Who labels through this handle.
    overlap : int
        Independent labels wanted per item (a project keeps the overlap it was created with;
        another value for an existing project is an error).
    lease_seconds : float
        How long a claimed item stays reserved without a heartbeat.
    reconnect_seconds : float
        How long an operation keeps retrying while the server cannot be reached.
    """

    def __init__(
        self,
        url: str | None,
        *,
        project: str,
        annotator: str,
        overlap: int = 1,
        lease_seconds: float = 120.0,
        reconnect_seconds: float = 30.0,
    ) -> None:
        where = "TeamQueue"
        self._url = Secret(url, "url", where)
        for name, value in (("project", project), ("annotator", annotator)):
            if not isinstance(value, str) or not value.strip():
                raise param_error(name, where, "a non-empty string", value)
        self.project, self.annotator = project, annotator
        self.overlap = check_int(overlap, "overlap", where, lo=1, hi=100)
        self.lease_seconds = check_real(lease_seconds, "lease_seconds", where, lo=0.1)
        self.reconnect_seconds = check_real(reconnect_seconds, "reconnect_seconds", where, lo=0)
        self._conn: Any = None
        self._lock = threading.RLock()
        self._closed = False
        self._call(self._setup, retry=False)  # a wrong URL or password fails at once

    # ------------------------------------------------------------------ connection
    def __repr__(self) -> str:
        return (
            f"TeamQueue({str(self._url)!r}, project={self.project!r}, "
            f"annotator={self.annotator!r}, overlap={self.overlap})"
        )

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._url.connect()
        return self._conn

    def _hide(self, text: str) -> str:
        return self._url.hide(text)

    def _call(self, op: Callable[[Any], T], *, retry: bool = True) -> T:
        """Run ``op(connection)`` in one transaction, retrying on a lost connection. One at
        a time: a session's threads (labels, heartbeats, the team panel) share the handle."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed.")
            return self._call_locked(op, retry)

    def _call_locked(self, op: Callable[[Any], T], retry: bool) -> T:
        import psycopg

        deadline = time.monotonic() + (self.reconnect_seconds if retry else 0.0)
        pause = 0.05
        while True:
            try:
                conn = self._connect()
                with conn.transaction():
                    return op(conn)
            except (psycopg.OperationalError, ConnectionError) as exc:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                if time.monotonic() >= deadline:
                    if not retry:
                        raise ConnectionError(self._hide(str(exc))) from None
                    raise ConnectionError(
                        f"TeamQueue lost the server at {self._url} and could not get "
                        f"it back in {self.reconnect_seconds:g} s: {self._hide(str(exc))}"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    def close(self) -> None:
        """Close the connection (leases stay until they expire; :meth:`release` frees them)."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> TeamQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ schema
    def _setup(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('dal_widgets schema'))")
        conn.execute(_SCHEMA)
        row = conn.execute("SELECT value FROM dal_meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO dal_meta VALUES ('schema_version', %s)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(
                f"This database's dal_widgets tables are version {row[0]}, newer than this "
                f"package's {SCHEMA_VERSION}: upgrade dal_widgets to use it."
            )
        conn.execute(
            "INSERT INTO dal_projects (project, overlap) VALUES (%s, %s) "
            "ON CONFLICT (project) DO NOTHING",
            (self.project, self.overlap),
        )
        kept = conn.execute(
            "SELECT overlap FROM dal_projects WHERE project = %s", (self.project,)
        ).fetchone()[0]
        if kept != self.overlap:
            raise ValueError(
                f"The 'overlap' parameter of TeamQueue must match project {self.project!r}, "
                f"created with overlap={kept}. Got {self.overlap} instead."
            )

    # ------------------------------------------------------------------ the ranker's side
    def add_items(self, ids: Iterable[Any], priority: float | Sequence[float] = 0.0) -> int:
        """Put items in the queue (those already there are left as they are); how many were
        new. ``priority``: one for all, or one per item."""
        keys = [_key(i) for i in ids]
        if isinstance(priority, (int, float)):
            values = [float(priority)] * len(keys)
        else:
            values = [float(p) for p in priority]
            if len(values) != len(keys):
                raise ValueError(
                    "The 'priority' parameter of TeamQueue.add_items must have one value per "
                    f"item ({len(keys)}). Got {len(values)}."
                )

        def op(conn: Any) -> int:
            cur = conn.execute(
                "INSERT INTO dal_items (project, item_id, priority, needed) "
                "SELECT %s, k, p, %s FROM unnest(%s::text[], %s::float8[]) AS t(k, p) "
                "ON CONFLICT DO NOTHING",
                (self.project, self.overlap, keys, values),
            )
            return int(cur.rowcount)

        return self._call(op)

    def set_priorities(self, priorities: Mapping[Any, float]) -> None:
        """New priorities (higher: served first), e.g. a strategy's scores after a fit."""
        keys = [_key(i) for i in priorities]
        values = [float(v) for v in priorities.values()]

        def op(conn: Any) -> None:
            # The rows' locks in item order first, as heartbeat takes them: no deadlock.
            conn.execute(
                "SELECT 1 FROM dal_items WHERE project = %s AND item_id = ANY(%s) "
                "ORDER BY item_id FOR UPDATE",
                (self.project, keys),
            )
            conn.execute(
                "UPDATE dal_items i SET priority = v.p FROM "
                "(SELECT unnest(%s::text[]) AS id, unnest(%s::float8[]) AS p) v "
                "WHERE i.project = %s AND i.item_id = v.id",
                (keys, values, self.project),
            )

        self._call(op)

    def ask_more(self, items: Iterable[Any], needed: int) -> int:
        """Ask for ``needed`` labels of ``items`` (more than ``overlap``: e.g. those the model
        is unsure of); never fewer than an item already asks for. How many items changed."""
        keys = [_key(i) for i in items]
        needed = check_int(needed, "needed", "TeamQueue.ask_more", lo=1, hi=100)

        def op(conn: Any) -> int:
            conn.execute(  # the rows' locks in item order, as everywhere
                "SELECT 1 FROM dal_items WHERE project = %s AND item_id = ANY(%s) "
                "ORDER BY item_id FOR UPDATE",
                (self.project, keys),
            )
            cur = conn.execute(
                "UPDATE dal_items SET needed = %s WHERE project = %s AND item_id = ANY(%s) "
                "AND needed < %s",
                (needed, self.project, keys, needed),
            )
            return int(cur.rowcount)

        return self._call(op)

    # ------------------------------------------------------------------ the annotator's side
    def claim(self, n: int, *, exclude: Iterable[Any] = ()) -> list[Any]:
        """Lease up to ``n`` items for this annotator, best priority first (fewer when the
        queue has fewer free slots; an empty list when none is free now). Items in
        ``exclude`` (e.g. skipped ones, or those on screen) are not served."""
        n = check_int(n, "n", "TeamQueue.claim", lo=1, hi=10_000)
        me, project = self.annotator, self.project
        skip = [_key(i) for i in exclude]

        def op(conn: Any) -> list[Any]:
            # 1. Lock candidates no one else is claiming or labeling right now.
            locked = [
                r[0]
                for r in conn.execute(
                    # Unlocked here, so only a filter (step 2 counts again): without it, items
                    # whose slots others hold fill the window and a claim comes back short.
                    "SELECT item_id FROM dal_items i WHERE project = %(p)s AND done < needed "
                    f"AND NOT item_id = ANY(%(skip)s) AND {_OPEN_TO_ME} "
                    "ORDER BY priority DESC, item_id LIMIT %(k)s FOR UPDATE SKIP LOCKED",
                    {"p": project, "me": me, "k": 3 * n + 8, "skip": skip},
                )
            ]
            if not locked:
                return []
            # 2. A new snapshot, with the locks held: every committed lease and label of these
            # items is visible now, and no one can add one until this transaction ends.
            free = [
                r[0]
                for r in conn.execute(
                    "SELECT i.item_id FROM dal_items i WHERE i.project = %(p)s "
                    f"AND i.item_id = ANY(%(ids)s) AND {_OPEN_TO_ME} "
                    "ORDER BY i.priority DESC, i.item_id LIMIT %(n)s",
                    {"p": project, "ids": locked, "me": me, "n": n},
                )
            ]
            if free:
                conn.execute(
                    "INSERT INTO dal_leases (project, item_id, annotator, expires) "
                    "SELECT %s, unnest(%s::text[]), %s, "
                    "clock_timestamp() + make_interval(secs => %s) "
                    "ON CONFLICT (project, item_id, annotator) "
                    "DO UPDATE SET expires = EXCLUDED.expires",
                    (project, free, me, self.lease_seconds),
                )
            return [json.loads(k) for k in free]

        return self._call(op)

    def heartbeat(self) -> int:
        """Extend this annotator's live leases by ``lease_seconds``; how many it extended
        (an expired lease is not revived: its slot may be someone else's now)."""

        def op(conn: Any) -> int:
            mine = [
                r[0]
                for r in conn.execute(
                    "SELECT item_id FROM dal_leases WHERE project = %s AND annotator = %s "
                    "AND expires > clock_timestamp()",
                    (self.project, self.annotator),
                )
            ]
            if not mine:
                return 0
            # The items' locks, in one order (claims never wait, labels take one): the count a
            # concurrent claim makes cannot miss an extension.
            conn.execute(
                "SELECT 1 FROM dal_items WHERE project = %s AND item_id = ANY(%s) "
                "ORDER BY item_id FOR UPDATE",
                (self.project, mine),
            )
            cur = conn.execute(
                "UPDATE dal_leases SET expires = clock_timestamp() + make_interval(secs => %s) "
                "WHERE project = %s AND annotator = %s AND item_id = ANY(%s) "
                "AND expires > clock_timestamp()",
                (self.lease_seconds, self.project, self.annotator, mine),
            )
            return int(cur.rowcount)

        return self._call(op)

    def release(self, ids: Iterable[Any] | None = None) -> None:
        """Give back leased items (all of this annotator's when ``ids`` is None)."""
        keys = None if ids is None else [_key(i) for i in ids]

        def op(conn: Any) -> None:
            if keys is None:
                conn.execute(
                    "DELETE FROM dal_leases WHERE project = %s AND annotator = %s",
                    (self.project, self.annotator),
                )
            else:
                conn.execute(
                    "DELETE FROM dal_leases WHERE project = %s AND annotator = %s "
                    "AND item_id = ANY(%s)",
                    (self.project, self.annotator, keys),
                )

        self._call(op)

    def label(self, item: Any, label: str, *, replace: bool = False) -> None:
        """Record this annotator's label of ``item``; returns once it is committed.

        Raises :class:`LeaseLostError` when the lease expired and the item's ``overlap``
        slots went to others meanwhile, and ValueError for a second, different label of the
        same item by the same annotator, unless ``replace`` (a relabel: the label changes in
        the same transaction, keeping the annotator's slot).
        """
        if not isinstance(label, str) or not label:
            raise param_error("label", "TeamQueue.label", "a class name", label)
        key = _key(item)
        me, project = self.annotator, self.project

        def op(conn: Any) -> None:
            # Acknowledged means on disk, whatever the server's default.
            conn.execute("SET LOCAL synchronous_commit = on")
            row = conn.execute(
                "SELECT done, needed FROM dal_items WHERE project = %s AND item_id = %s FOR UPDATE",
                (project, key),
            ).fetchone()
            if row is None:
                raise param_error("item", "TeamQueue.label", "an item of the queue", item)
            done, needed = row
            mine = conn.execute(
                "SELECT label FROM dal_labels WHERE project = %s AND item_id = %s "
                "AND annotator = %s",
                (project, key, me),
            ).fetchone()
            if mine is not None:  # a retry after a lost commit, or a second label
                if mine[0] == label:
                    return
                if replace:
                    conn.execute(
                        "UPDATE dal_labels SET label = %s, at = now() WHERE project = %s "
                        "AND item_id = %s AND annotator = %s",
                        (label, project, key, me),
                    )
                    return
                raise ValueError(
                    f"TeamQueue.label: {me!r} already labeled item {item!r} as {mine[0]!r}; "
                    f"labels are append-only here (got {label!r})."
                )
            others = conn.execute(
                "SELECT count(*) FROM dal_leases WHERE project = %s AND item_id = %s "
                "AND annotator <> %s AND expires > clock_timestamp()",
                (project, key, me),
            ).fetchone()[0]
            held = conn.execute(
                "SELECT 1 FROM dal_leases WHERE project = %s AND item_id = %s "
                "AND annotator = %s AND expires > clock_timestamp()",
                (project, key, me),
            ).fetchone()
            if done >= needed or (held is None and done + others >= needed):
                raise LeaseLostError(
                    f"Item {item!r} already has its {needed} label(s) or slots taken by others "
                    f"after {me!r}'s lease expired; the label was not recorded."
                )
            conn.execute(
                "INSERT INTO dal_labels (project, item_id, annotator, label) "
                "VALUES (%s, %s, %s, %s)",
                (project, key, me, label),
            )
            conn.execute(
                "UPDATE dal_items SET done = done + 1 WHERE project = %s AND item_id = %s",
                (project, key),
            )
            conn.execute(
                "DELETE FROM dal_leases WHERE project = %s AND item_id = %s AND annotator = %s",
                (project, key, me),
            )

        self._call(op)

    def withdraw(self, item: Any) -> bool:
        """Take back this annotator's label of ``item`` (an undo): the slot is free again.
        Whether there was one. The session's event log keeps the history of both."""
        key = _key(item)

        def op(conn: Any) -> bool:
            conn.execute("SET LOCAL synchronous_commit = on")
            conn.execute(
                "SELECT 1 FROM dal_items WHERE project = %s AND item_id = %s FOR UPDATE",
                (self.project, key),
            )
            cur = conn.execute(
                "DELETE FROM dal_labels WHERE project = %s AND item_id = %s AND annotator = %s",
                (self.project, key, self.annotator),
            )
            if cur.rowcount:
                conn.execute(
                    "UPDATE dal_items SET done = done - 1 WHERE project = %s AND item_id = %s",
                    (self.project, key),
                )
            return bool(cur.rowcount)

        return self._call(op)

    def mine(self) -> dict[Any, str]:
        """This annotator's labels: item -> label."""
        rows = self._call(
            lambda conn: conn.execute(
                "SELECT item_id, label FROM dal_labels WHERE project = %s AND annotator = %s",
                (self.project, self.annotator),
            ).fetchall()
        )
        return {json.loads(i): lab for i, lab in rows}

    # ------------------------------------------------------------------ reading
    def labels(self) -> list[tuple[Any, str, str]]:
        """Every label of the project as ``(item, annotator, label)``, oldest first (what
        :func:`dal_widgets.agreement` takes)."""
        rows = self._call(
            lambda conn: conn.execute(
                "SELECT item_id, annotator, label FROM dal_labels WHERE project = %s ORDER BY seq",
                (self.project,),
            ).fetchall()
        )
        return [(json.loads(i), a, lab) for i, a, lab in rows]

    def training_labels(self, rule: str = "majority") -> dict[Any, str]:
        """The label each item trains on, by ``rule`` (items the rule cannot decide are left
        out). An adjudication decision (:meth:`adjudicate`) always wins; otherwise:

        - ``"first"``: the first label given;
        - ``"majority"``: once the item has its ``overlap`` labels, the most common one; a
          tie waits for adjudication;
        - ``"adjudicated"``: once the item has its ``overlap`` labels, only a label everyone
          gave; any disagreement waits for adjudication.
        """
        check_rule(rule, "TeamQueue.training_labels")
        return self._call(lambda conn: decide(conn, self.project, rule))

    def disagreements(self) -> dict[Any, list[tuple[str, str]]]:
        """Items whose annotators disagree and that have no adjudication decision yet, with
        their ``(annotator, label)`` pairs, oldest first: the adjudication queue."""

        def op(conn: Any) -> list[Any]:
            return conn.execute(
                "SELECT l.item_id, l.annotator, l.label FROM dal_labels l "
                "WHERE l.project = %(p)s AND l.item_id IN ("
                "SELECT item_id FROM dal_labels WHERE project = %(p)s GROUP BY item_id "
                "HAVING count(DISTINCT label) > 1) AND NOT EXISTS (SELECT 1 FROM dal_decisions "
                "d WHERE d.project = l.project AND d.item_id = l.item_id) ORDER BY l.seq",
                {"p": self.project},
            ).fetchall()

        out: dict[Any, list[tuple[str, str]]] = {}
        for item, who, label in self._call(op):
            out.setdefault(json.loads(item), []).append((who, label))
        return out

    def adjudicate(self, item: Any, label: str) -> None:
        """Record this annotator's decision on ``item`` (append-only: the newest one counts);
        it overrides the labels under every rule of :meth:`training_labels`."""
        if not isinstance(label, str) or not label:
            raise param_error("label", "TeamQueue.adjudicate", "a class name", label)
        key = _key(item)
        token = uuid.uuid4().hex  # one per call: a retry after a lost commit is not a new row

        def op(conn: Any) -> None:
            known = conn.execute(
                "SELECT 1 FROM dal_items WHERE project = %s AND item_id = %s",
                (self.project, key),
            ).fetchone()
            if known is None:
                raise param_error("item", "TeamQueue.adjudicate", "an item of the queue", item)
            conn.execute(
                "INSERT INTO dal_decisions (project, item_id, adjudicator, label, token) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (token) DO NOTHING",
                (self.project, key, self.annotator, label, token),
            )

        self._call(op)

    def stats(self) -> list[dict[str, Any]]:
        """Per annotator: ``annotator``, ``labels`` (in all), ``recent`` (in the last 10
        minutes) and ``per_minute`` (their pace over those minutes, or since their first
        label in them, at least one minute)."""
        rows = self._call(
            lambda conn: conn.execute(
                "SELECT annotator, count(*), count(*) FILTER (WHERE at > clock_timestamp() - "
                "interval '10 minutes'), extract(epoch FROM clock_timestamp() - min(at) FILTER "
                "(WHERE at > clock_timestamp() - interval '10 minutes')) FROM dal_labels "
                "WHERE project = %s GROUP BY annotator ORDER BY annotator",
                (self.project,),
            ).fetchall()
        )
        out = []
        for who, total, recent, span in rows:
            minutes = max(1.0, float(span or 0.0) / 60.0)
            out.append(
                {
                    "annotator": who,
                    "labels": int(total),
                    "recent": int(recent),
                    "per_minute": round(int(recent) / minutes, 1),
                }
            )
        return out

    def server_time(self) -> float:
        """The server's clock (seconds since the epoch): one clock for every trainer."""
        return float(
            self._call(
                lambda conn: conn.execute(
                    "SELECT extract(epoch FROM clock_timestamp())"
                ).fetchone()[0]
            )
        )

    def retract(self, item: Any) -> bool:
        """Take back this annotator's newest decision on ``item`` (an undo): an earlier
        decision counts again, or none. Whether there was one."""
        key = _key(item)

        def op(conn: Any) -> bool:
            cur = conn.execute(
                "DELETE FROM dal_decisions WHERE seq = (SELECT max(seq) FROM dal_decisions "
                "WHERE project = %s AND item_id = %s AND adjudicator = %s)",
                (self.project, key, self.annotator),
            )
            return bool(cur.rowcount)

        return self._call(op)

    def remaining(self) -> int:
        """Items that still need labels (leased or not)."""
        return int(
            self._call(
                lambda conn: conn.execute(
                    "SELECT count(*) FROM dal_items WHERE project = %s AND done < needed",
                    (self.project,),
                ).fetchone()[0]
            )
        )

    def leased(self) -> list[Any]:
        """The items this annotator holds a live lease on."""
        rows = self._call(
            lambda conn: conn.execute(
                "SELECT item_id FROM dal_leases WHERE project = %s AND annotator = %s "
                "AND expires > clock_timestamp() ORDER BY item_id",
                (self.project, self.annotator),
            ).fetchall()
        )
        return [json.loads(r[0]) for r in rows]
