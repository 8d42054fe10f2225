"""The session's newest model, kept beside its store so a restarted kernel has it back.

After each finished fit the session writes ``<store>.dal/model.pt`` (one atomic torch file: the
weights and a JSON config that records the classes, the dataset fingerprint and a hash of the
labeled set the model saw, see :func:`~dal_widgets._labels.labels_key`). When the store is opened again the session
loads it with ``torch.load(..., weights_only=True)``; if the labels changed since (or no model
file exists for a store that has labels), a refit starts by itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from dal_widgets._checks import DalWarning
from dal_widgets._labels import labels_key

__all__ = ["ModelMemory", "model_config"]

#: The file name, inside the store's side folder.
MODEL_FILE = "model.pt"


def model_config(session: Any, model: nn.Module, version: Any) -> dict[str, Any]:
    """The config saved with a session's model (see
    :func:`~dal_widgets.training.checkpoint_config`), plus the labeled set's hash and the
    newest held-out evaluation of this version."""
    from dal_widgets.training import checkpoint_config

    config = checkpoint_config(
        model,
        input_shape=session.inputs.current.X.shape[1:],
        classes=session.classes,
        version=version,
        dataset_name=session.dataset.name,
        fingerprint=session.inputs.fingerprint,  # with an encoder: the dataset and the encoder
        train_config=session.train_config,
    )
    config["labels_key"] = version.labels_key
    evaluation = session.evaluation
    if evaluation is not None and evaluation.get("model_version") == version.version:
        config["evaluation"] = {k: v for k, v in evaluation.items() if k != "model_version"}
    return config


class ModelMemory:
    """``<store>.dal/model.pt``: written after each fit, read when the store is opened.

    ``folder`` None (an in-memory store) keeps nothing. Failures never reach the caller as
    exceptions: a model that cannot be saved or loaded costs a refit, not the session; they are
    reported as a :class:`~dal_widgets.DalWarning` (loading) or kept in ``error`` (saving, which
    runs on the training thread).
    """

    def __init__(self, folder: Path | None, trainer: Any) -> None:
        self.path = None if folder is None else Path(folder) / MODEL_FILE
        self.trainer = trainer
        #: Why the newest save failed (None after a save succeeds).
        self.error: str | None = None
        #: Why the saved model could not be loaded (when restored on a background thread,
        #: which must not warn; None when it loaded or there was none).
        self.load_error: str | None = None

    # ------------------------------------------------------------------ a session's model
    def restore_for(
        self, session: Any, new_model: Callable[[], nn.Module], *, token: int, warn: bool
    ) -> None:
        """Bring back ``session``'s saved model into ``new_model()`` (see :meth:`restore`)
        and set the session's evaluation to the one saved with it."""
        session.evaluation = self.restore(
            new_model,
            labels=session.store.labels,
            classes=session.classes,
            fingerprint=session.inputs.fingerprint,
            # In a team only the trainer fits (it refits when it takes the role).
            refit=session.retrain != "manual"
            and not session.store.read_only
            and getattr(session, "team", None) is None,
            token=token,
            warn=warn,
        )

    def export_for(self, session: Any, path: Any) -> Path:
        """``Session.export_model``: the newest model and its config, in one file."""
        from dal_widgets.training import save_checkpoint

        model, version = session.model, session.model_version
        if model is None or version is None:
            raise RuntimeError("No trained model yet: call train() (and wait()) first.")
        return save_checkpoint(path, model, model_config(session, model, version))

    def load_for(self, session: Any, path: Any, model: nn.Module, allow_other_dataset: bool) -> Any:
        """``Session.load_model``: a checkpoint file into ``model`` (fresh); its ModelVersion."""
        return self.load_file(
            path,
            model,
            labels=session.store.labels,
            classes=session.classes,
            fingerprint=session.inputs.fingerprint,
            dataset_name=session.dataset.name,
            allow_other_dataset=allow_other_dataset,
        )

    def save(self, model: nn.Module, config: dict[str, Any]) -> None:
        """Write the model and its config (atomically; creates the folder)."""
        if self.path is None:
            return
        from dal_widgets.training import save_checkpoint

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(self.path, model, config)
        except (OSError, ValueError, RuntimeError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        else:
            self.error = None

    def restore(
        self,
        new_model: Callable[[], nn.Module],
        *,
        labels: dict[Any, Any],
        classes: list[str],
        fingerprint: str,
        refit: bool,
        token: int,
        warn: bool = True,
    ) -> dict[str, Any] | None:
        """Load the saved weights into ``new_model()`` (a fresh model of the session's
        architecture, built only when there is a saved file) and make it the trainer's newest;
        request a fit (when ``refit``) if the labels changed since it was trained, nothing
        could be loaded, or the session trains ensembles. Returns the saved evaluation of that
        model (None if none)."""
        config, model = self._load(new_model, classes, fingerprint, warn)
        key = labels_key(labels)
        evaluation = None
        if config is not None and model is not None:
            version = self.trainer.set_model(
                model, int(config.get("n_labels", 0)), str(config.get("labels_key", ""))
            )
            if isinstance(config.get("evaluation"), dict):
                evaluation = {**config["evaluation"], "model_version": version.version}
        # Only the newest model is kept: an ensemble's other members come from a refit.
        ensemble = self.trainer.config.ensemble_size > 1
        if refit and (config is None or config.get("labels_key") != key or ensemble):
            self.trainer.request(token)
        return evaluation

    def load_file(
        self,
        path: Any,
        model: nn.Module,
        *,
        labels: dict[Any, Any],
        classes: list[str],
        fingerprint: str,
        dataset_name: str,
        allow_other_dataset: bool,
    ) -> Any:
        """Load a checkpoint file the user names into ``model`` (errors raise) and make it the
        trainer's newest, as trained on the current ``labels``; returns its ModelVersion."""
        from dal_widgets.training import load_checkpoint

        config = load_checkpoint(
            path,
            model,
            classes=classes,
            fingerprint=fingerprint,
            dataset_name=dataset_name,
            allow_other_dataset=allow_other_dataset,
        )
        return self.trainer.set_model(model, int(config.get("n_labels", 0)), labels_key(labels))

    def _load(
        self, new_model: Callable[[], nn.Module], classes: list[str], fingerprint: str, warn: bool
    ) -> tuple[dict[str, Any] | None, nn.Module | None]:
        if self.path is None or not self.path.is_file():
            return None, None
        from dal_widgets.training import load_checkpoint

        model = new_model()
        try:
            config = load_checkpoint(self.path, model, classes=classes, fingerprint=fingerprint)
            return config, model
        except (OSError, ValueError, TypeError, RuntimeError, KeyError) as exc:
            self.load_error = (
                f"The model saved beside the store ({self.path}) could not be loaded, so a new "
                f"one will be trained: {exc}"
            )
            if warn:
                # _load <- restore <- restore_for <- Session._on_inputs_ready <- ModelInputs.start
                # <- Session.__init__ <- the user's Session(...) line
                warnings.warn(self.load_error, DalWarning, stacklevel=7)
            return None, None
