"""The embedding cache: computed once per (dataset fingerprint, encoder id), in the background.

Layout, in ``<store>.dal/embeddings/<fingerprint>-<encoder id>/`` (or the user cache folder
for a store in memory)::

    meta.json                       fingerprint, encoder id, D, rows per chunk, rows per split
    pool-000000-<digest>.npy        rows 0..chunk-1 of the pool, float32 (chunk, D)
    eval-000000-<digest>.npy        the held-out split, likewise

Each chunk is written atomically (a temporary file, fsync, rename) as soon as it is computed,
so a killed kernel resumes with the next missing chunk. The digest in a chunk's name is a hash
of the file's bytes: a chunk whose bytes, shape, dtype or values (NaN) are wrong is deleted and
computed again, never used. Files load with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dal_widgets._files import write_atomically
from dal_widgets._threads import joined, start_daemon

__all__ = ["EmbeddingCache", "EmbeddingJob", "cache_root"]

_CHUNK = re.compile(r"(pool|eval)-(\d{6})-([0-9a-f]{16})\.npy")


def cache_root(side_dir: Path | None) -> Path:
    """Where embedding caches live: beside the store, or the user cache folder."""
    if side_dir is not None:
        return side_dir / "embeddings"
    from dal_widgets.projection import _cache_home

    return _cache_home() / "dal_widgets" / "embeddings"


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class EmbeddingCache:
    """The chunk files of one (dataset, encoder) pair.

    Parameters
    ----------
    root : path
        The folder of caches (see :func:`cache_root`).
    fingerprint, encoder_id : str
    sizes : dict
        Rows per split: ``{"pool": N, "eval": M}`` (M may be 0).
    chunk_rows : int
        Rows per chunk file.
    """

    def __init__(
        self,
        root: Path,
        fingerprint: str,
        encoder_id: str,
        sizes: dict[str, int],
        chunk_rows: int = 1024,
    ) -> None:
        self.folder = Path(root) / f"{fingerprint}-{encoder_id}"
        self.fingerprint = fingerprint
        self.encoder_id = encoder_id
        self.sizes = dict(sizes)
        self.chunk_rows = int(chunk_rows)
        self.dim: int | None = None
        #: Chunk files found damaged and deleted (for the warning and for tests).
        self.discarded: list[str] = []

    # ------------------------------------------------------------------ layout
    def n_chunks(self, split: str) -> int:
        return -(-self.sizes[split] // self.chunk_rows)

    def rows(self, split: str, k: int) -> tuple[int, int]:
        start = k * self.chunk_rows
        return start, min(start + self.chunk_rows, self.sizes[split])

    def _meta(self) -> dict[str, Any]:
        return {
            "format": 1,
            "fingerprint": self.fingerprint,
            "encoder": self.encoder_id,
            "dim": self.dim,
            "chunk_rows": self.chunk_rows,
            "sizes": self.sizes,
        }

    def scan(self) -> dict[tuple[str, int], Path]:
        """The chunk files present (not yet verified), after checking ``meta.json``: a cache
        whose metadata is unreadable or describes other data is emptied."""
        if not self.folder.is_dir():
            return {}
        meta_path = self.folder / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
            ok = isinstance(meta, dict) and all(
                meta.get(k) == v for k, v in self._meta().items() if k != "dim"
            )
            dim = meta.get("dim") if ok else None
            ok = ok and isinstance(dim, int) and dim > 0
        except (OSError, ValueError):
            ok, dim = False, None
        if not ok:  # rewritten with the first chunk computed now
            meta_path.unlink(missing_ok=True)
        files: dict[tuple[str, int], Path] = {}
        for path in self.folder.iterdir():
            match = _CHUNK.fullmatch(path.name)
            if match is None:
                continue
            key = (match.group(1), int(match.group(2)))
            if not ok or key[0] not in self.sizes or key[1] >= self.n_chunks(key[0]):
                self._discard(path, "its cache metadata is missing or describes other data")
                continue
            if key in files:  # two digests for one chunk: neither can be trusted
                self._discard(files.pop(key), "a second copy of the chunk exists")
                self._discard(path, "a second copy of the chunk exists")
                continue
            files[key] = path
        if ok:
            self.dim = int(dim)  # type: ignore[arg-type]
        return files

    def _discard(self, path: Path, why: str) -> None:
        self.discarded.append(f"{path.name}: {why}")
        path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ chunks
    def load(self, split: str, k: int, path: Path) -> np.ndarray | None:
        """A verified chunk, or None (the damaged file is deleted and will be recomputed)."""
        match = _CHUNK.fullmatch(path.name)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if match is None or _digest(data) != match.group(3):
            self._discard(path, "its bytes do not match its digest (truncated or corrupt)")
            return None
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError):
            self._discard(path, "it is not a readable .npy file")
            return None
        start, stop = self.rows(split, k)
        if arr.dtype != np.float32 or arr.shape != (stop - start, self.dim):
            self._discard(
                path, f"shape {arr.shape} {arr.dtype}, not ({stop - start}, {self.dim}) float32"
            )
            return None
        if not np.isfinite(arr).all():
            self._discard(path, "it holds NaN or infinite values")
            return None
        return arr

    def write(self, split: str, k: int, arr: np.ndarray) -> None:
        """Write one chunk atomically (and ``meta.json`` with the first)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.dim is None:
            self.dim = int(arr.shape[1])
        meta = self.folder / "meta.json"
        if not meta.exists():
            text = json.dumps(self._meta())
            write_atomically(meta, lambda tmp: tmp.write_text(text))
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
        data = buf.getvalue()
        target = self.folder / f"{split}-{k:06d}-{_digest(data)}.npy"
        write_atomically(target, lambda tmp: tmp.write_bytes(data))


