"""The model's arrays over the pool, computed at most once per model version and shared.

A query, the map, "why this sample" and the predictions all read the same arrays of the same
model. :class:`PoolArrays` computes what is asked for the newest model version, keeps it until
the next version arrives, and computes only what is missing when a later caller asks for more.
The arrays one forward pass gives together (class probabilities and penultimate embeddings)
are always computed together, so a query and a map redraw cost one pool pass, not two; the
price is one (N, D) float32 array held per version.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
from torch import nn

from dal_widgets.training._inference import INFERABLE, predict
from dal_widgets.training._trainer import ModelVersion, Snapshot, Trainer

__all__ = ["MODEL_ARRAYS", "PoolArrays"]

#: Arrays computed from the newest model (INFERABLE) or its ensemble ("member_probs").
MODEL_ARRAYS = INFERABLE | {"member_probs"}
# What one forward pass gives together (see predict): computed as a pair.
_FORWARD = frozenset({"probs", "label_probs", "embeddings"})


class PoolArrays:
    """Per-version cache of model arrays over ``X`` (the pool), in dataset order.

    Parameters
    ----------
    X : array, or a callable returning it
        The pool's model inputs (a callable is called whenever they are needed, so they can
        arrive later, e.g. an encoder's embeddings).
    features : array, or a callable returning it
        The pool's raw features (what strategies that ask for ``"features"`` get).
    trainer : Trainer
        Where the newest model, its ensemble and its version come from.
    multi_label : bool
        Whether the model's outputs are per-class sigmoids (``label_probs``) instead of a
        softmax (``probs``).
    config : TrainConfig
        Inference batch size, MC passes, precision, DeepFool iterations.
    device : torch.device
    seed : int
        MC-dropout masks are seeded by ``seed`` and the model version.
    """

    def __init__(
        self,
        X: Any,
        *,
        features: Any,
        trainer: Trainer,
        multi_label: bool,
        config: Any,
        device: Any,
        seed: int,
    ) -> None:
        self.X = X
        self.features = features
        self.trainer = trainer
        self.multi_label = multi_label
        self.config = config
        self.device = device
        self.seed = seed
        self._lock = threading.Lock()
        self._computing = threading.Lock()
        self._version: ModelVersion | None = None
        self._arrays: dict[str, np.ndarray] = {}
        #: Full-pool inference passes run so far (one predict call each); for tests/benchmarks.
        self.passes = 0

    def compute(
        self, needs: Iterable[str], strategy: str, snapshot: Snapshot | None = None
    ) -> dict[str, np.ndarray]:
        """What ``strategy`` asks for: raw ``features`` and the model's arrays (clear errors
        for arrays this data or this training cannot give). ``snapshot``: the model to use
        (default: the trainer's newest, read once)."""
        needs = set(needs)
        arrays: dict[str, np.ndarray] = {}
        if "features" in needs:
            arrays["features"] = self._read(self.features)
        missing = needs - MODEL_ARRAYS - {"features"}
        if missing:
            raise ValueError(
                f"Session cannot compute {sorted(missing)} for strategy {strategy!r}: "
                f"it computes {sorted(MODEL_ARRAYS | {'features'})}."
            )
        if self.multi_label and needs & {"probs", "mc_probs", "member_probs"}:
            raise ValueError(
                f"Strategy {strategy!r} needs softmax probabilities, which a multi-label model "
                "does not give (its classes are independent). Use multilabel_entropy or "
                "multilabel_margin, or a diversity strategy (coreset, kmeans, typiclust, random)."
            )
        if not self.multi_label and "label_probs" in needs:
            raise ValueError(
                f"Strategy {strategy!r} is for multi-label data (per-class probabilities), and "
                "this dataset is single-label."
            )
        if needs & MODEL_ARRAYS:
            current = snapshot if snapshot is not None else self.trainer.current
            if current is None:
                raise RuntimeError("No trained model yet: call train() (and wait()) first.")
            model, members, version = current.model, current.members, current.version
            if "member_probs" in needs and len(members) < 2:
                raise ValueError(
                    f"Strategy {strategy!r} needs an ensemble ('member_probs'), and the newest "
                    f"fit trained {len(members)} model. Set TrainConfig(ensemble_size=5) (each "
                    "fit then trains 5 members) and train again."
                )
            arrays.update(self.get(needs & MODEL_ARRAYS, model, members, version))
        return arrays

    def get(
        self,
        needs: Iterable[str],
        model: nn.Module,
        members: list[nn.Module],
        version: ModelVersion,
    ) -> dict[str, np.ndarray]:
        """The arrays in ``needs`` (a subset of :data:`MODEL_ARRAYS`) for ``version``."""
        needs = set(needs)
        with self._lock:  # a cached read never waits for a computation
            if self._version == version and needs <= set(self._arrays):
                return {k: self._arrays[k] for k in needs}
        with self._computing:  # one computation at a time; a second caller then reuses it
            with self._lock:
                if self._version != version:
                    self._version, self._arrays = version, {}
                have = dict(self._arrays)
            missing = needs - set(have)
            # One pass gives both, so a query and a map share it; a head over embeddings is a
            # cheap pass whose "embeddings" are a pool-sized copy: those come when asked for.
            if missing & _FORWARD and not getattr(model, "cheap_forward", False):
                missing |= {"label_probs" if self.multi_label else "probs", "embeddings"}
                missing -= set(have)
            new: dict[str, np.ndarray] = {}
            computed = missing & INFERABLE
            if computed:
                new.update(self._predict(model, computed, version))
            if "member_probs" in missing:
                new["member_probs"] = np.stack(
                    [self._predict(m, {"probs"}, version)["probs"] for m in members], axis=1
                )
            with self._lock:
                if self._version == version:
                    self._arrays.update(new)
            have.update(new)
            return {k: have[k] for k in needs}

    @property
    def cached_version(self) -> ModelVersion | None:
        """The model version whose arrays are held now (None when none are)."""
        with self._lock:
            return self._version if self._arrays else None

    def at(self, positions: Any, key: str) -> np.ndarray:
        """``key`` ("probs" or "label_probs") of the newest model for the pool rows at
        ``positions`` only: sliced from the pool's arrays when this version has them, else
        inferred for those rows alone and not kept (a few tiles must not wait for a pass over
        the whole pool)."""
        current = self.trainer.current
        if current is None:
            raise RuntimeError("No trained model yet: call train() (and wait()) first.")
        with self._lock:
            if self._version == current.version and key in self._arrays:
                return self._arrays[key][positions]
        cfg = self.config
        rows = np.asarray(positions, dtype=np.int64)
        return predict(
            current.model,
            self._read(self.X)[rows],
            [key],
            device=self.device,
            batch_size=cfg.inference_batch_size,
            precision=cfg.precision,
        )[key]

    @staticmethod
    def _read(value: Any) -> Any:
        return value() if callable(value) else value

    def clear(self) -> None:
        """Drop every array (the model was let go)."""
        with self._lock:
            self._version, self._arrays = None, {}

    def _predict(
        self, model: nn.Module, needs: set[str], version: ModelVersion
    ) -> dict[str, np.ndarray]:
        cfg = self.config
        self.passes += 1
        return predict(
            model,
            self._read(self.X),
            needs,
            device=self.device,
            batch_size=cfg.inference_batch_size,
            mc_samples=cfg.mc_samples,
            seed=self.seed + version.version,
            precision=cfg.precision,
            deepfool_iters=cfg.deepfool_iters,
        )
