"""A session's part in a team project (``Session(..., team=Team(...))``, see ``team.py``).

Who does what:

- **Every annotator's session** claims batches from the project's queue (leases, so two
  annotators never get the same slot), heartbeats them while the session is open, and labels
  through the queue (one label per item and annotator, ``overlap`` per item). Each label is
  also an action in the project's shared event log (PostgreSQL, ``shared=True``): the field
  ``vote:<annotator>``, plus the item's training label (``label``) as the team's ``rule``
  decides it, read in the same transaction. Undo takes back the annotator's own newest action
  (the vote leaves the queue; the training label is decided again).
- **One session trains** (the trainer): it holds the project's trainer lock (a PostgreSQL
  advisory lock on its own connection: it goes with the session, a killed kernel included,
  and another session takes it over within a few seconds). After each fit, and when it
  starts, it ranks the pool with the session's strategy and writes the top items'
  priorities into the queue, which is the order everyone's claims follow. It saves each
  model to the project's model folder (the store's ``side_dir``: the same on one machine).
- **The others** load each new model from that folder within about a second (with
  ``weights_only=True``), so their suggestions follow the team's newest model; they never
  fit themselves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dal_widgets._checks import param_error
from dal_widgets.store._postgres import lock_key
from dal_widgets.team import Team

__all__ = ["TeamHooks", "Teamwork", "check_team"]

#: Items ranked per publication (the rest keep the priority of their older ranking).
RANKED = 200


@dataclass
class TeamHooks:
    """What the team thread asks of its session."""

    #: The strategy's best ``k`` unlabeled ids (the trainer's ranking).
    rank: Callable[[int], list[Any]]
    #: The newest model's top class probability of each id (None before a model).
    confidence: Callable[[list[Any]], Any]
    #: This session just took the trainer role.
    became_trainer: Callable[[], None]
    #: Other sessions changed these items.
    others_labeled: Callable[[list[Any]], None]
    #: Load the trainer's newest saved model (the file at ``model_path`` changed).
    load_model: Callable[[], None]
    model_path: Path | None
    #: Where the thread records what failed (the session's observer errors).
    errors: list[str]


def check_team(team: Any, dataset: Any, where: str, read_only: bool = False) -> Team | None:
    """``Session(team=...)`` checked: None, or a valid :class:`Team`."""
    if team is None:
        return None
    if read_only:
        raise ValueError(
            f"The 'team' parameter of {where} is for labeling; a read_only session only looks. "
            "Open the project without team= to read it."
        )
    if not isinstance(team, Team):
        raise param_error("team", where, "a dal_widgets.Team (or None)", team, TypeError)
    if dataset.multi_label:
        raise ValueError(
            f"The 'team' parameter of {where} is for single-label data for now; this dataset "
            "is multi-label. Label it alone, or one label set per annotator."
        )
    return team.validated(where + ".team")


class Teamwork:
    """The team side of one session (made by :class:`~dal_widgets.Session`)."""

    def __init__(
        self, store: Any, ids: list[Any], team: Team, hooks: TeamHooks, seed: int = 0
    ) -> None:
        self.store = store
        self.team = team
        self.hooks = hooks
        self.queue = store.team_queue(overlap=team.overlap, lease_seconds=team.lease_seconds)
        # Until the trainer ranks them, new items come in a random order (not by id).
        self.queue.add_items(ids, np.random.default_rng(seed).random(len(ids)).tolist())
        #: This annotator's own labels (item -> class name).
        self.mine: dict[Any, str] = self.queue.mine()
        self.is_trainer = False
        self._trainer_conn: Any = None
        self._trainer_key = lock_key("trainer", store.project)
        #: The trainer ranks the queue on its next beat (after a fit, or taking the role).
        self.publish_due = False
        self._model_stamp: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._unsubscribe = store.add_change_listener(self._on_others)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bring the training labels of this annotator's items up to date (a kernel that
        died between a label and its record in the event log), take the trainer role if it
        is free, and start the heartbeat thread."""
        if self.mine and not self.store.read_only:
            self.store.team_record({}, rule=self.team.rule, resolve=list(self.mine), source="team")
        self._try_trainer()
        self._thread = threading.Thread(
            target=self._loop, name=f"dal-team-{self.queue.annotator}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ the trainer role
    def _try_trainer(self) -> bool:
        """Take the project's trainer lock when this session may and it is free; a trainer
        whose lock went with its connection (the server restarted) is one no longer."""
        if self.is_trainer:
            try:
                self._trainer_conn.execute("SELECT 1")
                return True
            except Exception:  # noqa: BLE001 (the lock went with the connection)
                self.is_trainer = False
                self._trainer_conn = None
        if self.team.trainer is False or self.store.read_only or self._stop.is_set():
            return False
        try:
            if self._trainer_conn is None or self._trainer_conn.closed:
                self._trainer_conn = self.store.connect()
            got = self._trainer_conn.execute(
                "SELECT pg_try_advisory_lock(%s)", (self._trainer_key,)
            ).fetchone()[0]
        except Exception:  # noqa: BLE001 (the server is away: try again on the next beat)
            self._trainer_conn = None
            return False
        if got and self._stop.is_set():  # closing meanwhile: never hold it past close()
            self._trainer_conn.close()
            return False
        if got:
            self.is_trainer = True
            self.hooks.became_trainer()
        return bool(got)

    def trainer_name(self) -> str | None:
        """Who trains for the team now (their session's connection name), or None."""
        return self.store.lock_holder(self._trainer_key)

    def publish(self) -> None:
        """Rank the pool with the session's strategy and write the top items' priorities
        (the trainer, after a fit or when it takes the role): newer rankings come first."""
        ranked = self.hooks.rank(RANKED)
        if not ranked:
            return
        base = self.queue.server_time()  # later rankings of any trainer outrank earlier ones
        self.queue.set_priorities(
            {sid: base + (len(ranked) - r) / (len(ranked) + 1) for r, sid in enumerate(ranked)}
        )
        if self.team.unsure_extra:  # the items the model is unsure of ask for more labels
            sure = self.hooks.confidence(ranked)
            if sure is not None:
                unsure = [sid for sid, p in zip(ranked, sure) if p < self.team.unsure_below]
                self.queue.ask_more(unsure, self.team.overlap + self.team.unsure_extra)

    # ------------------------------------------------------------------ labeling
    def claim(self, n: int, exclude: list[Any]) -> list[Any]:
        skipped = self.store.marked("skip")
        return self.queue.claim(n, exclude=[*exclude, *skipped])

    def label(self, ids: list[Any], names: list[str], source: str) -> None:
        """Each label into the queue (committed one by one; the same label again is a no-op
        there), then the event log's action with the votes and the training labels they
        decide (so a call that failed in between heals when it is repeated)."""
        votes: dict[Any, str | None] = {}
        try:
            for sid, name in zip(ids, names):
                self.queue.label(sid, name, replace=True)  # a relabel keeps the slot
                self.mine[sid] = name
                votes[sid] = name
        finally:
            if votes:
                self.store.team_record(votes, rule=self.team.rule, source=source)

    def undo(self) -> list[Any] | None:
        """Take back this annotator's newest action: its labels leave the queue (an earlier
        label of the same item comes back), then the event log's undo, then the training
        labels of those items are decided again."""
        store = self.store
        events = store.newest_own_events()
        if events is None:
            return None
        vote_field, decision_field = f"vote:{store.annotator}", f"decision:{store.annotator}"
        for sid, field, old, _new in events:
            if field == decision_field:
                self.queue.retract(sid)
            if field != vote_field:
                continue
            if old is None:  # the vote goes; its slot is free again
                self.queue.withdraw(sid)
                self.mine.pop(sid, None)
            else:  # the earlier vote comes back, in one transaction
                self.queue.label(sid, old, replace=True)
                self.mine[sid] = old
        ids = store.undo()
        if ids:
            store.team_record({}, rule=self.team.rule, resolve=ids, source="team")
        return ids

    def adjudicate(self, sid: Any, name: str) -> None:
        """Record this person's decision on a disagreement; the training label follows."""
        self.queue.adjudicate(sid, name)
        # The adjudicator's own action: their undo takes the decision back.
        self.store.team_record({}, rule=self.team.rule, decisions={sid: name})

    def pending(self) -> list[Any]:
        """The items this annotator holds leases on and has not labeled or skipped."""
        skipped = self.store.marked("skip")
        return [i for i in self.queue.leased() if i not in self.mine and i not in skipped]

    def release(self, ids: list[Any]) -> None:
        self.queue.release(ids)

    # ------------------------------------------------------------------ background
    def _on_others(self, ids: list[Any]) -> None:
        """Other sessions changed items (the store's poll thread)."""
        self.hooks.others_labeled(ids)

    def _loop(self) -> None:
        beat = max(0.5, min(self.team.lease_seconds / 3, 10.0))
        last_beat = time.monotonic()
        while not self._stop.wait(0.5):
            try:
                if time.monotonic() - last_beat >= beat:
                    last_beat = time.monotonic()
                    self.queue.heartbeat()
                    self._try_trainer()
                if self.is_trainer and self.publish_due:
                    self.publish_due = False
                    self.publish()
                elif not self.is_trainer:
                    self._follow_model()
            except Exception as exc:  # noqa: BLE001 (the server is away: the next beat retries)
                self.hooks.errors.append(f"team heartbeat: {exc}")

    def _follow_model(self) -> None:
        """Load the trainer's newest saved model when the file changed."""
        path = self.hooks.model_path
        if path is None:
            return
        try:
            st = path.stat()
        except OSError:
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._model_stamp:
            self._model_stamp = stamp
            self.hooks.load_model()

    def close(self) -> None:
        self._stop.set()
        self._unsubscribe()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            self.queue.release()  # the claimed, unlabeled items go back to the team at once
        except Exception:  # noqa: BLE001 (closing: the leases expire by themselves)
            pass
        self.queue.close()
        if self._trainer_conn is not None:
            self._trainer_conn.close()  # the trainer lock goes with the connection
        self.is_trainer = False