class EmbeddingJob:
    """Fills an :class:`EmbeddingCache` in a daemon thread and assembles the arrays.

    ``embed(split, start, stop)`` computes the rows of one chunk. Progress (``done``/``total``
    rows, ``rate`` in samples per second, ``eta_s``) is published at most 10 times a second
    through ``on_progress(progress)``; when every chunk exists, ``pool`` and ``eval`` hold the
    arrays and ``on_ready()`` runs (on the job's thread), then waiters are released, the
    "ready" progress is published and ``on_done()`` runs. Cancelled or failed, waiters are
    released too (``ready`` stays False).
    """

    def __init__(
        self,
        cache: EmbeddingCache,
        embed: Callable[[str, int, int], np.ndarray],
        *,
        name: str = "dal-embedding",
        on_progress: Callable[[dict[str, Any]], Any] | None = None,
        on_ready: Callable[[], Any] | None = None,
        on_done: Callable[[], Any] | None = None,
    ) -> None:
        self.cache = cache
        self._on_done = on_done
        self._embed = embed
        self._on_progress = on_progress
        self._on_ready = on_ready
        self._name = name
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.pool: np.ndarray | None = None
        self.eval: np.ndarray | None = None
        self.error: str | None = None
        total = sum(self.cache.sizes.values())
        self.progress: dict[str, Any] = {"state": "waiting", "done": 0, "total": total}
        self._last = 0.0

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.error is None

    def start(self) -> None:
        self._thread = start_daemon(self._run, name=self._name, on_error=self._failed)

    def run(self) -> None:
        """Fill the cache on this thread (what the background thread does)."""
        self._run()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the arrays are ready or the job failed; False on timeout."""
        return self._ready.wait(timeout)

    def cancel(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        joined(self._thread, timeout)

    # ------------------------------------------------------------------ the thread
    def _failed(self, exc: Exception, text: str) -> None:
        self.error = text
        self._publish({"state": "error", "error": f"{type(exc).__name__}: {exc}"}, force=True)
        self._ready.set()

    def _publish(self, update: dict[str, Any], force: bool = False) -> None:
        self.progress = {**self.progress, **update}
        now = time.perf_counter()
        if self._on_progress is not None and (force or now - self._last >= 0.1):
            self._last = now
            self._on_progress(dict(self.progress))

    def _run(self) -> None:
        try:
            self._fill()
        finally:  # done, failed or cancelled: nobody waits for ever
            self._ready.set()

    def _fill(self) -> None:
        cache = self.cache
        files = cache.scan()
        arrays: dict[str, np.ndarray | None] = {}
        todo: list[tuple[str, int]] = []
        have: dict[tuple[str, int], np.ndarray] = {}
        for key, path in files.items():
            arr = cache.load(*key, path)
            if arr is not None:
                have[key] = arr
        for split in cache.sizes:
            todo += [(split, k) for k in range(cache.n_chunks(split)) if (split, k) not in have]
        done = sum(len(a) for a in have.values())
        # Damaged files were deleted and are computed again; a thread must not print, so the
        # count goes into the progress that views show.
        self._publish(
            {"state": "embedding", "done": done, "repaired": len(cache.discarded)}, force=True
        )
        t0, computed = time.perf_counter(), 0
        for split, k in todo:
            if self._stop.is_set():
                self._publish({"state": "cancelled"}, force=True)
                return
            start, stop = cache.rows(split, k)
            arr = self._embed(split, start, stop)
            cache.write(split, k, arr)
            have[(split, k)] = arr
            computed += stop - start
            done += stop - start
            rate = computed / max(time.perf_counter() - t0, 1e-9)
            left = self.progress["total"] - done
            self._publish({"done": done, "rate": rate, "eta_s": left / rate if rate else None})
        dim = cache.dim
        for split, n in cache.sizes.items():
            if n == 0:
                arrays[split] = None
                continue
            out = np.empty((n, dim or 0), dtype=np.float32)
            for k in range(cache.n_chunks(split)):
                start, stop = cache.rows(split, k)
                out[start:stop] = have.pop((split, k))
            arrays[split] = out
        self.pool, self.eval = arrays.get("pool"), arrays.get("eval")
        if self._stop.is_set():  # closed meanwhile: nobody is to be told
            self._publish({"state": "cancelled"}, force=True)
            return
        if self._on_ready is not None:  # fast (the session's view of the arrays)
            self._on_ready()
        # Waiters go on first: what runs after ("ready" observers, on_done) may itself wait
        # for them (restoring a saved model waits for a fit that waits for the embeddings).
        self._ready.set()
        self._publish({"state": "ready", "done": self.progress["total"], "eta_s": 0.0}, force=True)
        if self._on_done is not None:
            self._on_done()
