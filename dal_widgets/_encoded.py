"""What a session's model reads: the dataset's own inputs, or its embeddings under an encoder.

With an encoder, :class:`ModelInputs` embeds the pool and the held-out split once, in the
background, into the embedding cache beside the store (see :mod:`dal_widgets.encoders`), and
then serves a view of the dataset whose inputs are the embeddings (same ids, classes, targets
and held-out split). Until then the raw dataset stands in where nothing needs the model
(queries fall back to the cold-start strategy, which needs no model), and everything that does
need it (a fit, an evaluation) waits for the embeddings on its own thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dal_widgets._checks import param_error
from dal_widgets.data import Dataset
from dal_widgets.training import TrainConfig

__all__ = ["HEAD_CONFIG", "ModelInputs", "check_encoder", "default_config"]

#: How a head over embeddings is fitted by default (see :meth:`TrainConfig.head`).
HEAD_CONFIG = TrainConfig.head()


def default_config(encoder: Any, multi_label: bool) -> TrainConfig:
    """The training a session settles on without a ``train_config``: ``TrainConfig()``
    without an encoder; over one's embeddings :data:`HEAD_CONFIG`, with label spreading for
    an encoder learned on the pool itself (``spreads_by_default``) on single-label data."""
    if encoder is None:
        return TrainConfig()
    if getattr(encoder, "spreads_by_default", False) and not multi_label:
        return HEAD_CONFIG.with_(label_spreading=True)
    return HEAD_CONFIG


#: Rows per cache chunk file (and per progress step).
CHUNK_ROWS = 1024


def check_encoder(encoder: Any, dataset: Dataset, where: str) -> None:
    """A TypeError/ValueError naming ``encoder`` unless it is None or can read ``dataset``."""
    if encoder is None:
        return
    from dal_widgets.encoders import Encoder

    if not isinstance(encoder, Encoder):
        raise param_error(
            "encoder",
            where,
            "None or an encoder from dal_widgets.encoders (torchvision, "
            "sentence_transformer, from_module, from_callable, precomputed)",
            encoder,
            TypeError,
        )
    encoder.check_dataset(dataset, where)


class ModelInputs:
    """The model's view of ``dataset`` (``encoder`` None: the dataset itself); the caller has
    checked ``encoder`` with :func:`check_encoder` (before opening its store)."""

    def __init__(
        self,
        dataset: Dataset,
        encoder: Any,
        *,
        side_dir: Path | None,
        device: Any,
        on_progress: Callable[[dict[str, Any]], Any],
        on_ready: Callable[[], Any],
        pretrain: bool = False,
    ) -> None:
        self.raw = dataset
        self.encoder = encoder
        self.job: Any = None
        self._view: Dataset | None = None
        self._embedded = False  # whether _view holds the embeddings
        self._on_ready = on_ready
        self._on_progress = on_progress
        self._device = device
        self._settled = threading.Event()  # set once on_ready has run (or can never run)
        #: A self-supervised encoder that still has to be pretrained: the raw inputs serve
        #: the model until its embeddings exist, then ``on_switch`` swaps them in.
        self.pretraining: Any = None
        self.on_switch: Callable[[Callable[[], None]], Any] | None = None
        if encoder is None:
            self._view = dataset
            return
        if pretrain:  # the raw inputs serve until the encoder is pretrained
            self._view = dataset
        from dal_widgets.encoders import EmbeddingCache, EmbeddingJob, cache_root

        n_eval = dataset.n_eval
        cache = EmbeddingCache(
            cache_root(side_dir),
            dataset.fingerprint,
            encoder.id,
            {"pool": len(dataset), "eval": n_eval},
            chunk_rows=max(CHUNK_ROWS, encoder.batch_size),
        )

        def embed(split: str, start: int, stop: int) -> np.ndarray:
            step = encoder.batch_size
            parts = [
                encoder.embed(
                    dataset, np.arange(a, min(a + step, stop)), split=split, device=device
                )
                for a in range(start, stop, step)
            ]
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

        if hasattr(encoder, "full"):  # precomputed: the arrays are there, no cache needed
            return
        self.job = EmbeddingJob(
            cache,
            embed,
            name="dal-embedding",
            on_progress=on_progress,
            on_ready=lambda: self._build(self.job.pool, self.job.eval),
            on_done=self._done,
        )

    def start(self) -> None:
        """Start embedding in the background (precomputed arrays are ready at once); a
        self-supervised encoder is pretrained first, while the raw inputs serve."""
        if self._view is self.raw and self.encoder is not None:
            self._on_ready()  # the raw inputs are there: a saved model of them comes back
            self.pretraining = self.encoder.pretrain(
                self._device, wait=False, on_progress=self._pretrain_progress
            )
        elif self.job is not None:
            self.job.start()
        elif self.encoder is None:
            self._done()
        else:
            self._build(self.encoder.full("pool"), self.encoder.full("eval"))
            self._done()

    def _pretrain_progress(self, progress: dict[str, Any]) -> None:
        """On the pretraining thread: tell the views; once ready, embed the pool."""
        self._on_progress(self.progress)
        state = progress.get("state")
        if state == "ready":
            self.job.start()
        elif state in ("error", "cancelled"):
            self._settled.set()  # nothing more comes: waiters go on

    def _done(self) -> None:
        try:
            self._on_ready()  # the session: its saved model comes back
        finally:
            self._settled.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the embeddings exist and the session has taken them in (its saved
        model restored); True then, False on timeout or when embedding failed or was
        cancelled (see :attr:`progress`)."""
        start = time.monotonic()
        if self.pretraining is not None:
            if not self.pretraining.wait(timeout) or self.pretraining.failed:
                return False
            if timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - start))
        if self.job is not None:
            if not self.job.wait(timeout) or not self.job.ready:
                return False
            if timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - start))
        return self._settled.wait(timeout)

    def _build(self, pool: np.ndarray, held: np.ndarray | None) -> None:
        """The embeddings exist (on the job's thread): the model's view of the dataset."""
        raw = self.raw
        view = Dataset(
            pool,
            classes=raw.classes,
            kind="tabular",
            ids=raw.ids,
            targets=raw.targets,
            X_eval=held,
            y_eval=raw.y_eval,
            eval_ids=raw.eval_ids,
            name=raw.name,
            content_key=f"{raw.fingerprint}|{self.encoder.id}".encode(),
            multi_label=raw.multi_label,
        )

        def apply() -> None:
            self._view, self._embedded = view, True

        if self._view is raw and self.on_switch is not None:
            self.on_switch(apply)  # the session swaps them in while no fit or query runs
        else:
            apply()

    # ------------------------------------------------------------------ reading
    @property
    def ready(self) -> bool:
        """Whether the model's inputs exist (always without an encoder; the raw inputs while
        a self-supervised encoder pretrains)."""
        return self._view is not None  # set only once every embedding exists

    @property
    def embedded(self) -> bool:
        """Whether the model reads the encoder's embeddings (not the raw inputs)."""
        return self._embedded

    @property
    def kind(self) -> str:
        """What the default model is built for: ``"embedding"`` under an encoder."""
        return "embedding" if self._embedded else self.raw.kind

    @property
    def fingerprint(self) -> str:
        """What a saved model was trained on: the dataset's fingerprint, plus the encoder's id
        under an encoder (a head fits only the embeddings it was trained on)."""
        if not self._embedded and (self.encoder is None or self._view is self.raw):
            return self.raw.fingerprint
        return f"{self.raw.fingerprint}+{self.encoder.id}"

    @property
    def key(self) -> str:
        """What identifies :attr:`current` in caches (the map's): ``"features"`` for the raw
        inputs, the encoder's id once its embeddings are ready."""
        return self.encoder.id if self._embedded else "features"

    @property
    def current(self) -> Dataset:
        """The model's view when ready, else the raw dataset (for what needs no model)."""
        view = self._view
        return view if view is not None else self.raw

    def dataset(self, timeout: float | None = None) -> Dataset:
        """The model's view, waiting for the embeddings (on a worker thread) if need be."""
        if self._view is not None:
            return self._view
        if self.job is not None:
            self.job.wait(timeout)
            if self.job.error is not None:
                raise RuntimeError(
                    f"Embedding the dataset with encoder {self.encoder.name!r} failed:\n"
                    + self.job.error
                )
        if self._view is None:
            raise RuntimeError(
                f"The embeddings of encoder {self.encoder.name!r} are not there "
                f"({self.progress_text()}): the session was closed, or the wait timed out."
            )
        return self._view

    def new_model(self, factory: Any, n_classes: int, *, loss_head: bool) -> Any:
        """A fresh model from ``factory`` (a ModelFactory) sized for these inputs (with an
        encoder: waits for the embeddings; the default is then an EmbeddingHead)."""
        data = self.dataset()
        shape = tuple(data.X.shape[1:])
        return factory.build(shape, n_classes, self.kind, loss_head=loss_head, pool=data.X)

    @property
    def progress(self) -> dict[str, Any]:
        """``{"state": "ready"}`` without an encoder, else the embedding job's progress."""
        pre = self.pretraining
        if pre is not None and pre.progress.get("state") != "ready":
            return {**pre.progress, "encoder": self.encoder.name}
        if self.job is None:
            return {"state": "ready"}
        return {**self.job.progress, "encoder": self.encoder.name}

    def progress_text(self) -> str:
        """The progress in words, for status lines."""
        p = self.progress
        state = p.get("state")
        if self.encoder is None or state == "ready":
            pre = self.pretraining
            if pre is not None and self._embedded:  # this session pretrained and switched
                took = pre.progress.get("seconds")
                took_text = "" if took is None else f" in {took:.0f} s"
                return f"ready (pretrained on the pool{took_text}; the model switched to it)"
            return "ready"
        if state == "error":
            what = "pretraining" if "epochs" in p else "embedding"
            return f"{what} failed: {p.get('error', '')}"
        if "epochs" in p:  # a self-supervised encoder learns from the pool first
            text = f"pretraining {self.encoder.name}: epoch {p.get('epoch', 0)}/{p['epochs']}"
            if p.get("loss") is not None:
                text += f", loss {p['loss']:.3f}"
            if p.get("eta_s") is not None and state == "pretraining":
                text += f", about {p['eta_s']:.0f} s left"
            return text + ("" if state == "pretraining" else f" ({state})")
        done, total = p.get("done", 0), p.get("total", 0)
        rate, eta = p.get("rate"), p.get("eta_s")
        text = f"embedding with {self.encoder.name}: {done:,}/{total:,}"
        if rate:
            text += f", {rate:,.0f} samples/s"
        if eta is not None and state == "embedding":
            text += f", about {eta:.0f} s left"
        return text

    def close(self) -> None:
        pre = self.pretraining
        # Another session may share the job: it stops only when no one else listens.
        if pre is not None and pre.remove_listener(self._pretrain_progress) == 0:
            pre.cancel()
        if self.job is not None:
            self.job.cancel()
