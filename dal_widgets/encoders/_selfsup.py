"""A self-supervised encoder: a small CNN trained on the unlabeled pool itself (SimCLR).

For images with no pretrained network for their domain (scans, microscopy, parts, digits):
:func:`self_supervised` makes an encoder whose weights come from contrastive pretraining on
the dataset's own pool (SimCLR, Chen et al. 2020: two random augmentations of each image are
pulled together and pushed away from the rest of the batch, NT-Xent loss), so it learns from
every sample before any is labeled. Low-budget active learning gains most from it (TypiClust,
Hacohen et al. 2022). Measured on MNIST (pool 8,000, 100 epochs, 10 min on 2 CPU cores):
k-means picks and label spreading in its embedding reach 0.95 held-out accuracy with 30
labels, against 0.85 on the pixels (BENCHMARKS.md).

Why these choices:

- **SimCLR** rather than BYOL/SimSiam/DINO: no momentum encoder nor predictor to tune, stable
  at the small batches a CPU affords (256 with temperature 0.2), and one loss of ten lines.
- **The backbone**: three conv blocks (``width``, 2x, 4x channels, batch norm, ReLU) with up
  to two 2x2 poolings, chosen by the image size (none at 8x8, two at 28x28 or more), then a
  global average: ``4 * width`` features (128 by default), about 0.1 M weights, so 100
  epochs over 8,000 images take minutes on a CPU. The projection head (an MLP to 64) is
  used in training only; the embeddings are the backbone's features, L2-normalized.
- **Augmentations**, in one batched ``affine_grid``: rotation up to 20 degrees, scale 0.75-
  1.25, shear, shifts up to an eighth of the image; a random erased square (half the time)
  and a contrast change. No flips (digits and text would change meaning) and no color jitter
  beyond contrast (many such data sets are gray).

What applies: images only (arrays or files, at ``image_size``, by default the dataset's own
size up to 64 pixels). Texts have pretrained sentence encoders
(:func:`~dal_widgets.encoders.sentence_transformer`); tabular rows are refused (SCARF-style
corruption is not built).

Pretraining runs once per (dataset fingerprint, method, settings, code version) and is
cached in ``cache_dir`` (default: the user cache folder), so every session and seed on the
same data reuses it. A checkpoint is written after every epoch (atomically; loaded with
``weights_only=True``), so a killed kernel resumes at the next epoch with the same result.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import math
import os
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dal_widgets._checks import check_int, param_error
from dal_widgets._files import write_atomically
from dal_widgets._threads import joined, start_daemon
from dal_widgets.encoders._base import Encoder, EncoderError

__all__ = ["PretrainJob", "SelfSupervisedEncoder", "self_supervised"]

METHODS = ("simclr",)
#: Bumped when the pretraining code changes what it learns (old caches are not reused).
CODE_VERSION = "1"
#: Rows of the pool read (and embedded) at once.
_ROWS = 2048


def _pretrain_home() -> Path:
    from dal_widgets.projection import _cache_home

    return _cache_home() / "dal_widgets" / "pretrained"


def _check_float(value: Any, name: str, where: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo < value <= hi:
        raise param_error(name, where, f"a number in ({lo}, {hi}]", value)
    return float(value)


class SelfSupervisedEncoder(Encoder):
    """An encoder pretrained on one dataset's pool; made by :func:`self_supervised`.

    Until :attr:`ready`, it cannot encode: call :meth:`pretrain`, or give it to a
    ``Session``, which pretrains it in the background and switches to it when it is ready.
    """

    #: Its embedding's neighbourhoods come from the pool: label spreading over them measured
    #: better than the head alone at every budget (benchmarks/label_efficiency.py).
    spreads_by_default = True

    def __init__(self, dataset: Any, settings: dict[str, Any], cache_dir: Path) -> None:
        super().__init__(
            settings["method"],
            kinds=("image",),
            image_size=settings["image_size"],
            rgb=settings["channels"] == 3,
            batch_size=512,
            where="encoders.self_supervised",
        )
        self.settings = settings
        self.fingerprint = dataset.fingerprint
        #: The dataset it learns from (None in a copy sent to another process).
        self.dataset: Any = dataset
        key = json.dumps({**settings, "fingerprint": dataset.fingerprint, "code": CODE_VERSION})
        self._key = hashlib.sha256(key.encode()).hexdigest()
        #: Where the checkpoint, the final weights and ``meta.json`` are kept.
        self.folder = Path(cache_dir) / f"{dataset.fingerprint[:16]}-{self.id}"
        self._job: PretrainJob | None = None
        self._net: Any = None
        self._net_device: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # to worker processes: weights come from disk
        state = dict(self.__dict__)
        state.update(dataset=None, _job=None, _net=None, _net_device=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _digest(self) -> str:
        return self._key

    def __repr__(self) -> str:
        s = self.settings
        state = "ready" if self.ready else self.progress.get("state", "not pretrained")
        return (
            f"SelfSupervisedEncoder({s['method']!r}, epochs={s['epochs']}, "
            f"width={s['width']}, image_size={s['image_size']}, {state})"
        )

    # ------------------------------------------------------------------ pretraining
    @property
    def weights_path(self) -> Path:
        return self.folder / "encoder.pt"

    @property
    def ready(self) -> bool:
        """Whether the pretrained weights exist (in this process or in the cache)."""
        return self._net is not None or self.weights_path.exists()

    @property
    def meta(self) -> dict[str, Any]:
        """What the pretraining recorded: epochs done, loss per epoch, seconds, device."""
        try:
            return dict(json.loads((self.folder / "meta.json").read_text()))
        except (OSError, ValueError):
            return {}

    @property
    def progress(self) -> dict[str, Any]:
        """The pretraining's progress: ``state`` ("ready", "pretraining", "error",
        "cancelled" or "not started"), ``epoch``, ``epochs``, ``loss``, ``eta_s``."""
        if self._job is not None:
            return dict(self._job.progress)
        if self.ready:
            return {"state": "ready", "epoch": self.settings["epochs"]}
        return {"state": "not started", "epoch": 0, "epochs": self.settings["epochs"]}

    def pretrain(
        self,
        device: Any = "auto",
        *,
        wait: bool = True,
        on_progress: Callable[[dict[str, Any]], Any] | None = None,
    ) -> PretrainJob:
        """Pretrain on the pool (resuming from a checkpoint), or nothing if cached.

        ``wait=False`` runs it in a background thread; the returned job has ``progress``,
        ``wait()`` and ``cancel()``. A job already running for this encoder is returned.
        """
        with self._lock:
            job = self._job
            if job is None or job.failed:
                if self.dataset is None:
                    raise RuntimeError(
                        "This encoder was copied to another process without its dataset; "
                        "pretrain it in the process that made it."
                    )
                from dal_widgets.training import resolve_device

                dev = resolve_device(device, "SelfSupervisedEncoder.pretrain")
                job = self._job = PretrainJob(self, dev)
                if on_progress is not None:
                    job.add_listener(on_progress)
                job.start()
            elif on_progress is not None:  # a job runs already: one more listener
                job.add_listener(on_progress)
        if wait:
            job.wait()
            if job.error is not None:
                raise EncoderError(f"Pretraining {self.name!r} failed:\n{job.error}")
        return job

    # ------------------------------------------------------------------ encoding
    def _backbone(self, device: Any) -> Any:
        import torch

        with self._lock:
            if self._net is None:
                if not self.weights_path.exists():
                    raise RuntimeError(
                        f"The self-supervised encoder {self.name!r} is not pretrained yet "
                        f"({self.progress.get('state')}): call .pretrain() first, or give it "
                        "to a Session, which pretrains it in the background."
                    )
                net = backbone(self.settings)
                state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
                net.load_state_dict(state)
                self._net = net.eval()
            if self._net_device != device:
                self._net.to(device)
                self._net_device = device
            return self._net

    def _encode(self, batch: Any, device: Any) -> Any:
        import torch

        net = self._backbone(device)
        return torch.nn.functional.normalize(net(batch.to(device)), dim=1)


def backbone(settings: dict[str, Any]) -> Any:
    """The encoder network for ``settings`` (fresh weights)."""
    from torch import nn

    w, size, c = settings["width"], settings["image_size"], settings["channels"]
    pools = max(0, min(2, math.floor(math.log2(size / 7))))

    def block(i: int, o: int) -> list[Any]:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(True)]

    layers = block(c, w)
    for k, (i, o) in enumerate([(w, 2 * w), (2 * w, 4 * w)]):
        layers += ([nn.MaxPool2d(2)] if k < pools else []) + block(i, o)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def augment(x: Any, gen: Any) -> Any:
    """Two-view SimCLR augmentation of a batch (n, C, S, S) in [0, 1], drawn from ``gen``."""
    import torch
    import torch.nn.functional as F

    b, _, s, _ = x.shape
    d = torch.rand(b, 8, generator=gen).to(x.device)
    angle = (d[:, 0] * 2 - 1) * math.radians(20)
    scale = 0.75 + 0.5 * d[:, 1]
    shear = (d[:, 2] * 2 - 1) * 0.3
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, shear - sin, (d[:, 3] * 2 - 1) * 0.25], 1),
            torch.stack([sin, cos, (d[:, 4] * 2 - 1) * 0.25], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
    side = max(1, round(s * 0.3))  # the erased square, half the time
    top = (d[:, 5] * (s - side + 1)).long()
    left = (d[:, 6] * (s - side + 1)).long()
    r = torch.arange(s, device=x.device)
    rows = (r[None] >= top[:, None]) & (r[None] < top[:, None] + side)
    cols = (r[None] >= left[:, None]) & (r[None] < left[:, None] + side)
    box = rows[:, :, None] & cols[:, None, :] & (d[:, 7] < 0.5)[:, None, None]
    out = out.masked_fill(box[:, None], 0.0)
    contrast = 0.6 + 0.8 * torch.rand(b, 1, 1, 1, generator=gen).to(x.device)
    return (out * contrast).clamp_(0, 1)


def nt_xent(z1: Any, z2: Any, temperature: float) -> Any:
    """SimCLR's loss: each view's partner is the positive among the 2n - 1 others."""
    import torch
    import torch.nn.functional as F

    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


# Jobs with a live thread: stopped and joined at interpreter exit, before Python finalizes (a
# daemon thread still inside a torch kernel then aborts the process with exit code 134).
_LIVE: weakref.WeakSet[PretrainJob] = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    for job in list(_LIVE):
        job.cancel(timeout=30.0)


class PretrainJob:
    """Pretrains one :class:`SelfSupervisedEncoder` in a daemon thread, an epoch at a time.

    ``progress``: ``state`` ("pretraining", "ready", "error", "cancelled"), ``epoch``,
    ``epochs``, ``loss``, ``seconds``, ``eta_s``, ``resumed_from`` (the epoch a checkpoint
    gave back, 0 when none). Listeners (:meth:`add_listener`; several sessions may share one
    job) are called after each epoch and at the end, on the job's thread.
    """

    def __init__(self, encoder: SelfSupervisedEncoder, device: Any) -> None:
        self.encoder = encoder
        self.device = device
        self._listeners: list[Callable[[dict[str, Any]], Any]] = []
        self._listen_lock = threading.Lock()
        self.error: str | None = None
        epochs = encoder.settings["epochs"]
        self.progress: dict[str, Any] = {"state": "pretraining", "epoch": 0, "epochs": epochs}
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def failed(self) -> bool:
        return self._done.is_set() and self.progress.get("state") != "ready"

    def start(self) -> None:
        _LIVE.add(self)
        self._thread = start_daemon(self._run, name="dal-pretrain", on_error=self._failed)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the weights are ready or the job failed; False on timeout."""
        return self._done.wait(timeout)

    def cancel(self, timeout: float | None = 5.0) -> None:
        """Stop after the running step (the last finished epoch's checkpoint is kept)."""
        self._stop.set()
        joined(self._thread, timeout)

    def add_listener(self, callback: Callable[[dict[str, Any]], Any]) -> None:
        """Call ``callback(progress)`` after each epoch and at the end; a job that has ended
        already calls it once, at once, with its final progress."""
        with self._listen_lock:
            ended = self._done.is_set()
            if not ended:
                self._listeners.append(callback)
        if ended:
            callback(dict(self.progress))

    def remove_listener(self, callback: Callable[[dict[str, Any]], Any]) -> int:
        """Stop calling ``callback``; returns how many listeners are left."""
        with self._listen_lock:
            if callback in self._listeners:
                self._listeners.remove(callback)
            return len(self._listeners)

    def _publish(self, **update: Any) -> None:
        self.progress = {**self.progress, **update}
        with self._listen_lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback(dict(self.progress))
            except Exception:  # noqa: BLE001 - one listener's bug must not stop pretraining
                pass

    def _failed(self, exc: Exception, text: str) -> None:
        self.error = text
        self._publish(state="error", error=f"{type(exc).__name__}: {exc}")

    def _run(self) -> None:
        try:
            if self.encoder.weights_path.exists():
                self._publish(state="ready", epoch=self.progress["epochs"], eta_s=0.0)
            else:
                self._train()
        except Exception as exc:  # noqa: BLE001 - kept in error and progress before waiters go
            self._failed(exc, traceback.format_exc())
        finally:
            with self._listen_lock:  # listeners added from now on are called at once
                self._done.set()
            _LIVE.discard(self)

    def _pool(self) -> Any:
        """The pool's images at the encoder's size, as uint8 (a quarter of float32)."""
        import torch

        enc, ds = self.encoder, self.encoder.dataset
        n = len(ds)
        out = None
        for a in range(0, n, _ROWS):
            if self._stop.is_set():
                return None
            x = enc.inputs(ds, np.arange(a, min(a + _ROWS, n)))
            if out is None:
                out = torch.empty((n, *x.shape[1:]), dtype=torch.uint8)
            out[a : a + len(x)] = (x * 255).round_().to(torch.uint8)
        return out

    def _train(self) -> None:
        import torch
        from torch import nn

        enc = self.encoder
        s = enc.settings
        folder = enc.folder
        folder.mkdir(parents=True, exist_ok=True)
        pool = self._pool()
        if pool is None:
            self._publish(state="cancelled")
            return
        dev = self.device
        from dal_widgets.training._rng import seeded

        with seeded(s["seed"]):  # a session may fit a model on the raw inputs meanwhile
            net = backbone(s)
            dim = 4 * s["width"]
            head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(True), nn.Linear(dim, 64))
        net.to(dev).train()
        head.to(dev).train()
        params = [*net.parameters(), *head.parameters()]
        opt = torch.optim.AdamW(params, lr=s["lr"], weight_decay=1e-4)
        gen = torch.Generator().manual_seed(s["seed"])
        ckpt = folder / "checkpoint.pt"
        start, losses, seconds = 0, [], 0.0
        if ckpt.exists():
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            net.load_state_dict(state["net"])
            head.load_state_dict(state["head"])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"])
            start, losses, seconds = int(state["epoch"]), list(state["losses"]), state["seconds"]
        epochs, bs, n = s["epochs"], min(s["batch_size"], len(pool)), len(pool)
        self._publish(epoch=start, resumed_from=start, seconds=seconds)
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            for group in opt.param_groups:  # cosine decay, a function of the epoch alone
                group["lr"] = s["lr"] * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
            order = torch.randperm(n, generator=gen)
            total, steps = 0.0, 0
            for a in range(0, n - bs + 1, bs):
                if self._stop.is_set():
                    self._publish(state="cancelled")
                    return
                xb = pool[order[a : a + bs]].to(dev).float().div_(255)
                z1 = head(net(augment(xb, gen)))
                z2 = head(net(augment(xb, gen)))
                loss = nt_xent(z1, z2, s["temperature"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item()
                steps += 1
            losses.append(total / max(steps, 1))
            seconds += time.perf_counter() - t0
            state = {
                "net": net.state_dict(),
                "head": head.state_dict(),
                "opt": opt.state_dict(),
                "gen": gen.get_state(),
                "epoch": epoch + 1,
                "losses": losses,
                "seconds": seconds,
            }
            write_atomically(ckpt, functools.partial(torch.save, state))
            left = (epochs - epoch - 1) * seconds / max(epoch + 1 - start, 1)
            self._publish(epoch=epoch + 1, loss=losses[-1], seconds=seconds, eta_s=left)
        net_cpu = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        meta = {
            "method": s["method"],
            "settings": s,
            "fingerprint": enc.fingerprint,
            "epochs": epochs,
            "losses": losses,
            "seconds": seconds,
            "device": str(dev),
            "threads": torch.get_num_threads(),
            "resumed_from": self.progress.get("resumed_from", 0),
        }
        write_atomically(folder / "meta.json", lambda tmp: tmp.write_text(json.dumps(meta)))
        write_atomically(enc.weights_path, lambda tmp: torch.save(net_cpu, tmp))
        ckpt.unlink(missing_ok=True)
        self._publish(state="ready", eta_s=0.0)


def self_supervised(
    dataset: Any,
    method: str = "simclr",
    *,
    epochs: int = 100,
    width: int = 32,
    batch_size: int = 256,
    temperature: float = 0.2,
    lr: float = 2e-3,
    image_size: int | None = None,
    seed: int = 0,
    cache_dir: Any = None,
) -> SelfSupervisedEncoder:
    """An encoder pretrained on ``dataset``'s own pool by contrastive learning (SimCLR).

    Give it to ``Session(dataset, encoder=...)``: the session pretrains it in the background
    (progress in the App), keeps working with its default model meanwhile, then embeds the
    pool and switches to a head over the embeddings (logged in the round history). The head
    spreads the labels over the pool's neighbours in the embedding by default
    (``TrainConfig.head(label_spreading=True)``, single-label data; give the session
    ``train_config=TrainConfig.head()`` for the head alone). Or call
    :meth:`SelfSupervisedEncoder.pretrain` yourself.

    Parameters
    ----------
    dataset : Dataset
        An image dataset; its pool (not the held-out split) is what the encoder learns from.
    method : {"simclr"}
    epochs : int
        Passes over the pool (100: about 10 minutes for 8,000 28x28 images on 2 CPU cores).
    width : int
        Channels of the first conv block (the embedding has ``4 * width`` dimensions).
    batch_size : int
        Images per contrastive batch (each has 2 * batch_size - 2 negatives).
    temperature : float
        NT-Xent's temperature.
    lr : float
        AdamW's starting learning rate (cosine decay to 0 over ``epochs``).
    image_size : int, optional
        The images' side for the encoder (default: the dataset's, at most 64).
    seed : int
        Seeds the weights, the batches and the augmentations.
    cache_dir : path, optional
        Where pretrained weights are kept (default: ``~/.cache/dal_widgets/pretrained``, or
        under ``$XDG_CACHE_HOME``).
    """
    where = "encoders.self_supervised"
    from dal_widgets.data import Dataset

    if not isinstance(dataset, Dataset):
        raise param_error(
            "dataset", where, "a Dataset from dal_widgets.datasets", dataset, TypeError
        )
    if method not in METHODS:
        raise param_error("method", where, f"one of {list(METHODS)}", method)
    if dataset.kind != "image":
        hint = (
            "texts have pretrained sentence encoders: use encoders.sentence_transformer(...)"
            if dataset.kind == "text"
            else "tabular rows are not supported (only images)"
        )
        raise TypeError(
            f"The 'dataset' parameter of {where} must hold images: dataset {dataset.name!r} "
            f"holds {dataset.kind} data; {hint}."
        )
    shape = tuple(dataset.input_shape)
    size = min(shape[-1], 64) if image_size is None else image_size
    settings = {
        "method": method,
        "epochs": check_int(epochs, "epochs", where, lo=1, hi=100_000),
        "width": check_int(width, "width", where, lo=4, hi=512),
        "batch_size": check_int(batch_size, "batch_size", where, lo=8, hi=1 << 16),
        "temperature": _check_float(temperature, "temperature", where, 0.0, 10.0),
        "lr": _check_float(lr, "lr", where, 0.0, 1.0),
        "image_size": check_int(size, "image_size", where, lo=8, hi=512),
        "channels": 3 if shape[0] == 3 else 1,
        "seed": check_int(seed, "seed", where, lo=0),
    }
    if cache_dir is None:
        folder = _pretrain_home()
    elif isinstance(cache_dir, (str, os.PathLike)):
        folder = Path(cache_dir)
    else:
        raise param_error("cache_dir", where, "None or a folder path", cache_dir, TypeError)
    return SelfSupervisedEncoder(dataset, settings, folder)
