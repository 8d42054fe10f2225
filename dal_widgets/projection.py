"""2-D maps of the pool: PCA at once, UMAP in the background, cached and aligned across rounds.

Features come from the raw inputs (``source="features"``: the map never moves) or from the
newest model's penultimate embeddings (``source="embeddings"``: the map follows what the model
learned). UMAP is fitted on a subsample (10,000 points by default) and the rest is transformed
onto that fit.

Across model versions (a new model = a new embedding space, so the old UMAP cannot transform
the new embeddings), two mechanisms keep the map continuous and cheap:

* **refresh** (most versions): 2,000 anchor points keep their 2-D positions and every other
  point moves to the distance-weighted mean position of its nearest anchors *in the new
  embedding space* (:func:`place_on_anchors`). One chunked nearest-neighbour pass on the
  device, many times faster than a UMAP fit (``benchmarks/projection.py`` measures both);
* **refit** (every ``refit_every`` versions, and the first time): a UMAP fit that starts from
  the previous layout (``init``), then an orthogonal Procrustes rotation and scale onto it.

AlignedUMAP was not chosen: it refits every round over all rounds' data, the opposite of cheap.

umap-learn is imported lazily; its numba cache goes to a folder that survives kernel restarts
(``$XDG_CACHE_HOME/dal_widgets/numba``, by default ``~/.cache/dal_widgets/numba``, unless
``NUMBA_CACHE_DIR`` is set), so only the first kernel ever pays the compilation.

Maps are cached on disk beside a file store (``<store>.dal/maps/``), keyed by the dataset's
fingerprint and, for embedding maps, by :attr:`ModelVersion.key` (a hash of the model's
weights): version numbers restart at 1 in every kernel, so they cannot name a map on disk.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dal_widgets._checks import check_choice, check_int, param_error
from dal_widgets._files import write_atomically
from dal_widgets._threads import joined, start_daemon

__all__ = [
    "Projection",
    "Projector",
    "SessionMaps",
    "align",
    "configure_numba_cache",
    "pca_2d",
    "place_on_anchors",
    "umap_2d",
]

_PRE_DIMS = 50  # UMAP runs on the top principal components: faster, and denoises raw pixels


@dataclass(frozen=True)
class Projection:
    """A 2-D layout of the whole pool, in dataset order."""

    coords: np.ndarray  # (N, 2) float32
    method: str  # "pca" or "umap"
    source: str  # "features" or "embeddings"
    model_version: int | None  # the session's counter, for display ("model v3")
    seconds: float
    #: What identifies the model across kernels (``ModelVersion.key``); for a map of the
    #: features, what identifies them (``"features"``, or an encoder's id).
    model_key: str | None = None


class _Want(NamedTuple):
    """Which map is wanted: its source and, for embeddings, the model (counter and key)."""

    source: str
    version: int | None
    key: str | None


def _subsample(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _pca_basis(X: np.ndarray, k: int, fit_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top-k principal axes from the rows ``fit_rows`` (eigh of the D x D covariance)."""
    sample = np.asarray(X[fit_rows], dtype=np.float64)
    mean = sample.mean(axis=0)
    centered = sample - mean
    cov = centered.T @ centered / max(len(sample) - 1, 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:k]
    axes = vecs[:, order]
    # A deterministic sign per axis (eigh's signs are arbitrary), so maps do not flip.
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    return mean, axes * np.where(signs == 0, 1.0, signs)


