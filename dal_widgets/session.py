"""The headless orchestrator: query -> label -> train -> evaluate, with events for views.

A :class:`Session` owns a dataset, a label store, a strategy name and the newest trained model.
It never imports Jupyter: widgets subscribe to its events with :meth:`Session.on`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from dal_widgets import strategies as _strategies
from dal_widgets._checks import check_int, check_real, param_error
from dal_widgets._encoded import ModelInputs, check_encoder, default_config
from dal_widgets._events import SESSION_EVENTS as EVENTS
from dal_widgets._events import Events
from dal_widgets._explain import PickNotes, suggestion
from dal_widgets._labels import label_names, labels_key, sample_ids, training_set
from dal_widgets._persist import ModelMemory, model_config
from dal_widgets._query import Query, exclude_arg, run_query
from dal_widgets._retrain import RetrainPolicy
from dal_widgets._status import session_status
from dal_widgets._teamwork import TeamHooks, Teamwork, check_team
from dal_widgets.data import Dataset
from dal_widgets.store import open_store
from dal_widgets.training import (
    ModelFactory,
    ModelVersion,
    PoolArrays,
    SpreadVote,
    TrainConfig,
    Trainer,
    TrainingSet,
    evaluate_model,
    resolve_device,
)

__all__ = ["EVENTS", "ModelVersion", "Session"]


class Session:
    """An active-learning session over one dataset.

    Parameters
    ----------
    dataset : Dataset
        From :mod:`dal_widgets.datasets`.
    strategy : str, optional
        A name from ``dal_widgets.strategies.available()`` (default: ``"entropy"``, or
        ``"multilabel_entropy"`` for multi-label data).
    model : "auto", torch.nn.Module or callable
        ``"auto"`` sizes a default model from the data (an MLP for tabular data, texts and 8x8
        images, a small CNN with dropout for larger images; with an ``encoder``, a linear head
        with input dropout over the embeddings). A module is copied fresh for every
        fit (its initial weights are the starting point each time); a callable
        ``model(input_shape, n_classes)`` builds a new one per fit. Embeddings are the input
        of the model's ``classifier`` attribute, or of its last ``nn.Linear``.
    store : str or path
        The SQLite label store (created if missing, resumed if present). ``":memory:"`` keeps
        labels in memory only. A ``postgresql://user@host:port/db`` URL keeps the labels on a
        PostgreSQL server instead, as the project named by ``project`` (a bare
        ``"postgresql://"`` reads ``DAL_POSTGRES_URL``); see :class:`PostgresStore`. The newest
        model is kept beside the store (``<store>.dal/model.pt``; for a server, in this
        machine's cache folder, ``PostgresStore.side_dir``) and comes back when the store is
        opened again; if the labels changed since, a refit starts by itself (unless
        ``retrain="manual"``).
    seed : int
        Seeds queries (per round) and fits (per labeled-set size): the same seed, labels and
        device give the same picks and, on the CPU, the same model.
    device : str or torch.device
        ``"auto"`` picks CUDA, then MPS, then the CPU.
    train_config : TrainConfig, optional
        Steps, batch size, learning rate, MC passes (see :class:`TrainConfig`). Default:
        ``TrainConfig()``; with an encoder, ``TrainConfig.head()``, plus label spreading
        (``TrainConfig.head(label_spreading=True)``) for an encoder learned on the pool itself
        (``encoders.self_supervised``) on single-label data. Pass ``TrainConfig.head()`` for the
        head alone.
    cold_start : str
        The strategy used while no model exists yet, when the chosen one needs model outputs.
    retrain : {"batch", "label", "manual"} or int, optional
        When fits start by itself (see :attr:`retrain`); default ``"label"`` with an encoder
        (a head fits in milliseconds), else ``"batch"``.
    encoder : Encoder, optional
        From :mod:`dal_widgets.encoders`: the pool is embedded once in the background (cached
        in ``<store>.dal/embeddings/``), and the model is a head over the embeddings.
    annotator : str, optional
        Recorded with every label (default: the OS user name).
    project : str, optional
        The project on a PostgreSQL server (required with a ``postgresql://`` store; one
        database holds many projects).
    team : Team, optional
        Label as one of a team on a PostgreSQL project (:class:`~dal_widgets.Team`: overlap,
        the training-label rule, leases): :meth:`query` claims batches from the shared
        queue, labels go to it, one session of the team trains and ranks the queue, the
        others follow its models. See ``dal_widgets._teamwork``.
    read_only : bool
        Open an existing store only to look (labels, history, export), never to write: for a
        store another process is labeling in. Labeling, querying and training then raise.
    """

    def __init__(
        self,
        dataset: Dataset,
        strategy: str | None = None,
        model: Any = "auto",
        store: Any = "labels.db",
        seed: int = 0,
        device: Any = "auto",
        *,
        train_config: TrainConfig | None = None,
        cold_start: str = "random",
        retrain: str | int | None = None,
        annotator: str | None = None,
        read_only: bool = False,
        encoder: Any = None,
        project: str | None = None,
        team: Any = None,
    ) -> None:
        where = "Session"
        if not isinstance(dataset, Dataset):
            raise param_error(
                "dataset", where, "a Dataset from dal_widgets.datasets", dataset, TypeError
            )
        if len(dataset) == 0:
            raise param_error("dataset", where, "a non-empty Dataset", dataset)
        self.dataset = dataset
        self.seed = check_int(seed, "seed", where, lo=0)
        self.strategy = strategy or ("multilabel_entropy" if dataset.multi_label else "entropy")
        self.cold_start = cold_start
        if _strategies.get(cold_start).needs_model:
            raise param_error(
                "cold_start", where, "a strategy that needs no model (random, typiclust, "
                "probcover, auto)", cold_start,
            )  # fmt: skip
        self.device = resolve_device(device, where)
        # A self-supervised encoder still to be pretrained: the raw inputs and the default
        # model serve until it is ready, then its head (see _switch_inputs).
        pretrains = encoder is not None and not getattr(encoder, "ready", True)
        settled = default_config(encoder, dataset.multi_label)  # a head's, once embedded
        default = TrainConfig() if pretrains else settled
        self.train_config = (train_config or default).validated(
            where + ".train_config", multi_label=dataset.multi_label
        )
        self._head_config = train_config or settled  # after a pretrained encoder's switch
        self._models = ModelFactory(model, where)
        check_encoder(encoder, dataset, where)  # before the store is opened
        team = check_team(team, dataset, where, read_only=read_only)
        # A team's trainer fits on everyone's labels: every 10 new ones (its own batch alone
        # would leave the others' waiting).
        solo = "batch" if team is None else 10
        self._retrain = RetrainPolicy(retrain or (solo if encoder is None else "label"))
        self.store = open_store(
            store,
            fingerprint=dataset.fingerprint,
            classes=dataset.classes,
            dataset_name=dataset.name,
            multi_label=dataset.multi_label,
            annotator=annotator,
            read_only=read_only,
            project=project,
            shared=team is not None,
            side_dir=None if team is None else team.model_dir,
            where=where,
        )
        #: This session's part in a team project (None alone; made once the rest is).
        self.team: Teamwork | None = None
        self.multi_label = dataset.multi_label
        self._events = Events(EVENTS, "Session.on")
        #: What the model reads: the dataset's inputs, or its embeddings under an encoder.
        self.inputs = ModelInputs(
            dataset,
            encoder,
            side_dir=self.store.side_dir,
            device=self.device,
            on_progress=lambda p: self._events.emit("embedding", progress=p),
            on_ready=self._on_inputs_ready,
            pretrain=pretrains,
        )
        self.inputs.on_switch = self._switch_inputs
        #: The newest query (None before the first in this process).
        self.last_query: Query | None = None
        self._notes = PickNotes()
        self._query_lock = threading.Lock()
        self._trainer = Trainer(
            data=self._training_data,
            new_model=self._new_model,
            config=self.train_config,
            device=self.device,
            seed=self.seed,
            emit=self._on_trainer_event,
        )
        #: The newest model's arrays over the pool, computed once per model version.
        self.arrays = PoolArrays(
            lambda: self.inputs.dataset().X,  # an encoder's embeddings: waits for them
            features=lambda: self.inputs.dataset().features,  # never a lazy pool's pixels
            trainer=self._trainer,
            multi_label=dataset.multi_label,
            config=self.train_config,
            device=self.device,
            seed=self.seed,
        )
        #: Evaluate each new model on the held-out split (when the dataset has one), so the
        #: learning curve grows whether or not a view is open.
        self.evaluate_after_fit = True
        #: The newest :meth:`evaluate` result (None before the first).
        self.evaluation: dict[str, Any] | None = None
        self._maps: Any = None  # the map services, made on the first map() call
        self._label_epoch = 0  # bumped by every change of the labeled set
        if self.pending:  # the last query batch survives a restart, and so does its fit
            self._retrain.watch(self.pending)
        self._memory = ModelMemory(self.store.side_dir, self._trainer)
        # When the store closes (close(), or a new Session on the same file takes it over),
        # this session stops its worker and lets go of its model and pool-sized arrays. A
        # weak reference: the store never keeps the session alive.
        release = weakref.WeakMethod(self._release)
        self.store.add_close_callback(lambda _reason: (method := release()) and method())
        if team is not None:
            try:
                self.team = self._join(team)
                self.inputs.start()
                self.team.start()
            except BaseException:
                self.close()  # the store, its poll thread and the queue's connection
                raise
        else:
            self.inputs.start()  # at once without an encoder; in the background with one

    def _join(self, team: Any) -> Teamwork:
        """This session's part in a team project (made last in ``__init__``)."""
        if not self.store.shared:
            raise ValueError(
                "The 'team' parameter of Session needs the team's shared PostgreSQL store: "
                "pass store='postgresql://...' and project=... (not an open store)."
            )
        hooks = TeamHooks(
            rank=self._rank_for_team,
            confidence=lambda ids: (
                None if self.model is None else self.predict_proba(ids).max(axis=1)
            ),
            became_trainer=self._became_trainer,
            others_labeled=self._others_labeled,
            load_model=self._load_team_model,
            model_path=self._memory.path,
            errors=self._events.errors,
        )
        return Teamwork(self.store, self.dataset.ids.tolist(), team, hooks, self.seed)

    def _on_inputs_ready(self) -> None:
        """The model's inputs exist (embeddings: on the embedding thread, which must not warn,
        so a saved model that cannot be loaded is only noted in its memory)."""
        encoded = self.inputs.embedded
        if self.store.labels:  # the model kept beside the store, refitted if labels changed
            # The model is built only if there are weights to load: built on this thread
            # during a fit, it would draw from the global generator the fit is using.
            self._memory.restore_for(
                self, self._new_model, token=self._label_epoch, warn=not encoded
            )
        if encoded:
            self._events.emit("embedding", progress=self.inputs.progress)

    def _switch_inputs(self, apply: Callable[[], None]) -> None:
        """A self-supervised encoder is pretrained and has embedded the pool (on the embedding
        thread): its embeddings replace the raw inputs while no fit or query runs, the raw
        model goes, the head's config comes, and the round history records the switch."""

        def swap() -> None:
            with self._query_lock:  # after the fit lock: the order every path takes
                apply()
                self.train_config = self.arrays.config = self._head_config
                self.arrays.clear()

        self._trainer.switch(swap, self._head_config)
        if not self.store.read_only:  # a failed write must not fail the embedding job
            self._events.guard(lambda: self.store.update_round(encoder=self.inputs.encoder.id))

    # ------------------------------------------------------------------ configuration
    @property
    def strategy(self) -> str:
        """The strategy used by :meth:`query` (settable; validated against the registry)."""
        return self._strategy

    @strategy.setter
    def strategy(self, name: str) -> None:
        self._strategy = _strategies.get(name).name

    @property
    def retrain(self) -> str | int:
        """When training starts by itself.

        ``"batch"`` (the default without an encoder): when every sample of a query batch is
        labeled or skipped; ``"label"`` (the default with one): after every label; an int k:
        after every k new labels; ``"manual"``: only on :meth:`train`.
        """
        return self._retrain.value

    @retrain.setter
    def retrain(self, value: str | int) -> None:
        self._retrain.value = value

    def _after_labels(self, ids: list[Any]) -> None:
        """Apply the retrain policy after labels or skips (the first model as early as can be)."""
        self._label_epoch += 1
        if self.team is not None and not self.team.is_trainer:
            return  # the team's trainer fits
        first = self.model_version is None and not self.training
        if self._retrain.after(len(ids), self.store.labels, self.store.marked("skip"), first):
            self._trainer.request(self._label_epoch)

    @property
    def classes(self) -> list[str]:
        """The class list (the store's: it may have grown with :meth:`add_class`)."""
        return self.store.classes

    def _new_model(self) -> nn.Module:
        """A model of the session's settings (fresh weights from torch's global generator,
        which the trainer seeds around this call for a fit)."""
        cfg = self.train_config
        head = cfg.loss_head or "loss_pred" in _strategies.get(self.strategy).needs
        model = self.inputs.new_model(self._models, len(self.classes), loss_head=head)
        if cfg.label_spreading and cfg.spread_vote > 0:
            model = SpreadVote(model, weight=cfg.spread_vote, k=cfg.spread_vote_k)
        return model

    # ------------------------------------------------------------------ events
    def on(self, event: str, callback: Callable[..., Any]) -> Callable[[], None]:
        """Call ``callback(**payload)`` on ``event`` (see :data:`EVENTS`); returns an
        unsubscribe function. Callbacks may run on the training thread; one that raises is
        recorded in ``observer_errors`` and does not stop the others."""
        return self._events.on(event, callback)

    @property
    def observer_errors(self) -> list[str]:
        """Tracebacks of event callbacks that raised."""
        return self._events.errors

    # ------------------------------------------------------------------ labels
    @property
    def labels(self) -> dict[Any, str]:
        """Current labels: sample id -> class name, as stored."""
        return self.store.labels

    @property
    def round(self) -> int:
        """The current round (one per query)."""
        return self.store.round

    def _labeled_mask(self) -> np.ndarray:
        """True where a sample is labeled or skipped (never queried again)."""
        mask = np.zeros(len(self.dataset), dtype=bool)
        mask[self.dataset.positions([*self.store.labels, *self.store.marked("skip")])] = True
        return mask

    def sample_ids(
        self, ids: Any, *, where: str = "Session.sample_ids", name: str = "ids"
    ) -> list[Any]:
        """One id or a 1-D sequence of ids, checked against the dataset (a KeyError names
        unknown ones), as the plain Python ints or strs the store and events use."""
        return sample_ids(self.dataset, ids, where, name)

    def label(self, ids: Any, labels: Any, *, source: str = "human") -> None:
        """Label samples; the labels are committed to the store before this returns.

        Parameters
        ----------
        ids : sample id or sequence of sample ids
        labels : class name, class index, or a sequence of them (one per id)
            A single label is applied to every id.
        source : {"human", "oracle", "import", "suggestion"}
            Recorded with the labels ("suggestion" = a model suggestion the person accepted).
        """
        where = "Session.label"
        self.store.check_writable(where)
        ids_list = self.sample_ids(ids, where=where)
        names = label_names(self.classes, self.multi_label, labels, len(ids_list), where)
        if self.team is not None:
            self.team.label(ids_list, names, source)
        else:
            self.store.label(ids_list, names, source=source)
        self._events.emit("labeled", ids=ids_list, labels=names, source=source)
        self._after_labels(ids_list)

    def undo(self) -> list[Any] | None:
        """Undo the newest label action (a whole multi-sample call at once).

        Returns the ids it changed back, or None when there is nothing to undo.
        """
        ids = self.store.undo() if self.team is None else self.team.undo()
        if ids is not None:
            self._label_epoch += 1
            self._events.emit("undone", ids=ids)
        return ids

    def skip(self, ids: Any) -> None:
        """Mark samples as skipped: queries will not offer them again (undoable)."""
        ids_list = self.sample_ids(ids, where="Session.skip")
        self.store.mark(ids_list, "skip")
        if self.team is not None:  # a skip is the team's: the item leaves the queue
            self.team.release(ids_list)
        self._events.emit("marked", ids=ids_list, field="skip", value=True)
        self._after_labels(ids_list)

    def flag(self, ids: Any, value: bool = True) -> None:
        """Flag samples for review (or clear the flag); undoable."""
        ids_list = self.sample_ids(ids, where="Session.flag")
        self.store.mark(ids_list, "flag", value)
        self._events.emit("marked", ids=ids_list, field="flag", value=value)

    def add_class(self, name: str) -> None:
        """Add a class. Models trained from now on have one more output."""
        self.store.add_class(name)
        self._label_epoch += 1  # a fit from now on has one more class: not the running one's
        self._events.emit("class_added", name=name)

    # ------------------------------------------------------------------ querying
    def compute_arrays(self, needs: Iterable[str]) -> dict[str, np.ndarray]:
        """The arrays strategies ask for, over the whole pool (the model's computed once per
        model version, in chunks on the device, and shared with the map and explain)."""
        return self.arrays.compute(needs, self.strategy)

    def query(self, n: int, *, exclude: Any = None) -> list[Any]:
        """Pick the next ``n`` samples to label with the session's strategy.

        While no model exists, strategies that need model outputs are replaced by
        ``cold_start`` (recorded in the query log). Labeled and skipped samples are never
        picked, nor the ids in ``exclude`` (e.g. those on screen while the next batch is
        prefetched). Each call starts a new round. Safe to call from a background thread.

        Returns
        -------
        list
            Sample ids, best first where the strategy ranks.
        """
        where = "Session.query"
        self.store.check_writable(where)
        excluded = exclude_arg(exclude, where)
        if self.team is not None:  # a claim on the team's queue, in the trainer's order
            check_int(n, "n", where, lo=1)
            skip = self.sample_ids(excluded, where=where, name="exclude") if excluded else []
            ids = self.team.claim(n, skip)
            mask = self._labeled_mask()
            positions = self.dataset.positions(ids)
            self._notes.remember(ids, positions, None, mask, "team queue", self.round)
            self._events.emit("queried", ids=ids, round=self.round, strategy="team queue")
            return ids
        with self._query_lock:
            mask = self._labeled_mask()
            if excluded:
                mask[
                    self.dataset.positions(self.sample_ids(excluded, where=where, name="exclude"))
                ] = True
            q, version = self._pick(n, mask, where)
            scores = None if q.scores is None else q.scores[q.positions]
            self.store.record_query(
                q.strategy,
                q.ids,
                scores=scores,
                model_version=version,
                infer_s=q.infer_s,
                select_s=q.select_s,
            )
            self._notes.remember(q.ids, q.positions, q.scores, mask, q.strategy, q.round)
            self._retrain.watch(q.ids)
            self.last_query = q
        self._events.emit("queried", ids=q.ids, round=q.round, strategy=q.strategy)
        return q.ids

    def _pick(self, n: int, mask: np.ndarray, where: str) -> Any:
        """The strategy's ``n`` picks among the unmasked samples (under the query lock) and
        the version of the model it read (None before one)."""
        snapshot = self._trainer.current  # one model for the whole query, read once
        q = run_query(
            self.strategy,
            self.cold_start,
            n,
            mask,
            where=where,
            dataset=self.inputs.current,
            have_model=snapshot is not None,
            ensemble_size=self.train_config.ensemble_size,
            model=None if snapshot is None else snapshot.model,
            compute=lambda needs: self.arrays.compute(needs, self.strategy, snapshot),
            seed=self.seed,
            rnd=self.round + 1,
            device=self.device,
            n_labeled=len(self.store.labels),
        )
        return q, None if snapshot is None else snapshot.version.version

    def explain(self, ids: Any) -> list[dict[str, Any]]:
        """Why each sample was picked and what the newest model thinks of it.

        Returns one dict per id: ``probs`` (class probabilities, or None before the first
        model), ``predicted`` and ``prob`` (the suggestion), and from the query that picked it:
        ``strategy``, ``round``, ``score`` (None for strategies that pick a batch jointly),
        ``rank`` among the ``candidates`` (1 = picked first).
        """
        ids_list = self.sample_ids(ids, where="Session.explain")
        probs = self.predict_proba(ids_list) if self.model is not None else None
        return [
            {
                "id": sid,
                **suggestion(None if probs is None else probs[i], self.classes, self.multi_label),
                **self._notes.get(sid),
            }
            for i, sid in enumerate(ids_list)
        ]

    @property
    def pending(self) -> list[Any]:
        """Ids of the latest query batch not labeled or skipped yet (survives a restart; in
        a team: the items this annotator holds leases on)."""
        return self.store.pending() if self.team is None else self.team.pending()

    @property
    def done_labels(self) -> dict[Any, str]:
        """The labels this person's views count as done: :attr:`labels`, or in a team this
        annotator's own (an item may still wait for a colleague's label)."""
        return self.store.labels if self.team is None else dict(self.team.mine)

    @property
    def remaining(self) -> int:
        """How many samples still need a label: neither labeled nor skipped (in a team: the
        queue's items still waiting for one of their ``overlap`` labels)."""
        if self.team is not None:
            return self.team.queue.remaining()
        return len(self.dataset) - len(self.store) - len(self.store.marked("skip"))

    # ------------------------------------------------------------------ teams
    def disagreements(self) -> dict[Any, list[tuple[str, str]]]:
        """A team's items whose annotators disagree and that no one adjudicated yet, with
        their ``(annotator, label)`` pairs: the adjudication queue."""
        return self._need_team("Session.disagreements").queue.disagreements()

    def adjudicate(self, ids: Any, labels: Any) -> None:
        """Decide disagreements (a team's adjudicator): the decision is the items' training
        label under every rule, recorded with who decided."""
        where = "Session.adjudicate"
        self.store.check_writable(where)
        team = self._need_team(where)
        ids_list = self.sample_ids(ids, where=where)
        names = label_names(self.classes, False, labels, len(ids_list), where)
        for sid, name in zip(ids_list, names):
            team.adjudicate(sid, name)
        self._events.emit("labeled", ids=ids_list, labels=names, source="team")
        self._after_labels(ids_list)

    def _need_team(self, where: str) -> Teamwork:
        if self.team is None:
            raise RuntimeError(f"{where} is for a team project: Session(..., team=Team()).")
        return self.team

    def _rank_for_team(self, k: int) -> list[Any]:
        """The trainer's ranking of the queue: the strategy's best ``k`` unlabeled ids (the
        cold-start one before a model), nothing recorded (the team thread)."""
        overlap_done = self.team is None or self.team.team.overlap == 1
        mask = self._labeled_mask() if overlap_done else np.zeros(len(self.dataset), bool)
        mask[self.dataset.positions(list(self.store.marked("skip")))] = True
        n = min(k, int((~mask).sum()))
        if n <= 0:
            return []
        with self._query_lock:
            return list(self._pick(n, mask, "Session (team ranking)")[0].ids)

    def _became_trainer(self) -> None:
        """This session took the team's trainer role: fit if labels wait, rank the queue."""
        if self.team is not None:
            self.team.publish_due = True
        version = self.model_version
        if self.store.labels and (version is None or version.labels_key != labels_key(self.labels)):
            self._trainer.request(self._label_epoch)  # the labels changed since its model

    def _others_labeled(self, ids: list[Any]) -> None:
        """Colleagues changed labels or marks (the store's poll thread)."""
        labels = self.store.labels
        self._events.emit("labeled", ids=ids, labels=[labels.get(i) for i in ids], source="team")
        self._after_labels(ids)

    def _load_team_model(self) -> None:
        """The trainer saved a new model: load it (never a fit here) and announce it."""
        before = self._trainer.current
        evaluation = self._memory.restore(
            self._new_model,
            labels=self.store.labels,
            classes=self.classes,
            fingerprint=self.inputs.fingerprint,
            refit=False,
            token=self._label_epoch,
            warn=False,
        )
        current = self._trainer.current
        if current is not None and current is not before:
            self.evaluation = evaluation
            self._events.emit("trained", version=current.version)

    # ------------------------------------------------------------------ training
    def train(self, *, block: bool = False) -> None:
        """Fit a fresh model on all current labels, in the session's background thread.

        Returns at once (unless ``block``). A request made while a fit runs is served by one
        more fit on the newest labels after it (requests coalesce). Use :meth:`wait` to block,
        :meth:`stop` to cancel; errors land in ``train_error`` and the ``train_failed`` event.
        """
        self.store.check_writable("Session.train")
        if self.team is not None and not self.team.is_trainer:
            raise RuntimeError(
                "Session.train: another session of the team trains (one trainer per "
                "project); this one follows its models. Close that session to take over."
            )
        if not self.store.labels:
            raise ValueError(
                "Session.train needs at least one label. Got 0: label some samples first."
            )
        self._trainer.request(self._label_epoch)
        if block:
            self.wait()
            if self.train_error is not None:
                raise RuntimeError("Training failed:\n" + self.train_error)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no fit is running or queued; False if ``timeout`` seconds passed first."""
        if timeout is not None:
            timeout = check_real(timeout, "timeout", "Session.wait", lo=0)
        return self._trainer.wait(timeout)

    def stop(self) -> None:
        """Cancel the running fit (it is discarded) and any queued one."""
        self._trainer.cancel()

    @property
    def training(self) -> bool:
        """Whether a fit is running or queued."""
        return self._trainer.running

    @property
    def model(self) -> nn.Module | None:
        """The newest finished model (None before the first fit)."""
        return self._trainer.model

    @property
    def model_version(self) -> ModelVersion | None:
        """The newest finished model's version (None before the first fit)."""
        return self._trainer.version

    @property
    def progress(self) -> dict[str, Any]:
        """The running fit's progress, or ``{"state": "idle" | "cancelled" | "error", ...}``."""
        return self._trainer.progress

    @property
    def train_error(self) -> str | None:
        """The traceback of the newest failed fit (None once a fit succeeds)."""
        return self._trainer.error

    @property
    def pseudo_label_count(self) -> int:
        """Pseudo-labels used by the newest fit (``TrainConfig.pseudo_labels``)."""
        return self._trainer.pseudo_label_count

    def _on_trainer_event(self, event: str, **payload: Any) -> None:
        """The trainer's events (its thread): a new model goes into the round, then to views."""
        if event != "trained":
            self._events.emit(event, **payload)
            return
        version = payload["version"]
        if self._trainer.current is None:  # an encoder's switch dropped it: nothing to announce
            return
        # The fit succeeded whatever follows: failing to record or evaluate it is not a failed fit.
        if writable := not self.store.read_only:
            self._events.guard(
                lambda: self.store.update_round(
                    train_s=version.seconds,
                    n_labels=version.n_labels,
                    model_version=version.version,
                )
            )
        self._events.emit(event, **payload)
        if self.team is not None:
            self.team.publish_due = True  # the team thread ranks the queue anew
        if self.evaluate_after_fit and self.dataset.has_holdout:
            self._events.guard(self.evaluate)
        with self._query_lock:  # the model and its inputs' fingerprint, as one pair
            model = self.model
            fresh = writable and self.model_version == version
            config = model_config(self, model, version) if model is not None and fresh else None
        if model is not None and config is not None:
            self._memory.save(model, config)

    def map(self, method: str = "umap", **options: Any) -> Any:
        """The session's map service for ``method`` ("umap" or "pca"): one per method, made on
        first use (``options`` go to :class:`~dal_widgets.projection.Projector` then). It
        refreshes after each fit and announces each new map as the ``map_changed`` event;
        views draw ``projector.current()``."""
        if self._maps is None:
            from dal_widgets.projection import SessionMaps

            self._maps = SessionMaps(self, lambda p: self._events.emit("map_changed", projection=p))
        return self._maps.get(method, **options)

    status = property(session_status, doc=session_status.__doc__)

    @property
    def staleness(self) -> int:
        """Labels added since the newest model was trained (all of them before the first fit)."""
        seen = 0 if self.model_version is None else self.model_version.n_labels
        return max(0, len(self.store) - seen)

    def _training_data(self) -> TrainingSet:  # on the trainer's thread, when a fit starts
        data = self.inputs.dataset()  # with an encoder, waits for the embeddings
        epoch = self._label_epoch  # before the labels: the token never claims a newer set
        return training_set(data, self.labels, self.classes, epoch, self.device)

    def export_model(self, path: Any) -> Path:
        """Save the newest model to one file: its weights and a JSON config (classes, dataset
        fingerprint, labels seen, training settings), written atomically.

        Load it back with :meth:`load_model` (``torch.load(..., weights_only=True)``).
        """
        return self._memory.export_for(self, path)

    def load_model(self, path: Any, *, allow_other_dataset: bool = False) -> None:
        """Load a checkpoint saved by :meth:`export_model` into a fresh model; it becomes the
        newest. One made for another dataset, class list or encoder is refused unless
        ``allow_other_dataset``."""
        version = self._memory.load_for(self, path, self._new_model(), allow_other_dataset)
        self._on_trainer_event("trained", version=version)  # recorded, announced, evaluated

    # ------------------------------------------------------------------ evaluation
    def predict_proba(self, ids: Any = None) -> np.ndarray:
        """Class probabilities of the newest model for ids (default: the whole pool).

        Softmax rows for single-label data; independent per-class sigmoids for multi-label.
        """
        key = "label_probs" if self.multi_label else "probs"
        if ids is None:  # the pool's, shared with queries and the map
            return self.compute_arrays({key})[key]
        ids = self.sample_ids(ids, where="Session.predict_proba")
        return self.arrays.at(self.dataset.positions(ids), key)  # no pool pass for a few ids

    def evaluate(self) -> dict[str, Any]:
        """Accuracy of the newest model on the dataset's held-out split.

        Returns
        -------
        dict
            ``accuracy``, ``n_eval``, ``model_version`` and ``n_labels`` (labels the model saw);
            also recorded in the current round's history.
        """
        if not self.dataset.has_holdout:
            raise ValueError(
                f"Session.evaluate needs a held-out split, and dataset {self.dataset.name!r} has none. "
                "Load it with holdout=0.2 (a stratified fraction) or holdout=(X_eval, y_eval)."
            )
        with self._query_lock:  # the model and its inputs, as one pair
            model, version = self.model, self.model_version
            if model is None or version is None:
                raise RuntimeError("No trained model yet: call train() (and wait()) first.")
            data = self.inputs.dataset()
        metrics = evaluate_model(model, data, config=self.train_config, device=self.device)
        result = {**metrics, "model_version": version.version, "n_labels": version.n_labels}
        if not self.store.read_only:
            self.store.update_round(
                accuracy=metrics["accuracy"],
                eval_model_version=version.version,
                eval_n_labels=version.n_labels,
            )
        self.evaluation = result
        self._events.emit("evaluated", result=result)
        return result

    @property
    def history(self) -> list[dict[str, Any]]:
        """Per-round rows: round, strategy, n_labels, accuracy, train_s, infer_s, select_s
        (the store keeps them as :class:`~dal_widgets.store.RoundRecord`)."""
        return [row.history_row() for row in self.store.rounds()]

    # ------------------------------------------------------------------ lifecycle
    def _release(self) -> None:
        """Stop the worker and drop the model and pool-sized arrays (the store is closing)."""
        team = getattr(self, "team", None)
        if team is not None:
            team.close()
        self.inputs.close()
        self._trainer.close()
        self.arrays.clear()
        self._maps = self.last_query = None
        self._notes.clear()

    def close(self) -> None:
        """Stop the training thread, close the store and let go of the model (idempotent)."""
        self._release()
        self.store.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        version = "none" if self.model_version is None else f"v{self.model_version.version}"
        enc = "" if self.inputs.encoder is None else f"encoder={self.inputs.encoder.name!r}, "
        if self.team is not None:
            role = ", trains" if self.team.is_trainer else ""
            enc += f"team={self.store.annotator!r} (overlap {self.team.team.overlap}{role}), "
        return (
            f"Session(dataset={self.dataset.name!r}, strategy={self.strategy!r}, labels={len(self.store)}, "
            f"round={self.round}, model={version}, {enc}device={self.device.type!r}, store={self.store.path!r})"
        )
