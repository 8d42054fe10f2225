"""One status of a session that every view reads: the worker, the model and the labels.

The labeler's header and the App's panel both draw :func:`session_status`, so they cannot
disagree; views redraw it on the session's events (``train_idle`` tells them a fit ended and
nothing is queued).
"""

from __future__ import annotations

from typing import Any

__all__ = ["session_status", "worker_text"]


def worker_text(worker: str, progress: dict[str, Any]) -> str:
    """How a view words the worker state (``progress`` is the session's)."""
    if worker == "training":
        if progress.get("state") != "training":
            return "training: starting"
        rate = progress.get("samples_per_second") or 0
        return (
            f"training: epoch {progress.get('epoch')}/{progress.get('epochs')}, "
            f"step {progress.get('step')}/{progress.get('steps')}, {rate:.0f} samples/s"
        )
    return {"error": "last fit failed", "cancelled": "fit cancelled"}.get(worker, "idle")


def session_status(session: Any) -> dict[str, Any]:
    """The session's state as views show it.

    Keys: ``worker`` ("training" while a fit runs or is queued, else "idle", "error" after a
    failed fit, "cancelled" after a stopped one, "embedding" while an encoder's embeddings are
    computed), ``worker_text`` (the same in words, with the running fit's epoch, step and
    speed, or the embedding's progress), ``encoder`` (its name, or None) and ``encoder_text``
    (with its progress), ``encoder_progress`` (while it pretrains or embeds, else None), ``model_version`` and ``model_labels`` (None before
    the first model), ``staleness`` (labels added since that model), ``labeled``, ``skipped``,
    ``round``, ``strategy``, ``device``, ``train_error`` (bool) and ``team`` (None alone; in
    a team: ``annotator``, ``mine`` (this annotator's labels), ``trainer`` (whether this
    session trains for the team) and ``overlap``).
    """
    progress = dict(session.progress)
    state = progress.get("state")
    inputs = session.inputs
    if session.training:
        worker = "training"
    elif state in ("error", "cancelled"):
        worker = str(state)
    elif not inputs.ready:  # an encoder's embeddings are being computed (or failed)
        worker = "embedding"
    else:
        worker = "idle"
    version = session.model_version
    encoder = None if inputs.encoder is None else inputs.encoder.name
    return {
        "worker": worker,
        "worker_text": inputs.progress_text()
        if worker == "embedding"
        else worker_text(worker, progress),
        "encoder": encoder,
        "encoder_text": None if encoder is None else f"{encoder}: {inputs.progress_text()}",
        "encoder_progress": (
            inputs.progress_text()
            if encoder is not None and inputs.progress.get("state") != "ready"
            else None
        ),
        "model_version": None if version is None else version.version,
        "model_labels": None if version is None else version.n_labels,
        "staleness": session.staleness,
        "labeled": len(session.store),
        "skipped": len(session.store.marked("skip")),
        "round": session.round,
        "strategy": session.strategy,
        "device": session.device.type,
        "train_error": session.train_error is not None,
        "team": None
        if session.team is None
        else {
            "annotator": session.store.annotator,
            "mine": len(session.team.mine),
            "trainer": session.team.is_trainer,
            "overlap": session.team.team.overlap,
        },
    }