def _project(X: np.ndarray, mean: np.ndarray, axes: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    out = np.empty((len(X), axes.shape[1]), dtype=np.float32)
    for start in range(0, len(X), chunk):  # chunks bound the float64 temporaries
        out[start : start + chunk] = (
            np.asarray(X[start : start + chunk], dtype=np.float64) - mean
        ) @ axes
    return out


def pca_2d(X: np.ndarray, *, sample: int = 10_000, seed: int = 0) -> np.ndarray:
    """The first two principal components of ``X`` (fitted on a subsample), float32 (N, 2)."""
    X = np.asarray(X).reshape(len(X), -1)
    if len(X) == 0:
        raise param_error("X", "pca_2d", "a non-empty array", X)
    mean, axes = _pca_basis(X, min(2, X.shape[1]), _subsample(len(X), sample, seed))
    coords = _project(X, mean, axes)
    if coords.shape[1] < 2:
        coords = np.hstack([coords, np.zeros((len(X), 2 - coords.shape[1]), np.float32)])
    return coords


def _cache_home() -> Path:
    """``$XDG_CACHE_HOME``, or ``~/.cache`` when it is unset, empty or relative (as the XDG
    Base Directory spec says: an empty value counts as unset, a relative one is invalid)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"


def configure_numba_cache() -> None:
    if "NUMBA_CACHE_DIR" not in os.environ:
        try:
            path = _cache_home() / "dal_widgets" / "numba"
        except RuntimeError:  # no home directory to be found: numba keeps its own default
            return
        try:
            path.mkdir(parents=True, exist_ok=True)
            os.environ["NUMBA_CACHE_DIR"] = str(path)
        except OSError:
            pass  # a read-only home: numba falls back to its own default


def umap_2d(
    X: np.ndarray,
    *,
    sample: int = 10_000,
    seed: int = 0,
    init: np.ndarray | None = None,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
) -> np.ndarray:
    """UMAP of ``X`` to 2-D: fitted on a subsample, the rest transformed onto the fit.

    Parameters
    ----------
    X : array (N, ...)
        Features; reduced to their top 50 principal components first.
    sample : int
        How many rows to fit on.
    init : array (N, 2), optional
        A previous layout to start from (for continuity across rounds).
    """
    configure_numba_cache()
    try:
        import umap
    except ImportError:
        raise ImportError("umap_2d needs umap-learn: pip install umap-learn") from None
    X = np.asarray(X).reshape(len(X), -1)
    n = len(X)
    rows = _subsample(n, sample, seed)
    k = min(_PRE_DIMS, X.shape[1])
    mean, axes = _pca_basis(X, k, rows)
    Z = _project(X, mean, axes)
    neighbors = max(2, min(n_neighbors, len(rows) - 1))
    start: Any = "spectral"
    if init is not None:
        start = np.asarray(init, dtype=np.float64)[rows]
        start = (start - start.mean(0)) / max(float(start.std()), 1e-12) * 10.0
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=neighbors,
        min_dist=min_dist,
        init=start,
        random_state=seed,
        transform_seed=seed,
        n_jobs=1,
    )
    coords = np.empty((n, 2), dtype=np.float32)
    coords[rows] = reducer.fit_transform(Z[rows]).astype(np.float32)
    rest = np.setdiff1d(np.arange(n), rows, assume_unique=True)
    for s in range(0, rest.size, 50_000):  # chunks bound transform's memory on big pools
        part = rest[s : s + 50_000]
        coords[part] = reducer.transform(Z[part]).astype(np.float32)
    return coords


def place_on_anchors(
    X: np.ndarray,
    anchors: np.ndarray,
    anchor_coords: np.ndarray,
    *,
    k: int = 10,
    device: Any = "cpu",
    chunk: int = 8192,
) -> np.ndarray:
    """Place every row of ``X`` at the weighted mean 2-D position of its ``k`` nearest anchors.

    ``anchors`` are row indices into ``X``; they keep ``anchor_coords`` exactly. Distances are computed in
    chunks with torch on ``device``: memory is ``chunk x len(anchors)``, never N x N.
    """
    import torch

    dev = torch.device(device)
    A = torch.as_tensor(np.asarray(X[anchors], dtype=np.float32), device=dev)
    C = torch.as_tensor(np.asarray(anchor_coords, dtype=np.float32), device=dev)
    a2 = (A * A).sum(1)
    k = min(k, len(anchors))
    out = np.empty((len(X), 2), dtype=np.float32)
    for start in range(0, len(X), chunk):
        B = torch.as_tensor(
            np.asarray(X[start : start + chunk], dtype=np.float32).reshape(-1, A.shape[1]),
            device=dev,
        )
        d2 = ((B * B).sum(1, keepdim=True) + a2 - 2.0 * B @ A.T).clamp_min_(0.0)
        dist, idx = torch.topk(d2, k, dim=1, largest=False)
        w = 1.0 / (dist.sqrt() + 1e-6)
        w = w / w.sum(1, keepdim=True)
        out[start : start + chunk] = (w.unsqueeze(2) * C[idx]).sum(1).cpu().numpy()
    # Anchors keep their places exactly (float32 distance round-off would nudge them).
    out[np.asarray(anchors)] = np.asarray(anchor_coords, dtype=np.float32)
    return out


def align(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Rotate, reflect, scale and shift ``new`` to best match ``old`` (orthogonal Procrustes)."""
    a = np.asarray(new, dtype=np.float64)
    b = np.asarray(old, dtype=np.float64)
    ma, mb = a.mean(0), b.mean(0)
    a0, b0 = a - ma, b - mb
    u, s, vt = np.linalg.svd(a0.T @ b0)
    rot = u @ vt
    scale = s.sum() / max(float((a0**2).sum()), 1e-12)
    return (a0 @ rot * scale + mb).astype(np.float32)


class Projector:
    """Computes, caches and serves maps of a session's pool, in a background thread.

    :meth:`current` is never empty after construction: a PCA map is computed at once (well under
    a second at 10,000 points). :meth:`refresh` asks for the newest map; UMAP runs in a daemon
    thread and replaces the PCA when ready. Callbacks registered with :meth:`on_change` run on
    that thread. Results are cached by (source, model, method) in memory and, when the
    session's store is a file, in ``<store>.dal/maps/`` so a restarted kernel shows the last map
    immediately. The model is named by :attr:`ModelVersion.key` (a hash of its weights), never
    by its version number, which restarts at 1 in every kernel. A cache file that cannot be read
    (torn by a power cut, or not a map) counts as a miss: the map is computed again and the
    file replaced (written to a temporary file, fsynced, renamed).

    Parameters
    ----------
    session : Session
    source : {"auto", "features", "embeddings"}
        ``"auto"`` and ``"embeddings"``: the newest model's embeddings once a model exists, raw
        features before (the same today; "embeddings" is kept for clarity in user code).
    method : {"umap", "pca"}
    sample : int
        Rows UMAP is fitted on.
    refit_every : int
        New model versions are placed on anchors (fast); every ``refit_every``-th one gets a
        full UMAP refit. 1 = always refit.
    anchors : int
        Anchor points for the fast refresh.
    """

    def __init__(
        self,
        session: Any,
        *,
        source: str = "auto",
        method: str = "umap",
        sample: int = 10_000,
        seed: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        refit_every: int = 5,
        anchors: int = 2_000,
    ) -> None:
        where = "Projector"
        self.refit_every = check_int(refit_every, "refit_every", where, lo=1)
        self.anchors = check_int(anchors, "anchors", where, lo=10)
        self._last_refit: int | None = None
        self.session = session
        self.source = check_choice(source, "source", where, ["auto", "features", "embeddings"])
        self.method = check_choice(method, "method", where, ["umap", "pca"])
        self.sample = check_int(sample, "sample", where, lo=10)
        self.seed = check_int(seed, "seed", where, lo=0)
        if cache_dir is None:
            side = session.store.side_dir
            cache_dir = None if side is None else side / "maps"
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.status = "idle"
        self.error: str | None = None
        self._cache: dict[tuple[str, str | None, str], Projection] = {}
        self._current: Projection | None = None
        self._callbacks: list[Callable[[Projection], None]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._want: _Want | None = None
        self._current = self._first_paint()

    # ------------------------------------------------------------------ public
    def current(self) -> Projection:
        """The best map available now (never None)."""
        assert self._current is not None
        return self._current

    def on_change(self, callback: Callable[[Projection], None]) -> None:
        """Call ``callback(projection)`` whenever a better or newer map is ready."""
        self._callbacks.append(callback)

    def refresh(self, *, block: bool = False) -> None:
        """Compute the map for the newest model version (UMAP in the background)."""
        key = self._key_now()
        with self._lock:
            self._want = key
            if self._thread is None or not self._thread.is_alive():
                self._thread = start_daemon(self._run, name="dal-projector", on_error=self._failed)
            thread = self._thread
        if block:
            thread.join()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no computation runs; False on timeout."""
        return joined(self._thread, timeout)

    # ------------------------------------------------------------------ internals
    def _source_now(self) -> str:
        # Embeddings need a model: until the first fit, both "auto" and "embeddings" map the
        # raw features.
        if self.source == "features" or self.session.model is None:
            return "features"
        return "embeddings"

    def _key_now(self) -> _Want:
        source = self._source_now()
        mv = self.session.model_version
        if source == "features":  # the raw features, or an encoder's embeddings once ready
            return _Want(source, None, self.session.inputs.key)
        if mv is None:
            return _Want(source, None, None)
        return _Want(source, mv.version, mv.key or None)

    def _features(self, source: str) -> np.ndarray:
        if source == "features":  # with an encoder: its embeddings (waits for them)
            return self.session.inputs.dataset().features
        return self.session.compute_arrays({"embeddings"})["embeddings"]

    @staticmethod
    def _memory_key(want: _Want, method: str) -> tuple[str, str | None, str]:
        # Within one kernel the version number also names a model (a model without a key,
        # which a session never makes today, is still cached in memory, never on disk).
        if want.source == "embeddings" and want.key is None:
            return want.source, f"process-v{want.version}", method
        return want.source, want.key, method

    def _cache_file(self, want: _Want, method: str) -> Path | None:
        if self.cache_dir is None:
            return None
        fp = self.session.dataset.fingerprint
        if want.source == "features":  # key "features", or the encoder's id
            return self.cache_dir / f"{fp}-{want.key}-{method}.npy"
        if want.key is None:
            return None
        return self.cache_dir / f"{fp}-{want.source}-{want.key}-{method}.npy"

    def _read(self, path: Path) -> np.ndarray | None:
        """The coordinates in a cache file, or None for anything but a finite (N, 2) float map."""
        try:
            data = np.load(path, allow_pickle=False)  # never unpickle files from disk
        except Exception:  # noqa: BLE001 (any unreadable cache is a miss: EOFError when torn, ...)
            return None
        if not isinstance(data, np.ndarray):  # an .npz archive
            if hasattr(data, "close"):
                data.close()
            return None
        if (
            data.dtype.kind != "f"  # strings, objects, structured records, complex, ints
            or data.shape != (len(self.session.dataset), 2)
            or not np.isfinite(data).all()
        ):
            return None
        return data.astype(np.float32)

    def _load(self, want: _Want, method: str) -> Projection | None:
        key = self._memory_key(want, method)
        if key in self._cache:
            return self._cache[key]
        path = self._cache_file(want, method)
        if path is None or not path.is_file():
            return None
        coords = self._read(path)
        if coords is None:
            return None
        proj = Projection(coords, method, want.source, want.version, 0.0, want.key)
        self._cache[key] = proj
        return proj

    def _save(self, proj: Projection) -> None:
        want = _Want(proj.source, proj.model_version, proj.model_key)
        self._cache[self._memory_key(want, proj.method)] = proj
        path = self._cache_file(want, proj.method)
        if path is None:
            return

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, proj.coords, allow_pickle=False)

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Atomic and durable: a power cut leaves the old file or the new one, never a torn one.
            write_atomically(path, write)
        except OSError:
            pass  # the cache is an optimization; an unwritable folder only costs recomputation

    def _first_paint(self) -> Projection:
        want = self._key_now()
        for method in ("umap", "pca"):
            cached = self._load(want, method)
            if cached is not None and (method == "pca" or self.method == "umap"):
                self.status = f"{method} (cached)"
                return cached
        inputs = self.session.inputs
        if not inputs.ready:  # an encoder's embeddings are coming; their map follows them
            self.status = "waiting for the embeddings"
            zeros = np.zeros((len(self.session.dataset), 2), np.float32)
            return Projection(zeros, "pca", "features", None, 0.0, "waiting")
        # Raw features give the first paint even when the model exists: no inference needed.
        t0 = time.perf_counter()
        coords = pca_2d(inputs.current.features, sample=self.sample, seed=self.seed)
        proj = Projection(coords, "pca", "features", None, time.perf_counter() - t0, inputs.key)
        self._save(proj)
        self.status = "pca"
        return proj

    def _publish(self, proj: Projection) -> None:
        self._current = proj
        for cb in list(self._callbacks):
            try:
                cb(proj)
            except Exception:  # noqa: BLE001 (a view's bug must not stop the projector)
                self.error = traceback.format_exc()

    def _run(self) -> None:
        while True:
            with self._lock:
                want, self._want = self._want, None
            if want is None:
                return
            try:
                self._compute(want)
            except Exception as exc:  # noqa: BLE001 (the next wanted map may still work)
                self._failed(exc, traceback.format_exc())

    def _failed(self, _exc: BaseException, text: str) -> None:
        """Keep a failure for the views (never printed from the thread)."""
        self.error = text
        self.status = "error"

    def _compute(self, want: _Want) -> None:
        source, version = want.source, want.version
        cached = self._load(want, self.method)
        if cached is not None:
            self.status = f"{self.method} (cached)"
            if cached is not self._current:  # the first paint may already be this map
                self._publish(cached)
            return
        self.status = f"computing {self.method} on {source}"
        t0 = time.perf_counter()
        X = self._features(source)
        previous = self._current.coords if self._current is not None else None
        if self.method == "pca":
            coords = pca_2d(X, sample=self.sample, seed=self.seed)
        else:
            prev_umap = (
                previous is not None
                and self._current is not None
                and self._current.method == "umap"
            )
            refresh = (
                prev_umap
                and source == "embeddings"
                and self._current is not None
                and self._current.source == "embeddings"
                and version is not None
                and self._last_refit is not None
                and version - self._last_refit < self.refit_every
            )
            if refresh:
                assert previous is not None
                rows = _subsample(len(X), self.anchors, self.seed)
                coords = place_on_anchors(X, rows, previous[rows], device=self.session.device)
                previous = None  # anchors keep their places: nothing to align
            else:
                coords = umap_2d(
                    X, sample=self.sample, seed=self.seed, init=previous if prev_umap else None
                )
                if source == "embeddings":
                    self._last_refit = version
        if previous is not None:
            coords = align(coords, previous)
        proj = Projection(coords, self.method, source, version, time.perf_counter() - t0, want.key)
        self._save(proj)
        self.status = self.method
        self.error = None
        self._publish(proj)


class SessionMaps:
    """A session's map services: one :class:`Projector` per method, made on first use,
    refreshed after each fit; each new map goes to ``announce(projection)``."""

    def __init__(self, session: Any, announce: Callable[[Projection], None]) -> None:
        self.session = session
        self.announce = announce
        self._projectors: dict[str, Projector] = {}

    def get(self, method: str = "umap", **options: Any) -> Projector:
        check_choice(method, "method", "Session.map", ["umap", "pca"])
        projector = self._projectors.get(method)
        if projector is None:
            projector = Projector(self.session, method=method, **options)
            projector.on_change(self.announce)
            self.session.on("trained", lambda **_kw: projector.refresh())
            self._projectors[method] = projector
            inputs = self.session.inputs
            if inputs.ready:
                projector.refresh()
            else:  # an encoder embeds the pool: the first real map is of its embeddings

                def when_ready(progress: dict[str, Any]) -> None:
                    if progress.get("state") == "ready":
                        projector.refresh()

                self.session.on("embedding", when_ready)
                if inputs.ready:  # it got ready meanwhile: the event has been sent already
                    projector.refresh()
        elif options:
            raise ValueError(
                f"Session.map: the {method!r} map exists already; its options are fixed when it "
                f"is made. Got {sorted(options)} again."
            )
        return projector
