"""Torch's global random generator, shared by the threads of this package.

Torch has one global CPU generator per process. A fit seeds it and draws from it for its
whole run (dropout masks, a model's initial weights); a draw from another thread meanwhile,
such as a model built on the embedding thread to receive saved weights, moves the fit's
stream, and the same seed and labels then give another model. Every place of this package
that seeds or draws from the global generator holds :data:`GLOBAL_RNG`, so such draws wait
for the fit and the fit stays reproducible (draws from the user's own code are not covered).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["GLOBAL_RNG", "seeded", "unseeded"]

#: Held while the global generator is seeded and drawn from (re-entrant: a seeded fit builds
#: its ensemble members' models seeded too).
GLOBAL_RNG = threading.RLock()


@contextmanager
def seeded(seed: int, devices: Sequence[Any] = ()) -> Iterator[None]:
    """Run the block on the global generator seeded with ``seed``, alone, and restore the
    generator's state afterwards (CUDA ``devices`` too)."""
    import torch

    with GLOBAL_RNG, torch.random.fork_rng(devices=list(devices)):
        torch.manual_seed(seed)
        yield


@contextmanager
def unseeded() -> Iterator[None]:
    """Draw from the global generator alone (after any running fit), leaving its state as it
    was: for models whose weights are about to be replaced by saved ones."""
    import torch

    with GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        yield
